"""The dtype policy of ms_deform_attn and MSDeformAttn under autocast.

Under autocast the op reads value in the autocast dtype and locations /
weights in float32, whatever dtypes they arrive in; outside autocast
mismatched dtypes are refused. The CUDA cases are skipped without a GPU.
"""
import itertools
from unittest import mock

import pytest
import torch
from mmengine.config import Config
from test_ms_deform_attn import make_inputs

import mmdeform.ops.ms_deform_attn_module as module_file
from mmdeform.ops import MSDeformAttn, extension_available, ms_deform_attn, ms_deform_attn_reference
from mmdeform.registry import MODELS
from mmdeform.testing import make_batch

pytestmark = pytest.mark.skipif(
    not extension_available(), reason='mmdeform._C is not built')

FLOATS = (torch.float32, torch.bfloat16, torch.float16)
LOW = (torch.bfloat16, torch.float16)
# largest error / largest |expected| allowed for a result stored in each dtype
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _cuda_ready():
    return (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        'mmdeform::ms_deform_attn_forward', 'CUDA'))


DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not _cuda_ready(), reason='no CUDA device or kernel'))]


def _assert_near(actual, expected, dtype, msg=''):
    """Finite, and within TOL[dtype] of ``expected`` relative to its largest entry."""
    assert actual.isfinite().all(), msg
    error = (actual.double() - expected.double()).abs().max()
    assert error <= TOL[dtype] * expected.abs().max() + 1e-6, f'{msg}: error {error}'


def _policy_case(value_dtype, loc_dtype, weight_dtype, device, seed=0):
    """Float64 inputs, the same cast to the given dtypes, and a grad_output."""
    exact = make_inputs([(6, 7), (3, 4), (2, 2)], m=2, d=8, lq=9, seed=seed)
    value, shapes, starts, locations, weights = [t.to(device) for t in exact]
    given = [value.to(value_dtype), locations.to(loc_dtype), weights.to(weight_dtype)]
    return given, shapes, starts


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('autocast_dtype', LOW)
@pytest.mark.parametrize('dtypes', list(itertools.product(FLOATS, repeat=3)),
                         ids=lambda d: '-'.join(str(t)[6:] for t in d))
def test_every_dtype_combination_under_autocast(dtypes, autocast_dtype, device):
    given, shapes, starts = _policy_case(*dtypes, device)
    leaves = [t.detach().requires_grad_() for t in given]
    with torch.autocast(device, dtype=autocast_dtype):
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.dtype == autocast_dtype
    grad_out = torch.rand(out.shape, device=device).to(autocast_dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)
    # ground truth: float64 on what the policy reads (value rounded to the autocast dtype)
    exact = [given[0].to(autocast_dtype).double(), given[1].double(), given[2].double()]
    exact = [t.requires_grad_() for t in exact]
    expected = ms_deform_attn_reference(exact[0], shapes, starts, exact[1], exact[2])
    expected_grads = torch.autograd.grad(expected, exact, grad_out.double())
    _assert_near(out, expected, autocast_dtype, 'output')
    for name, grad, leaf, exp in zip(('value', 'locations', 'weights'), grads, leaves,
                                     expected_grads):
        assert grad.dtype == leaf.dtype, name  # gradients come back in the input's dtype
        # value's gradient passes through the autocast dtype, the others are float32
        # until stored in the input's dtype: the coarser of the two roundings
        coarsest = max((autocast_dtype if name == 'value' else torch.float32, leaf.dtype),
                       key=TOL.get)
        _assert_near(grad, exp, coarsest, name)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('low', LOW)
def test_kernel_and_reference_agree_on_the_autocast_dtypes(low, device):
    given, shapes, starts = _policy_case(low, torch.float32, torch.float32, device, seed=2)
    out = torch.ops.mmdeform.ms_deform_attn_forward(given[0], shapes, starts, *given[1:])
    ref = ms_deform_attn_reference(given[0], shapes, starts, *given[1:])
    assert out.dtype == ref.dtype == low
    # both interpolate in float32 from the same inputs: at most one rounding apart
    torch.testing.assert_close(out, ref, rtol=TOL[low] / 4, atol=1e-3)


def test_outside_autocast_mismatched_dtypes_keep_the_clear_error():
    given, shapes, starts = _policy_case(torch.bfloat16, torch.float32, torch.float32, 'cpu')
    with pytest.raises(TypeError, match='sampling_locations has dtype torch.float32 but value '
                       'has torch.bfloat16; they must match .under torch.autocast'):
        ms_deform_attn(given[0], shapes, starts, given[1], given[2])
    with pytest.raises(RuntimeError, match='float32 when value is float16 / bfloat16'):
        torch.ops.mmdeform.ms_deform_attn_forward(  # float64 value: float32 geometry refused
            given[0].double(), shapes, starts, given[1], given[2])


def test_float64_is_left_alone_under_autocast():
    value, shapes, starts, locations, weights = make_inputs([(5, 4)])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, starts, locations,
                                                             weights))


def _layer_inputs(device):
    gen = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[6, 8], [3, 4]], device=device)
    starts = torch.tensor([0, 48], device=device)
    query = torch.randn(2, 10, 32, generator=gen).to(device)
    value = torch.randn(2, 60, 32, generator=gen).to(device)
    reference_points = torch.rand(2, 10, 2, 2, generator=gen).to(device)
    return query, reference_points, value, shapes, starts


def _spy_dtypes():
    """Patches the module's op to record the dtypes it is called with."""
    seen = []

    def spy(value, shapes, starts, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype))
        return ms_deform_attn(value, shapes, starts, locations, weights)
    return seen, mock.patch.object(module_file, 'ms_deform_attn', spy)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('low', LOW)
def test_module_under_autocast(low, device):
    torch.manual_seed(0)
    layer = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3).to(device)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.2)
    torch.nn.init.normal_(layer.attention_weights.weight, std=0.2)
    inputs = _layer_inputs(device)
    out32 = layer(*inputs)
    grads32 = torch.autograd.grad(out32.pow(2).sum(), list(layer.parameters()))
    seen, patch = _spy_dtypes()
    with patch, torch.autocast(device, dtype=low):
        out = layer(*inputs)
    assert seen == [(low, torch.float32, torch.float32)]  # the policy's dtypes reach the op
    assert out.dtype == low
    _assert_near(out, out32, low, 'output')
    grads = torch.autograd.grad(out.float().pow(2).sum(), list(layer.parameters()))
    for (name, param), grad, grad32 in zip(layer.named_parameters(), grads, grads32):
        assert grad.dtype == param.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), grad32.flatten(), dim=0)
        assert grad.isfinite().all() and cosine > 0.99, (name, cosine)


def test_torch_compile_under_autocast():
    torch._dynamo.reset()
    given, shapes, starts = _policy_case(torch.float32, torch.float32, torch.float32, 'cpu')
    leaves = [t.detach().requires_grad_() for t in given]

    def fn(value, locations, weights):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return ms_deform_attn(value * 2, shapes, starts, locations, weights.softmax(-1))

    compiled = torch.compile(fn, fullgraph=True)
    out, expected = compiled(*leaves), fn(*leaves)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.float().sum(), leaves)
    expected_grads = torch.autograd.grad(expected.float().sum(), leaves)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_torch_export_of_the_autocast_dtypes():
    given, shapes, starts = _policy_case(torch.bfloat16, torch.float32, torch.float32, 'cpu')

    class Block(torch.nn.Module):
        def forward(self, value, locations, weights):
            return torch.ops.mmdeform.ms_deform_attn_forward(value, shapes, starts, locations,
                                                             weights)

    program = torch.export.export(Block(), tuple(given))
    targets = [str(node.target) for node in program.graph.nodes]
    assert 'mmdeform.ms_deform_attn_forward.default' in targets
    out = program.module()(*given)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, Block()(*given))


def test_opcheck_with_float32_geometry():
    given, shapes, starts = _policy_case(torch.bfloat16, torch.float32, torch.float32, 'cpu')
    leaves = [t.detach().requires_grad_() for t in given]
    torch.library.opcheck(torch.ops.mmdeform.ms_deform_attn_forward.default,
                          (leaves[0], shapes, starts, leaves[1], leaves[2]))


def _detector_gradients(model, batch, autocast_dtype=None, device='cpu'):
    """Parameter gradients of one loss step (float32 parameters)."""
    model.zero_grad()
    data = model.data_preprocessor(batch, True)
    with torch.autocast(device, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        losses = model(**data, mode='loss')
    total = sum(v.float() for k, v in losses.items() if 'loss' in k)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                            if p.grad is not None}


@pytest.mark.parametrize('device, low', [('cpu', torch.bfloat16), pytest.param(
    'cuda', torch.float16, marks=pytest.mark.skipif(not _cuda_ready(), reason='no CUDA'))])
def test_tiny_detector_training_step_under_autocast(tiny_config, device, low):
    """Float32 geometry and low-precision value meet in the op, as under CUDA autocast."""
    cfg = Config.fromfile(tiny_config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device)
    batch = make_batch([(64, 64), (48, 56)], [2, 3], num_classes=4)
    loss32, grads32 = _detector_gradients(model, batch, device=device)
    seen, patch = _spy_dtypes()
    with patch:
        loss, grads = _detector_gradients(model, batch, low, device)
    assert seen and set(seen) == {(low, torch.float32, torch.float32)}
    assert loss.isfinite() and abs(float(loss - loss32)) < 0.01 * float(loss32)
    assert grads.keys() == grads32.keys()
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    assert flat.isfinite().all()
    cosine = torch.nn.functional.cosine_similarity(flat, flat32, dim=0)
    assert cosine > 0.995, cosine  # measured 0.9999 (CPU, bfloat16)
    assert abs(float(flat.norm() / flat32.norm()) - 1) < 0.03
    # the attention layers' own parameters too, not only the backbone's
    for name in (n for n in grads if 'sampling_offsets' in n or 'value_proj' in n):
        cos = torch.nn.functional.cosine_similarity(grads[name].flatten(),
                                                    grads32[name].flatten(), dim=0)
        assert cos > 0.99, (name, cos)


def test_policy_error_is_the_value_rounding_not_the_geometry():
    """The precision tool's measurement on small maps: keeping the geometry in
    float32 leaves only value's rounding; casting it too is far worse."""
    from mmdeform.analysis.op_precision import make_encoder_inputs, measure_policies
    inputs = make_encoder_inputs(levels=((40, 54), (20, 27)), num_query=200, heads=2)
    report = measure_policies(inputs)
    policy = report['autocast bfloat16 (policy: value bf16, geometry f32)']
    cast_all = report['all bfloat16 (cast everything)']
    assert policy['location_px'] < 1e-4 and cast_all['location_px'] > 0.05
    for key in ('out', 'grad_value', 'grad_locations', 'grad_weights'):
        rms_error = policy[key][0]
        assert rms_error < 2**-8, key  # bfloat16's relative rounding of value
        assert cast_all[key][0] > 5 * rms_error, key
    assert report['float32']['out'][0] < 1e-5
