"""Atomic file writes: a file is either absent, its old complete version or its
new complete version, whenever the writing process dies.

Each write goes to a temporary name in the destination's folder (so that the
rename stays within one file system), is flushed to disk (``fsync``), and is
then renamed over the destination (``os.replace``, atomic on POSIX and
Windows); the folder is fsynced so that the rename itself survives a crash.
A process killed before the rename leaves the destination untouched and a
stale ``.<name>.tmp-<pid>`` file, which :func:`remove_stale_temporaries`
deletes.

:func:`save_checkpoint_atomic` applies this to ``Runner.save_checkpoint``
(used by :class:`mmdeform.engine.hooks.AtomicCheckpointHook`), and
:func:`torch_save_atomic` to a plain ``torch.save``.
"""
import os
import os.path as osp
import re
from typing import Any, Callable

import torch

_TMP_INFIX = '.tmp-'


def temporary_name(filename: str) -> str:
    """The temporary file name used while ``filename`` (a base name) is written."""
    return f'.{filename}{_TMP_INFIX}{os.getpid()}'


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp_path: str, path: str) -> None:
    """Flush ``tmp_path`` to disk and rename it to ``path`` atomically.

    Args:
        tmp_path (str): A completely written file in the folder of ``path``.
        path (str): The destination (replaced if it exists).
    """
    _fsync_path(tmp_path)
    os.replace(tmp_path, path)
    if os.name == 'posix':  # make the rename durable; folders cannot be opened on Windows
        _fsync_path(osp.dirname(osp.abspath(path)))


def write_atomic(path: str, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` and :func:`commit` the result to ``path``.

    Args:
        path (str): Destination file.
        write (callable): Writes the complete content to the path it gets.

    Raises:
        Whatever ``write`` raises; the temporary file is removed then.
    """
    folder, name = osp.split(osp.abspath(path))
    tmp_path = osp.join(folder, temporary_name(name))
    try:
        write(tmp_path)
        commit(tmp_path, path)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (e.g. ``last_checkpoint``)."""
    def write(tmp_path: str) -> None:
        with open(tmp_path, 'w') as f:
            f.write(text)
    write_atomic(path, write)


def torch_save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    write_atomic(path, lambda tmp_path: torch.save(obj, tmp_path))


def save_checkpoint_atomic(runner, out_dir: str, filename: str, **kwargs) -> None:
    """``runner.save_checkpoint(out_dir, filename, **kwargs)``, atomically for
    local folders.

    The Runner writes to :func:`temporary_name` in ``out_dir``, then the file
    is committed. Only the main process writes (as in the Runner). A remote
    ``out_dir`` (``backend_args`` naming a non-local backend, or a URI) is
    written by the Runner directly.

    Args:
        runner (mmengine.runner.Runner): Builds and writes the checkpoint.
        out_dir (str): Destination folder.
        filename (str): Checkpoint file name in ``out_dir``.
        **kwargs: Other arguments of ``Runner.save_checkpoint``.
    """
    from mmengine.dist import is_main_process
    if '://' in out_dir or (kwargs.get('backend_args') or {}).get('backend', 'local') != 'local':
        runner.save_checkpoint(out_dir, filename, **kwargs)
        return
    if not is_main_process():
        return
    tmp_name = temporary_name(filename)
    try:
        runner.save_checkpoint(out_dir, tmp_name, **kwargs)
        commit(osp.join(out_dir, tmp_name), osp.join(out_dir, filename))
    except BaseException:
        if osp.exists(osp.join(out_dir, tmp_name)):
            os.remove(osp.join(out_dir, tmp_name))
        raise


def remove_stale_temporaries(folder: str) -> list:
    """Delete temporary files of writes that a killed process left in ``folder``.

    Returns:
        list[str]: The removed paths.
    """
    pattern = re.compile(rf'^\..+{re.escape(_TMP_INFIX)}\d+$')
    stale = sorted(osp.join(folder, name) for name in os.listdir(folder) if pattern.match(name))
    for path in stale:
        os.remove(path)
    return stale
