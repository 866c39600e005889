"""Losses against hand-computed values and the official SetCriterion terms."""
import math
from pathlib import Path

import pytest
import torch

import mmdeform.models  # noqa: F401  (registers the losses)
from mmdeform.models.losses import (
    FocalLoss,
    GIoULoss,
    L1Loss,
    aligned_generalized_box_iou,
    sigmoid_focal_loss,
)
from mmdeform.models.task_modules import HungarianAssigner
from mmdeform.registry import MODELS
from mmdeform.structures import box_cxcywh_to_xyxy, generalized_box_iou

FIXTURES = Path(__file__).resolve().parents[3] / 'shared' / 'fixtures' / 'official_parity'
VARIANTS = ['base', 'box_refine', 'two_stage', 'single_scale']


def _focal_by_hand(x, t, alpha=0.25, gamma=2.0):
    p = 1.0 / (1.0 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss *= alpha * t + (1 - alpha) * (1 - t)
    return loss


def test_registry_defaults():
    focal = MODELS.build(dict(type='FocalLoss'))
    assert (focal.alpha, focal.gamma, focal.loss_weight) == (0.25, 2.0, 2.0)
    assert MODELS.build(dict(type='L1Loss')).loss_weight == 5.0
    assert MODELS.build(dict(type='GIoULoss')).loss_weight == 2.0


def test_focal_loss_scalars_by_hand():
    logits = torch.tensor([[1.3, -0.4], [-2.0, 0.7]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    expected = sum(_focal_by_hand(logits[i, j].item(), targets[i, j].item())
                   for i in range(2) for j in range(2))
    loss = FocalLoss()(logits, targets, avg_factor=3.0)
    assert loss.item() == pytest.approx(2.0 * expected / 3.0, abs=1e-15)
    no_alpha = FocalLoss(alpha=-1.0, gamma=1.5, loss_weight=1.0)(logits, targets, 1.0)
    expected = sum(_focal_by_hand(logits[i, j].item(), targets[i, j].item(), -1.0, 1.5)
                   for i in range(2) for j in range(2))
    assert no_alpha.item() == pytest.approx(expected, abs=1e-15)


def test_focal_loss_extreme_logits_stay_finite():
    logits = torch.tensor([[200.0, -200.0], [-200.0, 200.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = FocalLoss(loss_weight=1.0)(logits, targets, 1.0)
    # Only the confident wrong entries count: 0.25 * 200 (positive) + 0.75 * 200 (negative).
    assert loss.item() == pytest.approx(0.25 * 200 + 0.75 * 200)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_targets_dtype():
    logits = torch.randn(3, 4, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 3, 1]), 4)
    loss_int = FocalLoss()(logits, one_hot, 2.0)
    loss_float = FocalLoss()(logits, one_hot.double(), 2.0)
    assert torch.equal(loss_int, loss_float)
    with pytest.raises(TypeError, match='targets dtype'):
        FocalLoss()(logits, one_hot.float(), 2.0)


def test_l1_loss_by_hand():
    pred = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
    target = torch.tensor([[0.2, 0.2, 0.1, 0.4], [0.5, 0.9, 0.5, 0.0]])
    # (0.1 + 0 + 0.2 + 0) + (0 + 0.4 + 0 + 0.5) = 1.2, times 5, over 4.
    loss = L1Loss()(pred, target, avg_factor=torch.tensor(4.0))
    assert loss.item() == pytest.approx(5.0 * 1.2 / 4.0, rel=1e-6)


def test_giou_loss_by_hand_and_identical_boxes():
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.4, 0.9]], dtype=torch.float64)
    target = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.1, 0.2, 0.4, 0.9]], dtype=torch.float64)
    inter, union, enclosing = 0.0625, 0.4375, 0.5625
    giou = inter / union - (enclosing - union) / enclosing
    loss = GIoULoss(loss_weight=1.0)(pred, target, avg_factor=1.0)
    assert loss.item() == pytest.approx(1 - giou, abs=1e-15)
    assert GIoULoss()(pred, pred.clone(), 1.0).item() == 0.0


def test_aligned_giou_equals_diagonal_of_pairwise():
    generator = torch.Generator().manual_seed(0)
    boxes1 = box_cxcywh_to_xyxy(torch.rand(20, 4, generator=generator, dtype=torch.float64))
    boxes2 = box_cxcywh_to_xyxy(torch.rand(20, 4, generator=generator, dtype=torch.float64))
    diagonal = torch.diag(generalized_box_iou(boxes1, boxes2))
    torch.testing.assert_close(aligned_generalized_box_iou(boxes1, boxes2), diagonal,
                               rtol=0, atol=1e-15)
    inverted = boxes1.clone()
    inverted[0, 2] = inverted[0, 0] - 0.1
    with pytest.raises(ValueError, match='boxes1_xyxy'):
        aligned_generalized_box_iou(inverted, boxes2)


@pytest.mark.parametrize('loss_type,width', [('FocalLoss', 7), ('L1Loss', 4), ('GIoULoss', 4)])
def test_empty_inputs_give_connected_zero(loss_type, width):
    pred = torch.zeros(0, width, requires_grad=True)
    loss = MODELS.build(dict(type=loss_type))(pred, torch.zeros(0, width), 1.0)
    assert loss.shape == () and loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, width)


@pytest.mark.parametrize('loss_type', ['FocalLoss', 'L1Loss', 'GIoULoss'])
def test_bad_arguments_raise(loss_type):
    loss = MODELS.build(dict(type=loss_type))
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    with pytest.raises(ValueError, match='same shape'):
        loss(boxes, boxes[:, :3], 1.0)
    with pytest.raises(ValueError, match='avg_factor'):
        loss(boxes, boxes, 0.0)


def test_sigmoid_focal_loss_is_elementwise():
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    targets = (torch.rand(2, 3, 5, dtype=torch.float64) > 0.7).double()
    loss = sigmoid_focal_loss(logits, targets)
    assert loss.shape == logits.shape
    expected = _focal_by_hand(logits[1, 2, 3].item(), targets[1, 2, 3].item())
    assert loss[1, 2, 3].item() == pytest.approx(expected, abs=1e-15)


def _layer_losses(layer, labels, gt_boxes, num_boxes):
    """Official SetCriterion terms of one layer, with our assigner and losses."""
    results = HungarianAssigner().assign_batch(layer['pred_logits'], layer['pred_boxes'],
                                               labels, gt_boxes)
    targets = torch.zeros_like(layer['pred_logits'])
    for b, result in enumerate(results):
        targets[b, result.query_index, labels[b][result.gt_index]] = 1
    pred = torch.cat([layer['pred_boxes'][b, r.query_index] for b, r in enumerate(results)])
    target = torch.cat([gt_boxes[b][r.gt_index] for b, r in enumerate(results)])
    return dict(
        loss_ce=FocalLoss()(layer['pred_logits'].flatten(0, 1), targets.flatten(0, 1),
                            num_boxes),
        loss_bbox=L1Loss()(pred, target, num_boxes),
        loss_giou=GIoULoss()(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target), num_boxes))


@pytest.mark.parametrize('variant', VARIANTS)
def test_matches_official_set_criterion(variant):
    if not (FIXTURES / variant / 'outputs.pt').exists():
        pytest.skip(f'official parity fixtures not found under {FIXTURES}')
    inputs = torch.load(FIXTURES / variant / 'inputs.pt', weights_only=True)
    ref = torch.load(FIXTURES / variant / 'outputs.pt', weights_only=True)
    labels = [t['labels'] for t in inputs['targets']]
    gt_boxes = [t['boxes'].double() for t in inputs['targets']]
    num_boxes = float(max(sum(len(x) for x in labels), 1))
    out = ref['float64']
    layers = {'': out, **{f'_{i}': o for i, o in enumerate(out['aux_outputs'])}}
    if 'enc_outputs' in out:
        layers['_enc'] = out['enc_outputs']
    total = 0.0
    for suffix, layer in layers.items():
        layer_labels = [torch.zeros_like(x) for x in labels] if suffix == '_enc' else labels
        for name, value in _layer_losses(layer, layer_labels, gt_boxes, num_boxes).items():
            torch.testing.assert_close(value, ref['loss_weighted'][name + suffix],
                                       rtol=0, atol=1e-10)
            total = total + value
    torch.testing.assert_close(total, ref['loss_total'], rtol=0, atol=1e-10)
