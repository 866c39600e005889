"""Atomic checkpoint saves: SIGKILL at random moments while a Runner saves a
checkpoint every iteration (``max_keep_ckpts=1``, so every save also removes
one), then resume, many times in a row. Every other kill is aimed at the
moment a checkpoint file is being written."""
import os
import random
import signal
import time
import traceback

import pytest
import torch
from mmengine.hooks import Hook
from toy_runner import build_toy_runner

from mmdeform.engine import AtomicCheckpointHook, load_weights_only
from mmdeform.fileio.atomic_save import remove_stale_temporaries, temporary_name, write_atomic

TRIALS, TIME_BUDGET_S = 12, 40
PAYLOAD = 8_000_000  # 32 MB: saving takes most of each iteration
KILL_AFTER_S = (0.2, 1.2)  # after the child starts; it saves every ~0.05-0.2 s
KILL_WHILE_WRITING_S = (0.0, 0.01)  # after a temporary checkpoint file appears


class Markers(Hook):
    """Appends ``start <iter>`` when training starts (after resuming) and
    ``saved <iter>`` after each iteration's checkpoint hook has returned."""

    priority = 'LOWEST'  # after the checkpoint hook

    def __init__(self, path) -> None:
        self.path = path

    def _write(self, line: str) -> None:
        with open(self.path, 'a') as f:
            f.write(line + '\n')

    def before_train(self, runner) -> None:
        self._write(f'start {runner.iter}')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._write(f'saved {runner.iter + 1}')


def fork_training(work_dir, name, max_iters, markers, error_file) -> int:
    """Train (auto-resuming) in a forked child; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child never returns into pytest
        torch.set_num_threads(1)
        runner = build_toy_runner(str(work_dir), max_iters, name, payload_size=PAYLOAD,
                                  resume=True, custom_hooks=[Markers(str(markers))])
        runner.train()
        code = 0
    except BaseException:
        error_file.write_text(traceback.format_exc())
    finally:
        os._exit(code)


def writing(work_dir) -> bool:
    return work_dir.is_dir() and any('.tmp-' in name for name in os.listdir(work_dir))


def wait_until_writing(work_dir, timeout_s: float = 5.0) -> None:
    """Return as soon as a checkpoint is being written (its temporary file exists)."""
    deadline = time.monotonic() + timeout_s
    while not writing(work_dir) and time.monotonic() < deadline:
        time.sleep(0.001)


def read_markers(path, kind):
    if not path.exists():
        return []
    return [int(line.split()[1]) for line in path.read_text().splitlines()
            if line.startswith(kind + ' ')]


def saved_state(work_dir):
    """(iteration, path) of the checkpoint ``last_checkpoint`` names, checked
    to be complete; None before the first save."""
    pointer = work_dir / 'last_checkpoint'
    if not pointer.exists():
        return None
    path = pointer.read_text().strip()
    assert os.path.isfile(path), f'last_checkpoint names {path!r}, which does not exist'
    checkpoint = load_weights_only(path)  # a cut file raises CheckpointFormatError
    assert checkpoint['state_dict']['payload'].shape == (PAYLOAD,)
    assert path.endswith(f'iter_{checkpoint["meta"]["iter"]}.pth')
    return checkpoint['meta']['iter'], path


@pytest.fixture(scope='module')
def warm_imports(tmp_path_factory):
    """Train once in this process, so that forked children start warm."""
    build_toy_runner(str(tmp_path_factory.mktemp('warm')), 1, 'warm').train()


def test_sigkill_during_saves_then_resume(tmp_path, warm_imports):
    work_dir, errors = tmp_path / 'work', tmp_path / 'child_error.txt'
    rng = random.Random(0)
    started = time.monotonic()
    resumable, kills_while_writing = 0, 0
    for trial in range(TRIALS):
        if time.monotonic() - started > TIME_BUDGET_S:
            break
        markers = tmp_path / f'markers_{trial}.txt'
        pid = fork_training(work_dir, f'kill{trial}', 10 ** 6, markers, errors)
        if trial % 2:
            wait_until_writing(work_dir)
            time.sleep(rng.uniform(*KILL_WHILE_WRITING_S))
        else:
            time.sleep(rng.uniform(*KILL_AFTER_S))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), errors.read_text() if errors.exists() else status
        kills_while_writing += writing(work_dir)
        # the child resumed where the previous one's last complete checkpoint was
        assert read_markers(markers, 'start') in ([], [resumable])
        state = saved_state(work_dir)
        saved = read_markers(markers, 'saved')
        if state is None:
            assert not saved and resumable == 0
            continue
        # no completed save is lost; at most the interrupted one
        assert state[0] >= max(saved, default=resumable)
        checkpoints = [n for n in os.listdir(work_dir) if n.endswith('.pth')]
        assert 1 <= len(checkpoints) <= 2, checkpoints  # max_keep_ckpts=1, one removal pending
        resumable = state[0]
    assert resumable > 0, 'no checkpoint was ever completed: the kills came too early'
    assert kills_while_writing >= 1, 'no kill came while a checkpoint was being written'

    # a last run resumes and finishes; the temporary file of a killed save is gone
    markers = tmp_path / 'markers_final.txt'
    pid = fork_training(work_dir, 'final', resumable + 2, markers, errors)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, errors.read_text()
    assert read_markers(markers, 'start') == [resumable]
    assert saved_state(work_dir)[0] == resumable + 2
    assert not [n for n in os.listdir(work_dir) if '.tmp-' in n]
    print(f'{trial + 1} kills, {kills_while_writing} while a checkpoint was being written')


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / 'last_checkpoint'
    path.write_text('old')

    def write_then_fail(tmp_file):
        with open(tmp_file, 'w') as f:
            f.write('partial')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        write_atomic(str(path), write_then_fail)
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['last_checkpoint']


def test_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / temporary_name('iter_3.pth')
    stale.write_bytes(b'cut')
    keep = [tmp_path / 'iter_2.pth', tmp_path / '.hidden', tmp_path / 'notes.tmp-x']
    for path in keep:
        path.write_bytes(b'x')
    assert remove_stale_temporaries(str(tmp_path)) == [str(stale)]
    assert all(path.exists() for path in keep)


def test_best_checkpoint_replaced_after_the_new_one_is_complete(tmp_path):
    runner = build_toy_runner(str(tmp_path), 1, 'best', save_best='acc', rule='greater')
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
    removed_before_written = []
    original_remove = hook._remove

    def remove(path):
        removed_before_written.append(not os.path.isfile(tmp_path / 'best_acc_iter_2.pth'))
        original_remove(path)

    hook._remove = remove
    hook._save_best_checkpoint(runner, {'acc': 0.5})
    assert (tmp_path / 'best_acc_iter_1.pth').is_file()
    runner.train_loop._iter = 2
    hook._save_best_checkpoint(runner, {'acc': 0.7})
    assert (tmp_path / 'best_acc_iter_2.pth').is_file()
    assert not (tmp_path / 'best_acc_iter_1.pth').exists()
    assert removed_before_written and not any(removed_before_written)
    hook._save_best_checkpoint(runner, {'acc': 0.9})  # same iteration, same name: kept
    assert (tmp_path / 'best_acc_iter_2.pth').is_file()
    assert load_weights_only(str(tmp_path / 'best_acc_iter_2.pth'))['meta']['iter'] == 2
