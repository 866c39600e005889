"""Fixtures shared by the whole suite; helpers to import live in ``mmdeform.testing``."""
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope='session')
def tiny_config() -> str:
    """Path of the tiny synthetic-data config (``tests/data``)."""
    return str(TESTS / 'data' / 'deformable-detr_tiny_synthetic.py')


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module's tests: on a busy 2-core machine two
    OpenMP threads that wait for each other make the tiny models many times
    slower. Opt in with ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
