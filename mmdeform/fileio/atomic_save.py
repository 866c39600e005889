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

A whole output folder (a converted or exported model) is written by
:func:`staged_folder`: into a temporary folder beside it, renamed into place
when complete, so the destination holds either its old content or the whole
new set of files, never a mix.
"""
import os
import os.path as osp
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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


def check_output_folder(folder: str, overwrite: bool = False, inputs: Sequence[str] = ()) -> None:
    """Refuse a destination that :func:`staged_folder` must not replace.

    Args:
        folder (str): The output folder (may not exist yet).
        overwrite (bool): A non-empty ``folder`` may be replaced whole.
        inputs (Sequence[str]): Files or folders the writer reads; replacing
            ``folder`` must not delete them.

    Raises:
        FileExistsError: ``folder`` is a file, or a non-empty folder and not
            ``overwrite``.
        ValueError: ``overwrite`` would delete one of ``inputs``.
    """
    path = Path(folder).resolve()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f'{folder} exists and is not a folder')
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f'{folder} is not empty; pass --overwrite to replace it whole '
                              '(every file in it is deleted)')
    for item in inputs:
        resolved = Path(item).resolve()
        if resolved == path or path in resolved.parents:
            raise ValueError(f'--overwrite would delete {item}, which is inside {folder}; '
                             'write to another folder')


@contextmanager
def staged_folder(folder: str, overwrite: bool = False,
                  inputs: Sequence[str] = ()) -> Iterator[Path]:
    """Write a whole folder at once: yields an empty temporary folder beside
    ``folder``; when the body returns, it replaces ``folder`` by renames.

    If the body raises, the temporary folder is removed and ``folder`` is
    untouched. Replacing a non-empty ``folder`` (``overwrite``) moves it
    aside, renames the new one in and then deletes the old, so no file of the
    old content remains.

    Raises:
        FileExistsError, ValueError: see :func:`check_output_folder`.
    """
    check_output_folder(folder, overwrite, inputs)
    final = Path(folder).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.staging-', dir=final.parent))
    try:
        yield tmp
        for path in tmp.rglob('*'):
            if path.is_file():
                _fsync_path(str(path))
        _replace_folder(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_folder(new: Path, final: Path) -> None:
    """Rename the complete folder ``new`` to ``final`` (moving an old one aside)."""
    old = final.parent / f'.{final.name}.old-{uuid.uuid4().hex[:8]}' if final.exists() \
        else None
    if old is not None:
        os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if os.name == 'posix':
        _fsync_path(str(final.parent))
    if old is not None:
        shutil.rmtree(old)
