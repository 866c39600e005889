"""The compiled CPU op against the pure-PyTorch reference."""
import pytest
import torch

from mmdeform.ops import extension_available, get_backend, ms_deform_attn, ms_deform_attn_reference
from mmdeform.testing import make_op_inputs

pytestmark = pytest.mark.skipif(
    not extension_available(), reason='mmdeform._C is not built')


def make_inputs(shapes, **kwargs):
    """:func:`mmdeform.testing.make_op_inputs` as a tuple (CPU)."""
    return tuple(make_op_inputs(shapes, **kwargs))


CASES = [
    dict(shapes=[(6, 7), (3, 4), (1, 1)]),
    dict(shapes=[(5, 9)], p=1),                      # L=1, P=1
    dict(shapes=[(7, 3), (5, 5)], lq=1, n=1),        # Lq=1, odd H/W
    dict(shapes=[(4, 4), (2, 2), (1, 3), (3, 1)], n=3, m=8, d=4, p=4),
    dict(shapes=[(9, 11), (5, 6)], m=1, d=1, lq=13),
    dict(shapes=[(6, 5), (3, 3)], spread=(-3.0, 4.0)),  # mostly outside the maps
]


def test_backend_is_compiled_on_cpu():
    assert get_backend(torch.device('cpu')) == 'compiled'


@pytest.mark.parametrize('case', CASES)
def test_forward_backward_match_reference_float64(case):
    inputs = make_inputs(**case, requires_grad=True)
    out = ms_deform_attn(*inputs)
    ref = ms_deform_attn_reference(*inputs)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad_out = torch.rand_like(out)
    differentiable = (inputs[0], inputs[3], inputs[4])
    grads = torch.autograd.grad(out, differentiable, grad_out)
    ref_grads = torch.autograd.grad(ref, differentiable, grad_out)
    for name, g, r in zip(('value', 'locations', 'weights'), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10, msg=name)


def test_float32_matches_reference():
    inputs = make_inputs([(16, 20), (8, 10), (4, 5)], n=2, m=4, d=16, lq=50, p=4,
                         dtype=torch.float32, requires_grad=True)
    out = ms_deform_attn(*inputs)
    ref = ms_deform_attn_reference(*inputs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.rand_like(out)
    grads = torch.autograd.grad(out, (inputs[0], inputs[3], inputs[4]), grad_out)
    ref_grads = torch.autograd.grad(ref, (inputs[0], inputs[3], inputs[4]), grad_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


def test_bfloat16_close_to_float32():
    inputs = make_inputs([(8, 8), (4, 4)], dtype=torch.float32, requires_grad=True)
    half = [t.detach().bfloat16().requires_grad_() if t.is_floating_point() else t
            for t in inputs]
    out32, out16 = ms_deform_attn(*inputs), ms_deform_attn(*half)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=2e-2, atol=2e-2)
    out16.float().sum().backward()
    out32.sum().backward()
    torch.testing.assert_close(half[0].grad.float(), inputs[0].grad, rtol=2e-2, atol=3e-2)


def test_zero_weights_give_zero_output_and_value_grad():
    value, shapes, starts, locations, weights = make_inputs([(5, 6), (2, 3)], requires_grad=True)
    zero = torch.zeros_like(weights, requires_grad=True)
    out = ms_deform_attn(value, shapes, starts, locations, zero)
    assert out.abs().max() == 0
    out.sum().backward()
    assert value.grad.abs().max() == 0
    assert locations.grad.abs().max() == 0
    assert zero.grad.abs().max() > 0  # the samples still decide the weights' gradient


def test_locations_far_outside_read_zeros():
    value, shapes, starts, locations, weights = make_inputs([(4, 4)])
    out = ms_deform_attn(value, shapes, starts, locations.clamp(min=5.0), weights)
    assert out.abs().max() == 0


def test_sample_at_pixel_centre_reads_that_pixel():
    shapes = torch.tensor([[3, 4]])
    starts = torch.tensor([0])
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)
    # pixel (row 1, col 2) has its centre at ((2 + 0.5) / 4, (1 + 0.5) / 3)
    loc = torch.tensor([2.5 / 4, 1.5 / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, starts, loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == pytest.approx(6.0, abs=1e-12)


def test_gradcheck_all_inputs():
    value, shapes, starts, locations, weights = make_inputs(
        [(3, 4), (2, 2)], n=2, m=2, d=3, lq=3, p=2, spread=(0.05, 0.95), requires_grad=True)

    def fn(v, loc, w):
        return ms_deform_attn(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(fn, (value, locations, weights), eps=1e-6, atol=1e-7)


def test_backward_is_bitwise_deterministic():
    inputs = make_inputs([(20, 24), (10, 12), (5, 6)], n=2, m=4, d=8, lq=300, p=4,
                         dtype=torch.float32, requires_grad=True)
    grad_out = torch.rand(2, 300, 32)
    runs = []
    for _ in range(3):
        out = ms_deform_attn(*inputs)
        runs.append(torch.autograd.grad(out, (inputs[0], inputs[3], inputs[4]), grad_out))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = make_inputs([(6, 5), (3, 2)])
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)
    locations_t = locations.transpose(1, 2).contiguous().transpose(1, 2)
    weights_t = weights.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (value_t.is_contiguous() or locations_t.is_contiguous()
                or weights_t.is_contiguous())
    out = ms_deform_attn(value_t, shapes, starts, locations_t, weights_t)
    torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, starts, locations,
                                                             weights), rtol=0, atol=1e-12)


@pytest.mark.parametrize('fn', [ms_deform_attn, ms_deform_attn_reference])
def test_bad_inputs_raise_clear_errors(fn):
    value, shapes, starts, locations, weights = make_inputs([(4, 5), (2, 3)])
    with pytest.raises(ValueError, match='sampling_locations must be'):
        fn(value, shapes, starts, locations[..., :1], weights)
    with pytest.raises(ValueError, match='attention_weights must be'):
        fn(value, shapes, starts, locations, weights[..., :1])
    with pytest.raises(ValueError, match='value must be'):
        fn(value[0], shapes, starts, locations, weights)
    with pytest.raises(TypeError, match='attention_weights has dtype'):
        fn(value, shapes, starts, locations, weights.float())
    with pytest.raises(TypeError, match='spatial_shapes must be int64'):
        fn(value, shapes.int(), starts, locations, weights)
    with pytest.raises(ValueError, match='level_start_index must be'):
        fn(value, shapes, starts[:1], locations, weights)
    bad_starts = torch.tensor([0, 19])
    with pytest.raises((ValueError, RuntimeError), match='inconsistent with spatial_shapes'):
        fn(value, shapes, bad_starts, locations, weights)
    with pytest.raises((ValueError, RuntimeError), match='spatial_shapes sum to'):
        fn(value[:, :-1], shapes, starts, locations, weights)


class _Block(torch.nn.Module):
    """A small module whose forward uses the op between two linear layers."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 6)

    def forward(self, value, shapes, starts, locations, weights):
        n, s, m, d = value.shape
        value = self.proj(value.reshape(n, s, m * d)).view(n, s, m, d)
        return ms_deform_attn(value, shapes, starts, locations, weights.softmax(-1)) * 2


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    block = _Block()
    inputs = make_inputs([(5, 6), (3, 3)], m=2, d=3, dtype=torch.float32, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(*inputs)
    expected = block(*inputs)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (inputs[0], inputs[3]))
    expected_grads = torch.autograd.grad(expected.sum(), (inputs[0], inputs[3]))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_torch_export_keeps_the_operator():
    block = _Block().eval()
    inputs = make_inputs([(5, 6), (3, 3)], m=2, d=3, dtype=torch.float32)
    program = torch.export.export(block, inputs)
    targets = [str(node.target) for node in program.graph.nodes]
    assert 'mmdeform.ms_deform_attn_forward.default' in targets
    torch.testing.assert_close(program.module()(*inputs), block(*inputs))


FALLBACK_SCRIPT = r'''
import sys, importlib.abc, logging

class BlockExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == 'mmdeform._C':
            raise ImportError('blocked for the test')
        return None

sys.meta_path.insert(0, BlockExtension())
import torch
from mmdeform.ops import get_backend, ms_deform_attn, ms_deform_attn_reference
assert get_backend(torch.device('cpu')) == 'reference'
shapes = torch.tensor([[3, 4]]); starts = torch.tensor([0])
value = torch.rand(1, 12, 2, 4); loc = torch.rand(1, 5, 2, 1, 2, 2); w = torch.rand(1, 5, 2, 1, 2)
out = ms_deform_attn(value, shapes, starts, loc, w)
out = ms_deform_attn(value, shapes, starts, loc, w)
assert torch.equal(out, ms_deform_attn_reference(value, shapes, starts, loc, w))
print('FALLBACK-OK')
'''


def test_missing_extension_falls_back_with_one_build_hint():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, '-c', FALLBACK_SCRIPT], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert 'FALLBACK-OK' in result.stdout
    log = result.stdout + result.stderr
    assert log.count('pure-PyTorch reference') == 1  # warned once, not per call
    assert 'pip install --no-build-isolation -e .' in log
