"""SameLevelDeformAttn / PerLevelDeformAttn and the swappable layer attention."""
import pytest
import torch
from torch import nn

from mmdeform.models.layers import (
    FFN,
    DeformableDecoderLayer,
    DeformableEncoderLayer,
    PerLevelDeformAttn,
    SameLevelDeformAttn,
)
from mmdeform.ops import MSDeformAttn, ms_deform_attn_reference
from mmdeform.registry import MODELS

C, M, P = 16, 4, 3
SHAPES = torch.tensor([[5, 7], [3, 4]])  # odd sizes
STARTS = torch.tensor([0, 35])
S = 47


def make_attn(attn_type, num_levels=2, seed=0):
    """Float64 attention with random offset/weight projections (the paper's
    init zeroes them, which would make every query sample the same way)."""
    torch.manual_seed(seed)
    attn = MODELS.build(dict(type=attn_type, embed_dims=C, num_heads=M, num_levels=num_levels,
                             num_points=P)).double()
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
        attn.attention_weights.weight.normal_(0, 0.3)
    return attn


def make_inputs(num_query=S, num_levels=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(2, num_query, C, generator=gen, dtype=torch.float64)
    ref = torch.rand(2, num_query, num_levels, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    num_value = int(SHAPES[:num_levels].prod(1).sum())
    value = torch.randn(2, num_value, C, generator=gen, dtype=torch.float64)
    return query, ref, value


def single_level(attn, query, ref, value, level):
    """Per-head output (N, Lq, M*D) of one level alone, weights softmaxed over
    its P points: a one-level call of the reference op on that level's tokens."""
    n, num_query, _ = query.shape
    h, w = SHAPES[level].tolist()
    start = int(STARTS[level])
    offsets = attn.sampling_offsets(query).view(n, num_query, M, 2, P, 2)[:, :, :, level]
    logits = attn.attention_weights(query).view(n, num_query, M, 2, P)[:, :, :, level]
    locations = ref[:, :, None, level, None, :] + offsets / torch.tensor([w, h])
    v = attn.value_proj(value[:, start:start + h * w]).view(n, h * w, M, C // M)
    return ms_deform_attn_reference(v, SHAPES[level:level + 1], STARTS[:1],
                                    locations[:, :, :, None], logits.softmax(-1)[:, :, :, None])


def test_same_level_equals_one_level_attention_per_level():
    attn = make_attn('SameLevelDeformAttn')
    query, ref, value = make_inputs()
    out = attn(query, ref, value, SHAPES, STARTS)
    for level in range(2):
        rows = slice(int(STARTS[level]), int(STARTS[level]) + int(SHAPES[level].prod()))
        expected = attn.output_proj(single_level(attn, query[:, rows], ref[:, rows], value,
                                                 level))
        torch.testing.assert_close(out[:, rows], expected, rtol=0, atol=1e-12)


def test_per_level_equals_mean_of_one_level_attentions():
    attn = make_attn('PerLevelDeformAttn')
    query, ref, value = make_inputs(num_query=6)
    out = attn(query, ref, value, SHAPES, STARTS)
    mean = sum(single_level(attn, query, ref, value, level) for level in range(2)) / 2
    torch.testing.assert_close(out, attn.output_proj(mean), rtol=0, atol=1e-12)
    # the joint softmax of MSDeformAttn differs
    plain = make_attn('MSDeformAttn')
    assert not torch.allclose(plain(query, ref, value, SHAPES, STARTS), out)


def test_weights_per_level():
    query, ref, _ = make_inputs()
    _, weights = make_attn('PerLevelDeformAttn').sampling(query, ref, SHAPES)
    assert weights.shape == (2, S, M, 2, P)
    torch.testing.assert_close(weights.sum(-1), torch.full((2, S, M, 2), 0.5,
                                                           dtype=torch.float64))
    _, weights = make_attn('SameLevelDeformAttn').sampling(query, ref, SHAPES)
    level_sums = weights.sum(-1)  # (N, S, M, L)
    torch.testing.assert_close(level_sums[:, :35, :, 0], torch.ones(2, 35, M, dtype=torch.float64))
    torch.testing.assert_close(level_sums[:, 35:, :, 1], torch.ones(2, 12, M, dtype=torch.float64))
    assert (weights[:, :35, :, 1] == 0).all() and (weights[:, 35:, :, 0] == 0).all()


def test_same_level_output_ignores_the_other_levels_values():
    query, ref, value = make_inputs()
    changed = value.clone()
    changed[:, 35:] += 10 * torch.randn(2, 12, C, dtype=torch.float64)
    same_level = make_attn('SameLevelDeformAttn')
    out, out_changed = (same_level(query, ref, v, SHAPES, STARTS) for v in (value, changed))
    torch.testing.assert_close(out_changed[:, :35], out[:, :35], rtol=0, atol=1e-12)
    assert not torch.allclose(out_changed[:, 35:], out[:, 35:])
    plain = make_attn('MSDeformAttn')  # crosses levels: level-0 outputs change
    assert not torch.allclose(plain(query, ref, changed, SHAPES, STARTS)[:, :35],
                              plain(query, ref, value, SHAPES, STARTS)[:, :35])


@pytest.mark.parametrize('attn_type', ['SameLevelDeformAttn', 'PerLevelDeformAttn'])
def test_one_level_equals_msdeformattn(attn_type):
    query, ref, value = make_inputs(num_query=20, num_levels=1)
    value = value[:, :20]
    shapes = torch.tensor([[4, 5]])
    attn, plain = make_attn(attn_type, num_levels=1), make_attn('MSDeformAttn', num_levels=1)
    for (name, p), (plain_name, plain_p) in zip(attn.named_parameters(),
                                                plain.named_parameters()):
        assert name == plain_name and torch.equal(p, plain_p)
    assert torch.equal(attn(query, ref, value, shapes, STARTS[:1]),
                       plain(query, ref, value, shapes, STARTS[:1]))


@pytest.mark.parametrize('attn_type', ['SameLevelDeformAttn', 'PerLevelDeformAttn'])
def test_same_parameters_and_init_as_msdeformattn(attn_type):
    torch.manual_seed(3)
    attn = MODELS.build(dict(type=attn_type, embed_dims=C, num_heads=M, num_levels=2, num_points=P))
    torch.manual_seed(3)
    plain = MSDeformAttn(C, M, 2, P)
    assert isinstance(attn, MSDeformAttn)
    assert attn.state_dict().keys() == plain.state_dict().keys()
    for key, tensor in plain.state_dict().items():
        assert torch.equal(attn.state_dict()[key], tensor), key


@pytest.mark.parametrize('attn_type', ['SameLevelDeformAttn', 'PerLevelDeformAttn'])
def test_gradients_flow(attn_type):
    attn = make_attn(attn_type)
    query, ref, value = make_inputs()
    query.requires_grad_(True)
    value.requires_grad_(True)
    attn(query, ref, value, SHAPES, STARTS).pow(2).sum().backward()
    for tensor in [query, value] + list(attn.parameters()):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_same_level_rejects_queries_that_are_not_the_tokens():
    attn = make_attn('SameLevelDeformAttn')
    query, ref, value = make_inputs(num_query=10)
    with pytest.raises(ValueError, match=r'Lq=10 .* S=47'):
        attn(query, ref, value, SHAPES, STARTS)


def test_layers_build_the_configured_attention():
    encoder_layer = DeformableEncoderLayer(C, M, 2, P, 32,
                                           self_attn_cfg=dict(type='SameLevelDeformAttn'))
    decoder_layer = DeformableDecoderLayer(C, M, 2, P, 32,
                                           cross_attn_cfg=dict(type='PerLevelDeformAttn'))
    assert type(encoder_layer.self_attn) is SameLevelDeformAttn
    assert type(decoder_layer.cross_attn) is PerLevelDeformAttn
    assert (decoder_layer.cross_attn.num_levels, decoder_layer.cross_attn.num_points) == (2, P)
    assert type(DeformableEncoderLayer(C, M, 2, P, 32).self_attn) is MSDeformAttn
    assert type(DeformableDecoderLayer(C, M, 2, P, 32).cross_attn) is MSDeformAttn
    for key in ('embed_dims', 'num_heads', 'num_levels', 'num_points'):
        with pytest.raises(ValueError, match=f"'{key}' must not be set"):
            DeformableEncoderLayer(C, M, 2, P, 32, self_attn_cfg={'type': 'MSDeformAttn',
                                                                  key: 1})
    with pytest.raises(ValueError, match=r"cross_attn_cfg: .* needs a 'type'"):
        DeformableDecoderLayer(C, M, 2, P, 32, cross_attn_cfg=dict())


def test_default_layer_init_consumes_the_rng_as_before():
    """The attention is built first, exactly as a direct MSDeformAttn(...)."""
    torch.manual_seed(0)
    layer = DeformableEncoderLayer(C, M, 2, P, 32, dropout=0.0)
    torch.manual_seed(0)
    attn = MSDeformAttn(C, M, 2, P)
    _ = nn.Dropout(0.0), nn.LayerNorm(C)
    ffn = FFN(C, 32, 0.0)
    for name, tensor in attn.state_dict().items():
        assert torch.equal(layer.self_attn.state_dict()[name], tensor), name
    for name, tensor in ffn.state_dict().items():
        assert torch.equal(layer.ffn.state_dict()[name], tensor), name


def test_encoder_with_same_level_attention_keeps_levels_apart():
    torch.manual_seed(0)
    encoder = MODELS.build(dict(
        type='DeformableEncoder', num_layers=2, embed_dims=C, num_levels=2,
        layer_cfg=dict(num_heads=M, num_points=P, feedforward_dims=32,
                       dropout=0.0, self_attn_cfg=dict(type='SameLevelDeformAttn')))).double()
    with torch.no_grad():  # random offsets / weights so that the queries matter
        for layer in encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.3)
    gen = torch.Generator().manual_seed(2)
    sizes = SHAPES.tolist()
    feats = [torch.randn(2, C, h, w, generator=gen, dtype=torch.float64) for h, w in sizes]
    pos = [torch.randn_like(f) for f in feats]
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in sizes]
    memory = encoder(feats, masks, pos).memory
    changed = encoder(feats[:1] + [feats[1] + 1.0], masks, pos).memory
    torch.testing.assert_close(changed[:, :35], memory[:, :35], rtol=0, atol=1e-12)
    assert not torch.allclose(changed[:, 35:], memory[:, 35:])


def all_level_same_level_attn(attn, query, ref, value, mask=None):
    """The former SameLevelDeformAttn: one multi-level op call, the other
    levels' weights zeroed (the all-level ``sampling`` view)."""
    n, num_value, _ = value.shape
    v = attn.value_proj(value)
    if mask is not None:
        v = v.masked_fill(mask[..., None], 0.0)
    locations, weights = attn.sampling(query, ref, SHAPES)
    out = ms_deform_attn_reference(v.view(n, num_value, M, C // M), SHAPES, STARTS,
                                   locations, weights)
    return attn.output_proj(out)


@pytest.mark.parametrize('ref_dims,with_mask', [(2, False), (4, False), (2, True)])
def test_same_level_equals_all_level_op_with_other_levels_zeroed(ref_dims, with_mask):
    attn = make_attn('SameLevelDeformAttn')
    with torch.no_grad():  # non-zero biases: each level's rows of the projections differ
        attn.sampling_offsets.bias.normal_(0, 1.0)
        attn.attention_weights.bias.normal_(0, 1.0)
    query, ref, value = make_inputs()
    if ref_dims == 4:
        ref = torch.cat([ref, torch.rand_like(ref) * 0.3 + 0.05], -1)
    mask = None
    if with_mask:
        mask = torch.zeros(2, S, dtype=torch.bool)
        mask[0, 30:35] = mask[1, 44:] = True
    inputs = [query.requires_grad_(True), value.requires_grad_(True)]
    tensors = inputs + list(attn.parameters())
    out = attn(query, ref, value, SHAPES, STARTS, mask)
    grads = torch.autograd.grad(out.pow(2).sum(), tensors)
    expected = all_level_same_level_attn(attn, query, ref, value, mask)
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), tensors)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-11)
    assert all(grad.abs().sum() > 0 for grad in grads)


def test_same_level_samples_each_level_once(monkeypatch):
    """One op call per level, on that level's tokens only: S*M*P samples per
    image instead of the S*M*L*P of a multi-level call."""
    from mmdeform.models.layers import same_level_deform_attn as module
    calls = []
    real_op = module.ms_deform_attn

    def counting_op(value, shapes, starts, locations, weights):
        calls.append((tuple(value.shape), shapes.tolist(), starts.tolist(),
                      tuple(locations.shape)))
        return real_op(value, shapes, starts, locations, weights)

    monkeypatch.setattr(module, 'ms_deform_attn', counting_op)
    attn = make_attn('SameLevelDeformAttn')
    query, ref, value = make_inputs()
    attn(query, ref, value, SHAPES, STARTS)
    assert calls == [((2, 35, M, C // M), [[5, 7]], [0], (2, 35, M, 1, P, 2)),
                     ((2, 12, M, C // M), [[3, 4]], [0], (2, 12, M, 1, P, 2))]
    samples = sum(loc[1] * loc[2] * loc[3] * loc[4] for *_, loc in calls)
    assert samples == S * M * P  # L = 2 times fewer than S * M * 2 * P
    # a Python list of sizes gives the same result without reading the tensor
    calls.clear()
    out = attn(query, ref, value, SHAPES, STARTS, spatial_shapes_list=[(5, 7), (3, 4)])
    torch.testing.assert_close(out, attn(query, ref, value, SHAPES, STARTS))
    assert len(calls) == 4  # two calls per forward


def test_same_level_rejects_a_wrong_level_count():
    attn = make_attn('SameLevelDeformAttn', num_levels=3)
    query, ref, value = make_inputs()
    with pytest.raises(ValueError, match='built for 3 levels but spatial_shapes has 2 rows'):
        attn(query, ref, value, SHAPES, STARTS)
