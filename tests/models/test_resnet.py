"""ResNet backbone, FrozenBatchNorm2d and strict pretrained loading."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmdeform.fileio import CheckpointMismatchError
from mmdeform.models.backbones import FrozenBatchNorm2d, ResNet
from mmdeform.registry import MODELS

# torchvision's parameter counts (weights.IMAGENET1K_V1 meta) minus the fc layer
# (512 * 1000 + 1000 for BasicBlock nets, 2048 * 1000 + 1000 for Bottleneck nets)
TORCHVISION_PARAMS_WITHOUT_FC = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
}


def random_stats(bn, gen):
    """Fill a (Frozen)BatchNorm's weight, bias and running stats with random values."""
    c = bn.running_mean.numel()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.1)


def torchvision_state_dict(model, gen):
    """``model``'s tensors, randomized, in torchvision's format (fc, num_batches_tracked)."""
    sd = {}
    for key, value in model.state_dict().items():
        sd[key] = torch.randn(value.shape, generator=gen)
        if key.endswith('running_var'):
            sd[key] = sd[key].abs() + 0.5
            sd[key[:-len('running_var')] + 'num_batches_tracked'] = torch.tensor(7)
    width = model.out_channels[-1]
    sd['fc.weight'] = torch.randn(1000, width, generator=gen)
    sd['fc.bias'] = torch.randn(1000, generator=gen)
    return sd


# ---------------------------------------------------------------- FrozenBatchNorm2d

def test_frozen_bn_formula_and_batchnorm_eval_float64():
    gen = torch.Generator().manual_seed(0)
    frozen = FrozenBatchNorm2d(6).double()
    reference = nn.BatchNorm2d(6, eps=1e-5).double().eval()
    random_stats(frozen, gen)
    reference.load_state_dict(frozen.state_dict(), strict=False)
    x = torch.randn(2, 6, 5, 4, generator=gen, dtype=torch.float64)
    y = frozen(x)
    assert y.dtype == torch.float64
    w, b = frozen.weight.view(1, -1, 1, 1), frozen.bias.view(1, -1, 1, 1)
    rm, rv = frozen.running_mean.view(1, -1, 1, 1), frozen.running_var.view(1, -1, 1, 1)
    s = w * torch.rsqrt(rv + 1e-5)
    assert torch.equal(y, x * s + (b - rm * s))
    torch.testing.assert_close(y, reference(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(y, (x - rm) / torch.sqrt(rv + 1e-5) * w + b, rtol=0, atol=1e-12)


def test_frozen_bn_has_no_parameters_and_starts_as_identity():
    bn = FrozenBatchNorm2d(3)
    assert list(bn.parameters()) == []
    assert sorted(dict(bn.named_buffers())) == ['bias', 'running_mean', 'running_var', 'weight']
    x = torch.randn(1, 3, 2, 2)
    expected = x / math.sqrt(1 + 1e-5)  # identity up to eps
    torch.testing.assert_close(bn(x), expected)
    bn.train()
    torch.testing.assert_close(bn(x), expected)


def test_frozen_bn_drops_num_batches_tracked():
    gen = torch.Generator().manual_seed(1)
    source = nn.BatchNorm2d(4)
    random_stats(source, gen)
    assert 'num_batches_tracked' in source.state_dict()
    frozen = FrozenBatchNorm2d(4)
    result = frozen.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(frozen.running_var, source.running_var.float())
    assert 'num_batches_tracked' not in frozen.state_dict()


# ---------------------------------------------------------------- architecture

@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_channels_strides_and_parameter_count(depth):
    model = ResNet(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=-1)
    width = 64 if depth < 50 else 256
    assert model.out_channels == [width, 2 * width, 4 * width, 8 * width]
    assert model.out_strides == [4, 8, 16, 32]
    count = sum(p.numel() for p in model.parameters())
    count += sum(m.weight.numel() + m.bias.numel()
                 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert count == TORCHVISION_PARAMS_WITHOUT_FC[depth]
    if depth == 101:
        return  # same stages as R50 with more blocks; spare the slow forward
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 40, 33))
    assert [tuple(o.shape) for o in outs] == [
        (1, c, -(-40 // s), -(-33 // s)) for c, s in zip(model.out_channels, model.out_strides)]


@pytest.mark.parametrize('depth', [18, 50])
def test_base_channels_scales_every_stage(depth):
    """MMDetection's ``base_channels``: 32 halves every width; 64 is the default."""
    assert ResNet(depth=depth).base_channels == 64
    half = ResNet(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=-1, base_channels=32)
    full = ResNet(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=-1)
    assert half.out_channels == [c // 2 for c in full.out_channels]
    assert half.out_strides == full.out_strides
    assert half.conv1.out_channels == 32
    assert list(half.state_dict()) == list(full.state_dict())  # same names, thinner tensors
    with torch.no_grad():
        outs = half(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == half.out_channels


def test_default_out_indices_give_c3_c4_c5_with_ceil_sizes():
    model = MODELS.build(dict(type='ResNet', depth=50))
    assert model.out_channels == [512, 1024, 2048] and model.out_strides == [8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 66, 35))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 9, 5), (1, 1024, 5, 3), (1, 2048, 3, 2)]


def test_torchvision_names_no_fc_and_only_needed_stages():
    model = ResNet(depth=50)
    keys = list(model.state_dict())
    assert keys[:5] == ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean',
                        'bn1.running_var']
    assert 'layer1.0.downsample.0.weight' in keys and 'layer4.0.downsample.1.running_var' in keys
    assert 'layer4.2.conv3.weight' in keys
    assert not any(k.startswith('fc.') or 'num_batches_tracked' in k for k in keys)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(not isinstance(m, nn.BatchNorm2d) for m in model.modules())
    small = ResNet(depth=18, out_indices=(0, 1))
    assert not any(k.startswith(('layer3', 'layer4')) for k in small.state_dict())
    assert small.out_channels == [64, 128]


def test_stride_on_the_3x3_conv_and_bottleneck_forward_float64():
    model = ResNet(depth=50).double().eval()
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)
    gen = torch.Generator().manual_seed(2)
    for bn in (block.bn1, block.bn2, block.bn3, block.downsample[1]):
        random_stats(bn, gen)
    x = torch.randn(1, 256, 9, 7, generator=gen, dtype=torch.float64)

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, 1e-5)

    out = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight)))
    out = F.relu(bn(block.bn2, F.conv2d(out, block.conv2.weight, stride=2, padding=1)))
    out = bn(block.bn3, F.conv2d(out, block.conv3.weight))
    identity = bn(block.downsample[1], F.conv2d(x, block.downsample[0].weight, stride=2))
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(out + identity), rtol=0, atol=1e-12)


def test_default_init_kaiming_fan_out_and_identity_bn():
    torch.manual_seed(0)
    model = ResNet(depth=18, out_indices=(3,))
    weight = model.layer4[1].conv1.weight  # fan_out = 512 * 3 * 3
    assert abs(weight.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.02
    assert abs(weight.mean().item()) < 1e-3
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)


# ---------------------------------------------------------------- freezing

@pytest.mark.parametrize('frozen_stages, frozen_prefixes', [
    (-1, ()),
    (0, ('conv1',)),
    (1, ('conv1', 'layer1')),
    (3, ('conv1', 'layer1', 'layer2', 'layer3')),
])
def test_frozen_stages_get_no_gradient(frozen_stages, frozen_prefixes):
    model = ResNet(depth=18, out_indices=(1, 2, 3), frozen_stages=frozen_stages)
    outs = model(torch.randn(1, 3, 32, 32))
    sum(o.sum() for o in outs).backward()
    for name, param in model.named_parameters():
        frozen = name.startswith(frozen_prefixes)
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
        if not frozen:
            assert param.grad.abs().sum() > 0, name


def test_frozen_stages_survive_double_and_default_is_official():
    model = ResNet(depth=18).double()
    trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'layer2', 'layer3', 'layer4'}


# ---------------------------------------------------------------- DC5

def test_dc5_dilates_layer4_like_torchvision():
    plain = ResNet(depth=50, out_indices=(1, 2, 3))
    dc5 = ResNet(depth=50, out_indices=(1, 2, 3), dilate_last_stage=True)
    assert dc5.out_strides == [8, 16, 16] and dc5.out_channels == plain.out_channels
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert {k: v.shape for k, v in dc5.state_dict().items()} == shapes
    first = dc5.layer4[0]
    assert first.conv2.stride == (1, 1) and first.conv2.dilation == (1, 1)
    assert first.conv2.padding == (1, 1) and first.downsample[0].stride == (1, 1)
    for block in dc5.layer4[1:]:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
    for block in dc5.layer3:
        assert block.conv2.dilation == (1, 1)
    dc5.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        out_plain, out_dc5 = plain(x), dc5(x)
    assert tuple(out_dc5[2].shape) == (1, 2048, 3, 2)
    assert torch.equal(out_plain[0], out_dc5[0]) and torch.equal(out_plain[1], out_dc5[1])


def test_dc5_rejects_basic_blocks_and_missing_last_stage():
    with pytest.raises(ValueError, match='Bottleneck'):
        ResNet(depth=18, dilate_last_stage=True)
    with pytest.raises(ValueError, match='stage 3'):
        ResNet(depth=50, out_indices=(1, 2), dilate_last_stage=True)


@pytest.mark.parametrize('kwargs, match', [
    (dict(depth=152), 'depth'),
    (dict(out_indices=()), 'out_indices'),
    (dict(out_indices=(2, 1)), 'out_indices'),
    (dict(out_indices=(1, 4)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(base_channels=0), 'base_channels'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        ResNet(depth=18)(torch.randn(1, 1, 32, 32))


# ---------------------------------------------------------------- pretrained

@pytest.mark.parametrize('wrapper', [None, 'state_dict', 'model'])
def test_pretrained_torchvision_checkpoint(tmp_path, wrapper):
    gen = torch.Generator().manual_seed(3)
    source = torchvision_state_dict(ResNet(depth=18, out_indices=(0, 1, 2, 3)), gen)
    path = tmp_path / 'resnet18.pth'
    torch.save(source if wrapper is None else {wrapper: source, 'meta': {'epoch': 1}}, path)
    model = MODELS.build(dict(type='ResNet', depth=18, out_indices=(1, 2, 3),
                              init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    assert model.is_init
    state = model.state_dict()
    assert len(state) == len(source) - 2 - 20  # fc weight/bias, 20 num_batches_tracked
    for key, value in state.items():
        assert torch.equal(value, source[key]), key
    assert not model.conv1.weight.requires_grad and model.layer2[0].conv1.weight.requires_grad


def test_pretrained_with_prefix_and_module_wrapper(tmp_path):
    gen = torch.Generator().manual_seed(4)
    source = torchvision_state_dict(ResNet(depth=18, out_indices=(3,)), gen)
    nested = {f'module.backbone.0.body.{k}': v for k, v in source.items()}
    nested['module.class_embed.weight'] = torch.zeros(2, 2)
    path = tmp_path / 'detector.pth'
    torch.save({'model': nested}, path)
    model = ResNet(depth=18, out_indices=(3,), init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.0.body'))
    model.init_weights()
    assert torch.equal(model.layer4[1].bn2.running_mean, source['layer4.1.bn2.running_mean'])


def test_pretrained_wrong_shape_names_the_key(tmp_path):
    gen = torch.Generator().manual_seed(5)
    source = torchvision_state_dict(ResNet(depth=18, out_indices=(3,)), gen)
    source['layer3.1.conv2.weight'] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / 'bad.pth'
    torch.save(source, path)
    model = ResNet(depth=18, out_indices=(3,), init_cfg=dict(type='Pretrained',
                                                             checkpoint=str(path)))
    with pytest.raises(CheckpointMismatchError, match=r'layer3\.1\.conv2\.weight has shape '
                       r'\(256, 256, 1, 1\) in the checkpoint'):
        model.init_weights()
    assert not torch.equal(model.conv1.weight, source['conv1.weight'])  # nothing half-loaded


def test_pretrained_of_another_depth_is_an_error(tmp_path):
    gen = torch.Generator().manual_seed(6)
    path = tmp_path / 'r18.pth'
    torch.save(torchvision_state_dict(ResNet(depth=18, out_indices=(3,)), gen), path)
    model = ResNet(depth=34, out_indices=(1,), init_cfg=dict(type='Pretrained',
                                                            checkpoint=str(path)))
    with pytest.raises(CheckpointMismatchError, match=r'missing keys .*layer1\.2\.conv1\.weight'):
        model.init_weights()
    model = ResNet(depth=18, out_indices=(3,), init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(KeyError, match='prefix'):
        model.init_weights()


def test_pretrained_rejects_torchvision_scheme():
    model = ResNet(depth=18, init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18'))
    with pytest.raises(ValueError, match='torchvision'):
        model.init_weights()
