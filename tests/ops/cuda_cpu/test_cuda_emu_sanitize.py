"""The emulated CUDA kernels under ThreadSanitizer and AddressSanitizer + UBSan.

Selected with ``-m cuda_emu_sanitize`` (``make cuda-emu-sanitize``), skipped otherwise:
the two sanitizer builds and runs take about 2 minutes. Each run is a subprocess with
the sanitizer runtime preloaded (``sanitize_run.py``) and a timeout, and every barrier
of the emulation has its own deadline, so a lane stuck at a barrier fails the test
instead of hanging it.
"""
import subprocess
import sys
from pathlib import Path

import emu_build
import pytest

pytestmark = pytest.mark.cuda_emu_sanitize
SCRIPT = Path(__file__).resolve().parent / 'sanitize_run.py'
TIMEOUT_S = 900  # build (about 30 s) and runs (about 30 s under TSan) with a wide margin


def _run(variant, *args):
    proc = subprocess.run([sys.executable, str(SCRIPT), variant, *args],
                          env=emu_build.sanitizer_env(variant), capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=SCRIPT.parent)
    return proc.returncode, proc.stdout + proc.stderr


def test_thread_sanitizer_finds_no_race():
    code, output = _run('tsan')
    assert 'ThreadSanitizer' not in output, output[-6000:]
    assert code == 0 and 'runs clean' in output, output[-6000:]


def test_address_and_undefined_sanitizers_find_nothing():
    code, output = _run('asan')
    assert 'AddressSanitizer' not in output and 'runtime error' not in output, output[-6000:]
    assert code == 0 and 'runs clean' in output, output[-6000:]


def test_misaligned_vector_load_is_reported():
    """A 16-byte vector load from a 4-byte-aligned value pointer (the host code would
    pick VEC = 1; here VEC = 4 is forced) must be stopped by UBSan's alignment check."""
    code, output = _run('asan', '--misaligned')
    assert code != 0 and 'misaligned address' in output, output[-6000:]
    assert 'ms_deform_attn_cuda.cuh' in output
