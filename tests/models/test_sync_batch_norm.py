"""SyncBN in a 2-process gloo run on CPU: the Runner converts BN (``cfg.sync_bn``),
and statistics and gradients equal those of one process seeing the union batch."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from torch import nn

from mmdeform.engine.cpu_distributed import configure_cpu_distributed
from mmdeform.engine.runner import SafeLoadingRunner
from mmdeform.models.backbones import ResNet
from mmdeform.models.layers import SyncBatchNorm, convert_sync_batchnorm
from mmdeform.testing import gloo_group, run_processes

WORLD = 2
# rank 0 sees 3 images, rank 1 one: the union statistics must weigh them by count
SPLITS = ((0, 3), (3, 4))


class TinyBackboneNet(BaseModel):
    """A BN ResNet-18 stem + layer1 as a model the Runner can wrap."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet(depth=18, out_indices=(0,), frozen_stages=-1,
                               norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.backbone(inputs)[0]


def union_batch():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64) * 2 + 1


def bn_results(model):
    """Running statistics and gradients of every norm layer, by name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            out.update({f'{name}.running_mean': m.running_mean.clone(),
                        f'{name}.running_var': m.running_var.clone(),
                        f'{name}.weight.grad': m.weight.grad.clone(),
                        f'{name}.bias.grad': m.bias.grad.clone()})
    out['conv1.weight.grad'] = model.conv1.weight.grad.clone()
    return out


def _worker(rank, store_file, work_dir):
    torch.set_num_threads(1)
    with gloo_group(rank, WORLD, store_file):
        cfg = Config(dict(launcher='pytorch', sync_bn='torch'))
        configure_cpu_distributed(cfg)
        torch.manual_seed(0)
        runner = SafeLoadingRunner(
            model=TinyBackboneNet().double(), work_dir=os.path.join(work_dir, str(rank)),
            launcher='pytorch', env_cfg=cfg.env_cfg, cfg=cfg)  # model_wrapper_cfg read from cfg
        backbone = runner.model.module.backbone
        types = sorted({type(m).__name__ for m in backbone.modules()
                        if isinstance(m, nn.BatchNorm2d)})
        start, stop = SPLITS[rank]
        runner.model.train()
        runner.model(union_batch()[start:stop]).sum().backward()
        torch.save(dict(types=types, results=bn_results(backbone)),
                   os.path.join(work_dir, f'rank{rank}.pt'))
        del runner, backbone  # the DDP wrapper holds the group: release it before the destroy


def test_runner_converts_bn_and_syncs_statistics_over_gloo(tmp_path):
    # fork: the workers need not import torch and mmengine again (CPU only: safe)
    run_processes(_worker, args=(str(tmp_path / 'store'), str(tmp_path)), nprocs=WORLD,
                  start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD)]
    assert ranks[0]['types'] == ranks[1]['types'] == ['SyncBatchNorm']

    torch.manual_seed(0)
    reference = TinyBackboneNet().double().train()
    # DDP averages gradients over the 2 processes, each summing its own outputs
    (reference(union_batch()).sum() / WORLD).backward()
    expected = bn_results(reference.backbone)
    for rank in ranks:
        assert rank['results'].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(rank['results'][key], value, rtol=1e-9, atol=1e-9,
                                       msg=key)


def test_single_process_sync_bn_is_batch_norm():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    bn = nn.BatchNorm2d(4).double()
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4).double()))[0]
    assert isinstance(synced, SyncBatchNorm)
    torch.testing.assert_close(synced(x), bn(x))
    torch.testing.assert_close(synced.running_var, bn.running_var)


def test_sync_bn_config_other_than_torch_is_refused_on_cpu(tmp_path, monkeypatch):
    runner = SafeLoadingRunner.__new__(SafeLoadingRunner)
    runner.cfg = Config(dict(sync_bn='mmcv'))
    runner._distributed = True
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError, match=r"cfg\.sync_bn must be 'torch'.*'mmcv'"):
        runner.wrap_model(None, nn.BatchNorm2d(2))
