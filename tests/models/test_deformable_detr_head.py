"""Tests of DeformableDETRHead: box decoding, branches, loss, post-processing."""
import math

import pytest
import torch
from mmengine.structures import InstanceData

import mmdeform.models.heads.deformable_detr_head as head_module
from mmdeform.models.heads import DeformableDETRHead
from mmdeform.models.layers import boxes_from_reference
from mmdeform.models.stage_outputs import DecoderOutput, HeadOutput, QueryOutput
from mmdeform.structures import DetDataSample

C, K, Q, B = 16, 5, 7, 2


def make_head(**kwargs) -> DeformableDETRHead:
    torch.manual_seed(0)
    kwargs.setdefault('num_classes', K)
    kwargs.setdefault('embed_dims', C)
    kwargs.setdefault('num_layers', 3)
    kwargs.setdefault('test_cfg', dict(max_per_img=10))
    return DeformableDETRHead(**kwargs)


def randomize(head: DeformableDETRHead) -> None:
    """Random weights everywhere (the init zeroes the box deltas)."""
    with torch.no_grad():
        for param in head.parameters():
            param.normal_(0, 0.5)


def decoder_output(num_layers: int, ref_dims: int) -> DecoderOutput:
    hidden = torch.randn(num_layers, B, Q, C)
    refs = [torch.rand(B, Q, ref_dims) * 0.8 + 0.1 for _ in range(num_layers)]
    return DecoderOutput(hidden_states=hidden, references=refs)


def sample(img_hw, ori_hw, boxes_xyxy, labels) -> DetDataSample:
    data_sample = DetDataSample(metainfo=dict(img_shape=img_hw, ori_shape=ori_hw))
    data_sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.long))
    return data_sample


def logit(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_forward_decodes_boxes_relative_to_each_layers_reference(ref_dims):
    head = make_head(share_branches=False)
    randomize(head)
    dec = decoder_output(3, ref_dims)
    out = head(dec)
    assert out.logits.shape == (3, B, Q, K) and out.boxes_cxcywh.shape == (3, B, Q, 4)
    for layer in range(3):
        hidden, ref = dec.hidden_states[layer], dec.references[layer]
        delta = head.reg_branches[layer](hidden)
        shift = torch.zeros_like(delta)
        shift[..., :ref_dims] = logit(ref)  # a 2-d reference moves only the centre
        torch.testing.assert_close(out.boxes_cxcywh[layer], torch.sigmoid(delta + shift))
        torch.testing.assert_close(out.logits[layer], head.cls_branches[layer](hidden))


def test_boxes_from_reference_rejects_other_sizes():
    with pytest.raises(ValueError, match='reference'):
        boxes_from_reference(torch.zeros(3, 4), torch.zeros(3, 3))


def test_shared_branches_are_one_module_applied_to_every_layer():
    head = make_head(share_branches=True)
    randomize(head)
    assert len(head.cls_branches) == len(head.reg_branches) == 1
    names = set(head.state_dict())
    assert 'cls_branches.0.weight' in names and 'cls_branches.1.weight' not in names
    dec = decoder_output(3, 2)
    dec.hidden_states[:] = dec.hidden_states[0]  # same input -> same output in every layer
    dec.references[1] = dec.references[2] = dec.references[0]
    out = head(dec)
    torch.testing.assert_close(out.logits[0], out.logits[2], rtol=0, atol=0)
    torch.testing.assert_close(out.boxes_cxcywh[0], out.boxes_cxcywh[1], rtol=0, atol=0)


def test_separate_branches_act_only_on_their_layer():
    head = make_head(share_branches=False)
    randomize(head)
    dec = decoder_output(3, 4)
    before = head(dec)
    with torch.no_grad():
        head.cls_branches[1].bias += 1.0
    after = head(dec)
    assert torch.equal(before.logits[0], after.logits[0])
    assert torch.equal(before.logits[2], after.logits[2])
    torch.testing.assert_close(after.logits[1], before.logits[1] + 1.0)


@pytest.mark.parametrize('share, wh_bias', [(True, -2.0), (False, -2.0), (False, 0.0)])
def test_init_matches_the_official_head(share, wh_bias):
    head = make_head(share_branches=share, init_wh_bias=wh_bias)
    randomize(head)
    head.init_weights()  # what the runner calls; same as construction
    for cls_branch in head.cls_branches:
        torch.testing.assert_close(cls_branch.bias,
                                   torch.full((K,), -math.log(0.99 / 0.01)))
    for index, reg_branch in enumerate(head.reg_branches):
        assert torch.count_nonzero(reg_branch.layers[-1].weight) == 0
        expected_wh = wh_bias if index == 0 else 0.0
        assert reg_branch.layers[-1].bias.tolist() == [0.0, 0.0, expected_wh, expected_wh]


@pytest.mark.parametrize('reference_dims, wh_bias', [(2, -2.0), (4, 0.0)])
def test_default_wh_bias_follows_the_reference_kind(reference_dims, wh_bias):
    head = make_head(share_branches=False, reference_dims=reference_dims)
    assert head.reg_branches[0].layers[-1].bias.tolist() == [0.0, 0.0, wh_bias, wh_bias]


def test_bad_train_and_test_cfg_are_refused():
    with pytest.raises(ValueError, match=r"test_cfg has unknown keys \['num_predictions'\]"):
        make_head(test_cfg=dict(num_predictions=5))
    with pytest.raises(ValueError, match=r"train_cfg has unknown keys \['assigners'\]"):
        make_head(train_cfg=dict(assigners=[]))
    with pytest.raises(ValueError, match='max_per_img must be >= 1'):
        make_head(test_cfg=dict(max_per_img=0))
    with pytest.raises(ValueError, match='reference_dims must be 2'):
        make_head(reference_dims=3)


def test_forward_checks_the_number_of_layers():
    head = make_head(num_layers=3)
    with pytest.raises(ValueError, match='3 decoder layers'):
        head(decoder_output(2, 2))


def brute_force_top_k(logits, boxes_cxcywh, k, height, width):
    """Top-k (query, class) pairs by sorting all pairs in Python."""
    pairs = [(torch.sigmoid(logits[q, c]).item(), q, c)
             for q in range(logits.shape[0]) for c in range(logits.shape[1])]
    pairs.sort(key=lambda item: -item[0])
    scores, labels, boxes = [], [], []
    for score, q, c in pairs[:k]:
        cx, cy, w, h = boxes_cxcywh[q].tolist()
        scores.append(score)
        labels.append(c)
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height,
                      (cx + w / 2) * width, (cy + h / 2) * height])
    return torch.tensor(scores), torch.tensor(labels), torch.tensor(boxes)


@pytest.mark.parametrize('rescale', [True, False])
def test_predict_matches_a_brute_force_top_k(rescale):
    head = make_head(test_cfg=dict(max_per_img=12))
    torch.manual_seed(1)
    logits = torch.randn(3, B, Q, K, dtype=torch.float64)
    boxes = torch.rand(3, B, Q, 4, dtype=torch.float64)  # may leave the image: no clipping
    samples = [sample((60, 80), (120, 170), [], []), sample((50, 90), (100, 45), [], [])]
    results = head.predict(HeadOutput(logits=logits, boxes_cxcywh=boxes), samples,
                           rescale=rescale)
    for b, result in enumerate(results):
        height, width = result.ori_shape if rescale else result.img_shape
        scores, labels, boxes_xyxy = brute_force_top_k(logits[-1, b], boxes[-1, b], 12,
                                                       height, width)
        pred = result.pred_instances
        torch.testing.assert_close(pred.scores, scores.double())
        assert torch.equal(pred.labels, labels)
        torch.testing.assert_close(pred.bboxes, boxes_xyxy.double())


def test_predict_keeps_at_most_all_pairs():
    head = make_head(test_cfg=dict(max_per_img=1000))
    out = HeadOutput(logits=torch.randn(3, 1, Q, K), boxes_cxcywh=torch.rand(3, 1, Q, 4))
    result = head.predict(out, [sample((10, 10), (10, 10), [], [])])[0]
    assert result.pred_instances.scores.shape == (Q * K,)
    assert result.pred_instances.bboxes.shape == (Q * K, 4)


def gt_samples():
    # image 0: 3 boxes in a 100x200 (h, w) image; image 1: 1 box in 80x60
    return [sample((100, 200), (100, 200),
                   [[10, 20, 50, 60], [100, 10, 180, 90], [0, 0, 200, 100]], [1, 4, 0]),
            sample((80, 60), (80, 60), [[5, 5, 30, 70]], [2])]


def random_head_output(num_layers=3, requires_grad=False):
    torch.manual_seed(2)
    logits = torch.randn(num_layers, B, Q, K, dtype=torch.float64)
    boxes = torch.rand(num_layers, B, Q, 4, dtype=torch.float64) * 0.5 + 0.2
    return HeadOutput(logits=logits.requires_grad_(requires_grad),
                      boxes_cxcywh=boxes.requires_grad_(requires_grad))


def focal(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    pos = -alpha * (1 - p) ** gamma * torch.log(p)
    neg = -(1 - alpha) * p ** gamma * torch.log(1 - p)
    return torch.where(targets > 0, pos, neg)


def test_loss_terms_are_normalized_by_the_batch_box_count():
    head = make_head()
    samples = gt_samples()
    out = random_head_output()
    losses = head.loss(out, None, samples)
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_iou', 'd0.loss_cls', 'd0.loss_bbox',
                           'd0.loss_iou', 'd1.loss_cls', 'd1.loss_bbox', 'd1.loss_iou'}
    labels, gt_boxes = head.get_targets(samples, torch.float64)
    torch.testing.assert_close(  # absolute xyxy pixels -> normalized cxcywh
        gt_boxes[0][0], torch.tensor([30 / 200, 40 / 100, 40 / 200, 40 / 100],
                                     dtype=torch.float64))
    for layer, prefix in [(0, 'd0.'), (2, '')]:
        l1_sum, cls_sum = 0.0, 0.0
        for b in range(B):
            assign = head.assigner.assign(out.logits[layer, b], out.boxes_cxcywh[layer, b],
                                          labels[b], gt_boxes[b])
            targets = torch.zeros(Q, K, dtype=torch.float64)
            targets[assign.query_index, labels[b][assign.gt_index]] = 1
            cls_sum += focal(out.logits[layer, b], targets).sum()
            l1_sum += (out.boxes_cxcywh[layer, b, assign.query_index]
                       - gt_boxes[b][assign.gt_index]).abs().sum()
        num_boxes = 4  # 3 + 1 boxes in the batch
        torch.testing.assert_close(losses[prefix + 'loss_cls'], 2.0 * cls_sum / num_boxes)
        torch.testing.assert_close(losses[prefix + 'loss_bbox'], 5.0 * l1_sum / num_boxes)


def test_loss_without_ground_truth():
    head = make_head()
    samples = [sample((100, 200), (100, 200), [], []), sample((80, 60), (80, 60), [], [])]
    out = random_head_output(requires_grad=True)
    losses = head.loss(out, None, samples)
    # num_boxes is clamped to 1: the class loss is the plain sum over all negatives
    torch.testing.assert_close(losses['loss_cls'],
                               2.0 * focal(out.logits[-1], torch.zeros(B, Q, K)).sum())
    for name in ('loss_bbox', 'loss_iou', 'd0.loss_bbox', 'd1.loss_iou'):
        assert losses[name].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(out.logits.grad).all()


def test_loss_averages_the_box_count_over_processes(monkeypatch):
    head = make_head()
    samples = gt_samples()  # 4 boxes here; pretend another process has 8 -> mean 6
    calls = []

    def all_reduce(tensor, op):
        calls.append(op)
        tensor.copy_((tensor + 8) / 2)

    monkeypatch.setattr(head_module.dist, 'is_distributed', lambda: True)
    monkeypatch.setattr(head_module.dist, 'all_reduce', all_reduce)
    distributed = head.loss(random_head_output(), None, samples)
    monkeypatch.setattr(head_module.dist, 'is_distributed', lambda: False)
    local = head.loss(random_head_output(), None, samples)
    assert calls == ['mean']
    for name, value in local.items():
        torch.testing.assert_close(distributed[name], value * 4 / 6)


def test_two_stage_encoder_loss_is_class_agnostic():
    head = make_head()
    out = random_head_output()
    torch.manual_seed(3)
    enc = QueryOutput(query=torch.zeros(B, Q, C), query_pos=torch.zeros(B, Q, C),
                      reference_points=torch.rand(B, Q, 4),
                      enc_logits=torch.randn(B, 11, K, dtype=torch.float64),
                      enc_boxes_cxcywh=torch.rand(B, 11, 4, dtype=torch.float64) * 0.5 + 0.2)
    samples = gt_samples()
    losses = head.loss(out, enc, samples)
    assert {'enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'} <= set(losses)
    relabelled = gt_samples()
    for data_sample in relabelled:
        data_sample.gt_instances.labels = (data_sample.gt_instances.labels + 1) % K
    other = head.loss(out, enc, relabelled)
    for name in ('enc_loss_cls', 'enc_loss_bbox', 'enc_loss_iou'):
        assert torch.equal(losses[name], other[name])  # labels do not matter
    assert not torch.equal(losses['loss_cls'], other['loss_cls'])
    # the enc class targets are column 0 of the matched tokens
    labels, gt_boxes = head.get_targets(samples, torch.float64)
    cls_sum = 0.0
    for b in range(B):
        zeros = torch.zeros_like(labels[b])
        assign = head.assigner.assign(enc.enc_logits[b], enc.enc_boxes_cxcywh[b], zeros,
                                      gt_boxes[b])
        targets = torch.zeros(11, K, dtype=torch.float64)
        targets[assign.query_index, 0] = 1
        cls_sum += focal(enc.enc_logits[b], targets).sum()
    torch.testing.assert_close(losses['enc_loss_cls'], 2.0 * cls_sum / 4)


def test_targets_reject_malformed_boxes():
    bad = DetDataSample(metainfo=dict(img_shape=(10, 10)))
    bad.gt_instances = InstanceData(bboxes=torch.zeros(2, 5), labels=torch.zeros(2).long())
    with pytest.raises(ValueError, match='bboxes'):
        DeformableDETRHead.get_targets([bad], torch.float32)
