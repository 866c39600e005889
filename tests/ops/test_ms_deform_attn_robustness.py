"""The op on hostile input: overflowing level sizes, NaN / inf, double backward, L = 0.

Every overflow pattern below passed the kernels' old check (a wrapped int64
sum equal to S) and then read outside value; each must now be refused with a
clear error by the compiled forward, the compiled backward and the reference.
The CUDA cases are skipped without a GPU.
"""
import pytest
import torch
from test_ms_deform_attn import make_inputs

from mmdeform.ops import MSDeformAttn, extension_available, ms_deform_attn, ms_deform_attn_reference
from mmdeform.ops.ms_deform_attn import SORT_LIMIT, check_deterministic_backward_size

pytestmark = pytest.mark.skipif(
    not extension_available(), reason='mmdeform._C is not built')
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        'mmdeform::ms_deform_attn_forward', 'CUDA')), reason='no CUDA device or kernel'))]

BIG = 2**62
# (spatial_shapes, level_start_index, S, message): level starts as the old
# check computed them (int64 wrap-around included), so that it accepted them.
OVERFLOW_CASES = {
    'issue example: H*W wraps to S': ([[BIG + 1, 4]], [0], 4, 'sum to more than 2\\^63 - 1'),
    'H*W wraps to 0': ([[2**32, 2**32], [1, 4]], [0, 0], 4, 'sum to more than 2\\^63 - 1'),
    'running sum wraps': ([[BIG, 1], [BIG, 1], [BIG, 1], [BIG, 1], [1, 4]],
                          [0, BIG, -2 * BIG, -BIG, 0], 4, f'sum to {BIG} by level 0'),
    'level larger than S': ([[3, 4], [1, 1]], [0, 12], 5, 'sum to 12 by level 0'),
    'negative sizes': ([[-1, -4]], [0], 4, r'spatial_shapes\[0\] = \(-1, -4\) must be positive'),
    'negative height': ([[-2, -2], [2, 2]], [0, 4], 8, 'must be positive'),
    'zero width': ([[2, 0], [1, 4]], [0, 0], 4, 'must be positive'),
    'start index mismatch': ([[2, 2], [1, 4]], [0, 3], 8, r'level_start_index\[1\] = 3 is '
                             'inconsistent with spatial_shapes'),
    'negative start index': ([[2, 2]], [-4], 4, 'inconsistent with spatial_shapes'),
    'sum short of S': ([[2, 2]], [0], 5, 'spatial_shapes sum to 4'),
}


def hostile_inputs(shapes, starts, num_value, device, dtype=torch.float64):
    levels = len(shapes)
    value = torch.rand(1, num_value, 1, 2, dtype=dtype)
    locations = torch.rand(1, 3, 1, levels, 1, 2, dtype=dtype)
    weights = torch.rand(1, 3, 1, levels, 1, dtype=dtype)
    return tuple(t.to(device) for t in (
        value, torch.tensor(shapes, dtype=torch.int64), torch.tensor(starts), locations,
        weights))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('case', OVERFLOW_CASES.values(), ids=list(OVERFLOW_CASES))
def test_bad_level_sizes_are_refused_everywhere(case, device):
    shapes, starts, num_value, message = case
    inputs = hostile_inputs(shapes, starts, num_value, device)
    grad_output = torch.ones(1, 3, 2, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mmdeform.ms_deform_attn_forward(*inputs)
    for deterministic in (False, True):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.mmdeform.ms_deform_attn_backward(*inputs, grad_output, deterministic)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn_reference(*inputs)
    with pytest.raises(RuntimeError, match=message):
        ms_deform_attn(*inputs)


def _nonfinite_inputs(bad, where, dtype, device='cpu'):
    """Inputs with ``bad`` in the locations or weights of a few samples."""
    value, shapes, starts, locations, weights = make_inputs(
        [(6, 7), (3, 4)], dtype=dtype, spread=(-0.3, 1.3), seed=3)
    value = value - 0.5  # both signs, so inf * sampled has both signs
    target = locations if where == 'locations' else weights
    target.view(-1)[[0, 5, 17, 40]] = bad
    return [t.to(device) for t in (value, shapes, starts, locations, weights)]


def _both(inputs):
    """Output and gradients of the compiled op and of the reference."""
    results = []
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t
                  for t in inputs]
        out = fn(*leaves)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype,
                                  device=out.device).view(out.shape)
        grads = torch.autograd.grad(out, (leaves[0], leaves[3], leaves[4]), grad_out)
        results.append((out, *grads))
    return results


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_nonfinite_locations_propagate_nan_like_the_reference(bad, dtype, device):
    (out, g_value, g_loc, g_weight), (ref, r_value, r_loc, r_weight) = _both(
        _nonfinite_inputs(bad, 'locations', dtype, device))
    assert out.isnan().any()
    torch.testing.assert_close(out, ref, equal_nan=True)  # same NaN rows, same values elsewhere
    torch.testing.assert_close(g_weight, r_weight, equal_nan=True)
    torch.testing.assert_close(g_value, r_value)  # such samples scatter nothing
    # grid_sample's location gradient is NaN in y only (0 in x); ours in both
    assert (g_loc.isnan() | ~r_loc.isnan()).all()
    finite = ~g_loc.isnan()
    torch.testing.assert_close(g_loc[finite], r_loc[finite])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('bad', [float('inf'), -float('inf'), float('nan')])
def test_nonfinite_weights_match_the_reference(bad, device):
    (out, g_value, g_loc, g_weight), (ref, r_value, r_loc, r_weight) = _both(
        _nonfinite_inputs(bad, 'weights', torch.float64, device))
    assert not out.isfinite().all() and out.isfinite().any()
    # same inf signs and NaN positions (a weight on a sample that reads zeros gives NaN)
    torch.testing.assert_close(out, ref, equal_nan=True)
    torch.testing.assert_close(g_weight, r_weight, equal_nan=True)
    torch.testing.assert_close(g_value, r_value, equal_nan=True)
    # the location gradients are non-finite in the same places (inf vs NaN may differ)
    assert torch.equal(g_loc.isfinite(), r_loc.isfinite())
    torch.testing.assert_close(g_loc[g_loc.isfinite()], r_loc[r_loc.isfinite()])


@pytest.mark.parametrize('device', DEVICES)
def test_nan_query_gives_nan_out_of_the_module(device):
    torch.manual_seed(0)
    layer = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, num_points=2).to(device)
    shapes = torch.tensor([[4, 5], [2, 3]], device=device)
    starts = torch.tensor([0, 20], device=device)
    query = torch.randn(2, 6, 16, device=device)
    value = torch.randn(2, 26, 16, device=device)
    reference_points = torch.rand(2, 6, 2, 2, device=device)
    query[1, 4] = float('nan')
    out = layer(query, reference_points, value, shapes, starts)
    assert out[1, 4].isnan().all()
    out[1, 4] = 0
    assert out.isfinite().all()  # the other queries are unaffected


def test_double_backward_raises_a_clear_error():
    value, shapes, starts, locations, weights = make_inputs(
        [(3, 4), (2, 2)], n=1, m=2, d=3, lq=2, spread=(0.1, 0.9), requires_grad=True)

    def op(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w)

    with pytest.raises(RuntimeError, match='second-order gradients .* not implemented'):
        torch.autograd.gradgradcheck(op, (value, locations, weights))
    # first-order gradients with create_graph=True are still right
    grads = torch.autograd.grad(op(value, locations, weights).sum(), (value, locations, weights),
                                create_graph=True)
    expected = torch.autograd.grad(ms_deform_attn_reference(
        value, shapes, starts, locations, weights).sum(), (value, locations, weights))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    with pytest.raises(RuntimeError, match='ms_deform_attn_reference'):
        grads[1].sum().backward()
    # the reference itself supports second order (the suggested alternative)
    assert torch.autograd.gradgradcheck(
        lambda v, loc, w: ms_deform_attn_reference(v, shapes, starts, loc, w),
        (value, locations, weights))


def test_no_levels_give_zeros_in_the_kernel_and_the_reference():
    value = torch.rand(2, 0, 3, 4, dtype=torch.float64, requires_grad=True)
    shapes = torch.zeros(0, 2, dtype=torch.int64)
    starts = torch.zeros(0, dtype=torch.int64)
    locations = torch.rand(2, 5, 3, 0, 2, 2, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 5, 3, 0, 2, dtype=torch.float64, requires_grad=True)
    outs = [fn(value, shapes, starts, locations, weights)
            for fn in (ms_deform_attn, ms_deform_attn_reference)]
    for out in outs:
        assert out.shape == (2, 5, 12) and out.abs().max() == 0
        grads = torch.autograd.grad(out.sum(), (value, locations, weights))
        assert [g.shape for g in grads] == [value.shape, locations.shape, weights.shape]
    with pytest.raises(ValueError, match='spatial_shapes sum to 0'):
        ms_deform_attn_reference(torch.rand(2, 1, 3, 4), shapes, starts, locations.float(),
                                 weights.float())


def test_deterministic_backward_size_is_checked_before_the_sort():
    # meta tensors: only the shapes matter
    fits = torch.empty(2, 21000, 8, 4, 4, 2, device='meta')  # 21.5M entries
    check_deterministic_backward_size(fits)
    n, lq, m, lv, p = 4, 2**21, 8, 4, 4  # 4 * N * Lq * M * L * P = 2^34
    too_big = torch.empty(n, lq, m, lv, p, 2, device='meta')
    with pytest.raises(RuntimeError) as error:
        check_deterministic_backward_size(too_big)
    message = str(error.value)
    assert str(4 * n * lq * m * lv * p) in message and str(SORT_LIMIT) in message
    assert 'use_deterministic_algorithms' in message and 'smaller batch' in message
    at_limit = torch.empty(1, SORT_LIMIT // 4, 1, 1, 1, 2, device='meta')
    check_deterministic_backward_size(at_limit)  # 2^31 - 4 entries: allowed


def test_fake_backward_returns_contiguous_gradients_like_the_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode
    value, shapes, starts, locations, weights = make_inputs([(4, 5), (2, 3)], dtype=torch.float32)
    strided = (value.transpose(0, 2).contiguous().transpose(0, 2), shapes, starts,
               locations.permute(1, 0, 2, 3, 4, 5).contiguous().permute(1, 0, 2, 3, 4, 5),
               weights.transpose(1, 4).contiguous().transpose(1, 4))
    assert not any(t.is_contiguous() for t in (strided[0], strided[3], strided[4]))
    grad_out = torch.rand(2, 7, 15)
    real = torch.ops.mmdeform.ms_deform_attn_backward(*strided, grad_out, False)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_inputs = [mode.from_tensor(t) for t in (*strided, grad_out)]
        fake = torch.ops.mmdeform.ms_deform_attn_backward(*fake_inputs, False)
    for r, f in zip(real, fake):
        assert r.is_contiguous() and f.is_contiguous()
        assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype)
