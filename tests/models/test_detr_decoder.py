"""DetrDecoder: DETR's decoder (zero content queries, no reference points, shared norm)."""
import pytest
import torch

from mmdeform.models.heads import DeformableDETRHead
from mmdeform.models.stage_outputs import EncoderOutput
from mmdeform.registry import MODELS

C, B, Q, S = 16, 2, 5, 7
LAYER_CFG = dict(num_heads=4, feedforward_dims=32, dropout=0.0)


def build(num_layers=2):
    torch.manual_seed(0)
    return MODELS.build(dict(type='DetrDecoder', num_layers=num_layers, embed_dims=C,
                             num_levels=1, layer_cfg=LAYER_CFG)).double().eval()


def encoder_output(seed=0):
    gen = torch.Generator().manual_seed(seed)
    memory = torch.randn(B, S, C, generator=gen, dtype=torch.float64)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[1, 5:] = True  # the second image has two padded tokens
    return EncoderOutput(memory=memory, padding_mask=mask,
                         spatial_shapes=torch.tensor([[1, S]]),
                         level_start_index=torch.tensor([0]),
                         valid_ratios=torch.ones(B, 1, 2, dtype=torch.float64),
                         memory_pos=torch.randn(B, S, C, generator=gen, dtype=torch.float64))


def queries(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Q, C, generator=gen, dtype=torch.float64),
            torch.randn(B, Q, C, generator=gen, dtype=torch.float64),
            torch.rand(B, Q, 2, generator=gen, dtype=torch.float64))


def test_layers_start_from_zero_content_and_every_output_is_normed():
    decoder = build()
    query, query_pos, refs = queries()
    enc = encoder_output()
    out = decoder(query, query_pos, refs, enc)
    # by hand: DETR's loop, tgt = 0, the shared norm on every intermediate output
    expected, hidden = [], torch.zeros_like(query)
    for layer in decoder.layers:
        hidden = layer(hidden, query_pos, enc.memory, enc.memory_pos, enc.padding_mask)
        expected.append(decoder.norm(hidden))
    torch.testing.assert_close(out.hidden_states, torch.stack(expected))
    assert out.hidden_states.shape == (2, B, Q, C)
    # the content queries and the reference points the generator made are not used
    other_query, _, other_refs = queries(seed=7)
    again = decoder(other_query, query_pos, other_refs, enc)
    torch.testing.assert_close(again.hidden_states, out.hidden_states, rtol=0, atol=0)
    # ... the positional queries are
    assert not torch.allclose(decoder(query, query_pos + 1, refs, enc).hidden_states,
                              out.hidden_states)


def test_head_predicts_boxes_as_sigmoid_of_its_mlp():
    decoder = build(num_layers=3)
    query, query_pos, refs = queries()
    out = decoder(query, query_pos, refs, encoder_output())
    assert len(out.references) == 3
    assert all(torch.equal(r, torch.full_like(refs, 0.5)) for r in out.references)
    head = DeformableDETRHead(num_classes=3, embed_dims=C, num_layers=3).double()
    torch.nn.init.normal_(head.reg_branches[0].layers[-1].weight)  # non-zero deltas
    boxes = head(out).boxes_cxcywh
    delta = head.reg_branches[0](out.hidden_states)
    torch.testing.assert_close(boxes, delta.sigmoid())  # DETR's box: no anchor


def test_padded_memory_is_ignored():
    decoder = build()
    query, query_pos, refs = queries()
    enc = encoder_output()
    out = decoder(query, query_pos, refs, enc)
    enc.memory[1, 5:] += 100.0  # padded tokens of image 1
    again = decoder(query, query_pos, refs, enc)
    torch.testing.assert_close(again.hidden_states, out.hidden_states)


def test_refuses_bad_inputs_and_configs():
    decoder = build()
    query, query_pos, refs = queries()
    enc = encoder_output()
    memory_pos = enc.memory_pos
    enc.memory_pos = None
    with pytest.raises(ValueError, match='DetrDecoder: encoder_output.memory_pos is None'):
        decoder(query, query_pos, refs, enc)
    enc.memory_pos = memory_pos[:, :-1]
    with pytest.raises(ValueError, match='memory_pos must have the shape'):
        decoder(query, query_pos, refs, enc)
    with pytest.raises(ValueError, match='num_levels=1'):
        decoder(query, query_pos, refs, EncoderOutput(
            memory=enc.memory, padding_mask=enc.padding_mask,
            spatial_shapes=torch.tensor([[1, 4], [1, 3]]),
            level_start_index=torch.tensor([0, 4]), valid_ratios=torch.ones(B, 2, 2),
            memory_pos=enc.memory))
    with pytest.raises(ValueError, match='unknown keys'):
        MODELS.build(dict(type='DetrDecoder', embed_dims=C, layer_cfg=dict(num_points=4)))
    with pytest.raises(ValueError, match='num_layers must be >= 1'):
        MODELS.build(dict(type='DetrDecoder', num_layers=0, embed_dims=C))
    assert MODELS.get('DetrDecoder').refines_references is False
