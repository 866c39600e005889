"""Loading a checkpoint's weights into a model, checked key by key and shape by
shape, with errors that name the file and the first offending tensors.

Strict (the default everywhere in mmdeform): every tensor of the model must be
in the checkpoint with the same shape, and the checkpoint must hold nothing
else (apart from keys a module drops on purpose, :func:`ignored_state_keys`).
Partial (an explicit opt-out, ``--partial-load``): the tensors whose name and
shape match are loaded, the rest is listed in a warning. mmengine's own
loading is partial and only logs, so a checkpoint of another model gave
metrics of a partly random model, or died later inside the optimizer.
"""
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Set, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from .checkpoint import load_weights_only

# How many names an error or warning quotes per kind.
_PREVIEW = 5
_DEFAULT_REVISE_KEYS = ((r'^module\.', ''),)


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model they are loaded into."""


@dataclass
class StateDictDiff:
    """How a checkpoint's state_dict differs from a model's.

    Attributes:
        missing (list[str]): Model tensors the checkpoint lacks.
        unexpected (list[str]): Checkpoint tensors the model lacks.
        mismatched (list[tuple[str, tuple, tuple]]): (name, shape in the
            checkpoint, shape in the model) of tensors in both with
            different shapes, in the model's order.
    """
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line per kind of difference, quoting the first names."""
        lines = []
        if self.mismatched:
            name, ckpt_shape, model_shape = self.mismatched[0]
            lines.append(f'first mismatching parameter: {name} has shape {ckpt_shape} in the '
                         f'checkpoint, {model_shape} in the model ({len(self.mismatched)} shape '
                         f'mismatches: {[m[0] for m in self.mismatched[:_PREVIEW]]})')
        if self.missing:
            lines.append(f'{len(self.missing)} missing keys (in the model, not in the '
                         f'checkpoint): {_preview(self.missing)}')
        if self.unexpected:
            lines.append(f'{len(self.unexpected)} unexpected keys (in the checkpoint, not in '
                         f'the model): {_preview(self.unexpected)}')
        return '; '.join(lines)


def _preview(names: Sequence[str]) -> str:
    more = f' and {len(names) - _PREVIEW} more' if len(names) > _PREVIEW else ''
    return f'{list(names[:_PREVIEW])}{more}'


def compare_state_dicts(model_state: Mapping[str, torch.Tensor],
                        ckpt_state: Mapping[str, Any]) -> StateDictDiff:
    """Keys and shapes of ``ckpt_state`` against ``model_state``."""
    diff = StateDictDiff()
    for name, tensor in model_state.items():
        if name not in ckpt_state:
            diff.missing.append(name)
            continue
        saved = ckpt_state[name]
        saved_shape = tuple(saved.shape) if hasattr(saved, 'shape') else type(saved).__name__
        if saved_shape != tuple(tensor.shape):
            diff.mismatched.append((name, saved_shape, tuple(tensor.shape)))
    diff.unexpected = [name for name in ckpt_state if name not in model_state]
    return diff


def ignored_state_keys(model: nn.Module) -> Set[str]:
    """Checkpoint keys that modules of ``model`` accept and drop when loading.

    A module lists them in an ``ignored_state_keys`` attribute (e.g.
    :class:`~mmdeform.models.backbones.FrozenBatchNorm2d` drops
    ``num_batches_tracked`` of a ``BatchNorm2d`` checkpoint).
    """
    return {f'{name}.{key}' if name else key
            for name, module in model.named_modules()
            for key in getattr(module, 'ignored_state_keys', ())}


def state_dict_of(checkpoint: Any, filename: str,
                  revise_keys: Sequence[Tuple[str, str]] = _DEFAULT_REVISE_KEYS) -> Dict:
    """The weights of a loaded checkpoint (``state_dict``, else the checkpoint
    itself), keys revised by ``(pattern, replacement)`` pairs (default: a
    leading ``module.`` of a DDP-wrapped model removed).

    Raises:
        CheckpointMismatchError: no dict of weights in the checkpoint.
    """
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(f'{filename}: expected a state_dict (or a dict with one), '
                                      f'got {type(checkpoint).__name__}')
    metadata = getattr(state_dict, '_metadata', None)  # per-module versions
    for pattern, replacement in revise_keys:
        state_dict = OrderedDict((re.sub(pattern, replacement, key), value)
                                 for key, value in state_dict.items())
    if metadata is not None:
        state_dict._metadata = metadata
    return state_dict


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Any], filename: str,
                            strict: bool = True, hint: str = '') -> StateDictDiff:
    """Load ``state_dict`` into ``model`` after comparing them.

    Args:
        model (nn.Module): Receives the weights.
        state_dict (Mapping): Checkpoint tensors by name.
        filename (str): The checkpoint, named in messages.
        strict (bool): Refuse any difference (else load what matches and warn).
        hint (str): Appended to the error (e.g. which flag allows a partial load).

    Returns:
        StateDictDiff: The differences (empty when strict).

    Raises:
        CheckpointMismatchError: ``strict`` and the checkpoint differs; the
            message names the first mismatching parameter, missing and
            unexpected keys.
    """
    model_state = model.state_dict()
    diff = compare_state_dicts(model_state, state_dict)
    accepted = ignored_state_keys(model)
    diff.unexpected = [name for name in diff.unexpected if name not in accepted]
    if diff and strict:
        raise CheckpointMismatchError(
            f'checkpoint {filename} does not fit the model: {diff.describe()}{hint}')
    if diff:
        print_log(f'partial load of {filename}: {diff.describe()}; only the tensors with '
                  'matching names and shapes are loaded', logger='current',
                  level=logging.WARNING)
    skipped = {name for name, _, _ in diff.mismatched} | set(diff.unexpected)
    loaded = OrderedDict((k, v) for k, v in state_dict.items() if k not in skipped)
    if hasattr(state_dict, '_metadata'):
        loaded._metadata = state_dict._metadata
    model.load_state_dict(loaded, strict=False)
    return diff


def load_model_weights(model: nn.Module, filename: str, strict: bool = True,
                       map_location: Any = 'cpu', hint: str = '') -> dict:
    """Read ``filename`` weights-only and load its weights into ``model``.

    Args:
        model (nn.Module): Receives the weights (unwrapped, not DDP).
        filename (str): Local checkpoint.
        strict (bool): See :func:`load_state_dict_checked`.
        map_location: As in :func:`torch.load`.
        hint (str): Appended to a mismatch error.

    Returns:
        dict: The whole checkpoint (``meta``, ``state_dict``, ...).

    Raises:
        FileNotFoundError, CheckpointFormatError, CheckpointRefusedError:
            see :func:`load_weights_only`.
        CheckpointMismatchError: see :func:`load_state_dict_checked`.
    """
    checkpoint = load_weights_only(filename, map_location=map_location)
    load_state_dict_checked(model, state_dict_of(checkpoint, filename), filename,
                            strict=strict, hint=hint)
    return checkpoint if isinstance(checkpoint, dict) else {}
