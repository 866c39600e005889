"""Fixtures of the CUDA-on-CPU tests: each emulation variant is built once per session."""
import emu_build
import pytest


def _ops(variant):
    try:
        return emu_build.build(variant)['ops']
    except ImportError as exc:  # mmdeform._C missing: the loader links against it
        pytest.fail(f'the CUDA emulation needs the compiled op library: {exc} (run make build)')


@pytest.fixture(scope='session')
def sm90():
    """``torch.ops`` namespace of the emulation with ``__CUDA_ARCH__`` = 900."""
    return _ops('sm90')


@pytest.fixture(scope='session')
def sm80():
    """``torch.ops`` namespace of the emulation with ``__CUDA_ARCH__`` = 800."""
    return _ops('sm80')


@pytest.fixture(scope='session', params=['sm90', 'sm80'])
def emu(request):
    """Both architectures in turn: vector (sm90) and scalar (sm80) float atomics."""
    return request.getfixturevalue(request.param)
