"""``SafeLoadingRunner``: mmengine's Runner reading checkpoints weights-only
and loading them checked (used by ``tools/train.py`` and ``tools/test.py``)."""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch import nn

from mmdeform.fileio import load_state_dict_checked, read_checkpoint, state_dict_of
from mmdeform.models.layers import convert_sync_batchnorm

PARTIAL_LOAD_HINT = ('. Pass --partial-load to load only the tensors whose names and shapes '
                     'match (e.g. to fine-tune with another number of classes)')
RESUME_HINT = ('. --resume needs the model that wrote the checkpoint: the config (or its '
               '--cfg-options) describes another model')


class SafeLoadingRunner(Runner):
    """mmengine's ``Runner`` with the project's checkpoint loading.

    - Local checkpoints are read with
      :func:`mmdeform.fileio.load_weights_only` (an allow-list,
      never full pickle; empty or damaged files named as such); other
      schemes (``http(s)://``) go through mmengine's ``CheckpointLoader``.
    - Weights are compared with the model before anything is loaded
      (:func:`mmdeform.fileio.load_state_dict_checked`):
      resuming always needs the same model (the first mismatching parameter
      is named, instead of a failure deep inside the optimizer); ``load_from``
      is strict unless :attr:`strict_load` is False (``--partial-load``).
    - ``cfg.sync_bn='torch'`` in a distributed run without CUDA converts the
      batch norm layers to mmdeform's
      :class:`~mmdeform.models.layers.SyncBatchNorm` (all-reduce over
      gloo) instead of torch's, which refuses CPU tensors. With CUDA
      mmengine converts them to torch's as usual.

    Attributes:
        strict_load (bool): Whether ``load_from`` must match the model
            exactly. Default True.
    """

    strict_load: bool = True
    _resuming: bool = False

    def wrap_model(self, model_wrapper_cfg: Optional[dict], model: nn.Module) -> nn.Module:
        """mmengine's ``wrap_model``; on a CPU-only distributed run with
        ``cfg.sync_bn`` the batch norm layers become our CPU-capable SyncBN."""
        sync_bn = self.cfg.get('sync_bn')
        if sync_bn is None or not self.distributed or torch.cuda.is_available():
            return super().wrap_model(model_wrapper_cfg, model)
        if sync_bn != 'torch':
            raise ValueError(f"cfg.sync_bn must be 'torch' on a machine without CUDA "
                             f"(mmdeform's all-reduce SyncBN), got {sync_bn!r}")
        model = convert_sync_batchnorm(model)
        self.logger.info('sync_bn: batch norm layers converted to mmdeform SyncBatchNorm '
                         '(all-reduce on CPU)')
        self.cfg.sync_bn = None  # mmengine would convert to torch's CPU-less SyncBN
        try:
            return super().wrap_model(model_wrapper_cfg, model)
        finally:
            self.cfg.sync_bn = sync_bn

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = False

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu',
                        strict: Optional[bool] = None,
                        revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''),)
                        ) -> dict:
        """Read ``filename`` and load its weights into the model.

        Args:
            filename (str): Local path, or a URI of a scheme registered with
                mmengine's ``CheckpointLoader``.
            map_location: As in :func:`torch.load`.
            strict (bool, optional): Refuse any difference between the
                checkpoint and the model; None: True when resuming, else
                :attr:`strict_load`.
            revise_keys (Sequence): (pattern, replacement) pairs applied to the
                checkpoint's keys (default: strip a DDP ``module.`` prefix).

        Returns:
            dict: The checkpoint.

        Raises:
            CheckpointMismatchError: the weights do not fit (names the first
                mismatching parameter, missing and unexpected keys).
        """
        checkpoint = read_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if strict is None:
            strict = True if self._resuming else self.strict_load
        hint = RESUME_HINT if self._resuming else (PARTIAL_LOAD_HINT if strict else '')
        load_state_dict_checked(model, state_dict_of(checkpoint, filename, revise_keys),
                                filename, strict=strict, hint=hint)
        self._has_loaded = True
        self.logger.info(f'Loaded checkpoint {filename} (weights only, '
                         f'{"strict" if strict else "partial"})')
        return checkpoint
