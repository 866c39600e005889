"""DenseEncoder / DenseDecoder (DETR's transformer) and their layers."""
import math

import pytest
import torch
from mmengine.model import BaseModule

from mmdeform.models.encoders import flatten_levels
from mmdeform.models.layers import DenseDecoderLayer, DenseEncoderLayer
from mmdeform.models.stage_outputs import EncoderOutput
from mmdeform.registry import MODELS

C, B, Q = 16, 2, 5
LAYER_CFG = dict(num_heads=4, feedforward_dims=32, dropout=0.1)
SHAPES = [(5, 6), (3, 3)]
VALID = [[(5, 6), (3, 3)], [(3, 4), (2, 2)]]  # valid (h, w) per image and level


def build(cfg_type, num_levels=2, layer_cfg=LAYER_CFG, seed=0):
    torch.manual_seed(seed)
    return MODELS.build(dict(type=cfg_type, num_layers=2, embed_dims=C, num_levels=num_levels,
                             layer_cfg=layer_cfg)).double().eval()


def make_inputs(num_levels=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats, masks, pos_embeds = [], [], []
    for level, (h, w) in enumerate(SHAPES[:num_levels]):
        feats.append(torch.randn(B, C, h, w, generator=gen, dtype=torch.float64))
        pos_embeds.append(torch.randn(B, C, h, w, generator=gen, dtype=torch.float64))
        mask = torch.ones(B, h, w, dtype=torch.bool)
        for b in range(B):
            vh, vw = VALID[b][level]
            mask[b, :vh, :vw] = False
        masks.append(mask)
    return feats, masks, pos_embeds


def manual_attention(attn, query, key, value, key_padding_mask=None):
    """Multi-head attention from nn.MultiheadAttention's parameters, (B, L, C)."""
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split(x):  # (B, L, C) -> (B, M, L, C / M)
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(query @ w_q.T + b_q), split(key @ w_k.T + b_k), split(value @ w_v.T + b_v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float('-inf'))
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return attn.out_proj(out)


def test_encoder_output_contract_matches_deformable_encoder():
    feats, masks, pos_embeds = make_inputs()
    out = build('DenseEncoder')(feats, masks, pos_embeds)
    deformable = build('DeformableEncoder', layer_cfg=dict(LAYER_CFG, num_points=2))
    reference = deformable(feats, masks, pos_embeds)
    assert out.memory.shape == (B, 39, C) and out.memory.dtype == torch.float64
    for field in ('padding_mask', 'spatial_shapes', 'level_start_index', 'valid_ratios'):
        assert torch.equal(getattr(out, field), getattr(reference, field)), field
    # the deformable encoder fills memory_pos too: its attention queries' position
    _, query_pos, _, _ = deformable.flatten_levels(feats, masks, pos_embeds)
    assert torch.equal(reference.memory_pos, query_pos)


def test_encoder_level_embedding_only_with_several_levels():
    feats, masks, pos_embeds = make_inputs()
    encoder = build('DenseEncoder')
    out = encoder(feats, masks, pos_embeds)
    expected = torch.cat([p.flatten(2).transpose(1, 2) + encoder.level_embed[i]
                          for i, p in enumerate(pos_embeds)], 1)
    torch.testing.assert_close(out.memory_pos, expected, rtol=0, atol=0)
    single = build('DenseEncoder', num_levels=1)
    assert single.level_embed is None and 'level_embed' not in single.state_dict()
    out = single(feats[:1], masks[:1], pos_embeds[:1])
    assert torch.equal(out.memory_pos, pos_embeds[0].flatten(2).transpose(1, 2))


def test_encoder_layer_is_post_norm_dense_self_attention():
    torch.manual_seed(0)
    layer = DenseEncoderLayer(embed_dims=C, **LAYER_CFG).double().eval()
    feats, masks, pos_embeds = make_inputs()
    query, query_pos, padding_mask, _ = flatten_levels(feats, masks, pos_embeds, None)
    attn = manual_attention(layer.self_attn, query + query_pos, query + query_pos, query,
                            padding_mask)
    x = layer.self_attn_norm(query + attn)
    expected = layer.ffn_norm(x + layer.ffn.linear2(torch.relu(layer.ffn.linear1(x))))
    torch.testing.assert_close(layer(query, query_pos, padding_mask), expected,
                               rtol=0, atol=1e-12)


def test_encoder_ignores_padded_tokens():
    encoder = build('DenseEncoder')
    feats, masks, pos_embeds = make_inputs()
    out = encoder(feats, masks, pos_embeds)
    changed = [f.masked_fill(m[:, None], 7.0) for f, m in zip(feats, masks)]
    changed_out = encoder(changed, masks, pos_embeds)
    valid = ~out.padding_mask
    torch.testing.assert_close(changed_out.memory[valid], out.memory[valid], rtol=0, atol=1e-12)
    unmasked = [torch.zeros_like(m) for m in masks]  # the mask must matter
    assert not torch.allclose(encoder(changed, unmasked, pos_embeds).memory[valid],
                              encoder(feats, unmasked, pos_embeds).memory[valid])


def make_encoder_output(seed=0, with_pos=True):
    feats, masks, pos_embeds = make_inputs(seed=seed)
    memory, memory_pos, padding_mask, shapes = flatten_levels(feats, masks, pos_embeds, None)
    return EncoderOutput(memory=memory, padding_mask=padding_mask, spatial_shapes=shapes,
                         level_start_index=torch.tensor([0, 30]),
                         valid_ratios=torch.ones(B, 2, 2),
                         memory_pos=memory_pos if with_pos else None)


def make_queries(ref_dims=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, Q, C, generator=gen, dtype=torch.float64)
    query_pos = torch.randn(B, Q, C, generator=gen, dtype=torch.float64)
    ref = torch.rand(B, Q, ref_dims, generator=gen, dtype=torch.float64)
    return query, query_pos, ref


def test_decoder_shapes_and_fixed_references():
    decoder = build('DenseDecoder')
    query, query_pos, ref = make_queries(ref_dims=4)
    out = decoder(query, query_pos, ref, make_encoder_output(), reg_branches=None)
    assert out.hidden_states.shape == (2, B, Q, C)
    assert len(out.references) == 2 and all(r is ref for r in out.references)
    # the references take no part in the attention; reg_branches are ignored
    other = decoder(query, query_pos, torch.rand_like(ref), make_encoder_output(),
                    reg_branches=torch.nn.ModuleList([torch.nn.Linear(C, 4)]))
    assert torch.equal(other.hidden_states, out.hidden_states)


def test_decoder_layer_is_post_norm_self_then_cross_attention():
    torch.manual_seed(0)
    layer = DenseDecoderLayer(embed_dims=C, **LAYER_CFG).double().eval()
    query, query_pos, _ = make_queries()
    enc = make_encoder_output()
    x = query + query_pos
    x = layer.self_attn_norm(query + manual_attention(layer.self_attn, x, x, query))
    cross = manual_attention(layer.cross_attn, x + query_pos, enc.memory + enc.memory_pos,
                             enc.memory, enc.padding_mask)
    x = layer.cross_attn_norm(x + cross)
    expected = layer.ffn_norm(x + layer.ffn.linear2(torch.relu(layer.ffn.linear1(x))))
    out = layer(query, query_pos, enc.memory, enc.memory_pos, enc.padding_mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_decoder_ignores_padded_memory():
    decoder = build('DenseDecoder')
    query, query_pos, ref = make_queries()
    enc = make_encoder_output()
    out = decoder(query, query_pos, ref, enc).hidden_states
    mask = enc.padding_mask[..., None]
    enc.memory = enc.memory.masked_fill(mask, 5.0)
    enc.memory_pos = enc.memory_pos.masked_fill(mask, -3.0)
    torch.testing.assert_close(decoder(query, query_pos, ref, enc).hidden_states, out,
                               rtol=0, atol=1e-12)
    enc.padding_mask = torch.zeros_like(enc.padding_mask)  # the mask must matter
    assert not torch.allclose(decoder(query, query_pos, ref, enc).hidden_states, out)


def test_gradients_reach_every_parameter():
    encoder, decoder = build('DenseEncoder').train(), build('DenseDecoder').train()
    query, query_pos, ref = make_queries()
    enc = encoder(*make_inputs())
    decoder(query, query_pos, ref, enc).hidden_states.pow(2).sum().backward()
    for module in (encoder, decoder):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize('cfg_type', ['DenseEncoder', 'DenseDecoder'])
def test_init_weights_is_detr_xavier(cfg_type):
    module = build(cfg_type)
    with torch.no_grad():
        for param in module.parameters():
            param.fill_(0.5)
    container = BaseModule()
    container.module = module
    container.init_weights()
    weight = module.layers[1].self_attn.in_proj_weight  # (3C, C): fans C and 3C
    bound = math.sqrt(6 / (4 * C))
    assert weight.abs().max() <= bound and weight.std() > bound / 3
    assert (module.layers[1].self_attn.in_proj_bias == 0.5).all()  # biases keep values
    assert (module.layers[0].ffn_norm.weight == 0.5).all()
    if cfg_type == 'DenseEncoder':
        assert module.level_embed.std() > 0.5


def test_bad_inputs_raise_clear_errors():
    for cfg_type in ('DenseEncoder', 'DenseDecoder'):
        with pytest.raises(ValueError, match=r"unknown keys \['num_points'\]"):
            build(cfg_type, layer_cfg=dict(LAYER_CFG, num_points=4))
        with pytest.raises(ValueError, match='give num_levels to'):
            build(cfg_type, layer_cfg=dict(LAYER_CFG, num_levels=2))
        with pytest.raises(ValueError, match='remove layer_cfg.embed_dims'):
            build(cfg_type, layer_cfg=dict(LAYER_CFG, embed_dims=C))
    with pytest.raises(ValueError, match='expected 2 levels'):
        build('DenseEncoder')(*(x[:1] for x in make_inputs()))
    decoder = build('DenseDecoder')
    query, query_pos, ref = make_queries()
    with pytest.raises(ValueError, match='memory_pos is None'):
        decoder(query, query_pos, ref, make_encoder_output(with_pos=False))
    with pytest.raises(ValueError, match='num_levels=1 but encoder_output.spatial_shapes'):
        build('DenseDecoder', num_levels=1)(query, query_pos, ref, make_encoder_output())
    with pytest.raises(ValueError, match='reference_points must be'):
        decoder(query, query_pos, ref[..., :1], make_encoder_output())
