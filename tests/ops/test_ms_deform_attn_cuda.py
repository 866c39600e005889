"""The CUDA kernels of ms_deform_attn against the reference, the CPU kernel and themselves.

Every test is skipped when CUDA is not available; nothing touches CUDA at import.
Inputs are drawn on the CPU with a seeded generator and then moved, so each case is
the same on every machine.
"""
import pytest
import torch

from mmdeform.ops import extension_available, get_backend, ms_deform_attn, ms_deform_attn_reference
from mmdeform.testing import make_op_inputs

CUDA = torch.cuda.is_available()
DEVICE = 'cuda'  # where make_inputs puts the tensors (one name, to debug the cases elsewhere)
pytestmark = pytest.mark.skipif(not CUDA, reason='CUDA is not available')


def _has_cuda_kernel():
    return CUDA and extension_available() and get_backend(torch.device('cuda')) == 'compiled'


needs_kernel = pytest.mark.skipif(
    CUDA and not _has_cuda_kernel(),
    reason='mmdeform._C has no CUDA kernel (see test_cuda_kernel_is_built)')

forward_op = torch.ops.mmdeform.ms_deform_attn_forward if extension_available() else None
backward_op = torch.ops.mmdeform.ms_deform_attn_backward if extension_available() else None


def make_inputs(shapes, device=None, **kwargs):
    """:func:`mmdeform.testing.make_op_inputs` on ``device`` (default: the GPU)."""
    return make_op_inputs(shapes, device=device or DEVICE, **kwargs)


def grad_output_for(inputs, seed=1):
    """Random (N, Lq, M * D) output gradient in value's dtype and device."""
    value, _, _, locations, _ = inputs
    n, _, m, d = value.shape
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(n, locations.shape[1], m * d, generator=gen, dtype=torch.float64)
    return grad.to(device=value.device, dtype=value.dtype)


def reference_grads(inputs, grad_output):
    """(grad_value, grad_locations, grad_weights) of the reference by autograd."""
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = ms_deform_attn_reference(*leaves)
    return torch.autograd.grad(out, (leaves[0], leaves[3], leaves[4]), grad_output)


def autograd_grads(inputs, grad_output):
    """(grad_value, grad_locations, grad_weights) of ms_deform_attn by autograd."""
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = ms_deform_attn(*leaves)
    return torch.autograd.grad(out, (leaves[0], leaves[3], leaves[4]), grad_output)


GRAD_NAMES = ('grad_value', 'grad_locations', 'grad_weights')

CASES = {
    'three_levels': dict(shapes=[(6, 7), (3, 4), (1, 1)]),
    'L1_P1': dict(shapes=[(5, 9)], p=1),
    'Lq1_odd_hw': dict(shapes=[(7, 3), (5, 5)], lq=1, n=1),
    'N3_M8_P4': dict(shapes=[(4, 4), (2, 2), (1, 3), (3, 1)], n=3, m=8, d=4, p=4),
    'D1': dict(shapes=[(9, 11), (5, 6)], m=1, d=1, lq=13),
    'D3_N5': dict(shapes=[(6, 5), (3, 3)], n=5, d=3),
    'D20': dict(shapes=[(8, 6), (4, 3)], d=20, m=2),
    'D32_zero_weights': dict(shapes=[(8, 8), (4, 4)], d=32, m=4, p=4, zero_weights=True),
    # D / VEC > 32 lanes: each lane makes several rounds over its item.
    'D160_rounds': dict(shapes=[(5, 4), (2, 3)], d=160, m=2, lq=5),
    'mostly_outside': dict(shapes=[(6, 5), (3, 3)], spread=(-3.0, 4.0)),
    # One lane per item and L * P = 32: the shared tile holds a few samples at a
    # time, so an item's samples span several tiles.
    'many_tiles': dict(shapes=[(6, 7), (5, 3), (2, 2), (1, 4)], n=2, m=2, d=1, lq=3000, p=8),
}


def test_cuda_kernel_is_built():
    assert extension_available(), 'mmdeform._C is not importable: build it (make build)'
    assert get_backend(torch.device('cuda')) == 'compiled', (
        'CUDA is available but mmdeform._C was built without the CUDA kernel: rebuild with '
        'nvcc on PATH (or MMDEFORM_WITH_CUDA=1) and `pip install --no-build-isolation -e .`')


@needs_kernel
@pytest.mark.parametrize('case', list(CASES.values()), ids=list(CASES))
def test_float64_matches_reference(case):
    inputs = make_inputs(**case)
    out = forward_op(*inputs)
    torch.testing.assert_close(out, ms_deform_attn_reference(*inputs), rtol=0, atol=1e-10)
    grad_output = grad_output_for(inputs)
    expected = reference_grads(inputs, grad_output)
    for deterministic in (False, True):
        grads = backward_op(*inputs, grad_output, deterministic)
        for name, g, r in zip(GRAD_NAMES, grads, expected):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-9,
                                       msg=f'{name}, deterministic={deterministic}')


@needs_kernel
def test_gradcheck_float64():
    value, shapes, starts, locations, weights = make_inputs(
        [(4, 5), (2, 3)], n=2, m=2, d=3, lq=3, p=2, spread=(0.05, 0.95))
    leaves = [t.requires_grad_() for t in (value, locations, weights)]

    def fn(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize('case', [CASES['three_levels'], CASES['D32_zero_weights'],
                                  CASES['D160_rounds']], ids=['three_levels', 'D32', 'D160'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_cpu_and_cuda_agree(case, dtype):
    cuda_inputs = make_inputs(**case, dtype=dtype)
    cpu_inputs = [t.cpu() for t in cuda_inputs]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0, atol=1e-11)
    torch.testing.assert_close(forward_op(*cuda_inputs).cpu(), forward_op(*cpu_inputs), **tol)
    grad_output = grad_output_for(cuda_inputs)
    cpu_grads = backward_op(*cpu_inputs, grad_output.cpu(), False)
    for deterministic in (False, True):
        grads = backward_op(*cuda_inputs, grad_output, deterministic)
        for name, g, r in zip(GRAD_NAMES, grads, cpu_grads):
            torch.testing.assert_close(g.cpu(), r, **tol, msg=f'{name}, det={deterministic}')


def _assert_close_to(actual, expected, tol, msg):
    """|actual - expected| <= tol * (|expected| + max |expected|), elementwise."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale,
                               msg=msg)


@needs_kernel
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('d', [32, 20])  # vectorized and scalar channel loads
def test_reduced_precision_matches_float32(dtype, d):
    """Half/bfloat16 kernels against float32 on the same (rounded) inputs.

    Accumulation is float32, so the only error left is rounding the results:
    stated tolerance eps(dtype) (|error| <= eps * (|expected| + max |expected|)),
    for the output and all gradients, in both backward modes.
    """
    low = make_inputs([(16, 20), (8, 10), (4, 5)], n=2, m=4, d=d, lq=60, p=4, dtype=dtype)
    high = [t.float() if t.is_floating_point() else t for t in low]
    tol = torch.finfo(dtype).eps
    out = forward_op(*low)
    assert out.dtype == dtype
    _assert_close_to(out, forward_op(*high), tol, 'output')
    grad_output = grad_output_for(low)
    expected = backward_op(*high, grad_output.float(), True)
    for deterministic in (False, True):
        grads = backward_op(*low, grad_output, deterministic)
        for name, g, r in zip(GRAD_NAMES, grads, expected):
            assert g.dtype == dtype
            _assert_close_to(g, r, tol, f'{name}, deterministic={deterministic}')


@needs_kernel
@pytest.mark.parametrize('dtype,tol', [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
def test_reduced_precision_forward_close_to_float32_inputs(dtype, tol):
    """Including the rounding of the inputs (locations too, which moves samples by up
    to 2**-9 (bfloat16) of a level's size): output within tol of its scale."""
    high = make_inputs([(16, 20), (8, 10)], n=2, m=4, d=32, lq=60, p=4, dtype=torch.float32)
    low = [t.to(dtype) if t.is_floating_point() else t for t in high]
    _assert_close_to(ms_deform_attn(*low), ms_deform_attn(*high), tol, 'output')


def _collision_inputs(dtype):
    # Small levels and many queries: every value token is read by many samples,
    # so an atomic scatter would sum in a run-dependent order.
    return make_inputs([(4, 4), (2, 3)], n=2, m=2, d=8, lq=2000, p=4, dtype=dtype,
                       spread=(0.0, 1.0))


@needs_kernel
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_deterministic_mode_is_bitwise_reproducible(dtype):
    inputs = _collision_inputs(dtype)
    grad_output = grad_output_for(inputs)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [autograd_grads(inputs, grad_output) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for later in runs[1:]:
        for name, a, b in zip(GRAD_NAMES, runs[0], later):
            assert torch.equal(a, b), f'{name} differs between runs'
    atomic = backward_op(*inputs, grad_output, False)
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    for name, a, b in zip(GRAD_NAMES, runs[0], atomic):
        _assert_close_to(a, b.to(a.dtype), tol, name)


@needs_kernel
def test_autograd_passes_deterministic_flag():
    """In deterministic mode ms_deform_attn's backward is the sorted path's result."""
    inputs = _collision_inputs(torch.float64)
    grad_output = grad_output_for(inputs)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = autograd_grads(inputs, grad_output)
    finally:
        torch.use_deterministic_algorithms(previous)
    direct = backward_op(*inputs, grad_output, True)
    for name, a, b in zip(GRAD_NAMES, grads, direct):
        assert torch.equal(a, b), name


@needs_kernel
def test_non_contiguous_and_misaligned_inputs():
    value, shapes, starts, locations, weights = make_inputs(
        [(6, 7), (3, 4)], n=3, m=2, d=8, lq=9, p=3, dtype=torch.float32)
    # value: a permuted copy viewed back; locations: a slice of a wider tensor;
    # weights: a transposed view; shapes/starts: strided views.
    value_nc = value.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    loc_wide = torch.zeros(*locations.shape[:-1], 5, device=DEVICE)
    loc_wide[..., 1:3] = locations
    locations_nc = loc_wide[..., 1:3]
    weights_nc = weights.transpose(0, 1).contiguous().transpose(0, 1)
    shapes_nc = torch.stack([shapes, shapes], 1)[:, 0]
    starts_nc = torch.stack([starts, starts], 1)[:, 0]
    # A contiguous value whose data pointer is not 16-byte aligned: scalar loads.
    flat = torch.zeros(value.numel() + 1, device=DEVICE)
    value_misaligned = flat[1:].view_as(value).copy_(value)
    assert not value_nc.is_contiguous() and not locations_nc.is_contiguous()
    expected_out = forward_op(value, shapes, starts, locations, weights)
    grad_output = grad_output_for([value, shapes, starts, locations, weights])
    grad_output_nc = grad_output.transpose(0, 1).contiguous().transpose(0, 1)
    expected = backward_op(value, shapes, starts, locations, weights, grad_output, True)
    for v in (value_nc, value_misaligned):
        args = (v, shapes_nc, starts_nc, locations_nc, weights_nc)
        torch.testing.assert_close(forward_op(*args), expected_out, rtol=1e-6, atol=1e-6)
        for deterministic in (False, True):
            grads = backward_op(*args, grad_output_nc, deterministic)
            for name, g, r in zip(GRAD_NAMES, grads, expected):
                torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=name)


@needs_kernel
def test_runs_on_the_current_stream():
    inputs = make_inputs([(8, 8), (4, 4)], n=2, m=4, d=32, lq=100, p=4, dtype=torch.float32)
    expected = forward_op(*inputs)
    grad_output = grad_output_for(inputs)
    expected_grads = backward_op(*inputs, grad_output, True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = forward_op(*inputs)
        grads = backward_op(*inputs, grad_output, True)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)
    for a, b in zip(grads, expected_grads):
        assert torch.equal(a, b)


@needs_kernel
def test_empty_queries():
    inputs = make_inputs([(4, 4)], n=2, m=2, d=4, lq=0, dtype=torch.float32)
    out = forward_op(*inputs)
    assert out.shape == (2, 0, 8)
    grad_value, grad_locations, grad_weights = backward_op(*inputs, out, False)
    assert torch.equal(grad_value, torch.zeros_like(inputs[0]))
    assert grad_locations.shape == inputs[3].shape and grad_weights.shape == inputs[4].shape


@needs_kernel
def test_bad_inputs_raise_clear_errors():
    value, shapes, starts, locations, weights = make_inputs([(4, 4)], dtype=torch.float32)
    with pytest.raises(RuntimeError, match='device'):
        forward_op(value, shapes.cpu(), starts, locations, weights)
    with pytest.raises(RuntimeError, match='sampling_locations'):
        forward_op(value, shapes, starts, locations[..., :1], weights)
    grad_output = torch.zeros(2, 7, 3, device=DEVICE)
    with pytest.raises(RuntimeError, match='grad_output'):
        backward_op(value, shapes, starts, locations, weights, grad_output, False)


@needs_kernel
def test_opcheck():
    inputs = make_inputs([(5, 6), (3, 2)], n=2, m=2, d=4, lq=5, dtype=torch.float32)
    inputs[0].requires_grad_()
    inputs[3].requires_grad_()
    inputs[4].requires_grad_()
    torch.library.opcheck(forward_op, inputs)
