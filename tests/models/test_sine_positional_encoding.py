"""SinePositionalEncoding against an explicit per-pixel formula."""
import math

import pytest
import torch

from mmdeform.models.positional_encodings import SinePositionalEncoding
from mmdeform.registry import MODELS


def padded_mask(valid_sizes, shape):
    """(B, H, W) bool mask, True outside each image's top-left (h, w) block."""
    mask = torch.ones(len(valid_sizes), *shape, dtype=torch.bool)
    for b, (h, w) in enumerate(valid_sizes):
        mask[b, :h, :w] = False
    return mask


def reference(mask, num_feats, temperature=10000.0, normalize=True, scale=2 * math.pi,
              eps=1e-6, offset=-0.5):
    """Loop implementation in float64: (B, 2 * num_feats, H, W)."""
    batch, height, width = mask.shape
    out = torch.zeros(batch, 2 * num_feats, height, width, dtype=torch.float64)
    valid = (~mask).double()
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                y, x = valid[b, :i + 1, j].sum().item(), valid[b, i, :j + 1].sum().item()
                if normalize:
                    y = (y + offset) / (valid[b, :, j].sum().item() + eps) * scale
                    x = (x + offset) / (valid[b, i, :].sum().item() + eps) * scale
                for k in range(num_feats):
                    freq = temperature ** (2 * (k // 2) / num_feats)
                    trig = math.sin if k % 2 == 0 else math.cos
                    out[b, k, i, j] = trig(y / freq)
                    out[b, num_feats + k, i, j] = trig(x / freq)
    return out


def test_matches_explicit_formula_on_valid_pixels():
    mask = padded_mask([(5, 4), (3, 6), (5, 6)], (5, 6))
    pe = MODELS.build(dict(type='SinePositionalEncoding', num_feats=16))
    out = pe(mask)
    assert out.shape == (3, 32, 5, 6) and out.dtype == torch.float32
    ref = reference(mask, 16)
    valid = (~mask)[:, None].expand_as(out)
    torch.testing.assert_close(out.double()[valid], ref[valid], rtol=0, atol=2e-6)


def test_default_config_is_the_official_one():
    pe = SinePositionalEncoding()
    assert (pe.num_feats, pe.temperature, pe.normalize) == (128, 10000, True)
    assert (pe.scale, pe.eps, pe.offset) == (2 * math.pi, 1e-6, -0.5)
    mask = padded_mask([(3, 2), (2, 3)], (3, 3))
    out = pe(mask)
    assert out.shape == (2, 256, 3, 3)
    valid = (~mask)[:, None].expand_as(out)
    torch.testing.assert_close(out.double()[valid], reference(mask, 128)[valid],
                               rtol=0, atol=2e-6)


def test_y_channels_first_then_x():
    pe = SinePositionalEncoding(num_feats=8)
    out = pe(torch.zeros(1, 4, 7, dtype=torch.bool))
    y_part, x_part = out[0, :8], out[0, 8:]
    # y varies with the row only, x with the column only
    assert torch.equal(y_part, y_part[:, :, :1].expand_as(y_part))
    assert torch.equal(x_part, x_part[:, :1, :].expand_as(x_part))
    assert not torch.equal(y_part[:, 0], y_part[:, 1])
    assert not torch.equal(x_part[:, :, 0], x_part[:, :, 1])
    # channel 0 is sin of the first normalized row center 0.5 / 4 * 2 pi
    assert out[0, 0, 0, 0].item() == pytest.approx(math.sin(0.5 / 4 * 2 * math.pi), abs=1e-6)
    assert out[0, 8, 0, 0].item() == pytest.approx(math.sin(0.5 / 7 * 2 * math.pi), abs=1e-6)


def test_interleaved_sin_cos_share_a_frequency():
    out = SinePositionalEncoding(num_feats=12)(padded_mask([(6, 5)], (7, 7)))
    squares = out[:, 0::2] ** 2 + out[:, 1::2] ** 2
    torch.testing.assert_close(squares, torch.ones_like(squares), rtol=0, atol=1e-6)


def test_valid_pixels_ignore_padding_amount():
    pe = SinePositionalEncoding(num_feats=8)
    alone = pe(torch.zeros(1, 4, 5, dtype=torch.bool))
    padded = pe(padded_mask([(4, 5)], (7, 9)))
    assert torch.equal(padded[:, :, :4, :5], alone)


def test_float32_island_under_double():
    pe = SinePositionalEncoding(num_feats=8).double()
    assert list(pe.parameters()) == [] and list(pe.buffers()) == []
    out = pe(padded_mask([(3, 4)], (4, 4)))
    assert out.dtype == torch.float32


def test_unnormalized_uses_raw_counts():
    mask = padded_mask([(3, 2)], (4, 3))
    out = SinePositionalEncoding(num_feats=4, normalize=False)(mask)
    ref = reference(mask, 4, normalize=False)
    valid = (~mask)[:, None].expand_as(out)
    torch.testing.assert_close(out.double()[valid], ref[valid], rtol=0, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match='even'):
        SinePositionalEncoding(num_feats=7)
    pe = SinePositionalEncoding(num_feats=4)
    with pytest.raises(ValueError, match=r'\(B, H, W\) bool'):
        pe(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match=r'\(B, H, W\) bool'):
        pe(torch.zeros(3, 3, dtype=torch.bool))
