"""DeviceAmpOptimWrapper on a CPU-only machine: bfloat16 autocast, no loss scaling."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from mmdeform.engine import DeviceAmpOptimWrapper
from mmdeform.registry import MODELS
from mmdeform.structures import DetDataSample

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU path')


def build(model, optimizer_type='AdamW', **kwargs):
    cfg = dict(type='DeviceAmpOptimWrapper', optimizer=dict(type=optimizer_type, lr=0.1),
               **kwargs)
    with DefaultScope.overwrite_default_scope('mmdeform'):
        return build_optim_wrapper(model, cfg)


def test_cpu_autocast_is_bfloat16_and_the_update_is_unscaled():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reference = copy.deepcopy(model)
    # plain SGD: a scaled loss would give a different step (Adam would hide it)
    wrapper = build(model, 'SGD', clip_grad=dict(max_norm=10.0))
    assert isinstance(wrapper, DeviceAmpOptimWrapper) and wrapper.cast_dtype == torch.bfloat16
    plain = OptimWrapper(torch.optim.SGD(reference.parameters(), lr=0.1),
                         clip_grad=dict(max_norm=10.0))
    inputs = torch.randn(16, 4)
    initial = model[0].weight.detach().clone()
    with wrapper.optim_context(model):
        output = model(inputs)
    assert output.dtype == torch.bfloat16
    assert model(inputs).dtype == torch.float32  # only inside the context
    wrapper.update_params(output.float().pow(2).mean())
    with torch.autocast('cpu', dtype=torch.bfloat16):  # what the wrapper should amount to
        plain.update_params(reference(inputs).float().pow(2).mean())
    for param, ref in zip(model.parameters(), reference.parameters()):
        assert param.dtype == torch.float32
        assert torch.equal(param, ref)
    assert not torch.equal(model[0].weight, initial)


def test_state_dict_round_trip_and_gpu_checkpoint():
    model = torch.nn.Linear(3, 2)
    wrapper = build(model)
    with wrapper.optim_context(model):
        loss = model(torch.randn(5, 3)).float().sum()
    wrapper.update_params(loss)
    state = wrapper.state_dict()
    assert state['loss_scaler'] == {} and state['state']
    other = build(torch.nn.Linear(3, 2))
    # a checkpoint of a GPU run carries a GradScaler state: ignored on CPU
    other.load_state_dict(dict(copy.deepcopy(state), loss_scaler=dict(scale=65536.0,
                                                                     growth_factor=2.0)))
    assert other.optimizer.state_dict()['state'][0]['step'] == 1


def test_float16_on_cpu_is_refused():
    with pytest.raises(ValueError, match='on CPU only dtype bfloat16'):
        build(torch.nn.Linear(2, 2), dtype='float16')
    assert build(torch.nn.Linear(2, 2), dtype='bfloat16').cast_dtype == torch.bfloat16


def test_tiny_detector_trains_a_step_in_bfloat16(tiny_config):
    cfg = Config.fromfile(tiny_config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.type = 'DeviceAmpOptimWrapper'
    with DefaultScope.overwrite_default_scope('mmdeform'):
        wrapper = build_optim_wrapper(model, optim_cfg)
    dtypes = {}
    for name, module in (('backbone', model.backbone.conv1),
                         ('deformable attention', model.encoder.layers[0].self_attn)):
        module.register_forward_hook(
            lambda mod, args, out, name=name: dtypes.__setitem__(name, out.dtype))
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[8., 8., 40., 30.]]),
                                       labels=torch.tensor([2]))
    data = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)],
                data_samples=[sample])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log_vars = model.train_step(data, wrapper)
    assert dtypes == {'backbone': torch.bfloat16, 'deformable attention': torch.bfloat16}
    assert torch.isfinite(log_vars['loss']) and log_vars['loss'] > 0
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, name
    assert not torch.equal(before['query_generator.reference_points.weight'],
                           model.query_generator.reference_points.weight)
    assert not torch.equal(before['bbox_head.cls_branches.0.bias'],
                           model.bbox_head.cls_branches[0].bias)
