"""Tests of DeformableEncoder and its layer (tiny dims, float64, CPU)."""
import numpy as np
import pytest
import torch
from mmengine.model import BaseModule

from mmdeform.models.encoders import (
    DeformableEncoder,
    get_encoder_reference_points,
    get_valid_ratios,
)
from mmdeform.models.layers import DeformableEncoderLayer
from mmdeform.registry import MODELS

C = 32
LAYER_CFG = dict(num_heads=4, num_points=2, feedforward_dims=64, dropout=0.1)
SHAPES = [(6, 7), (3, 4)]
# valid (h, w) per image and level; image 1 is padded at the bottom and right
VALID = [[(6, 7), (3, 4)], [(4, 5), (2, 3)]]


def make_encoder(seed=0):
    """A float64 encoder whose queries matter: at the official init the
    offset and attention-weight projections are zero, so the query (and the
    position encoding) would have no effect; give them small random weights."""
    torch.manual_seed(seed)
    cfg = dict(type='DeformableEncoder', num_layers=2, embed_dims=C, num_levels=2,
               layer_cfg=LAYER_CFG)
    encoder = MODELS.build(cfg).double().eval()
    with torch.no_grad():
        for layer in encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.05)
            layer.self_attn.attention_weights.weight.normal_(0, 0.05)
    return encoder


def make_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats, masks, pos_embeds = [], [], []
    for level, (h, w) in enumerate(SHAPES):
        feats.append(torch.randn(2, C, h, w, generator=gen, dtype=torch.float64))
        pos_embeds.append(torch.randn(2, C, h, w, generator=gen, dtype=torch.float64))
        mask = torch.ones(2, h, w, dtype=torch.bool)
        for b in range(2):
            vh, vw = VALID[b][level]
            mask[b, :vh, :vw] = False
        masks.append(mask)
    return feats, masks, pos_embeds


def test_output_shapes_and_metadata():
    encoder = make_encoder()
    feats, masks, pos_embeds = make_inputs()
    out = encoder(feats, masks, pos_embeds)
    num_tokens = sum(h * w for h, w in SHAPES)
    assert out.memory.shape == (2, num_tokens, C)
    assert out.memory.dtype == torch.float64
    assert out.spatial_shapes.tolist() == [list(s) for s in SHAPES]
    assert out.spatial_shapes.dtype == torch.int64
    assert out.level_start_index.tolist() == [0, SHAPES[0][0] * SHAPES[0][1]]
    expected_mask = torch.cat([m.flatten(1) for m in masks], 1)
    assert torch.equal(out.padding_mask, expected_mask)
    assert out.valid_ratios.shape == (2, 2, 2)
    assert out.valid_ratios.dtype == torch.float32


def independent_valid_ratios():
    """(B, L, 2) float32 (x, y) ratios from the valid sizes (float32 division)."""
    f32 = np.float32
    return np.array([[[f32(vw) / f32(w), f32(vh) / f32(h)]
                      for (vh, vw), (h, w) in zip(VALID[b], SHAPES)] for b in range(2)],
                    dtype=f32)


def test_valid_ratios_match_mask_counts():
    _, masks, _ = make_inputs()
    ratios = torch.stack([get_valid_ratios(mask) for mask in masks], 1)
    assert ratios.dtype == torch.float32
    assert np.array_equal(ratios.numpy(), independent_valid_ratios())


def test_reference_points_match_independent_computation():
    """Bit-exact float32 island: centre / (ratio * size) of its own level,
    then times the ratio of every level, all in float32 (official order)."""
    f32 = np.float32
    ratios = independent_valid_ratios()
    ref = get_encoder_reference_points(SHAPES, torch.from_numpy(ratios))
    assert ref.dtype == torch.float32
    assert ref.shape == (2, sum(h * w for h, w in SHAPES), 2, 2)
    expected = np.zeros(ref.shape, dtype=f32)
    for b in range(2):
        token = 0
        for level, (h, w) in enumerate(SHAPES):
            rx, ry = ratios[b, level]
            for i in range(h):
                for j in range(w):
                    x = f32(j + 0.5) / (rx * f32(w))
                    y = f32(i + 0.5) / (ry * f32(h))
                    expected[b, token] = np.array([x, y], dtype=f32) * ratios[b]
                    token += 1
    assert np.array_equal(ref.numpy(), expected)
    # and in exact arithmetic: the cell centre normalized to the valid region
    x_exact = (0 + 0.5) / VALID[1][1][1] * VALID[1][0][1] / SHAPES[0][1]
    assert ref[1, SHAPES[0][0] * SHAPES[0][1], 0, 0].item() == pytest.approx(x_exact, rel=1e-6)


def test_padded_positions_do_not_change_valid_outputs():
    encoder = make_encoder()
    feats, masks, pos_embeds = make_inputs()
    out = encoder(feats, masks, pos_embeds)
    gen = torch.Generator().manual_seed(1)
    feats2 = [f.clone() for f in feats]
    pos2 = [p.clone() for p in pos_embeds]
    for f, p, m in zip(feats2, pos2, masks):
        pad = m[:, None].expand_as(f)
        f[pad] = torch.randn(int(pad.sum()), generator=gen, dtype=torch.float64) * 10
        p[pad] = torch.randn(int(pad.sum()), generator=gen, dtype=torch.float64)
    out2 = encoder(feats2, masks, pos2)
    valid = ~out.padding_mask
    torch.testing.assert_close(out2.memory[valid], out.memory[valid], rtol=0, atol=1e-12)
    # the padded tokens themselves are still processed (and did change)
    assert not torch.allclose(out2.memory[~valid], out.memory[~valid])


def test_level_embed_is_added_to_each_level_position_encoding():
    encoder = make_encoder()
    feats, masks, pos_embeds = make_inputs()
    out = encoder(feats, masks, pos_embeds)
    shifted = [p + encoder.level_embed[level].detach().view(1, C, 1, 1)
               for level, p in enumerate(pos_embeds)]
    with torch.no_grad():
        encoder.level_embed.zero_()
    torch.testing.assert_close(encoder(feats, masks, shifted).memory, out.memory,
                               rtol=0, atol=1e-12)
    assert not torch.allclose(encoder(feats, masks, pos_embeds).memory, out.memory)


def test_layer_adds_position_to_query_only():
    torch.manual_seed(0)
    layer = DeformableEncoderLayer(embed_dims=C, num_levels=2, **LAYER_CFG).double().eval()
    feats, masks, pos_embeds = make_inputs()
    encoder = make_encoder()
    query, query_pos, padding_mask, shapes = encoder.flatten_levels(feats, masks, pos_embeds)
    starts = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    ratios = torch.stack([get_valid_ratios(m) for m in masks], 1)
    ref = get_encoder_reference_points(SHAPES, ratios).double()
    out = layer(query, query_pos, ref, shapes, starts, padding_mask)
    attn = layer.self_attn(query + query_pos, ref, query, shapes, starts, padding_mask)
    x = layer.self_attn_norm(query + attn)
    ffn = layer.ffn.linear2(torch.relu(layer.ffn.linear1(x)))
    torch.testing.assert_close(out, layer.ffn_norm(x + ffn), rtol=0, atol=1e-12)


def test_gradients_reach_every_parameter():
    encoder = make_encoder().train()
    feats, masks, pos_embeds = make_inputs()
    encoder(feats, masks, pos_embeds).memory.pow(2).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_init_weights_follows_the_official_scheme():
    encoder = make_encoder()
    with torch.no_grad():
        for param in encoder.parameters():
            param.fill_(0.5)
    container = BaseModule()
    container.encoder = encoder
    container.init_weights()
    attn = encoder.layers[0].self_attn
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    # ring offsets of MSDeformAttn: head 0 points along +x at distance p + 1
    assert attn.sampling_offsets.bias[:4].tolist() == [1.0, 0.0, 2.0, 0.0]
    linear1 = encoder.layers[1].ffn.linear1.weight
    bound = (6 / sum(linear1.shape)) ** 0.5
    assert linear1.abs().max() <= bound and linear1.std() > 0.3 * bound
    assert (encoder.layers[1].ffn.linear1.bias == 0.5).all()  # biases keep their values
    assert encoder.level_embed.std() > 0.5


def test_bad_inputs_raise_clear_errors():
    encoder = make_encoder()
    feats, masks, pos_embeds = make_inputs()
    with pytest.raises(ValueError, match='expected 2 levels'):
        encoder(feats[:1], masks[:1], pos_embeds[:1])
    with pytest.raises(ValueError, match=r'masks\[1\]'):
        encoder(feats, [masks[0], masks[1][:, :2]], pos_embeds)
    with pytest.raises(ValueError, match=r'pos_embeds\[0\]'):
        encoder(feats, masks, [pos_embeds[0][:, :4], pos_embeds[1]])
    with pytest.raises(ValueError, match='remove layer_cfg.num_levels'):
        DeformableEncoder(embed_dims=C, num_levels=2, layer_cfg=dict(LAYER_CFG, num_levels=2))
    with pytest.raises(ValueError, match='remove layer_cfg.embed_dims'):
        DeformableEncoder(embed_dims=C, num_levels=2, layer_cfg=dict(LAYER_CFG, embed_dims=C))


def test_memory_pos_is_the_attention_position_encoding():
    encoder = make_encoder()
    feats, masks, pos_embeds = make_inputs()
    out = encoder(feats, masks, pos_embeds)
    expected = torch.cat([pos.flatten(2).transpose(1, 2) + encoder.level_embed[level]
                          for level, pos in enumerate(pos_embeds)], 1)
    assert out.memory_pos.shape == out.memory.shape
    torch.testing.assert_close(out.memory_pos, expected, rtol=0, atol=0)
