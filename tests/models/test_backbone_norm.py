"""ResNet ``norm_cfg`` / ``norm_eval``: FrozenBN, BN, SyncBN, GN; BN -> FrozenBN loading."""
import pytest
import torch
from mmengine.config import Config
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdeform import testing
from mmdeform.apis import init_detector
from mmdeform.fileio import CheckpointMismatchError
from mmdeform.models.backbones import FrozenBatchNorm2d, ResNet
from mmdeform.models.backbones.norm import build_norm_layer
from mmdeform.models.layers import SyncBatchNorm
from mmdeform.registry import MODELS

pytestmark = pytest.mark.usefixtures('one_thread')

NORM_CFGS = {
    'FrozenBN': dict(type='FrozenBN'),
    'BN': dict(type='BN', requires_grad=True),
    'SyncBN': dict(type='SyncBN', requires_grad=True),
    'GN': dict(type='GN', num_groups=32, requires_grad=True),
}
NORM_CLASSES = {'FrozenBN': FrozenBatchNorm2d, 'BN': nn.BatchNorm2d, 'SyncBN': SyncBatchNorm,
                'GN': nn.GroupNorm}
# ResNet-18 up to layer2: the channels of its 10 norm layers (stem, layer1, layer2)
R18_TO_LAYER2_NORM_CHANNELS = [64] + [64] * 4 + [128] * 5


def small_resnet(norm_cfg, **kwargs):
    args = dict(depth=18, out_indices=(0, 1), frozen_stages=-1, norm_eval=False)
    args.update(kwargs)
    return ResNet(norm_cfg=norm_cfg, **args)


def norm_layers(model):
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (FrozenBatchNorm2d, _BatchNorm, nn.GroupNorm))}


@pytest.mark.parametrize('kind', sorted(NORM_CFGS))
def test_each_norm_type_builds_and_trains_a_step(kind):
    torch.manual_seed(0)
    model = small_resnet(NORM_CFGS[kind])
    model.init_weights()
    layers = norm_layers(model)
    assert [type(m) for m in layers.values()] == [NORM_CLASSES[kind]] * 10
    assert sorted(layers) == sorted(n for n in layers if n.rsplit('.', 1)[-1] in ('bn1', 'bn2')
                                    or n.endswith('downsample.1'))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = sum(out.square().mean() for out in model(torch.randn(2, 3, 32, 32)))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert 'conv1.weight' in changed and 'layer2.1.conv2.weight' in changed
    norm_keys = {k for k in before if k.startswith(tuple(f'{n}.' for n in layers))}
    if kind == 'FrozenBN':
        assert not changed & norm_keys
    else:
        assert {'bn1.weight', 'bn1.bias', 'layer2.0.downsample.1.weight'} <= changed
    if kind in ('BN', 'SyncBN'):  # outside a process group SyncBN is BN
        assert {'bn1.running_mean', 'layer1.0.bn2.running_var'} <= changed


@pytest.mark.parametrize('kind, requires_grad', [  # FrozenBN with True: test_hostile_norm_cfg
    ('FrozenBN', False), ('BN', True), ('BN', False), ('SyncBN', True), ('SyncBN', False),
    ('GN', True), ('GN', False)])
def test_trainable_parameters(kind, requires_grad):
    cfg = dict(NORM_CFGS[kind], requires_grad=requires_grad)
    model = small_resnet(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    convs = {n for n, p in model.named_parameters() if p.dim() == 4}
    frozen_conv_model = small_resnet(dict(type='FrozenBN'))
    assert convs == {n for n, _ in frozen_conv_model.named_parameters()}
    norm_params = set(dict(model.named_parameters())) - convs
    if kind == 'FrozenBN':
        assert not norm_params  # its four tensors are buffers
    else:
        assert len(norm_params) == 2 * 10
        assert sum(dict(model.named_parameters())[n].numel() for n in norm_params) == \
            2 * sum(R18_TO_LAYER2_NORM_CHANNELS)
    assert trainable == convs | (norm_params if requires_grad else set())


def test_state_dict_keys_of_bn_are_frozen_bn_keys_plus_step_counters():
    frozen = set(small_resnet(dict(type='FrozenBN')).state_dict())
    bn = set(small_resnet(dict(type='BN')).state_dict())
    counters = {k for k in bn if k.endswith('.num_batches_tracked')}
    assert len(counters) == 10 and bn - counters == frozen
    assert set(small_resnet(dict(type='SyncBN')).state_dict()) == bn


def test_default_is_frozen_bn_with_the_official_keys():
    model = ResNet(depth=50)
    assert model.norm_cfg == dict(type='FrozenBN') and model.norm_eval
    assert all(isinstance(m, FrozenBatchNorm2d) for m in norm_layers(model).values())
    assert 'layer1.0.downsample.1.running_var' in model.state_dict()


@pytest.mark.parametrize('norm_eval', [True, False])
def test_norm_eval_keeps_running_stats(norm_eval):
    model = small_resnet(dict(type='BN', requires_grad=True), norm_eval=norm_eval).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training is not norm_eval for m in bns)
    assert model.layer1[0].conv1.training  # only norm layers are switched
    model(torch.randn(2, 3, 32, 32) * 3 + 1)
    updated = [not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns]
    assert all(u is not norm_eval for u in updated)
    assert all(m.weight.requires_grad for m in bns)  # norm_eval does not freeze the affine


def test_requires_grad_false_still_updates_statistics_without_norm_eval():
    model = small_resnet(dict(type='BN', requires_grad=False), norm_eval=False).train()
    model(torch.randn(2, 3, 32, 32) + 2)
    assert not model.bn1.weight.requires_grad
    assert not torch.equal(model.bn1.running_mean, torch.zeros(64))


@pytest.mark.parametrize('kind', ['BN', 'SyncBN', 'GN'])
def test_frozen_stages_with_every_norm_type(kind):
    model = small_resnet(NORM_CFGS[kind], frozen_stages=1).train()
    for name, param in model.named_parameters():
        assert param.requires_grad is not name.startswith(('conv1', 'bn1', 'layer1')), name
    frozen_norms = [m for n, m in norm_layers(model).items() if n.startswith(('bn1', 'layer1'))]
    live_norms = [m for n, m in norm_layers(model).items() if n.startswith('layer2')]
    assert not any(m.training for m in frozen_norms) and all(m.training for m in live_norms)
    if kind != 'GN':
        model(torch.randn(2, 3, 32, 32) + 2)
        assert all(int(m.num_batches_tracked) == 0 for m in frozen_norms)
        assert all(int(m.num_batches_tracked) == 1 for m in live_norms)
    model.eval().train()  # train() again keeps them frozen
    assert not any(m.training for m in frozen_norms)


@pytest.mark.parametrize('kind', ['BN', 'GN'])
def test_init_weights_resets_norm_layers_to_identity(kind):
    model = small_resnet(NORM_CFGS[kind])
    with torch.no_grad():
        for m in norm_layers(model).values():
            m.weight.uniform_(2, 3)
            m.bias.uniform_(1, 2)
            if kind == 'BN':
                m.running_mean.fill_(5)
    model.init_weights()
    for m in norm_layers(model).values():
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
        if kind == 'BN':
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))


def test_registry_builds_the_lead_s_override():
    cfg = dict(type='ResNet', depth=18, frozen_stages=-1, init_cfg=None, out_indices=(1, 2, 3),
               norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)
    model = MODELS.build(cfg).train()
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(p.requires_grad for p in model.parameters())


def trained_bn_state(model, gen):
    """Give every BN layer of ``model`` non-trivial affine terms and statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(123)


@pytest.mark.parametrize('eps', [1e-5, 1e-3])
def test_bn_checkpoint_loads_into_frozen_bn(eps):
    gen = torch.Generator().manual_seed(0)
    bn_model = small_resnet(dict(type='BN', eps=eps)).double()
    trained_bn_state(bn_model, gen)
    frozen_model = small_resnet(dict(type='FrozenBN', eps=eps)).double()
    frozen_model.load_state_dict(bn_model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    for ours, theirs in zip(frozen_model(x), bn_model.eval()(x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    wrong_eps = small_resnet(dict(type='FrozenBN', eps=eps * 10)).double()
    wrong_eps.load_state_dict(bn_model.state_dict())
    assert not torch.allclose(wrong_eps(x)[0], bn_model(x)[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('norm', ['BN', 'GN'])
def test_pretrained_init_cfg_loads_into_a_trainable_norm_backbone(norm, tmp_path):
    # checkpoints never carry BN's step counters (load_pretrained drops them); a BN
    # backbone keeps its own instead of refusing the checkpoint as incomplete
    gen = torch.Generator().manual_seed(0)
    norm_cfg = dict(type='BN') if norm == 'BN' else dict(type='GN', num_groups=8)
    source = small_resnet(norm_cfg)
    trained_bn_state(source, gen)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    path = str(tmp_path / 'backbone.pth')
    torch.save(dict(state_dict=source.state_dict()), path)
    target = small_resnet(dict(norm_cfg, requires_grad=True))
    target.init_cfg = dict(type='Pretrained', checkpoint=path)
    target.init_weights()
    for key, value in source.state_dict().items():
        if key.endswith('num_batches_tracked'):
            assert target.state_dict()[key] == 0  # its own counter, not the source's 123
        else:
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    incomplete = {k: v for k, v in source.state_dict().items()
                  if not k.startswith('layer1.0.bn1.w')}
    torch.save(incomplete, path)
    with pytest.raises(CheckpointMismatchError, match=r'1 missing keys .*layer1\.0\.bn1\.weight'):
        target.init_weights()


def test_frozen_bn_drops_only_the_step_counter():
    bn_state = small_resnet(dict(type='BN')).state_dict()
    bn_state['bn1.momentum'] = torch.tensor(0.1)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*bn1\.momentum'):
        small_resnet(dict(type='FrozenBN')).load_state_dict(bn_state, strict=True)


def test_init_detector_loads_a_bn_checkpoint_into_the_frozen_bn_config(tiny_config, tmp_path):
    bn_cfg = Config.fromfile(tiny_config)
    bn_cfg.model.backbone.update(norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)
    torch.manual_seed(0)
    bn_detector = init_detector(bn_cfg)
    trained_bn_state(bn_detector.backbone, torch.Generator().manual_seed(1))
    checkpoint = tmp_path / 'bn.pth'
    torch.save({'state_dict': bn_detector.state_dict()}, checkpoint)
    frozen_detector = init_detector(Config.fromfile(tiny_config), str(checkpoint), strict=True)
    assert isinstance(frozen_detector.backbone.bn1, FrozenBatchNorm2d)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = frozen_detector(images, mode='tensor')
        theirs = bn_detector.eval()(images, mode='tensor')
    for a, b in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cfg, error, pattern', [
    (dict(type='LayerNorm'), KeyError, r"norm_cfg\.type must be one of .*'LayerNorm'"),
    (dict(requires_grad=True), KeyError, r'norm_cfg\.type must be one of .*None'),
    ('BN', TypeError, 'norm_cfg must be a dict'),
    (dict(type='GN', requires_grad=True), KeyError, 'GN.*needs num_groups'),
    (dict(type='GN', num_groups=48), ValueError, r'num_groups=48 .*64 channels'),
    (dict(type='FrozenBN', requires_grad=True), ValueError, 'FrozenBN.*requires_grad=True'),
    (dict(type='BN', momentun=0.1), TypeError, r"type='BN' does not take .*momentun"),
])
def test_hostile_norm_cfg(cfg, error, pattern):
    with pytest.raises(error, match=pattern):
        small_resnet(cfg)


def test_build_norm_layer_passes_layer_arguments():
    layer = build_norm_layer(dict(type='BN', eps=1e-3, momentum=0.3, requires_grad=False), 8)
    assert (layer.eps, layer.momentum, layer.weight.requires_grad) == (1e-3, 0.3, False)
    assert build_norm_layer(dict(type='FrozenBN', eps=1e-3), 8).eps == 1e-3
    assert build_norm_layer(dict(type='GN', num_groups=4), 8).num_groups == 4


@pytest.mark.parametrize('norm_cfg', [dict(type='BN', requires_grad=True),
                                      dict(type='GN', num_groups=32, requires_grad=True)])
def test_detector_trains_the_backbone_norm_with_the_ablation_override(tiny_config, norm_cfg):
    cfg = Config.fromfile(tiny_config)
    cfg.model.backbone.update(norm_cfg=norm_cfg, norm_eval=False)  # frozen_stages=-1, no init
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    data = model.data_preprocessor(
        testing.make_batch([(64, 64), (48, 56)], [2, 1], num_classes=4), training=True)
    losses = model(**data, mode='loss')
    sum(losses.values()).backward()
    backbone = model.backbone
    for name, layer in norm_layers(backbone).items():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
        if isinstance(layer, nn.BatchNorm2d):
            assert layer.training and int(layer.num_batches_tracked) == 1, name
