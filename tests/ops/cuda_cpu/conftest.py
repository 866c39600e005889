"""Fixtures of the CUDA-on-CPU tests: each emulation variant is built once per session."""
import emu_build
import pytest

SANITIZE = 'cuda_emu_sanitize'


def pytest_configure(config):
    config.addinivalue_line('markers', f'{SANITIZE}: the CUDA emulation under sanitizers '
                            '(make cuda-emu-sanitize)')


def pytest_collection_modifyitems(config, items):
    """Sanitizer tests run only when selected with ``-m cuda_emu_sanitize``."""
    if SANITIZE in (config.getoption('markexpr') or ''):
        return
    skip = pytest.mark.skip(reason=f'sanitizer builds: make cuda-emu-sanitize (-m {SANITIZE})')
    for item in items:
        if SANITIZE in item.keywords:
            item.add_marker(skip)


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
