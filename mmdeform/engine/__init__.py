"""Training and testing: the Runner with safe, checked checkpoint loading,
atomic checkpoint saves, hooks, optimizer wrappers, ``--cfg-options``
checking, and in :mod:`mmdeform.engine.launch` the functions behind
``tools/train.py`` / ``tools/test.py``.

Importing this package registers the hooks, optimizer wrappers and the
Runner in mmdeform's registries; it changes no global state of torch or
mmengine (checkpoints are loaded weights-only where the project reads them,
see :mod:`mmdeform.fileio.weights_only`).

The checkpoint reading, checked loading and atomic saving live in
:mod:`mmdeform.fileio`; their names are re-exported here for existing imports.
"""
from mmdeform.fileio import (
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointRefusedError,
    checkpoint_safe_globals,
    load_model_weights,
    load_weights_only,
    save_checkpoint_atomic,
    torch_save_atomic,
    write_text_atomic,
)

from . import launch
from .config_options import CfgOptionsAction, apply_cfg_options, check_hook_types
from .hooks import AtomicCheckpointHook, DetVisualizationHook
from .optim_wrappers import DeviceAmpOptimWrapper
from .runner import SafeLoadingRunner

__all__ = ['AtomicCheckpointHook', 'CfgOptionsAction', 'CheckpointFormatError',
           'CheckpointMismatchError', 'CheckpointRefusedError', 'DetVisualizationHook',
           'DeviceAmpOptimWrapper', 'SafeLoadingRunner', 'apply_cfg_options',
           'check_hook_types', 'checkpoint_safe_globals', 'launch', 'load_model_weights',
           'load_weights_only', 'save_checkpoint_atomic', 'torch_save_atomic',
           'write_text_atomic']
