"""FLOP counting: the deformable op's formula, fake tensors count what real ones do."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmdeform.analysis import count_flops, format_flop_report, ms_deform_attn_flop
from mmdeform.apis import init_detector
from mmdeform.ops import get_backend

pytestmark = [pytest.mark.skipif(get_backend(torch.device('cpu')) != 'compiled',
                                 reason='needs the compiled ms_deform_attn op'),
              pytest.mark.usefixtures('one_thread')]


@pytest.fixture(scope='module')
def model(tiny_config):
    torch.manual_seed(0)
    return init_detector(tiny_config)


def test_op_formula():
    # N=2, Lq=5, M=4, L=3, P=2, D=8: 10 FLOPs per sample and channel
    assert ms_deform_attn_flop((2, 50, 4, 8), (3, 2), (3,), (2, 5, 4, 3, 2, 2),
                               (2, 5, 4, 3, 2), out_shape=(2, 5, 32)) == 10 * 2 * 5 * 4 * 3 * 2 * 8


def test_counts_of_the_tiny_model(model):
    report = count_flops(model, (64, 96), batch_size=2)
    # tiny config: levels C4 (4x6) and C5 (2x3) -> 30 encoder tokens, 10 queries,
    # 1 encoder + 1 decoder layer, M=4 heads of D=8, L=2 levels, P=2 points
    expected_op = 10 * 2 * (30 + 10) * 4 * 2 * 2 * 8
    assert report.by_op['mmdeform.ms_deform_attn_forward'] == expected_op
    assert report.input_shape == (2, 3, 64, 96)
    assert report.params == sum(p.numel() for p in model.parameters())
    assert set(report.by_module) >= {'backbone', 'neck', 'encoder', 'decoder', 'bbox_head'}
    assert sum(report.by_module.values()) == report.total == sum(report.by_op.values())
    assert all(p.requires_grad for p in model.parameters())  # restored
    text = format_flop_report(report, paper_gflops=173.0)
    assert 'paper: 173 GFLOPs' in text and 'mmdeform.ms_deform_attn_forward' in text

    # the same counts with real tensors (the fake-tensor pass changes nothing)
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.mmdeform.ms_deform_attn_forward: ms_deform_attn_flop})
    model.requires_grad_(False)  # FlopCounterMode's module tracker needs this under no_grad
    try:
        with counter, torch.no_grad():
            model(torch.randn(2, 3, 64, 96), None, mode='tensor')
    finally:
        model.requires_grad_(True)
    assert counter.get_total_flops() == report.total
