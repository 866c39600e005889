"""Strict loading of pretrained backbone weights named by ``init_cfg``.

mmengine's own ``Pretrained`` initializer loads with ``strict=False`` and only
logs missing keys and shape mismatches, so a checkpoint of the wrong depth, or
one wrapped in ``{'model': ...}``, silently leaves a randomly initialized
backbone. Backbones here use :func:`load_pretrained` instead: every tensor of
the module must come from the checkpoint with the right shape.
"""
import logging
import os.path as osp
from typing import Mapping, Optional, Sequence

import torch
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader
from torch import nn

_WRAPPER_KEYS = ('state_dict', 'model')
_PREVIEW = 8


def _preview(keys: Sequence[str]) -> str:
    """``a, b, c`` for a few keys, ``a, b, ... (N in all)`` for many."""
    keys = list(keys)
    text = ', '.join(keys[:_PREVIEW])
    return text if len(keys) <= _PREVIEW else f'{text}, ... ({len(keys)} in all)'


def _unwrap(checkpoint, source: str) -> Mapping[str, torch.Tensor]:
    """The state_dict inside ``checkpoint`` (plain, or under 'state_dict'/'model')."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'Pretrained checkpoint {source} holds a {type(checkpoint).__name__}, '
                        'expected a dict of tensors')
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _select_keys(state_dict: Mapping, prefix: Optional[str], source: str) -> dict:
    """Strip ``module.`` (DDP) and, if given, keep only keys under ``prefix``."""
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise KeyError(f'Pretrained checkpoint {source} has no key starting with '
                           f'prefix {prefix!r}')
    return {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}


def _loadable_state(module: nn.Module) -> dict:
    """``module.state_dict()`` without BatchNorm's ``num_batches_tracked`` counters.

    :func:`_select_keys` drops them from checkpoints; a BN layer keeps its own.
    """
    return {k: v for k, v in module.state_dict().items()
            if not k.endswith('num_batches_tracked')}


def _check_complete(module: nn.Module, state_dict: dict, source: str) -> None:
    """Raise if a tensor of ``module`` is missing from ``state_dict`` or has another shape."""
    name = type(module).__name__
    expected = _loadable_state(module)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise KeyError(
            f'Pretrained checkpoint {source} lacks {len(missing)} of the {len(expected)} '
            f'tensors of {name}: {_preview(missing)}. Its keys start with: '
            f'{_preview(list(state_dict))}. Set init_cfg prefix=... if they are nested.')
    not_tensors = [k for k in expected if not isinstance(state_dict[k], torch.Tensor)]
    if not_tensors:
        raise TypeError(f'Pretrained checkpoint {source}: entries are not tensors: '
                        f'{_preview(not_tensors)}')
    mismatched = [f'{k} (checkpoint {tuple(state_dict[k].shape)}, '
                  f'{name} {tuple(v.shape)})'
                  for k, v in expected.items() if state_dict[k].shape != v.shape]
    if mismatched:
        raise ValueError(f'Pretrained checkpoint {source} does not fit {name}, shape '
                         f'mismatch for {len(mismatched)} tensors: {_preview(mismatched)}')


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                    map_location: str = 'cpu',
                    ignore_prefixes: Sequence[str] = ()) -> None:
    """Load every parameter and buffer of ``module`` from a checkpoint.

    A local file is read with :func:`mmdeform.engine.checkpoint.load_weights_only`;
    other schemes (``http(s)://`` ...) through mmengine's ``CheckpointLoader``.
    The checkpoint may be a plain state_dict or one wrapped as ``{'state_dict': ...}`` or
    ``{'model': ...}``; a leading ``module.`` is stripped and
    ``num_batches_tracked`` entries are dropped.

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
        KeyError: A tensor of ``module`` is not in the checkpoint.
        ValueError: A tensor has a different shape in the checkpoint.
    """
    if checkpoint.startswith('torchvision://'):
        raise ValueError(f'Pretrained checkpoint {checkpoint}: the torchvision:// scheme needs '
                         'torchvision, which mmdeform does not use; pass the path or URL of the '
                         '.pth file instead')
    if osp.isfile(osp.expanduser(checkpoint)):
        from mmdeform.engine.checkpoint import load_weights_only  # engine imports models
        loaded = load_weights_only(checkpoint, map_location=map_location)
    else:
        loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    state_dict = _select_keys(_unwrap(loaded, checkpoint), prefix, checkpoint)
    _check_complete(module, state_dict, checkpoint)
    expected = _loadable_state(module)
    unused = [k for k in state_dict if k not in expected]
    ignored = [k for k in unused if k.startswith(tuple(ignore_prefixes))]
    surprising = [k for k in unused if k not in ignored]
    if ignored:
        print_log(f'{type(module).__name__}: ignoring {len(ignored)} keys of {checkpoint}: '
                  f'{_preview(ignored)}', logger='current', level=logging.INFO)
    if surprising:
        print_log(f'{type(module).__name__}: {len(surprising)} keys of {checkpoint} are not '
                  f'used: {_preview(surprising)}', logger='current', level=logging.WARNING)
    counters = {k: v for k, v in module.state_dict().items() if k not in expected}
    module.load_state_dict({**counters, **{k: state_dict[k] for k in expected}}, strict=True)
    print_log(f'{type(module).__name__}: loaded {len(expected)} tensors from {checkpoint}',
              logger='current', level=logging.INFO)
