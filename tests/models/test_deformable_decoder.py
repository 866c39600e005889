"""Tests of DeformableDecoder, RefineDeformableDecoder and the decoder layer."""
from functools import partial

import pytest
import torch
from torch import nn

from mmdeform import testing
from mmdeform.models.layers import MLP, DeformableDecoderLayer, inverse_sigmoid
from mmdeform.registry import MODELS

C, B, Q, NUM_LAYERS = 32, 2, 5, 3
LAYER_CFG = dict(num_heads=4, num_points=2, feedforward_dims=64, dropout=0.1)
SHAPES = [(6, 7), (3, 4)]
VALID = [[(6, 7), (3, 4)], [(4, 5), (2, 3)]]  # valid (h, w) per image and level


def make_decoder(decoder_type='DeformableDecoder', seed=0):
    """Float64 decoder with random (not zero) offset/attention projections,
    so that queries and references influence the outputs."""
    torch.manual_seed(seed)
    decoder = MODELS.build(dict(type=decoder_type, num_layers=NUM_LAYERS, embed_dims=C,
                                num_levels=2, layer_cfg=LAYER_CFG)).double().eval()
    with torch.no_grad():
        for layer in decoder.layers:
            layer.cross_attn.sampling_offsets.weight.normal_(0, 0.05)
            layer.cross_attn.attention_weights.weight.normal_(0, 0.05)
    return decoder


# (seed=0, dtype=float64) -> EncoderOutput over SHAPES with the padding of VALID
make_encoder_output = partial(testing.make_encoder_output, SHAPES, VALID, C)


def make_queries(ref_dims=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(B, Q, C, generator=gen, dtype=torch.float64)
    query_pos = torch.randn(B, Q, C, generator=gen, dtype=torch.float64)
    ref = torch.rand(B, Q, ref_dims, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    return query, query_pos, ref


def make_reg_branches(seed=2):
    torch.manual_seed(seed)
    return nn.ModuleList(MLP(C, C, 4, 3) for _ in range(NUM_LAYERS)).double()


def record_cross_attn_references(decoder):
    """Hooks that store the reference points each layer's cross-attention gets."""
    seen = []
    for layer in decoder.layers:
        layer.cross_attn.register_forward_pre_hook(lambda mod, args: seen.append(args[1]))
    return seen


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_plain_decoder_shapes_and_fixed_references(ref_dims):
    decoder = make_decoder()
    enc = make_encoder_output()
    query, query_pos, ref = make_queries(ref_dims)
    seen = record_cross_attn_references(decoder)
    out = decoder(query, query_pos, ref, enc)
    assert out.hidden_states.shape == (NUM_LAYERS, B, Q, C)
    assert len(out.references) == NUM_LAYERS
    ratios = enc.valid_ratios.double()
    if ref_dims == 4:
        ratios = torch.cat([ratios, ratios], -1)
    for layer_index in range(NUM_LAYERS):
        assert torch.equal(out.references[layer_index], ref)
        assert seen[layer_index].shape == (B, Q, 2, ref_dims)
        for level in range(2):
            torch.testing.assert_close(seen[layer_index][:, :, level],
                                       ref * ratios[:, None, level], rtol=0, atol=0)
    # hidden states are the successive layer outputs
    torch.testing.assert_close(out.hidden_states[0],
                               decoder.layers[0](query, query_pos, seen[0], enc.memory,
                                                 enc.spatial_shapes, enc.level_start_index,
                                                 enc.padding_mask), rtol=0, atol=0)


def test_plain_decoder_ignores_reg_branches():
    decoder = make_decoder()
    enc = make_encoder_output()
    query, query_pos, ref = make_queries()
    out = decoder(query, query_pos, ref, enc)
    out_with = decoder(query, query_pos, ref, enc, reg_branches=make_reg_branches())
    assert torch.equal(out.hidden_states, out_with.hidden_states)


@pytest.mark.parametrize('ref_dims', [2, 4])
def test_refine_decoder_updates_detached_references(ref_dims):
    decoder = make_decoder('RefineDeformableDecoder')
    enc = make_encoder_output()
    query, query_pos, ref = make_queries(ref_dims)
    reg_branches = make_reg_branches()
    seen = record_cross_attn_references(decoder)
    out = decoder(query, query_pos, ref, enc, reg_branches=reg_branches)
    assert out.references[0] is ref
    for layer_index in range(1, NUM_LAYERS):
        previous = out.references[layer_index - 1]
        delta = reg_branches[layer_index - 1](out.hidden_states[layer_index - 1])
        if previous.shape[-1] == 4:
            expected = torch.sigmoid(delta + inverse_sigmoid(previous))
        else:  # a point becomes a box whose w, h come from delta alone
            expected = torch.sigmoid(delta)
            expected[..., :2] = torch.sigmoid(delta[..., :2] + inverse_sigmoid(previous))
        refined = out.references[layer_index]
        assert refined.shape == (B, Q, 4)
        assert not refined.requires_grad
        torch.testing.assert_close(refined, expected, rtol=0, atol=1e-12)
        ratios = torch.cat([enc.valid_ratios, enc.valid_ratios], -1).double()
        torch.testing.assert_close(seen[layer_index], refined[:, :, None] * ratios[:, None],
                                   rtol=0, atol=0)
    assert not torch.allclose(out.references[2], out.references[1])


def test_refine_decoder_gradients_do_not_flow_through_references():
    decoder = make_decoder('RefineDeformableDecoder')
    enc = make_encoder_output()
    query, query_pos, ref = make_queries(4)
    ref.requires_grad_(True)
    reg_branches = make_reg_branches()
    out = decoder(query, query_pos, ref, enc, reg_branches=reg_branches)
    out.hidden_states.pow(2).sum().backward()
    # references are detached: the branches get no gradient from the decoder
    for name, param in reg_branches.named_parameters():
        assert param.grad is None, name
    # the initial reference still gets a gradient through the layers
    assert ref.grad is not None and ref.grad.abs().sum() > 0
    for name, param in decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_refine_decoder_requires_matching_reg_branches():
    decoder = make_decoder('RefineDeformableDecoder')
    enc = make_encoder_output()
    query, query_pos, ref = make_queries()
    with pytest.raises(ValueError, match='reg_branches is required'):
        decoder(query, query_pos, ref, enc)
    with pytest.raises(ValueError, match=f'expected {NUM_LAYERS} reg_branches'):
        decoder(query, query_pos, ref, enc, reg_branches=make_reg_branches()[:2])


def test_decoder_bad_shapes_raise():
    decoder = make_decoder()
    enc = make_encoder_output()
    query, query_pos, ref = make_queries()
    with pytest.raises(ValueError, match='reference_points'):
        decoder(query, query_pos, ref[..., :1], enc)
    with pytest.raises(ValueError, match='query_pos'):
        decoder(query, query_pos[:, :2], ref, enc)
    with pytest.raises(ValueError, match='query must be'):
        decoder(query[..., :8], query_pos[..., :8], ref, enc)


def test_padded_memory_does_not_change_outputs():
    decoder = make_decoder()
    enc = make_encoder_output()
    query, query_pos, ref = make_queries()
    out = decoder(query, query_pos, ref, enc)
    enc.memory = enc.memory.masked_fill(enc.padding_mask[..., None], 123.0)
    torch.testing.assert_close(decoder(query, query_pos, ref, enc).hidden_states,
                               out.hidden_states, rtol=0, atol=1e-12)


def test_decoder_layer_order_matches_the_official_one():
    torch.manual_seed(0)
    layer = DeformableDecoderLayer(embed_dims=C, num_levels=2, **LAYER_CFG).double().eval()
    enc = make_encoder_output()
    query, query_pos, ref = make_queries()
    ref = ref[:, :, None] * enc.valid_ratios.double()[:, None]
    args = (enc.memory, enc.spatial_shapes, enc.level_start_index, enc.padding_mask)
    out = layer(query, query_pos, ref, *args)
    # self-attention: q = k = query + query_pos, v = query, batch-second
    mha = nn.MultiheadAttention(C, 4).double().eval()
    mha.load_state_dict(layer.self_attn.state_dict())
    qk = (query + query_pos).transpose(0, 1)
    x = layer.self_attn_norm(query + mha(qk, qk, query.transpose(0, 1))[0].transpose(0, 1))
    x = layer.cross_attn_norm(x + layer.cross_attn(x + query_pos, ref, *args))
    x = layer.ffn_norm(x + layer.ffn.linear2(torch.relu(layer.ffn.linear1(x))))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


def test_init_weights_xavier_then_deformable_attention_init():
    decoder = make_decoder()
    decoder.init_weights()
    layer = decoder.layers[0]
    assert torch.count_nonzero(layer.cross_attn.sampling_offsets.weight) == 0
    in_proj = layer.self_attn.in_proj_weight
    bound = (6 / sum(in_proj.shape)) ** 0.5
    assert in_proj.abs().max() <= bound and in_proj.std() > 0.3 * bound
    assert torch.count_nonzero(layer.self_attn.in_proj_bias) == 0
