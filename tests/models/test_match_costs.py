"""Match costs against values written out from their formulas."""
import math

import pytest
import torch

import mmdeform.models  # noqa: F401  (registers the costs)
from mmdeform.models.task_modules import BBoxL1Cost, FocalLossCost, IoUCost
from mmdeform.registry import TASK_UTILS


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _focal_cost(logit, weight=2.0, alpha=0.25, gamma=2.0, eps=1e-8):
    p = _sigmoid(logit)
    pos = alpha * (1 - p) ** gamma * -math.log(p + eps)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p + eps)
    return weight * (pos - neg)


def _empty_inputs(num_queries=3, num_classes=4):
    logits = torch.randn(num_queries, num_classes, dtype=torch.float64)
    boxes = torch.full((num_queries, 4), 0.3, dtype=torch.float64)
    return logits, boxes, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.float64)


def test_focal_cost_matches_formula():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.7, 0.1, -3.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0, 2])
    boxes = torch.full((2, 4), 0.5, dtype=torch.float64)
    cost = FocalLossCost()(logits, boxes, labels, torch.full((3, 4), 0.5, dtype=torch.float64))
    expected = torch.tensor([[_focal_cost(logits[q, c].item()) for c in labels.tolist()]
                             for q in range(2)], dtype=torch.float64)
    assert cost.shape == (2, 3)
    torch.testing.assert_close(cost, expected, rtol=0, atol=1e-14)
    # A confident correct logit costs less than an unconfident one.
    assert cost[0, 0] < cost[1, 0]


def test_focal_cost_parameters():
    logits = torch.tensor([[0.8]], dtype=torch.float64)
    boxes = torch.full((1, 4), 0.5, dtype=torch.float64)
    cost = FocalLossCost(weight=1.5, alpha=0.5, gamma=1.0, eps=0.0)(
        logits, boxes, torch.tensor([0]), boxes)
    p = _sigmoid(0.8)
    expected = 1.5 * (0.5 * (1 - p) * -math.log(p) - 0.5 * p * -math.log(1 - p))
    assert cost.item() == pytest.approx(expected, abs=1e-14)


def test_l1_cost_by_hand():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    gt = torch.tensor([[0.4, 0.6, 0.2, 0.4]], dtype=torch.float64)
    cost = BBoxL1Cost()(torch.zeros(2, 3, dtype=torch.float64), pred, torch.tensor([1]), gt)
    # |0.1| + |0.1| + 0 + |0.2| = 0.4 and 0.3 + 0.4 + 0.1 + 0 = 0.8, times 5.
    torch.testing.assert_close(cost, torch.tensor([[2.0], [4.0]], dtype=torch.float64))


def test_giou_cost_by_hand():
    # pred xyxy (0, 0, 0.5, 0.5); gt xyxy (0.25, 0.25, 0.75, 0.75) and the pred box itself.
    pred = torch.tensor([[0.25, 0.25, 0.5, 0.5]], dtype=torch.float64)
    gt = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]], dtype=torch.float64)
    cost = IoUCost()(torch.zeros(1, 2, dtype=torch.float64), pred, torch.tensor([0, 1]), gt)
    inter, union, enclosing = 0.0625, 0.25 + 0.25 - 0.0625, 0.75 * 0.75
    giou = inter / union - (enclosing - union) / enclosing
    torch.testing.assert_close(cost, torch.tensor([[-2.0 * giou, -2.0]], dtype=torch.float64))


@pytest.mark.parametrize('cost_type', ['FocalLossCost', 'BBoxL1Cost', 'IoUCost'])
def test_costs_without_ground_truth(cost_type):
    cost = TASK_UTILS.build(dict(type=cost_type))(*_empty_inputs())
    assert cost.shape == (3, 0)


@pytest.mark.parametrize('cost_type', ['FocalLossCost', 'BBoxL1Cost', 'IoUCost'])
def test_costs_reject_bad_shapes(cost_type):
    logits, boxes, _, _ = _empty_inputs()
    match_cost = TASK_UTILS.build(dict(type=cost_type))
    gt = torch.full((2, 4), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match='pred_boxes_cxcywh'):
        match_cost(logits, boxes[:2], torch.tensor([0, 1]), gt)
    with pytest.raises(ValueError, match='gt_boxes_cxcywh'):
        match_cost(logits, boxes, torch.tensor([0, 1]), gt[:1])
    with pytest.raises(ValueError, match='dtype'):
        match_cost(logits, boxes, torch.tensor([0, 1]), gt.float())


def test_focal_cost_rejects_labels_out_of_range():
    logits, boxes, _, _ = _empty_inputs(num_classes=4)
    with pytest.raises(ValueError, match=r'gt_labels must lie in \[0, 4\)'):
        FocalLossCost()(logits, boxes, torch.tensor([4]), torch.full((1, 4), 0.5,
                                                                     dtype=torch.float64))


def test_iou_cost_plain_iou_mode_and_bad_mode():
    # pred xyxy (0, 0, 0.5, 0.5) against gt xyxy (0.25, 0.25, 0.75, 0.75): IoU 1/7.
    pred = torch.tensor([[0.25, 0.25, 0.5, 0.5]], dtype=torch.float64)
    gt = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    cost = IoUCost(iou_mode='iou', weight=3.0)(torch.zeros(1, 2, dtype=torch.float64), pred,
                                               torch.tensor([0]), gt)
    torch.testing.assert_close(cost, torch.tensor([[-3.0 / 7.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="iou_mode must be 'giou' or 'iou'"):
        IoUCost(iou_mode='diou')
