"""MultiScaleProjection: the official input projections and extra level."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmdeform.models.necks import MultiScaleProjection
from mmdeform.registry import MODELS

FIXTURES = Path(__file__).resolve().parents[3] / 'shared' / 'fixtures' / 'official_parity'


def make_feats(channels, sizes, batch=2, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, c, h, w, generator=gen, dtype=dtype)
                 for c, (h, w) in zip(channels, sizes))


def test_four_levels_shapes_and_official_layout():
    neck = MODELS.build(dict(type='MultiScaleProjection', in_channels=[512, 1024, 2048],
                             out_channels=256, num_extra_levels=1))
    assert neck.num_levels == 4
    outs = neck(make_feats([512, 1024, 2048], [(16, 21), (8, 11), (4, 6)]))
    assert [tuple(o.shape) for o in outs] == [(2, 256, 16, 21), (2, 256, 8, 11),
                                              (2, 256, 4, 6), (2, 256, 2, 3)]
    shapes = {k: tuple(v.shape) for k, v in neck.state_dict().items()}
    assert shapes == {
        'projections.0.conv.weight': (256, 512, 1, 1), 'projections.0.conv.bias': (256,),
        'projections.0.gn.weight': (256,), 'projections.0.gn.bias': (256,),
        'projections.1.conv.weight': (256, 1024, 1, 1), 'projections.1.conv.bias': (256,),
        'projections.1.gn.weight': (256,), 'projections.1.gn.bias': (256,),
        'projections.2.conv.weight': (256, 2048, 1, 1), 'projections.2.conv.bias': (256,),
        'projections.2.gn.weight': (256,), 'projections.2.gn.bias': (256,),
        'projections.3.conv.weight': (256, 2048, 3, 3), 'projections.3.conv.bias': (256,),
        'projections.3.gn.weight': (256,), 'projections.3.gn.bias': (256,),
    }
    assert neck.projections[3].conv.stride == (2, 2) and neck.projections[3].conv.padding == (1, 1)
    assert neck.projections[3].gn.num_groups == 32


def test_single_level():
    neck = MultiScaleProjection(in_channels=[2048], num_extra_levels=0)
    assert neck.num_levels == 1 and len(neck.projections) == 1
    (out,) = neck(make_feats([2048], [(3, 5)]))
    assert tuple(out.shape) == (2, 256, 3, 5)


def test_levels_match_explicit_conv_groupnorm_float64():
    neck = MultiScaleProjection(in_channels=[8, 16], out_channels=32, num_extra_levels=2,
                                num_groups=4).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in neck.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
    feats = make_feats([8, 16], [(7, 9), (4, 5)], dtype=torch.float64)

    def conv_gn(level, x, **conv_kwargs):
        conv, norm = neck.projections[level].conv, neck.projections[level].gn
        y = F.conv2d(x, conv.weight, conv.bias, **conv_kwargs)
        return F.group_norm(y, 4, norm.weight, norm.bias, eps=1e-5)

    with torch.no_grad():
        outs = neck(feats)
        expected = [conv_gn(0, feats[0]), conv_gn(1, feats[1])]
        expected.append(conv_gn(2, feats[1], stride=2, padding=1))  # raw C_last
        expected.append(conv_gn(3, expected[2], stride=2, padding=1))  # previous extra
    assert [tuple(o.shape[2:]) for o in outs] == [(7, 9), (4, 5), (2, 3), (1, 2)]
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_extra_level_reads_the_raw_last_map():
    neck = MultiScaleProjection(in_channels=[8, 16], out_channels=32, num_groups=4)
    feats = make_feats([8, 16], [(8, 8), (4, 4)])
    with torch.no_grad():
        base = neck(feats)
        # changing the last level's projection must not touch the extra level
        neck.projections[1].conv.weight.mul_(3.0)
        neck.projections[1].gn.bias.add_(1.0)
        changed = neck(feats)
        assert not torch.allclose(changed[1], base[1])
        assert torch.equal(changed[2], base[2])
        # the finer map does not feed it either, the raw last map does
        finer = neck((feats[0] + 1.0, feats[1]))
        assert torch.equal(finer[2], base[2])
        coarser = neck((feats[0], feats[1] + torch.randn_like(feats[1])))
        assert not torch.allclose(coarser[2], changed[2])


def test_default_initialization():
    torch.manual_seed(0)
    neck = MultiScaleProjection(in_channels=[512, 1024, 2048])
    for conv, norm in ((m.conv, m.gn) for m in neck.projections):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert conv.weight.abs().max() <= bound
        assert abs(conv.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
        assert torch.all(conv.bias == 0)
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    neck.projections[0].conv.bias.data.fill_(5)
    neck.init_weights()
    assert torch.all(neck.projections[0].conv.bias == 0)


def test_wrong_inputs_are_named():
    neck = MultiScaleProjection(in_channels=[8, 16], out_channels=32, num_groups=4)
    with pytest.raises(ValueError, match='expected 2 feature maps'):
        neck(make_feats([8, 16, 32], [(4, 4)] * 3))
    with pytest.raises(ValueError, match=r'feats\[1\] must be \(B, 16, H, W\)'):
        neck(make_feats([8, 12], [(4, 4)] * 2))


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=[]), 'in_channels'),
    (dict(num_extra_levels=-1), 'num_extra_levels'),
    (dict(out_channels=100, num_groups=32), 'divisible'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleProjection(**kwargs)


@pytest.mark.skipif(not (FIXTURES / 'base' / 'outputs.pt').exists(),
                    reason='official parity fixtures not found')
def test_level_sizes_match_the_official_model():
    from mmdeform.models.backbones import ResNet
    inputs = torch.load(FIXTURES / 'base' / 'inputs.pt', weights_only=True)
    debug = torch.load(FIXTURES / 'base' / 'outputs.pt', weights_only=True)['debug']
    # sizes depend on the strides only, which every depth shares: R18 is cheaper
    backbone = ResNet(depth=18, out_indices=(1, 2, 3))
    neck = MultiScaleProjection(in_channels=backbone.out_channels, num_extra_levels=1)
    with torch.no_grad():
        outs = neck(backbone(inputs['images'][:1]))
    sizes = torch.tensor([o.shape[2:] for o in outs], dtype=torch.int64)
    assert torch.equal(sizes, debug['spatial_shapes'])
