"""``DeviceAmpOptimWrapper``: mixed precision training on GPU or CPU."""
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.optim import AmpOptimWrapper

from mmdeform.registry import OPTIM_WRAPPERS


def _accelerator_available() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


class _IdentityLossScaler:
    """The loss scaler of bfloat16 training: bfloat16 has float32's exponent
    range, so gradients do not underflow and need no scaling. Same interface
    as the parts of ``torch.amp.GradScaler`` that ``AmpOptimWrapper`` uses."""

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def step(self, optimizer: torch.optim.Optimizer, **kwargs) -> None:
        optimizer.step(**kwargs)

    def update(self, new_scale: Optional[float] = None) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Ignores the state (a GPU run's ``GradScaler`` state included)."""


@OPTIM_WRAPPERS.register_module()
class DeviceAmpOptimWrapper(AmpOptimWrapper):
    """Automatic mixed precision on the device the run uses.

    With a GPU (or NPU / MLU / MUSA) this is exactly mmengine's
    :class:`~mmengine.optim.AmpOptimWrapper` (``GradScaler`` and autocast in
    ``dtype``). On a CPU-only machine, where mmengine's wrapper refuses to
    start, the forward pass runs under ``torch.autocast('cpu',
    dtype=torch.bfloat16)`` and the loss is not scaled (bfloat16 needs no
    scaling); gradient clipping, accumulation and the optimizer are those of
    :class:`~mmengine.optim.OptimWrapper`. Parameters, gradients and the
    optimizer state stay float32 on both devices.

    Args:
        loss_scale (str | float | dict): ``GradScaler`` configuration on an
            accelerator (see ``AmpOptimWrapper``); not used on CPU.
        dtype (str | torch.dtype, optional): Autocast dtype. On CPU only
            ``'bfloat16'`` (the default there) is accepted.
        use_fsdp (bool): Sharded grad scaler on an accelerator.
        **kwargs: :class:`~mmengine.optim.OptimWrapper` arguments
            (``optimizer``, ``clip_grad``, ``accumulative_counts``).

    Raises:
        ValueError: a ``dtype`` other than bfloat16 on CPU.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Union[str, torch.dtype, None] = None, use_fsdp: bool = False,
                 **kwargs) -> None:
        self.on_cpu = not _accelerator_available()
        if not self.on_cpu:
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(f'DeviceAmpOptimWrapper: on CPU only dtype bfloat16 is supported '
                             f'(float16 would need loss scaling), got {dtype!r}')
        # AmpOptimWrapper.__init__ asserts an accelerator: initialise its base directly.
        super(AmpOptimWrapper, self).__init__(**kwargs)
        self._scale_update_param = None
        self.loss_scaler = _IdentityLossScaler()
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Gradient-accumulation context plus autocast (bfloat16 on CPU).

        Args:
            model (nn.Module): The trained model.
        """
        if not self.on_cpu:
            with super().optim_context(model):
                yield
            return
        with super(AmpOptimWrapper, self).optim_context(model), \
                torch.autocast('cpu', dtype=self.cast_dtype):
            yield
