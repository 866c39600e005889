"""The MSDeformAttn layer."""
import math

import pytest
import torch

from mmdeform.ops import MSDeformAttn, ms_deform_attn_reference
from mmdeform.ops.ms_deform_attn_module import marks_padding
from mmdeform.registry import MODELS

SHAPES = torch.tensor([[6, 8], [3, 4]])
STARTS = torch.tensor([0, 48])
NUM_VALUE = 60


def make_layer(**kwargs):
    cfg = dict(type='MSDeformAttn', embed_dims=16, num_heads=4, num_levels=2, num_points=3)
    cfg.update(kwargs)
    torch.manual_seed(0)
    layer = MODELS.build(cfg).double()
    # Non-zero offset/weight projections so the query matters.
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(layer.attention_weights.weight, std=0.1)
    return layer


def inputs(n=2, lq=5, ref_dim=2):
    gen = torch.Generator().manual_seed(1)
    query = torch.rand(n, lq, 16, generator=gen, dtype=torch.float64)
    ref = torch.rand(n, lq, 2, ref_dim, generator=gen, dtype=torch.float64) * 0.5 + 0.25
    value = torch.rand(n, NUM_VALUE, 16, generator=gen, dtype=torch.float64)
    return query, ref, value


def test_output_shape():
    layer = make_layer()
    query, ref, value = inputs()
    assert layer(query, ref, value, SHAPES, STARTS).shape == (2, 5, 16)


def test_padding_mask_zeroes_masked_values():
    layer = make_layer()
    query, ref, value = inputs()
    mask = torch.zeros(2, NUM_VALUE, dtype=torch.bool)
    mask[0, 40:48] = True
    mask[1, 50:] = True
    out = layer(query, ref, value, SHAPES, STARTS, mask)
    # Changing masked values changes nothing; the mask must also matter.
    changed = value.clone()
    changed[mask] = 100.0
    torch.testing.assert_close(layer(query, ref, changed, SHAPES, STARTS, mask), out)
    assert not torch.allclose(layer(query, ref, value, SHAPES, STARTS), out)


def test_an_all_false_padding_mask_is_skipped_with_the_same_result(monkeypatch):
    layer = make_layer()
    query, ref, value = inputs()
    value.requires_grad_(True)
    no_padding = torch.zeros(2, NUM_VALUE, dtype=torch.bool)
    assert not marks_padding(None) and not marks_padding(no_padding)
    assert marks_padding(torch.tensor([[False, True]]))
    out = layer(query, ref, value, SHAPES, STARTS, no_padding)
    grad = torch.autograd.grad(out.sum(), value)[0]
    assert torch.equal(out, layer(query, ref, value, SHAPES, STARTS))
    assert torch.equal(grad, torch.autograd.grad(
        layer(query, ref, value, SHAPES, STARTS).sum(), value)[0])
    # while compiling or tracing the graph must mask whatever its input
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert marks_padding(no_padding)


def test_2d_and_4d_reference_points_follow_the_formulas():
    layer = make_layer()
    query, ref2, _ = inputs()
    offsets = layer.sampling_offsets(query).view(2, 5, 4, 2, 3, 2)
    loc2, w2 = layer.sampling(query, ref2, SHAPES)
    wh = torch.tensor([[8.0, 6.0], [4.0, 3.0]], dtype=torch.float64)  # (W, H) per level
    expected2 = ref2[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
    assert torch.equal(loc2, expected2)  # same arithmetic in the same order: same bits
    _, ref4, _ = inputs(ref_dim=4)
    loc4, w4 = layer.sampling(query, ref4, SHAPES)
    expected4 = (ref4[:, :, None, :, None, :2]
                 + offsets / 3 * ref4[:, :, None, :, None, 2:] * 0.5)
    assert torch.equal(loc4, expected4)
    # Weights: softmax over the L*P samples of each head.
    torch.testing.assert_close(w2.sum((-1, -2)), torch.ones(2, 5, 4, dtype=torch.float64))
    torch.testing.assert_close(w2, w4)


def test_forward_equals_manual_composition():
    layer = make_layer()
    query, ref, value = inputs()
    loc, weights = layer.sampling(query, ref, SHAPES)
    v = layer.value_proj(value).view(2, NUM_VALUE, 4, 4)
    expected = layer.output_proj(ms_deform_attn_reference(v, SHAPES, STARTS, loc, weights))
    torch.testing.assert_close(layer(query, ref, value, SHAPES, STARTS), expected)


def test_initialization_matches_the_paper_code():
    layer = MSDeformAttn(embed_dims=32, num_heads=8, num_levels=3, num_points=4)
    assert layer.sampling_offsets.weight.abs().max() == 0
    bias = layer.sampling_offsets.bias.view(8, 3, 4, 2)
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(4):
            for level in range(3):
                torch.testing.assert_close(bias[head, level, point], direction * (point + 1))
    assert layer.attention_weights.weight.abs().max() == 0
    assert layer.attention_weights.bias.abs().max() == 0
    for proj in (layer.value_proj, layer.output_proj):
        assert proj.bias.abs().max() == 0
        bound = math.sqrt(6 / (32 + 32))  # xavier uniform
        assert proj.weight.abs().max() <= bound
        assert proj.weight.std() > bound / 3


def test_bad_arguments():
    with pytest.raises(ValueError, match='divisible by num_heads'):
        MSDeformAttn(embed_dims=30, num_heads=8)
    with pytest.warns(UserWarning, match='power of two'):
        MSDeformAttn(embed_dims=24, num_heads=2)
    layer = make_layer()
    query, ref, value = inputs()
    with pytest.raises(ValueError, match='reference_points must be'):
        layer(query, ref[:, :, :1], value, SHAPES, STARTS)
    with pytest.raises(ValueError, match='built for 2 levels'):
        layer(query, ref, value, SHAPES[:1], STARTS[:1])


def test_init_weights_honours_init_cfg_and_is_repeatable():
    cfg = dict(type='Constant', layer='Linear', val=0.5, bias=0.25)
    attn = MSDeformAttn(embed_dims=16, num_heads=4, num_levels=2, num_points=3, init_cfg=cfg)
    # construction gives the paper's init (zero offset weights); init_weights applies init_cfg
    assert torch.all(attn.sampling_offsets.weight == 0)
    for _ in range(2):  # a second call gives the same weights (init_cfg re-applied)
        attn.init_weights()
        for proj in (attn.sampling_offsets, attn.attention_weights, attn.value_proj,
                     attn.output_proj):
            assert torch.all(proj.weight == 0.5) and torch.all(proj.bias == 0.25)


def test_init_cfg_reaches_the_attention_inside_an_encoder():
    encoder = MODELS.build(dict(
        type='DeformableEncoder', num_layers=1, embed_dims=16, num_levels=2,
        layer_cfg=dict(num_heads=4, self_attn_cfg=dict(
            type='MSDeformAttn', init_cfg=dict(type='Constant', layer='Linear', val=0.5)))))
    encoder.init_weights()  # what the runner calls
    attn = encoder.layers[0].self_attn
    assert torch.all(attn.value_proj.weight == 0.5)
    assert not torch.all(encoder.layers[0].ffn.linear1.weight == 0.5)  # only the attention
