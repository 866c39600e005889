"""Killing training with SIGKILL after a checkpoint, then ``--resume``, loses no epoch."""
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO, TOOL_TIMEOUT_S, run_tool, tool_env

from mmdeform.engine import load_weights_only

MAX_EPOCHS, ITERS_PER_EPOCH = 3, 4  # 8 training images, batch 2
# 3 epochs, a checkpoint every epoch, no validation, lr x0.1 after epoch 1
CFG_OPTIONS = ['--cfg-options', f'train_cfg.max_epochs={MAX_EPOCHS}', 'train_cfg.val_interval=10',
               'param_scheduler.0.end=3']


def trained_epochs(log: str) -> list:
    """Epochs whose last training iteration is in ``log``."""
    return [int(e) for e in re.findall(rf'Epoch\(train\) \[(\d+)\]\[{ITERS_PER_EPOCH}/'
                                       rf'{ITERS_PER_EPOCH}\]', log)]


def train_until_first_checkpoint(tiny_config, work_dir, cwd, out_file) -> None:
    """Start tools/train.py and SIGKILL it as soon as a checkpoint is complete
    (``last_checkpoint`` is written after the .pth file)."""
    with open(out_file, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / 'tools' / 'train.py'), tiny_config,
             '--work-dir', str(work_dir), *CFG_OPTIONS],
            cwd=cwd, env=tool_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TOOL_TIMEOUT_S
        try:
            while not (work_dir / 'last_checkpoint').exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f'training ended ({proc.returncode}) or timed out before the '
                                f'first checkpoint:\n{out_file.read_text()[-4000:]}')
                time.sleep(0.02)
            proc.kill()  # SIGKILL
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -9


def test_sigkill_then_resume(tiny_config, synthetic_workspace, tmp_path):
    work_dir = tmp_path / 'work'
    killed_log = tmp_path / 'killed.out'
    train_until_first_checkpoint(tiny_config, work_dir, synthetic_workspace, killed_log)
    saved = load_weights_only((work_dir / 'last_checkpoint').read_text().strip())
    saved_epoch = saved['meta']['epoch']
    assert 1 <= saved_epoch < MAX_EPOCHS, 'the kill came too late to test resuming'
    assert saved['meta']['iter'] == saved_epoch * ITERS_PER_EPOCH
    assert trained_epochs(killed_log.read_text())[:saved_epoch] == list(
        range(1, saved_epoch + 1))

    out = run_tool('train.py', [tiny_config, '--work-dir', str(work_dir), '--resume',
                                *CFG_OPTIONS], cwd=synthetic_workspace)
    assert f'resumed epoch: {saved_epoch}, iter: {saved_epoch * ITERS_PER_EPOCH}' in out
    # the resumed run trains exactly the epochs after the checkpoint, each completely
    assert trained_epochs(out) == list(range(saved_epoch + 1, MAX_EPOCHS + 1))
    assert f'Epoch(train) [{saved_epoch}]' not in out
    # the scheduler state came back: lr is already x0.1 (milestone after epoch 1)
    first_line = re.search(rf'Epoch\(train\) \[{saved_epoch + 1}\]\[1/\d\].*', out).group(0)
    assert 'base_lr: 2.0000e-05' in first_line

    # same end state as an uninterrupted run: MAX_EPOCHS epochs, MAX_EPOCHS * 4 iterations
    final_path = work_dir / f'epoch_{MAX_EPOCHS}.pth'
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(final_path)
    final = load_weights_only(str(final_path))
    assert final['meta']['epoch'] == MAX_EPOCHS
    assert final['meta']['iter'] == MAX_EPOCHS * ITERS_PER_EPOCH
    for epoch in range(1, MAX_EPOCHS + 1):
        assert (work_dir / f'epoch_{epoch}.pth').is_file()
