"""FPN: lateral + top-down + output convs, extra levels as MultiScaleProjection."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmdeform.models.necks import FPN, MultiScaleProjection
from mmdeform.registry import MODELS

CHANNELS = [8, 16, 24]
SIZES = [(15, 21), (8, 11), (4, 6)]  # odd sizes, as ResNet gives for odd images


def make_feats(channels=CHANNELS, sizes=SIZES, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=gen, dtype=dtype)
            for c, (h, w) in zip(channels, sizes)]


def make_fpn(num_extra_levels=1, seed=0):
    torch.manual_seed(seed)
    return MODELS.build(dict(type='FPN', in_channels=CHANNELS, out_channels=16,
                             num_extra_levels=num_extra_levels, num_groups=4))


def test_shapes_with_odd_sizes_and_extra_levels():
    fpn = make_fpn(num_extra_levels=2)
    assert fpn.num_levels == 5
    outs = fpn(make_feats())
    assert [tuple(o.shape) for o in outs] == [(2, 16, 15, 21), (2, 16, 8, 11), (2, 16, 4, 6),
                                              (2, 16, 2, 3), (2, 16, 1, 2)]
    assert fpn.extra_convs[0].conv.in_channels == 24 and fpn.extra_convs[1].conv.in_channels == 16
    assert fpn.extra_convs[0].conv.stride == (2, 2)
    single = FPN(in_channels=[24], out_channels=16, num_extra_levels=0, num_groups=4)
    assert [tuple(o.shape) for o in single(make_feats()[2:])] == [(2, 16, 4, 6)]


def conv_gn(module, x):
    conv, norm = module.conv, module.gn
    x = F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding)
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def test_matches_explicit_pyramid_float64():
    fpn = make_fpn(num_extra_levels=2).double()
    with torch.no_grad():  # non-trivial biases and norm affines
        for param in fpn.parameters():
            if param.dim() == 1:
                param.normal_()
    feats = make_feats(dtype=torch.float64)
    laterals = [conv_gn(m, f) for m, f in zip(fpn.lateral_convs, feats)]
    p5 = laterals[2]
    p4 = laterals[1] + F.interpolate(p5, size=(8, 11), mode='nearest')
    p3 = laterals[0] + F.interpolate(p4, size=(15, 21), mode='nearest')
    extra0 = conv_gn(fpn.extra_convs[0], feats[2])
    expected = [conv_gn(fpn.output_convs[i], p) for i, p in enumerate((p3, p4, p5))]
    expected += [extra0, conv_gn(fpn.extra_convs[1], extra0)]
    for out, exp in zip(fpn(feats), expected):
        torch.testing.assert_close(out, exp, rtol=0, atol=1e-12)


def test_top_down_pathway_reaches_the_finest_level():
    feats = make_feats()
    changed = feats[:2] + [feats[2] + 1.0 + torch.randn_like(feats[2])]
    fpn = make_fpn()
    assert not torch.allclose(fpn(changed)[0], fpn(feats)[0])
    torch.manual_seed(0)
    projection = MultiScaleProjection(in_channels=CHANNELS, out_channels=16,
                                      num_extra_levels=1, num_groups=4)
    assert torch.equal(projection(changed)[0], projection(feats)[0])


def test_default_init_is_xavier_with_zero_bias():
    fpn = make_fpn()
    with torch.no_grad():
        for param in fpn.parameters():
            param.fill_(0.5)
    fpn.init_weights()
    for convs in (fpn.lateral_convs, fpn.output_convs, fpn.extra_convs):
        for conv, norm in ((m.conv, m.gn) for m in convs):
            fan_in = conv.weight[0].numel()
            fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert conv.weight.abs().max() <= bound and conv.weight.std() > bound / 3
            assert (conv.bias == 0).all()
            assert (norm.weight == 1).all() and (norm.bias == 0).all()


def test_gradients_reach_every_parameter():
    fpn = make_fpn(num_extra_levels=2)
    sum(o.pow(2).sum() for o in fpn(make_feats())).backward()
    for name, param in fpn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='in_channels must be a non-empty list'):
        FPN(in_channels=[])
    with pytest.raises(ValueError, match='in_channels must be'):
        FPN(in_channels=[8, -1])
    with pytest.raises(ValueError, match='num_extra_levels must be >= 0'):
        FPN(in_channels=[8], num_extra_levels=-1)
    with pytest.raises(ValueError, match='divisible by num_groups'):
        FPN(in_channels=[8], out_channels=10, num_groups=4)
    fpn = make_fpn()
    with pytest.raises(ValueError, match='expected 3 feature maps'):
        fpn(make_feats()[:2])
    with pytest.raises(ValueError, match=r'feats\[1\] must be \(B, 16, H, W\)'):
        fpn(make_feats(channels=[8, 12, 24]))
