"""Shared helpers of the CUDA-on-CPU tests: running the emulated kernels and the reference."""
from typing import List, Sequence, Tuple

import torch

from mmdeform.ops import ms_deform_attn_reference
from mmdeform.testing import make_op_inputs

H100_SMS = 132  # multiprocessors of an H100 / H200: small problems take 64-thread blocks
SMALL_SMS = 4   # a small GPU: the same problems keep 128- or 256-thread blocks

# Fields of the launch list the emulated operators return.
VEC, THREADS, BLOCKS, SMEM, TILE, GROUP, ROUNDS = range(7)

CASES = {
    # D = 6: VEC = 1 in float32 (6 % 4 != 0), lane groups of 8 with two idle lanes.
    'D6': dict(shapes=[(6, 7), (3, 4), (1, 1)], d=6),
    'D8': dict(shapes=[(5, 9), (2, 3)], d=8, m=2, p=3),
    # D = 12: three float4 vectors per row, a lane group of 4 with one idle lane.
    'D12': dict(shapes=[(7, 3), (5, 5)], d=12, n=1, lq=9),
    'D32_zero_weights': dict(shapes=[(8, 8), (4, 4)], d=32, m=4, p=4, zero_weights=True),
    # D / VEC > 32: every lane makes several rounds over its item.
    'D160_rounds': dict(shapes=[(5, 4), (2, 3)], d=160, m=2, lq=5),
    'mostly_outside': dict(shapes=[(6, 5), (3, 3)], d=8, spread=(-3.0, 4.0)),
    # L * P = 100 samples per item: two shared-memory tiles with 8-lane groups.
    'two_tiles_D32': dict(shapes=[(6, 5), (3, 3), (2, 2), (1, 3)], d=32, m=2, n=1, lq=4, p=25),
    # One lane per item, L * P = 32: three tiles of 12 samples (float32).
    'three_tiles_D1': dict(shapes=[(6, 7), (5, 3), (2, 2), (1, 4)], d=1, m=2, lq=200, p=8),
}

# An item of Deformable DETR's decoder (8 heads of 32 channels, 4 levels of 4
# points) with 30 of its 300 queries, to keep the emulation quick: on an H100
# the host code shrinks the blocks to 64 threads, as for 300 queries.
DECODER = dict(shapes=[(16, 16), (8, 8), (4, 4), (2, 2)], n=1, m=8, d=32, lq=30, p=4)


def make_inputs(dtype: torch.dtype = torch.float64, coord_dtype: torch.dtype = None,
                **case) -> List[torch.Tensor]:
    """:func:`make_op_inputs` with value in ``dtype`` and the geometry in ``coord_dtype``.

    Returns:
        list[Tensor]: value (N, S, M, D), spatial_shapes (L, 2), level_start_index (L,),
        sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P).
    """
    inputs = make_op_inputs(**case, dtype=dtype)
    if coord_dtype is not None:
        inputs[3] = make_op_inputs(**case, dtype=coord_dtype)[3]
        inputs[4] = make_op_inputs(**case, dtype=coord_dtype)[4]
    return inputs


def grad_output_for(inputs: Sequence[torch.Tensor], seed: int = 1) -> torch.Tensor:
    """Seeded (N, Lq, M * D) output gradient in value's dtype."""
    value, _, _, locations, _ = inputs
    n, _, m, d = value.shape
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, locations.shape[1], m * d, generator=gen, dtype=torch.float64)
    return grad.to(value.dtype)


def reference(inputs: Sequence[torch.Tensor], grad_output: torch.Tensor) -> Tuple[torch.Tensor]:
    """Output (N, Lq, M * D) and (grad_value, grad_locations, grad_weights) of the float64
    reference on the same (rounded) inputs and output gradient."""
    leaves = [t.detach().double().requires_grad_() if t.is_floating_point() else t
              for t in inputs]
    out = ms_deform_attn_reference(*leaves)
    grads = torch.autograd.grad(out, (leaves[0], leaves[3], leaves[4]), grad_output.double())
    return (out.detach(), *grads)


def emulate(ops, inputs, grad_output, sms=H100_SMS, deterministic=False, vec=0):
    """Output, gradients and launches of the emulated kernels.

    Returns:
        tuple: ((out, grad_value, grad_locations, grad_weights), forward launch,
        backward launch), launches as lists (see the field indices above).
    """
    out, forward_launch = ops.forward(*inputs, sms, vec, True)
    *grads, backward_launch = ops.backward(*inputs, grad_output, deterministic, sms, vec, True)
    return (out, *grads), forward_launch, backward_launch


def assert_scaled_close(actual, expected, tol, name):
    """max |actual - expected| <= tol * max(1, max |expected|), NaN nowhere."""
    actual, expected = actual.double(), expected.double()
    assert not actual.isnan().any(), f'{name}: NaN in the emulated result'
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f'{name}: max error {err:.3g} above {tol:.1g} * {scale:.3g}'


NAMES = ('output', 'grad_value', 'grad_locations', 'grad_weights')


def assert_matches(results, expected, tols):
    """Each of output and the three gradients against the reference, tolerances in order."""
    for name, a, e, tol in zip(NAMES, results, expected, tols):
        assert_scaled_close(a, e, tol, name)
