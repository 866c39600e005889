"""A tiny model and Runner for the checkpoint tests: training is a few
milliseconds per iteration, so saving and loading dominate."""
import torch
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmdeform.engine import SafeLoadingRunner


class ToyModel(BaseModel):
    """A linear layer and a ``payload`` parameter of ``payload_size`` floats
    that only makes the checkpoint large."""

    def __init__(self, payload_size: int = 16, out_features: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(2, out_features)
        self.payload = nn.Parameter(torch.zeros(payload_size))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        out = self.linear(x)
        if mode == 'loss':
            return dict(loss=(out ** 2).mean() + 0 * self.payload[0])
        return out


class ToyData(Dataset):
    """Long enough never to end (mmengine pauses 2 s when a loader restarts)."""

    def __len__(self) -> int:
        return 10 ** 6

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index % 4), 1.0])


def toy_loader() -> DataLoader:
    return DataLoader(ToyData(), batch_size=2, collate_fn=lambda batch: dict(inputs=batch))


def build_toy_runner(work_dir: str, max_iters: int, name: str, payload_size: int = 16,
                     out_features: int = 1, resume=False, load_from=None,
                     checkpoint_hook: str = 'CheckpointHook', max_keep_ckpts: int = 1,
                     custom_hooks=None, **checkpoint_args) -> SafeLoadingRunner:
    """A Runner saving a checkpoint every iteration (``max_keep_ckpts`` kept;
    ``checkpoint_args``: more arguments of the checkpoint hook)."""
    return SafeLoadingRunner(
        model=ToyModel(payload_size, out_features), work_dir=work_dir,
        train_dataloader=toy_loader(),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(
            logger=None, timer=None, param_scheduler=None, sampler_seed=None,
            checkpoint=dict(type=checkpoint_hook, by_epoch=False, interval=1,
                            max_keep_ckpts=max_keep_ckpts, **checkpoint_args)),
        custom_hooks=custom_hooks, resume=resume, load_from=load_from,
        default_scope='mmdeform', experiment_name=name, log_level='WARNING')
