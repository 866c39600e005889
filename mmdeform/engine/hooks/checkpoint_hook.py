"""``AtomicCheckpointHook``: mmengine's ``CheckpointHook`` whose saves survive
being killed at any moment."""
import contextlib
import logging
import os.path as osp
from typing import List, Set

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log

from mmdeform.fileio import remove_stale_temporaries, save_checkpoint_atomic, write_text_atomic
from mmdeform.registry import HOOKS


class _DeferredRemovals:
    """A file backend whose ``remove`` / ``rmtree`` only queue the path."""

    def __init__(self, backend, queue: List[str]) -> None:
        self._backend = backend
        self._queue = queue

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def remove(self, path) -> None:
        self._queue.append(path)

    def rmtree(self, path) -> None:
        self._queue.append(path)


class _AtomicSaves:
    """A Runner whose ``save_checkpoint`` is :func:`save_checkpoint_atomic`;
    ``written`` collects the paths it wrote."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.written: Set[str] = set()

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def save_checkpoint(self, out_dir, filename, **kwargs) -> None:
        save_checkpoint_atomic(self.runner, out_dir, filename, **kwargs)
        self.written.add(osp.join(out_dir, filename))


@HOOKS.register_module()
@HOOKS.register_module(name='CheckpointHook')
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) with crash-safe saving.

    Registered in mmdeform's registry as ``AtomicCheckpointHook`` and as
    ``CheckpointHook``: every config with ``default_scope='mmdeform'`` (all
    of the project's) that asks for mmengine's ``CheckpointHook`` by name,
    and the Runner's default checkpoint hook, get this one.
    (``type='mmengine.CheckpointHook'`` still selects mmengine's.)

    mmengine's hook removes the oldest checkpoint (``max_keep_ckpts``) before
    writing the new one and writes ``last_checkpoint`` in place, so a process
    killed while saving can leave no complete checkpoint and a
    ``last_checkpoint`` naming a missing file. Here, for every save:

    1. the checkpoint is written to a temporary name in the same folder,
       flushed to disk and renamed (:func:`save_checkpoint_atomic`);
    2. only then ``last_checkpoint`` is replaced (atomically) by its path;
    3. only then checkpoints beyond ``max_keep_ckpts`` (and a previous best
       checkpoint, with ``save_best``) are removed.

    Killed at any moment, the work dir therefore holds a complete checkpoint
    named by ``last_checkpoint`` (the previous one at worst: at most one
    interval is lost) and ``--resume`` works. The checkpoint written in step
    1 still lists the one step 3 removes (``keep_ckpt_ids``), so after a kill
    between steps 2 and 3 the resumed run removes it (mmengine's
    ``before_train``); temporary files of a killed save are removed then too.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and osp.isdir(self.out_dir) and '://' not in self.out_dir:
            for path in remove_stale_temporaries(self.out_dir):
                print_log(f'removed {path}, left by a save that was interrupted',
                          logger='current', level=logging.WARNING)

    @contextlib.contextmanager
    def _removals_last(self, keep: Set[str]):
        """Defer the file removals made inside the block to its end, and skip
        those of paths in ``keep`` (written anew inside the block)."""
        queue: List[str] = []
        backend = self.file_backend
        self.file_backend = _DeferredRemovals(backend, queue)
        try:
            yield
        finally:
            self.file_backend = backend
        for path in queue:
            if path not in keep:
                self._remove(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """Save ``step``'s checkpoint, then point ``last_checkpoint`` to it,
        then remove the one beyond ``max_keep_ckpts`` (class doc).

        The bookkeeping is mmengine's: ``keep_ckpt_ids`` and ``last_ckpt`` in
        the message hub (recorded in the checkpoint) are updated before saving.
        """
        runner = runner.runner if isinstance(runner, _AtomicSaves) else runner
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            # The new checkpoint still lists the outdated one: killed before
            # removing it, a resumed run's before_train removes it.
            listed = ([] if outdated is None else [outdated]) + list(self.keep_ckpt_ids)
            runner.message_hub.update_info('keep_ckpt_ids', listed)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        save_checkpoint_atomic(
            runner, self.out_dir, ckpt_filename, file_client_args=self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        if outdated is not None:
            self._remove(self.file_backend.join_path(self.out_dir,
                                                     self.filename_tmpl.format(outdated)))
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
            self.file_backend.rmtree(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's best-checkpoint logic with atomic saves; the previous
        best checkpoint is removed after the new one is complete."""
        saver = _AtomicSaves(runner)
        with self._removals_last(keep=saver.written):
            super()._save_best_checkpoint(saver, metrics)
