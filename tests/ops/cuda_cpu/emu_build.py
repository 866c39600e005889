"""Builds and loads the CPU emulation of mmdeform's CUDA kernels (``emulation.cpp``).

Each variant is compiled once with :func:`torch.utils.cpp_extension.load` into
``.cache/cuda_emu/<variant>-<hash>/`` of the checkout, where the hash covers the
sources (the kernels' headers included), the flags and the torch version: a
changed kernel gets a fresh build, an unchanged one is reused across sessions.
The module links against ``mmdeform._C`` for the input checks of the CPU path
(``check_ms_deform_attn_inputs``, ``check_level_sizes``), so the emulated host
code raises exactly the errors the CUDA path raises.

Variants: ``sm90`` (``__CUDA_ARCH__`` = 900, float4 / float2 vector atomics),
``sm80`` (scalar atomics), and the sanitizer builds ``tsan`` (ThreadSanitizer)
and ``asan`` (AddressSanitizer + UndefinedBehaviorSanitizer), both sm90, which
only load in a process started with the sanitizer runtime preloaded
(:func:`sanitizer_env`).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
OPS = ROOT / 'ops'
KERNEL_HEADERS = [OPS / 'ms_deform_attn' / name for name in (
    'ms_deform_attn.h', 'ms_deform_attn_cuda.cuh', 'ms_deform_attn_cuda_deterministic.cuh',
    'ms_deform_attn_cuda_plan.h')]
SOURCES = [HERE / 'emulation.cpp', HERE / 'cuda_builtins.h', HERE / 'include' / 'cuda_runtime.h',
           HERE / 'include' / 'math_constants.h', *KERNEL_HEADERS]

# -O1: the kernels' loops at a fraction of -O2's compile time; -g0 saves more.
COMMON_FLAGS = ['-O1', '-g0', '-pthread']
SANITIZE_FLAGS = {
    'tsan': ['-fsanitize=thread'],
    'asan': ['-fsanitize=address,undefined', '-fno-sanitize-recover=all',
             '-fno-omit-frame-pointer'],
}
VARIANTS = {'sm90': 900, 'sm80': 800, 'tsan': 900, 'asan': 900}
RUNTIME_LIBRARY = {'tsan': 'libtsan.so', 'asan': 'libasan.so'}


def _digest(flags: List[str], library: Path) -> str:
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.read_bytes())
    h.update(' '.join(flags).encode())
    h.update(str(library).encode())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:12]


def _mmdeform_library() -> Path:
    import mmdeform._C  # noqa: F401  (raises a clear ImportError when unbuilt)
    return Path(mmdeform._C.__file__)


def namespace(variant: str) -> str:
    """Operator namespace of a variant: ``torch.ops.<namespace>``."""
    return f'mmdeform_cuda_emu_{variant}'


def build(variant: str, verbose: bool = False) -> Dict[str, object]:
    """Compiles (or reuses) and loads one variant.

    Args:
        variant: one of ``VARIANTS``.
        verbose: show the compiler's command lines.

    Returns:
        dict: ``ops`` (the ``torch.ops`` namespace), ``seconds`` (time spent
        here, compile included) and ``library`` (path of the built module).
    """
    if variant not in VARIANTS:
        raise ValueError(f'unknown emulation variant {variant!r}, expected one of {list(VARIANTS)}')
    from torch.utils.cpp_extension import load
    start = time.perf_counter()
    if shutil.which('ninja') is None:  # pip's ninja, next to a virtualenv's python
        os.environ['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'
    library = _mmdeform_library()
    flags = [*COMMON_FLAGS, *SANITIZE_FLAGS.get(variant, []),
             f'-DMMDEFORM_EMU_ARCH={VARIANTS[variant]}', f'-DMMDEFORM_EMU_NS={namespace(variant)}']
    name = namespace(variant)
    build_dir = ROOT / '.cache' / 'cuda_emu' / f'{variant}-{_digest(flags, library)}'
    build_dir.mkdir(parents=True, exist_ok=True)
    path = load(name=name, sources=[str(HERE / 'emulation.cpp')], extra_cflags=flags,
                extra_include_paths=[str(HERE / 'include'), str(OPS)],
                extra_ldflags=[*SANITIZE_FLAGS.get(variant, []), str(library),
                               f'-Wl,-rpath,{library.parent}'],
                build_directory=str(build_dir), is_python_module=False, verbose=verbose)
    return dict(ops=getattr(torch.ops, name), seconds=time.perf_counter() - start,
                library=path)


def sanitizer_env(variant: str) -> Dict[str, str]:
    """Environment of a process that loads a sanitizer variant (the runtime preloaded)."""
    compiler = os.environ.get('CXX', 'c++')
    runtime = subprocess.run([compiler, f'-print-file-name={RUNTIME_LIBRARY[variant]}'],
                             capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=runtime, OMP_NUM_THREADS='1')
    env['ASAN_OPTIONS'] = 'detect_leaks=0:abort_on_error=0:halt_on_error=1'
    env['UBSAN_OPTIONS'] = 'print_stacktrace=1:halt_on_error=1'
    env['TSAN_OPTIONS'] = 'halt_on_error=1:exitcode=66:report_signal_unsafe=0'
    return env
