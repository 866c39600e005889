"""Build mmdeform and its compiled op library ``mmdeform._C``.

The extension is compiled from the sources under ``ops/`` (one folder per op:
``<op>.h``, ``<op>_cpu.cpp``, ``<op>_cuda.cu``). CPU sources are always built.
CUDA sources are added when torch was built with CUDA and nvcc is found, or
when ``MMDEFORM_WITH_CUDA=1`` forces them (``MMDEFORM_WITH_CUDA=0`` disables
them). Users install with ``pip install --no-build-isolation -e .``.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch_cuda_version, cuda_home):
    flag = os.environ.get('MMDEFORM_WITH_CUDA')
    if flag is not None:
        return flag == '1'
    return torch_cuda_version is not None and cuda_home is not None


def _openmp_flags():
    # at::parallel_for only runs on several threads when -fopenmp is given
    # both when compiling and when linking.
    if sys.platform == 'darwin':
        return [], []
    return ['-fopenmp'], ['-fopenmp']


def make_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join('ops', '*.cpp')))
    sources += sorted(glob.glob(os.path.join('ops', '*', '*_cpu.cpp')))
    omp_compile, omp_link = _openmp_flags()
    cxx_flags = ['-O3', '-g0', *omp_compile]
    define_macros = []
    if _want_cuda(torch.version.cuda, CUDA_HOME):
        sources += sorted(glob.glob(os.path.join('ops', '*', '*_cuda.cu')))
        define_macros.append(('MMDEFORM_WITH_CUDA', None))
        nvcc_flags = [
            '-O3', '--expt-relaxed-constexpr', '-D__CUDA_NO_HALF_OPERATORS__',
            '-D__CUDA_NO_HALF_CONVERSIONS__', '-D__CUDA_NO_BFLOAT16_CONVERSIONS__',
            '-D__CUDA_NO_HALF2_OPERATORS__']
        ext_cls = CUDAExtension
        extra = dict(cxx=cxx_flags, nvcc=nvcc_flags)
    else:
        ext_cls = CppExtension
        extra = dict(cxx=cxx_flags)
    return [ext_cls(
        name='mmdeform._C',
        sources=sources,
        include_dirs=[os.path.join(ROOT, 'ops')],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=omp_link,
        py_limited_api=False)]


def read_requirements(path):
    with open(os.path.join(ROOT, path)) as f:
        return [line.strip() for line in f
                if line.strip() and not line.startswith('#')]


def main():
    from torch.utils.cpp_extension import BuildExtension
    setup(
        name='mmdeform',
        version='0.1.0',
        description='Deformable DETR as registered, swappable components',
        packages=find_packages(include=['mmdeform', 'mmdeform.*']),
        python_requires='>=3.9',
        install_requires=read_requirements('requirements/runtime.txt'),
        ext_modules=make_extensions(),
        cmdclass={'build_ext': BuildExtension.with_options(use_ninja=True)},
        zip_safe=False)


if __name__ == '__main__':
    main()
