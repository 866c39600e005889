"""The emulated CUDA kernels at the edges: level borders, NaN / inf, the deterministic
backward, hostile level sizes, and a lane that never reaches a barrier."""
import time

import pytest
import torch
from emu_cases import (
    CASES,
    H100_SMS,
    SMALL_SMS,
    assert_matches,
    emulate,
    grad_output_for,
    make_inputs,
    reference,
)

BIG = 2**62


def _border_inputs(dtype):
    """Every pair of x, y on or next to a level's borders: the pixel centres 0.5 / W and
    1 - 0.5 / W, the edges 0 and 1, and -0.5 / W, 1 + 0.5 / W where the outer corner
    weights reach exactly zero. Shapes: Lq = 49 queries, one head, two levels, P = 1."""
    shapes = [(4, 5), (2, 3)]
    value, spatial_shapes, starts, _, weights = make_inputs(
        dtype, shapes=shapes, n=1, m=1, d=8, lq=49, p=1)
    locations = torch.empty(1, 49, 1, 2, 1, 2, dtype=torch.float64)
    for level, (h, w) in enumerate(shapes):
        xs = torch.tensor([0, 1, 0.5 / w, 1 - 0.5 / w, -0.5 / w, 1 + 0.5 / w, 0.5])
        ys = torch.tensor([0, 1, 0.5 / h, 1 - 0.5 / h, -0.5 / h, 1 + 0.5 / h, 0.5])
        grid = torch.stack(torch.meshgrid(xs, ys, indexing='ij'), -1).reshape(49, 2)
        locations[0, :, 0, level, 0] = grid
    return [value, spatial_shapes, starts, locations.to(dtype), weights]


@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_locations_on_level_borders(sm90, dtype, tol):
    """Output, grad_value and grad_weights as the reference; grad_locations, whose bilinear
    kink at integer pixel coordinates the reference's autograd resolves to the other side,
    as the CPU kernel."""
    inputs = _border_inputs(dtype)
    grad_output = grad_output_for(inputs)
    results, _, _ = emulate(sm90, inputs, grad_output)
    expected = list(reference(inputs, grad_output))
    expected[2] = torch.ops.mmdeform.ms_deform_attn_backward(*inputs, grad_output, False)[1]
    assert_matches(results, expected, (tol,) * 4)


def _nonfinite_inputs(bad, where):
    value, shapes, starts, locations, weights = make_inputs(
        torch.float64, shapes=[(6, 7), (3, 4)], d=8, spread=(-0.3, 1.3), seed=3)
    value = value - 0.5  # both signs, so inf * sampled has both signs
    target = locations if where == 'locations' else weights
    target.view(-1)[[0, 5, 17, 40]] = bad
    return [value, shapes, starts, locations, weights]


@pytest.mark.parametrize('where', ['locations', 'weights'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_nonfinite_inputs_give_the_cpu_kernels_nan_and_inf(sm90, bad, where):
    inputs = _nonfinite_inputs(bad, where)
    grad_output = torch.linspace(-1, 1, 2 * 7 * 3 * 8, dtype=torch.float64).view(2, 7, 24)
    cpu_out = torch.ops.mmdeform.ms_deform_attn_forward(*inputs)
    cpu_grads = torch.ops.mmdeform.ms_deform_attn_backward(*inputs, grad_output, False)
    assert not cpu_out.isfinite().all()
    for deterministic in (False, True):
        (out, *grads), _, _ = emulate(sm90, inputs, grad_output, deterministic=deterministic)
        torch.testing.assert_close(out, cpu_out, equal_nan=True, rtol=0, atol=1e-12)
        for name, g, c in zip(('value', 'locations', 'weights'), grads, cpu_grads):
            torch.testing.assert_close(g, c, equal_nan=True, rtol=0, atol=1e-12,
                                       msg=f'grad_{name}, deterministic={deterministic}')


@pytest.mark.parametrize('sms', [H100_SMS, SMALL_SMS])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_deterministic_backward_is_bitwise_reproducible(sm90, dtype, sms):
    inputs = make_inputs(dtype, coord_dtype=torch.float32, **CASES['D32_zero_weights'])
    grad_output = grad_output_for(inputs)
    first, _, _ = emulate(sm90, inputs, grad_output, sms=sms, deterministic=True)
    second, _, _ = emulate(sm90, inputs, grad_output, sms=sms, deterministic=True)
    atomic, _, _ = emulate(sm90, inputs, grad_output, sms=sms)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # the sample gradients come from the same kernel in both modes
    assert torch.equal(first[2], atomic[2]) and torch.equal(first[3], atomic[3])
    # grad_value: the same sums in another order (float32 accumulators)
    torch.testing.assert_close(first[1].float(), atomic[1].float(), rtol=1e-5, atol=1e-6)


HOSTILE_LEVELS = {  # (spatial_shapes, level_start_index, S), see test_ms_deform_attn_robustness
    'H*W wraps to S': ([[BIG + 1, 4]], [0], 4),
    'running sum wraps': ([[BIG, 1], [BIG, 1], [BIG, 1], [BIG, 1], [1, 4]],
                          [0, BIG, -2 * BIG, -BIG, 0], 4),
    'negative sizes': ([[-1, -4]], [0], 4),
    'start index mismatch': ([[2, 2], [1, 4]], [0, 3], 8),
    'level larger than S': ([[3, 4], [1, 1]], [0, 12], 5),
}


def _hostile_inputs(shapes, starts, num_value):
    gen = torch.Generator().manual_seed(0)
    levels = len(shapes)
    return [torch.rand(1, num_value, 1, 2, generator=gen, dtype=torch.float64),
            torch.tensor(shapes, dtype=torch.int64), torch.tensor(starts),
            torch.rand(1, 3, 1, levels, 1, 2, generator=gen, dtype=torch.float64),
            torch.rand(1, 3, 1, levels, 1, generator=gen, dtype=torch.float64)]


def _message(call):
    with pytest.raises(RuntimeError) as info:
        call()
    return str(info.value).splitlines()[0]


@pytest.mark.parametrize('case', HOSTILE_LEVELS.values(), ids=list(HOSTILE_LEVELS))
def test_hostile_level_sizes_get_the_cpu_paths_error(sm90, case):
    inputs = _hostile_inputs(*case)
    grad_output = torch.ones(1, 3, 2, dtype=torch.float64)
    expected = _message(lambda: torch.ops.mmdeform.ms_deform_attn_forward(*inputs))
    assert expected.startswith('ms_deform_attn: ')
    assert _message(lambda: sm90.forward(*inputs, H100_SMS, 0, True)) == expected
    for deterministic in (False, True):
        assert _message(lambda d=deterministic: sm90.backward(
            *inputs, grad_output, d, H100_SMS, 0, True)) == expected


@pytest.mark.parametrize('case', HOSTILE_LEVELS.values(), ids=list(HOSTILE_LEVELS))
def test_unchecked_hostile_levels_stay_in_bounds(sm90, case):
    """During CUDA graph capture the host skips the level check: the kernels must then
    read nothing from an insane level (wrong numbers at worst, no stray access)."""
    inputs = _hostile_inputs(*case)
    grad_output = torch.ones(1, 3, 2, dtype=torch.float64)
    out, _ = sm90.forward(*inputs, H100_SMS, 0, False)
    assert out.isfinite().all()
    for deterministic in (False, True):
        grads = sm90.backward(*inputs, grad_output, deterministic, H100_SMS, 0, False)[:3]
        assert all(g.isfinite().all() for g in grads)


def test_a_lane_that_skips_a_barrier_fails_instead_of_hanging(sm90):
    previous = sm90.set_barrier_timeout(0.5)
    try:
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match=r'lane \d+ of block 0 waited more than 0.5'):
            sm90.stuck(64)
        assert time.perf_counter() - start < 30
    finally:
        sm90.set_barrier_timeout(previous)
