"""Loading a checkpoint's weights into a model, checked key by key and shape by
shape, with errors that name the file and the first offending tensors.

Strict (the default everywhere in mmdeform): every tensor of the model must be
in the checkpoint with the same shape, and the checkpoint must hold nothing
else (apart from keys a module drops on purpose, :func:`ignored_state_keys`).
Partial (an explicit opt-out, ``--partial-load``): the tensors whose name and
shape match are loaded, the rest is listed in a warning. mmengine's own
loading is partial and only logs, so a checkpoint of another model gave
metrics of a partly random model, or died later inside the optimizer.

The one loader of the project: the Runner (``load_from``, ``resume``),
``init_detector`` and a backbone's ``Pretrained`` ``init_cfg``
(:func:`mmdeform.models.backbones.load_pretrained`, which allows unused keys
such as a classifier's ``fc.`` and keeps the module's own step counters).

Batch norm step counters (``num_batches_tracked``) follow one rule: they are
never required. A counter the checkpoint lacks stays the module's own; one
the model lacks is dropped; one both have is loaded unless ``keep_counters``.
"""
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from mmengine.logging import print_log
from torch import nn

from .weights_only import load_weights_only

# How many names an error or warning quotes per kind.
_PREVIEW = 5
_DEFAULT_REVISE_KEYS = ((r'^module\.', ''),)
# Dicts that wrap a state_dict in a checkpoint: mmengine's and the official / torchvision ones.
_WRAPPER_KEYS = ('state_dict', 'model')
_COUNTER = 'num_batches_tracked'


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
    """``['a', 'b']`` for a few names, ``['a', ...] and N more`` for many."""
    names = list(names)
    more = f' and {len(names) - _PREVIEW} more' if len(names) > _PREVIEW else ''
    return f'{names[:_PREVIEW]}{more}'


def is_step_counter(name: str) -> bool:
    """Whether ``name`` is a batch norm step counter (see the module docstring)."""
    return name.endswith(_COUNTER)


def compare_state_dicts(model_state: Mapping[str, torch.Tensor],
                        ckpt_state: Mapping[str, Any]) -> StateDictDiff:
    """Keys and shapes of ``ckpt_state`` against ``model_state``."""
    diff = StateDictDiff()
    for name, tensor in model_state.items():
        if name not in ckpt_state:
            if not is_step_counter(name):
                diff.missing.append(name)
            continue
        saved = ckpt_state[name]
        saved_shape = tuple(saved.shape) if hasattr(saved, 'shape') else type(saved).__name__
        if saved_shape != tuple(tensor.shape):
            diff.mismatched.append((name, saved_shape, tuple(tensor.shape)))
    diff.unexpected = [name for name in ckpt_state
                       if name not in model_state and not is_step_counter(name)]
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
                  revise_keys: Sequence[Tuple[str, str]] = _DEFAULT_REVISE_KEYS,
                  prefix: Optional[str] = None) -> Dict:
    """The weights of a loaded checkpoint.

    Args:
        checkpoint: What :func:`torch.load` returned: a state_dict, or a dict
            holding one under ``state_dict`` (mmengine) or ``model``.
        filename (str): The checkpoint, named in messages.
        revise_keys (Sequence): ``(pattern, replacement)`` pairs applied to
            the keys (default: a leading ``module.`` of a DDP model removed).
        prefix (str, optional): Keep only the keys under this prefix (e.g.
            ``'backbone.'`` of a detector checkpoint), with it removed.

    Raises:
        CheckpointMismatchError: no dict of weights in the checkpoint.
        KeyError: no key starts with ``prefix``.
    """
    state_dict = checkpoint if isinstance(checkpoint, Mapping) else None
    for key in _WRAPPER_KEYS:
        if state_dict is not None and isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
            break
    if state_dict is None:
        raise CheckpointMismatchError(f'{filename}: expected a state_dict (or a dict with one), '
                                      f'got {type(checkpoint).__name__}')
    metadata = getattr(state_dict, '_metadata', None)  # per-module versions
    for pattern, replacement in revise_keys:
        state_dict = OrderedDict((re.sub(pattern, replacement, key), value)
                                 for key, value in state_dict.items())
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                                 if k.startswith(prefix))
        if not state_dict:
            raise KeyError(f'checkpoint {filename} has no key starting with prefix {prefix!r}')
    if metadata is not None:
        state_dict._metadata = metadata
    return state_dict


def _log_unused(model: nn.Module, unused: Sequence[str], filename: str,
                expected_unused: Sequence[str]) -> None:
    """INFO for the unused keys under ``expected_unused`` prefixes, WARNING for the rest."""
    name = type(model).__name__
    ignored = [k for k in unused if k.startswith(tuple(expected_unused))]
    surprising = [k for k in unused if k not in ignored]
    if ignored:
        print_log(f'{name}: ignoring {len(ignored)} keys of {filename}: {_preview(ignored)}',
                  logger='current', level=logging.INFO)
    if surprising:
        print_log(f'{name}: {len(surprising)} keys of {filename} are not used: '
                  f'{_preview(surprising)}', logger='current', level=logging.WARNING)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Any], filename: str,
                            strict: bool = True, hint: str = '',
                            expected_unused: Optional[Sequence[str]] = None,
                            keep_counters: bool = False) -> StateDictDiff:
    """Load ``state_dict`` into ``model`` after comparing them.

    Nothing is loaded when a strict comparison fails.

    Args:
        model (nn.Module): Receives the weights.
        state_dict (Mapping): Checkpoint tensors by name.
        filename (str): The checkpoint, named in messages.
        strict (bool): Refuse any difference (else load what matches and warn).
        hint (str): Appended to the error (e.g. which flag allows a partial load).
        expected_unused (Sequence[str], optional): None: keys the model lacks
            are a difference. A sequence of prefixes: such keys are only
            logged (INFO under these prefixes, e.g. ``'fc.'`` of a
            classifier, WARNING otherwise).
        keep_counters (bool): Keep the model's own step counters.

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
    unused = []
    if expected_unused is not None:
        unused, diff.unexpected = diff.unexpected, []
    if diff and strict:
        raise CheckpointMismatchError(
            f'checkpoint {filename} does not fit the model: {diff.describe()}{hint}')
    if diff:
        print_log(f'partial load of {filename}: {diff.describe()}; only the tensors with '
                  'matching names and shapes are loaded', logger='current',
                  level=logging.WARNING)
    _log_unused(model, unused, filename, expected_unused or ())
    skipped = {name for name, _, _ in diff.mismatched} | set(diff.unexpected) | set(unused)
    if keep_counters:
        skipped |= {name for name in state_dict if is_step_counter(name)}
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
