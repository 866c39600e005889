"""``SyncBatchNorm``: batch norm with statistics over all processes, also on CPU.

torch 2.13's ``nn.SyncBatchNorm`` cannot run a CPU-only distributed job: its
forward raises ``SyncBatchNorm expected input tensor to be on GPU`` and DDP
refuses to wrap a CPU module holding one (``SyncBatchNorm layers only work
with GPU modules``). :class:`SyncBatchNorm` is a ``BatchNorm2d`` (so DDP
accepts it) whose training forward in a process group of more than one
process all-reduces the per-channel sum, sum of squares and element count
with the differentiable ``torch.distributed.nn.functional.all_reduce``; its
backward all-reduces the gradients of those sums, which is the backward of
batch norm over the union batch. It works with any backend (gloo on CPU,
NCCL on GPU); on GPUs torch's fused ``nn.SyncBatchNorm`` (what mmengine's
``cfg.sync_bn='torch'`` converts to when CUDA is present) is faster.
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


class SyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` with statistics over all processes of the group, on any device.

    Same arguments, parameters, buffers and state_dict keys as
    ``nn.BatchNorm2d``. In training mode in a process group of more than one
    process, each channel is normalized with the mean and (biased) variance
    of the union of all processes' batches, and the running statistics are
    updated with those (unbiased variance, as ``BatchNorm2d``), so every
    process holds the same running statistics. Elsewhere (eval mode, no
    process group, one process) it is ``BatchNorm2d``.

    Args:
        num_features (int): Channels C.
        eps (float): Added to the variance.
        momentum (float, optional): Running statistics update factor; None:
            cumulative average.
        affine (bool): Learnable weight and bias.
        track_running_stats (bool): Keep running statistics.
        process_group (ProcessGroup, optional): Group to synchronize over
            (default: the whole world).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Optional[dist.ProcessGroup] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x``.

        Args:
            x (Tensor): (B, C, H, W) features; B may differ between processes
                and be 0 on some of them.

        Returns:
            Tensor: (B, C, H, W).
        """
        if not self._syncs():
            return super().forward(x)
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f'SyncBatchNorm: expected (B, {self.num_features}, H, W), '
                             f'got {tuple(x.shape)}')
        mean, var, count = self._union_stats(x)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach(), count)
        inv_std = (var + self.eps).rsqrt()  # (C,)
        y = (x - mean.view(1, -1, 1, 1)) * inv_std.view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    def _group(self):
        return self.process_group or dist.group.WORLD

    def _syncs(self) -> bool:
        """Training, in a process group of more than one process."""
        return (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self._group()) > 1)

    def _union_stats(self, x: torch.Tensor):
        """Mean and biased variance (C,) of the union batch, and its size per channel."""
        count = x.new_full((1,), x.numel() // self.num_features)
        local = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        total = all_reduce(local, group=self._group())  # (2C + 1,), differentiable
        sums, squares, n = total.split([self.num_features, self.num_features, 1])
        n_elements = int(n.item())
        if n_elements == 0:
            raise ValueError('SyncBatchNorm: every process has an empty batch')
        mean = sums / n_elements
        var = (squares / n_elements - mean * mean).clamp_min(0)
        return mean, var, n_elements

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch norm layer of ``module`` by :class:`SyncBatchNorm`.

    Parameters and buffers are shared with the replaced layers (as
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` does); layers that already
    are :class:`SyncBatchNorm` are kept.

    Args:
        module (nn.Module): Model (modified in place where possible).

    Returns:
        nn.Module: ``module``, or its replacement if it is itself a batch norm.
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum,
                               module.affine, module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.running_mean = module.running_mean
        synced.running_var = module.running_var
        synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
