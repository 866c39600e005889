"""Compile-only check of the CUDA sources of mmdeform (``make cuda-check``).

Runs nvcc on every ``ops/*/*_cuda.cu`` for sm_80 and sm_90 with the flags the
extension build uses, against the installed torch's headers. Objects go to a
temporary directory and are discarded: this checks that the kernels compile,
it cannot link or run them (that needs a CUDA build of torch and a GPU). Works
with a CPU-only torch, where ``CUDAExtension`` refuses to build.

Usage: ``python tools/check_cuda_compile.py [--nvcc PATH] [--arch 80 --arch 90]
[--threads N] [FILE ...]``. Exits 1 when a file fails to compile, 2 when nvcc
is missing.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Same preprocessor environment as torch's CUDAExtension plus setup.py's flags.
NVCC_FLAGS = [
    '-std=c++20', '-O3', '--compiler-options', '-fPIC',
    '-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE', '-D__CUDA_NO_HALF_OPERATORS__',
    '-D__CUDA_NO_HALF_CONVERSIONS__', '-D__CUDA_NO_BFLOAT16_CONVERSIONS__',
    '-D__CUDA_NO_HALF2_OPERATORS__', '--expt-relaxed-constexpr',
    '-DMMDEFORM_WITH_CUDA', '-DTORCH_EXTENSION_NAME=_C', '-DTORCH_API_INCLUDE_EXTENSION_H',
]


def find_nvcc(explicit):
    """Path of nvcc: ``explicit``, $CUDA_HOME/bin/nvcc, or nvcc on PATH."""
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    cuda_home = os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')
    if cuda_home and os.path.isfile(os.path.join(cuda_home, 'bin', 'nvcc')):
        return os.path.join(cuda_home, 'bin', 'nvcc')
    return shutil.which('nvcc')


def torch_flags():
    """-I flags (torch's headers, Python's headers, ``ops/``) and torch's C++ ABI."""
    import torch
    from torch.utils.cpp_extension import include_paths
    dirs = [*include_paths(), sysconfig.get_paths()['include'], os.path.join(ROOT, 'ops')]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f'-I{d}' for d in dirs] + [f'-D_GLIBCXX_USE_CXX11_ABI={abi}']


def compile_one(nvcc, source, out_dir, archs, threads):
    """Compiles ``source`` to an object in ``out_dir``.

    Returns:
        tuple: (ok, seconds, compiler output).
    """
    gencode = [f'-gencode=arch=compute_{a},code=sm_{a}' for a in archs]
    obj = os.path.join(out_dir, os.path.basename(source) + '.o')
    cmd = [nvcc, '-c', source, '-o', obj, *NVCC_FLAGS, *gencode, '--threads', str(threads),
           *torch_flags()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return proc.returncode == 0, seconds, (proc.stdout + proc.stderr).strip()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('files', nargs='*', help='.cu files (default: ops/*/*_cuda.cu)')
    parser.add_argument('--nvcc', help='nvcc to use (default: $CUDA_HOME/bin/nvcc or PATH)')
    parser.add_argument('--arch', action='append', help='compute capability, e.g. 80 '
                        '(repeatable; default: 80 and 90)')
    parser.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1),
                        help='nvcc --threads: architectures compiled in parallel')
    return parser.parse_args()


def main():
    args = parse_args()
    nvcc = find_nvcc(args.nvcc)
    if nvcc is None:
        print('check_cuda_compile: nvcc not found (looked at --nvcc, $CUDA_HOME/bin, PATH); '
              'install the CUDA toolkit or pass --nvcc PATH.', file=sys.stderr)
        return 2
    files = args.files or sorted(glob.glob(os.path.join(ROOT, 'ops', '*', '*_cuda.cu')))
    if not files:
        print('check_cuda_compile: no ops/*/*_cuda.cu sources found', file=sys.stderr)
        return 1
    archs = args.arch or ['80', '90']
    print(f'nvcc: {nvcc}; archs: sm_{", sm_".join(archs)}')
    failed = []
    with tempfile.TemporaryDirectory(prefix='mmdeform_cuda_check_') as out_dir:
        for source in files:
            ok, seconds, output = compile_one(nvcc, source, out_dir, archs, args.threads)
            rel = os.path.relpath(source, ROOT)
            print(f'{"ok  " if ok else "FAIL"} {rel} ({seconds:.1f} s)')
            if output:
                print(output)
            if not ok:
                failed.append(rel)
    if failed:
        print(f'check_cuda_compile: {len(failed)} file(s) failed: {", ".join(failed)}',
              file=sys.stderr)
        return 1
    print(f'check_cuda_compile: {len(files)} file(s) compiled')
    return 0


if __name__ == '__main__':
    sys.exit(main())
