"""Strict loading of pretrained backbone weights named by ``init_cfg``.

mmengine's own ``Pretrained`` initializer loads with ``strict=False`` and only
logs missing keys and shape mismatches, so a checkpoint of the wrong depth, or
one wrapped in ``{'model': ...}``, silently leaves a randomly initialized
backbone. Backbones here use :func:`load_pretrained` instead: every tensor of
the module must come from the checkpoint with the right shape. It reads and
checks through the project's one loader (:mod:`mmdeform.fileio.state_dict`).
"""
import logging
from typing import Optional, Sequence

from mmengine.logging import print_log
from torch import nn

from mmdeform.fileio import load_state_dict_checked, read_checkpoint, state_dict_of
from mmdeform.fileio.state_dict import is_step_counter

_PREFIX_HINT = '. Set init_cfg prefix=... if the keys are nested'


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                    map_location: str = 'cpu',
                    ignore_prefixes: Sequence[str] = ()) -> None:
    """Load every parameter and buffer of ``module`` from a checkpoint.

    The file is read by :func:`mmdeform.fileio.read_checkpoint` (a local file
    weights-only, a URL through mmengine). The checkpoint may be a plain
    state_dict or one wrapped as ``{'state_dict': ...}`` or ``{'model': ...}``;
    a leading ``module.`` is stripped. Batch norm step counters are not
    needed and not loaded: the module keeps its own.

    Args:
        module (nn.Module): Receives the weights; dtype and device are kept.
        checkpoint (str): Path or URL of the checkpoint.
        prefix (str, optional): Load only keys under this prefix (e.g.
            ``'backbone.'`` for a detector checkpoint), with the prefix removed.
        map_location (str): Passed to ``torch.load``.
        ignore_prefixes (Sequence[str]): Keys under these prefixes are expected
            to be unused (e.g. ``'fc.'`` of a classifier) and only logged at
            INFO level; other unused keys are logged as a warning.

    Raises:
        CheckpointMismatchError: A tensor of ``module`` is not in the
            checkpoint, or has another shape there (nothing is loaded).
        KeyError: No key of the checkpoint starts with ``prefix``.
        ValueError: A ``torchvision://`` checkpoint.
    """
    state_dict = state_dict_of(read_checkpoint(checkpoint, map_location=map_location),
                               checkpoint, prefix=prefix)
    load_state_dict_checked(module, state_dict, checkpoint, hint=_PREFIX_HINT,
                            expected_unused=ignore_prefixes, keep_counters=True)
    loaded = [k for k in module.state_dict() if k in state_dict and not is_step_counter(k)]
    print_log(f'{type(module).__name__}: loaded {len(loaded)} tensors from {checkpoint}',
              logger='current', level=logging.INFO)
