"""Shared by the tool tests: a synthetic dataset folder and a subprocess runner.

The tiny config (``tests/data/deformable-detr_tiny_synthetic.py``) reads
``data/synthetic/`` relative to the working directory, so every tool runs
with ``cwd`` = the folder of :func:`synthetic_workspace`.
"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL = 8, 5  # 4 iterations per epoch at batch 2; an odd number of val images
TOOL_TIMEOUT_S = 300


def tool_env(num_threads: int = 1) -> dict:
    """Environment of a tool subprocess: the repo importable, ``num_threads``
    OpenMP/MKL threads, no user site packages. One thread: the tiny model
    gains little from two, and OpenMP threads that wait for each other are
    many times slower on a busy 2-core machine."""
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get('PYTHONPATH', ''),
               OMP_NUM_THREADS=str(num_threads), MKL_NUM_THREADS=str(num_threads),
               PYTHONNOUSERSITE='1', PYTHONUNBUFFERED='1')
    return env


def run_tool(script: str, args, cwd, num_threads: int = 1,
             timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """Run ``tools/<script>`` with ``args`` (``python`` for .py, ``bash`` for
    .sh) and return its stdout + stderr; a non-zero exit fails the test with
    the output's tail, and so does a run past ``timeout_s``, after which the
    tool and every process it started (torchrun's workers) are killed."""
    path = str(REPO / 'tools' / script)
    cmd = ['bash', path, *args] if script.endswith('.sh') else [sys.executable, path, *args]
    # its own session: a time-out kills the whole process group, not only bash
    proc = subprocess.Popen(cmd, cwd=cwd, env=tool_env(num_threads), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f'{" ".join(cmd)} still running after {timeout_s:.0f} s (killed with its '
                    f'process group):\n{output[-6000:]}')
    if proc.returncode != 0:
        pytest.fail(f'{" ".join(cmd)} exited with {proc.returncode}:\n{output[-6000:]}')
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(scope='session')
def synthetic_workspace(tmp_path_factory) -> Path:
    """A folder holding ``data/synthetic/`` (8 train, 5 val 64x64 images)."""
    from mmdeform.datasets import make_synthetic_coco
    workspace = tmp_path_factory.mktemp('tool_workspace')
    make_synthetic_coco(str(workspace / 'data' / 'synthetic'), num_train=NUM_TRAIN,
                        num_val=NUM_VAL, image_size=64, seed=0, progress=False)
    return workspace
