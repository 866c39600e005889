"""Hungarian assigner: known optima, brute force, batching, official indices."""
import itertools
from pathlib import Path

import pytest
import torch

import mmdeform.models  # noqa: F401  (registers the assigner)
from mmdeform.models.task_modules import AssignResult, HungarianAssigner
from mmdeform.registry import TASK_UTILS

FIXTURES = Path(__file__).resolve().parents[3] / 'shared' / 'fixtures' / 'official_parity'
VARIANTS = ['base', 'box_refine', 'two_stage', 'single_scale']


def _random_case(generator, num_queries, num_classes, num_gts, dtype=torch.float64):
    logits = torch.randn(num_queries, num_classes, generator=generator, dtype=dtype)
    boxes = torch.rand(num_queries, 4, generator=generator, dtype=dtype) * 0.4 + 0.1
    labels = torch.randint(num_classes, (num_gts,), generator=generator)
    gt_boxes = torch.rand(num_gts, 4, generator=generator, dtype=dtype) * 0.4 + 0.1
    return logits, boxes, labels, gt_boxes


def test_builds_default_costs_from_registry():
    assigner = TASK_UTILS.build(dict(type='HungarianAssigner'))
    assert [type(c).__name__ for c in assigner.match_costs] == [
        'FocalLossCost', 'BBoxL1Cost', 'IoUCost']
    assert [c.weight for c in assigner.match_costs] == [2.0, 5.0, 2.0]


def test_constructed_case_with_known_assignment():
    gt_boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]], dtype=torch.float64)
    # Query 0 sits on gt 1, query 2 on gt 0, query 1 is far from both.
    pred_boxes = torch.stack([gt_boxes[1], torch.tensor([0.5, 0.95, 0.05, 0.05],
                                                        dtype=torch.float64), gt_boxes[0]])
    logits = torch.zeros(3, 4, dtype=torch.float64)
    result = HungarianAssigner().assign(logits, pred_boxes, torch.tensor([3, 1]), gt_boxes)
    assert isinstance(result, AssignResult)
    assert result.query_index.tolist() == [0, 2]
    assert result.gt_index.tolist() == [1, 0]
    assert result.query_index.dtype == result.gt_index.dtype == torch.int64
    assert result.num_matched == 2


def test_class_cost_decides_between_equal_boxes():
    boxes = torch.full((2, 4), 0.4, dtype=torch.float64)
    logits = torch.tensor([[-3.0, 3.0], [3.0, -3.0]], dtype=torch.float64)
    result = HungarianAssigner().assign(logits, boxes, torch.tensor([0, 1]), boxes.clone())
    assert result.query_index.tolist() == [0, 1]
    assert result.gt_index.tolist() == [1, 0]


@pytest.mark.parametrize('num_queries,num_gts', [(5, 3), (4, 4), (2, 4)])
def test_assignment_is_optimal_by_brute_force(num_queries, num_gts):
    generator = torch.Generator().manual_seed(num_queries * 10 + num_gts)
    assigner = HungarianAssigner()
    for _ in range(5):
        case = _random_case(generator, num_queries, 6, num_gts)
        cost = sum(c(*case) for c in assigner.match_costs)
        result = assigner.assign(*case)
        assert result.num_matched == min(num_queries, num_gts)
        assert result.query_index.tolist() == sorted(set(result.query_index.tolist()))
        assert len(set(result.gt_index.tolist())) == result.num_matched
        got = cost[result.query_index, result.gt_index].sum().item()
        if num_queries >= num_gts:
            best = min(sum(cost[q, g].item() for g, q in enumerate(perm))
                       for perm in itertools.permutations(range(num_queries), num_gts))
        else:
            best = min(sum(cost[q, g].item() for q, g in enumerate(perm))
                       for perm in itertools.permutations(range(num_gts), num_queries))
        assert got == pytest.approx(best, abs=1e-12)


def test_fewer_queries_than_objects():
    generator = torch.Generator().manual_seed(3)
    result = HungarianAssigner().assign(*_random_case(generator, 2, 5, 4))
    assert result.query_index.tolist() == [0, 1]
    assert len(set(result.gt_index.tolist())) == 2


def test_empty_ground_truth():
    generator = torch.Generator().manual_seed(4)
    logits, boxes, _, _ = _random_case(generator, 6, 5, 0)
    result = HungarianAssigner().assign(logits, boxes, torch.zeros(0, dtype=torch.int64),
                                        torch.zeros(0, 4, dtype=torch.float64))
    assert result.query_index.shape == result.gt_index.shape == (0,)
    assert result.query_index.dtype == torch.int64
    assert result.query_index.device == logits.device


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_batch_equals_per_image(dtype):
    generator = torch.Generator().manual_seed(5)
    sizes, num_queries, num_classes = [3, 0, 6, 1, 9], 7, 5
    logits = torch.randn(len(sizes), num_queries, num_classes, generator=generator, dtype=dtype)
    boxes = torch.rand(len(sizes), num_queries, 4, generator=generator, dtype=dtype) * 0.5 + 0.1
    labels = [torch.randint(num_classes, (n,), generator=generator) for n in sizes]
    gt_boxes = [torch.rand(n, 4, generator=generator, dtype=dtype) * 0.5 + 0.1 for n in sizes]
    assigner = HungarianAssigner()
    batched = assigner.assign_batch(logits, boxes, labels, gt_boxes)
    assert len(batched) == len(sizes)
    for b, result in enumerate(batched):
        single = assigner.assign(logits[b], boxes[b], labels[b], gt_boxes[b])
        assert torch.equal(result.query_index, single.query_index)
        assert torch.equal(result.gt_index, single.gt_index)
        assert result.num_matched == min(num_queries, sizes[b])


def test_batch_without_any_ground_truth():
    logits = torch.randn(2, 4, 3, dtype=torch.float64)
    boxes = torch.full((2, 4, 4), 0.3, dtype=torch.float64)
    empty_labels = [torch.zeros(0, dtype=torch.int64)] * 2
    empty_boxes = [torch.zeros(0, 4, dtype=torch.float64)] * 2
    results = HungarianAssigner().assign_batch(logits, boxes, empty_labels, empty_boxes)
    assert [r.num_matched for r in results] == [0, 0]


def test_gradients_do_not_flow_and_inputs_stay_untouched():
    generator = torch.Generator().manual_seed(6)
    logits, boxes, labels, gt_boxes = _random_case(generator, 5, 4, 2)
    logits.requires_grad_(True)
    result = HungarianAssigner().assign(logits, boxes, labels, gt_boxes)
    assert not result.query_index.requires_grad
    assert logits.grad is None


def test_non_finite_inputs_and_costs_raise():
    generator = torch.Generator().manual_seed(7)
    logits, boxes, labels, gt_boxes = _random_case(generator, 4, 3, 2)
    boxes[1, 2] = float('nan')
    with pytest.raises(ValueError, match='pred_boxes_cxcywh.*NaN or inf'):
        HungarianAssigner().assign(logits, boxes, labels, gt_boxes)
    # Two identical zero-area boxes: union 0, so GIoU is 0/0.
    point = torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match='cost matrix.*IoUCost'):
        HungarianAssigner().assign(logits[:1], point, labels[:1], point.clone())


def test_batch_rejects_bad_arguments():
    logits = torch.randn(2, 4, 3, dtype=torch.float64)
    boxes = torch.full((2, 4, 4), 0.3, dtype=torch.float64)
    labels = [torch.tensor([0]), torch.tensor([1])]
    gt_boxes = [torch.full((1, 4), 0.3, dtype=torch.float64)] * 2
    assigner = HungarianAssigner()
    with pytest.raises(ValueError, match='B=2'):
        assigner.assign_batch(logits, boxes, labels[:1], gt_boxes)
    with pytest.raises(ValueError, match='image 1'):
        assigner.assign_batch(logits, boxes, labels, [gt_boxes[0], gt_boxes[1][:, :3]])
    with pytest.raises(ValueError, match=r'\(B, Q, C\)'):
        assigner.assign_batch(logits[0], boxes, labels, gt_boxes)
    with pytest.raises(ValueError, match='at least one'):
        HungarianAssigner(match_costs=[])


@pytest.mark.parametrize('variant', VARIANTS)
def test_matches_official_matcher_indices(variant):
    if not (FIXTURES / variant / 'outputs.pt').exists():
        pytest.skip(f'official parity fixtures not found under {FIXTURES}')
    inputs = torch.load(FIXTURES / variant / 'inputs.pt', weights_only=True)
    ref = torch.load(FIXTURES / variant / 'outputs.pt', weights_only=True)
    labels = [t['labels'] for t in inputs['targets']]
    gt_boxes = [t['boxes'].double() for t in inputs['targets']]
    out = ref['float64']
    layers = {'final': out, **{f'aux_{i}': o for i, o in enumerate(out['aux_outputs'])}}
    if 'enc_outputs' in out:
        layers['enc'] = out['enc_outputs']
    assigner = HungarianAssigner()
    for name, layer in layers.items():
        layer_labels = [torch.zeros_like(x) for x in labels] if name == 'enc' else labels
        results = assigner.assign_batch(layer['pred_logits'], layer['pred_boxes'],
                                        layer_labels, gt_boxes)
        for result, (query_index, gt_index) in zip(results, ref['matcher_indices'][name]):
            assert torch.equal(result.query_index, query_index), (variant, name)
            assert torch.equal(result.gt_index, gt_index), (variant, name)
