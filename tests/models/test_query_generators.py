"""Tests of LearnedQueries and TwoStageProposals (tiny dims, CPU)."""
import math
from functools import partial

import numpy as np
import pytest
import torch

from mmdeform import testing
from mmdeform.models.query_generators import make_proposals, proposal_pos_embed
from mmdeform.registry import MODELS

C, B, NUM_CLASSES = 32, 2, 5
# level 5 proposes w = h = 0.05 * 2**5 = 1.6: invalid although not padded
SHAPES = [(8, 9), (4, 5), (2, 3), (1, 2), (1, 1), (1, 1)]
VALID = [[(8, 9), (4, 5), (2, 3), (1, 2), (1, 1), (1, 1)],  # valid (h, w) per image, level
         [(5, 6), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)]]
NUM_TOKENS = sum(h * w for h, w in SHAPES)


# (seed=0, dtype=float64) -> EncoderOutput over SHAPES with the padding of VALID
make_encoder_output = partial(testing.make_encoder_output, SHAPES, VALID, C)


def make_two_stage(num_queries=20):
    torch.manual_seed(0)
    return MODELS.build(dict(type='TwoStageProposals', num_queries=num_queries, embed_dims=C,
                             num_classes=NUM_CLASSES)).double()


def independent_proposals():
    """Proposal logits and the unusable mask computed with plain loops.

    As in the official model, boxes and the ratio p / (1 - p) are float32
    (numpy float32 arithmetic is IEEE, like torch's); the logit is the
    correctly rounded float32 log of that ratio.
    """
    f32 = np.float32
    logits = np.full((B, NUM_TOKENS, 4), np.inf, dtype=f32)
    unusable = np.ones((B, NUM_TOKENS), dtype=bool)
    for b in range(B):
        token = 0
        for level, (h, w) in enumerate(SHAPES):
            vh, vw = VALID[b][level]
            size = f32(0.05) * f32(2.0 ** level)
            for i in range(h):
                for j in range(w):
                    box = np.array([f32(j + 0.5) / f32(vw), f32(i + 0.5) / f32(vh), size, size],
                                   dtype=f32)
                    if i < vh and j < vw and np.all((box > f32(0.01)) & (box < f32(0.99))):
                        ratio = box / (f32(1) - box)
                        logits[b, token] = np.log(ratio.astype(np.float64)).astype(f32)
                        unusable[b, token] = False
                    token += 1
    return logits, unusable


def test_learned_queries():
    torch.manual_seed(0)
    generator = MODELS.build(dict(type='LearnedQueries', num_queries=7, embed_dims=C)).double()
    assert torch.count_nonzero(generator.reference_points.bias) == 0
    out = generator(make_encoder_output())
    weight = generator.query_embed.weight
    assert out.query.shape == out.query_pos.shape == (B, 7, C)
    assert out.reference_points.shape == (B, 7, 2)
    for b in range(B):
        assert torch.equal(out.query_pos[b], weight[:, :C])
        assert torch.equal(out.query[b], weight[:, C:])
    expected = torch.sigmoid(weight[:, :C] @ generator.reference_points.weight.T)
    torch.testing.assert_close(out.reference_points[0], expected, rtol=0, atol=1e-12)
    assert out.enc_logits is None and out.enc_boxes_cxcywh is None
    (out.query.sum() + out.query_pos.sum() + out.reference_points.sum()).backward()
    for name, param in generator.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_proposals_match_an_independent_computation():
    enc = make_encoder_output()
    proposals, unusable = make_proposals(enc.padding_mask, enc.spatial_shapes_list)
    assert proposals.dtype == torch.float32  # float32 island
    expected, expected_unusable = independent_proposals()
    assert np.array_equal(unusable.numpy(), expected_unusable)
    assert (~unusable).any()
    assert unusable[0].sum() == 1  # only the invalid last-level proposal
    assert unusable[1].sum() == 1 + enc.padding_mask[1].sum()
    assert torch.isinf(proposals[unusable]).all()
    # bit-exact float32 island (e.g. 3.5 / 6 in image 1, where a float32 log
    # is one ulp off the correctly rounded value)
    assert np.array_equal(proposals[~unusable].numpy(), expected[~expected_unusable])


def test_proposal_pos_embed_layout():
    gen = torch.Generator().manual_seed(0)
    coords = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    num_feats = 8
    pos = proposal_pos_embed(coords, num_feats=num_feats)
    assert pos.shape == (2, 3, 4 * num_feats)
    angle = coords.sigmoid() * 2 * math.pi
    for coord in range(4):
        for k in range(num_feats):
            freq = 10000 ** (2 * (k // 2) / num_feats)
            fn = torch.sin if k % 2 == 0 else torch.cos
            expected = fn(angle[..., coord] / freq)
            torch.testing.assert_close(pos[..., coord * num_feats + k], expected,
                                       rtol=0, atol=1e-6)


def test_two_stage_outputs_and_top_k():
    generator = make_two_stage(num_queries=20).eval()
    enc = make_encoder_output()
    out = generator(enc)
    assert out.query.shape == out.query_pos.shape == (B, 20, C)
    assert out.reference_points.shape == (B, 20, 4)
    assert not out.reference_points.requires_grad
    assert out.enc_logits.shape == (B, NUM_TOKENS, NUM_CLASSES)
    assert out.enc_boxes_cxcywh.shape == (B, NUM_TOKENS, 4)
    assert out.enc_boxes_cxcywh.dtype == torch.float64
    _, unusable = independent_proposals()
    unusable = torch.from_numpy(unusable)
    # +inf proposals give boxes of exactly 1.0; unusable tokens share one logit
    assert (out.enc_boxes_cxcywh[unusable] == 1.0).all()
    assert (out.enc_boxes_cxcywh[~unusable] < 1.0).all()
    for b in range(B):
        logits = out.enc_logits[b][unusable[b]]
        assert (logits == logits[0]).all()
    # references are the boxes of the top-k class-0 tokens, in torch.topk order
    index = torch.topk(out.enc_logits[..., 0], 20, dim=1).indices
    for b in range(B):
        assert torch.equal(out.reference_points[b], out.enc_boxes_cxcywh[b, index[b]])
    # queries come from the sine encoding of the selected (logit-space) boxes
    coords = torch.logit(out.reference_points.clamp(max=1 - 1e-12))
    pos = generator.pos_trans_norm(generator.pos_trans(proposal_pos_embed(coords, C // 2)))
    torch.testing.assert_close(out.query_pos, pos[..., :C], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.query, pos[..., C:], rtol=0, atol=1e-6)


def test_unusable_tokens_are_selected_when_k_covers_them():
    generator = make_two_stage(num_queries=NUM_TOKENS).eval()
    out = generator(make_encoder_output())
    _, unusable = independent_proposals()
    num_unusable = unusable.sum(1)
    for b in range(B):
        selected_ones = (out.reference_points[b] == 1.0).all(-1).sum()
        assert selected_ones == num_unusable[b]
    assert num_unusable[1] > 0


def test_padded_memory_is_ignored():
    generator = make_two_stage().eval()
    enc = make_encoder_output()
    out = generator(enc)
    enc.memory = enc.memory.masked_fill(enc.padding_mask[..., None], 7.0)
    out2 = generator(enc)
    assert torch.equal(out.enc_logits, out2.enc_logits)
    assert torch.equal(out.query, out2.query)


def test_too_few_tokens_raise():
    generator = make_two_stage(num_queries=NUM_TOKENS + 1)
    with pytest.raises(ValueError, match='fewer than num_queries'):
        generator(make_encoder_output())


def test_official_init_and_gradients():
    generator = make_two_stage()
    assert torch.allclose(generator.cls_branch.bias,
                          torch.full((NUM_CLASSES,), -math.log(99.0), dtype=torch.float64))
    last = generator.reg_branch.layers[-1]
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    with torch.no_grad():  # non-zero last layer so earlier layers get gradients too
        last.weight.normal_(0, 0.1)
    out = generator.train()(make_encoder_output())
    loss = (out.enc_logits.sum() + out.enc_boxes_cxcywh.sum()
            + out.query.pow(2).sum() + out.query_pos.sum())
    loss.backward()
    for name, param in generator.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
