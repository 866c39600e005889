"""Loading checkpoints safely with ``torch.load(weights_only=True)``.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: only tensors,
containers, primitive types and explicitly allow-listed globals are rebuilt,
so a file cannot run code while it loads. mmengine (0.10.7) saves more than
that in ``message_hub`` (its ``HistoryBuffer`` of logged scalars, holding
numpy arrays, numpy scalars and, in ``statistics_methods``, the functions
``HistoryBuffer.min/max/current/mean`` pickled as ``getattr(HistoryBuffer,
'min')``), so ``resume`` failed.

The decision: keep ``weights_only=True`` and allow exactly what an mmengine
checkpoint needs (:func:`checkpoint_safe_globals`). ``builtins.getattr`` is
NOT allowed as such (``getattr`` on an allowed object can reach anything);
the name is bound to :func:`history_buffer_getattr`, which only returns
HistoryBuffer's four statistics methods. Nothing falls back to full pickle:
a file that needs any other global is refused with
:class:`CheckpointRefusedError`, naming the globals. A trusted file of another
format is converted once, explicitly (e.g. ``tools/convert_official_ckpt.py``).

Importing :mod:`mmdeform.engine` registers the allow-list with torch and
:func:`load_from_local_weights_only` as mmengine's loader of local paths
(``CheckpointLoader`` prefix ``''``), used by ``resume``, ``load_from``,
``load_checkpoint`` and ``Pretrained`` initialisation.
"""
import os.path as osp
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray

# The statistics HistoryBuffer registers by default and pickles by name.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
# numpy dtypes of logged scalars and arrays (no object, string or void dtypes).
_NUMERIC_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                   'uint64', 'float16', 'float32', 'float64')


class CheckpointRefusedError(pickle.UnpicklingError):
    """A checkpoint needs globals outside the weights-only allow-list."""


def history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling a checkpoint.

    Args:
        obj: The object pickle asks an attribute of.
        name (str): The attribute name.

    Returns:
        Callable: ``getattr(HistoryBuffer, name)`` for the four default
        statistics methods of :class:`mmengine.logging.HistoryBuffer`.

    Raises:
        CheckpointRefusedError: for any other object or name.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise CheckpointRefusedError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer.'
        f'{{{",".join(_HISTORY_BUFFER_METHODS)}}} are allowed')


def checkpoint_safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals an mmengine checkpoint needs beyond torch's defaults.

    Returns:
        list: Items for ``torch.serialization.add_safe_globals``: classes and
        functions, or (object, name in the pickle) pairs. numpy's array and
        scalar rebuilders are listed under numpy 2's (``numpy._core``) and
        numpy 1's (``numpy.core``) module names, so checkpoints written with
        either load.
    """
    safe = [HistoryBuffer, np.ndarray, np.dtype, (history_buffer_getattr, 'builtins.getattr')]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        safe += [(multiarray._reconstruct, f'{module}._reconstruct'),
                 (multiarray.scalar, f'{module}.scalar')]
    safe += [type(np.dtype(name)) for name in _NUMERIC_DTYPES]
    return safe


def allow_mmengine_checkpoint_globals() -> None:
    """Register :func:`checkpoint_safe_globals` with torch (idempotent)."""
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def load_weights_only(filename: str, map_location: Any = None) -> Any:
    """``torch.load(filename, weights_only=True)`` with a clear refusal.

    Args:
        filename (str): Local checkpoint path.
        map_location: As in :func:`torch.load`.

    Returns:
        The unpickled checkpoint (usually a dict).

    Raises:
        FileNotFoundError: ``filename`` does not exist.
        CheckpointRefusedError: the file needs globals that are not allowed.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointRefusedError(
            f'refused to load checkpoint {filename}: {_refusal_reason(filename, err)}. '
            'Unpickling what it holds could run arbitrary code. If you trust the file, '
            'convert it to plain tensors and containers first (see mmdeform.engine.checkpoint).'
        ) from None


def _refusal_reason(filename: str, err: pickle.UnpicklingError) -> str:
    """The globals outside the allow-list, else torch's own reason."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # not a zip checkpoint: torch's message says why
        unsafe = []
    if unsafe:
        return f"it needs globals that are not on mmdeform's weights-only allow-list: {unsafe}"
    # torch's message: advice to unpickle fully (not ours to give), then its reason
    reason = str(err).split('WeightsUnpickler error:', 1)[-1]
    reason = reason.split('Check the documentation of torch.load', 1)[0]
    return ' '.join(reason.split())


def load_from_local_weights_only(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` loader for local paths (replaces
    mmengine's ``load_from_local``, which calls ``torch.load`` with the
    default ``weights_only``); see :func:`load_weights_only`."""
    return load_weights_only(filename, map_location)


def register_checkpoint_loading() -> None:
    """Allow mmengine's checkpoint globals and load local checkpoints with
    :func:`load_from_local_weights_only`. Called when ``mmdeform.engine`` is
    imported."""
    allow_mmengine_checkpoint_globals()
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only,
                                     force=True)
