"""Training and testing: optimizer wrappers, hooks, safe checkpoint loading, and in
:mod:`mmdeform.engine.launch` the functions behind ``tools/train.py`` / ``tools/test.py``.

Importing this package registers the hooks and optimizer wrappers and makes
mmengine load local checkpoints with ``torch.load(weights_only=True)`` and an
explicit allow-list (see :mod:`mmdeform.engine.checkpoint`).
"""
from . import launch
from .checkpoint import (
    CheckpointRefusedError,
    checkpoint_safe_globals,
    load_weights_only,
    register_checkpoint_loading,
)
from .hooks import DetVisualizationHook
from .optim_wrappers import DeviceAmpOptimWrapper

register_checkpoint_loading()

__all__ = ['CheckpointRefusedError', 'DetVisualizationHook', 'DeviceAmpOptimWrapper',
           'checkpoint_safe_globals', 'launch', 'load_weights_only',
           'register_checkpoint_loading']
