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

Nothing here changes torch's or mmengine's global state: the allow-list is
active only inside :func:`load_weights_only` (``torch.serialization.safe_globals``),
and mmengine's ``CheckpointLoader`` keeps its own loaders. The project's code
calls :func:`load_weights_only` explicitly where it reads a checkpoint: the
Runner of ``tools/train.py`` / ``tools/test.py``
(:class:`mmdeform.engine.runner.SafeLoadingRunner`), ``init_detector`` and the
backbone's ``pretrained`` weights, all through :func:`read_checkpoint` or this function.

A file that is empty, not a ``torch.save`` file, or cut short is named and
described as such (:class:`CheckpointFormatError`) instead of torch's bare
``EOFError`` or its advice to unpickle the file fully.
"""
import os.path as osp
import pickle
import zipfile
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


# torch.save's formats: a zip archive (torch >= 1.6) or the legacy pickle, which
# starts with protocol 2 and torch's magic number 0x1950a86a20f9469cfc6c.
_ZIP_SIGNATURE = b'PK\x03\x04'
_LEGACY_SIGNATURE = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'


class CheckpointRefusedError(pickle.UnpicklingError):
    """A checkpoint needs globals outside the weights-only allow-list."""


class CheckpointFormatError(ValueError):
    """A file is empty, not a ``torch.save`` file, or incomplete."""


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


def check_checkpoint_format(filename: str) -> None:
    """Refuse a file that cannot be a complete ``torch.save`` checkpoint.

    Args:
        filename (str): Local path of an existing file.

    Raises:
        CheckpointFormatError: the file is empty; it starts neither like a
            zip archive nor like torch's legacy format ("not a checkpoint");
            or it is a zip archive without its central directory (cut short,
            e.g. by a crash while it was written).
    """
    size = osp.getsize(filename)
    if size == 0:
        raise CheckpointFormatError(f'checkpoint {filename} is empty (0 bytes)')
    with open(filename, 'rb') as f:
        head = f.read(len(_LEGACY_SIGNATURE))
    if head.startswith(_ZIP_SIGNATURE):
        if not zipfile.is_zipfile(filename):
            raise CheckpointFormatError(
                f'checkpoint {filename} is incomplete ({size} bytes, a zip archive without '
                'its end): cut short while it was written or copied')
    elif not head.startswith(_LEGACY_SIGNATURE):
        raise CheckpointFormatError(
            f'{filename} is not a checkpoint: it starts with {head[:8]!r}, not like a file '
            'written by torch.save (zip archive or legacy format)')


def load_weights_only(filename: str, map_location: Any = None) -> Any:
    """``torch.load(filename, weights_only=True)`` with the allow-list of
    :func:`checkpoint_safe_globals` (for this call only) and clear errors.

    Args:
        filename (str): Local checkpoint path.
        map_location: As in :func:`torch.load`.

    Returns:
        The unpickled checkpoint (usually a dict).

    Raises:
        FileNotFoundError: ``filename`` does not exist.
        CheckpointFormatError: the file is empty, not a checkpoint or
            incomplete (:func:`check_checkpoint_format`).
        CheckpointRefusedError: the file needs globals that are not allowed.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    check_checkpoint_format(filename)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointRefusedError(
            f'refused to load checkpoint {filename}: {_refusal_reason(filename, err)}. '
            'Unpickling what it holds could run arbitrary code. If you trust the file, '
            'convert it to plain tensors and containers first (see mmdeform.fileio.weights_only).'
        ) from None
    except (EOFError, RuntimeError) as err:  # damaged inside a valid-looking container
        raise CheckpointFormatError(f'checkpoint {filename} is damaged: '
                                    f'{" ".join(str(err).split())[:300]}') from None


def _refusal_reason(filename: str, err: pickle.UnpicklingError) -> str:
    """The globals outside the allow-list, else torch's own reason."""
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # not a zip checkpoint: torch's message says why
        unsafe = []
    if unsafe:
        return f"it needs globals that are not on mmdeform's weights-only allow-list: {unsafe}"
    # torch's message: advice to unpickle fully (not ours to give), then its reason
    reason = str(err).split('WeightsUnpickler error:', 1)[-1]
    reason = reason.split('Check the documentation of torch.load', 1)[0]
    return ' '.join(reason.split())


def read_checkpoint(source: str, map_location: Any = 'cpu') -> Any:
    """Read a checkpoint named by a local path or a URL.

    A local path (an existing file, or anything without ``://``) is read by
    :func:`load_weights_only`; other schemes (``http(s)://`` ...) through
    mmengine's ``CheckpointLoader``.

    Args:
        source (str): Path or URL of the checkpoint.
        map_location: As in :func:`torch.load`.

    Returns:
        The loaded checkpoint (usually a dict).

    Raises:
        ValueError: ``torchvision://`` (it needs torchvision, which mmdeform
            does not use).
        FileNotFoundError, CheckpointFormatError, CheckpointRefusedError:
            see :func:`load_weights_only`.
    """
    if source.startswith('torchvision://'):
        raise ValueError(f'checkpoint {source}: the torchvision:// scheme needs torchvision, '
                         'which mmdeform does not use; pass the path or URL of the .pth file '
                         'instead')
    if osp.isfile(osp.expanduser(source)) or '://' not in source:
        return load_weights_only(source, map_location=map_location)
    return CheckpointLoader.load_checkpoint(source, map_location=map_location)
