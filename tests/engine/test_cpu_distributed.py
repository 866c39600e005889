"""init_cpu_process_group: mmengine's launcher environment without torch.cuda.set_device."""
import datetime
import os
import socket

import pytest
import torch.distributed as dist

from mmdeform.engine.cpu_distributed import _mpi_env, _slurm_env, init_cpu_process_group

DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_slurm_env(clean_env):
    clean_env.setenv('SLURM_PROCID', '3')
    clean_env.setenv('SLURM_NTASKS', '4')
    clean_env.setenv('SLURM_LOCALID', '1')
    clean_env.setenv('SLURM_NODELIST', 'node[0-1]')
    clean_env.setenv('MASTER_ADDR', 'node0')  # set: scontrol is not asked
    _slurm_env(port=1234)
    assert [os.environ[name] for name in DIST_VARS] == ['3', '4', '1', 'node0', '1234']


def test_mpi_env(clean_env):
    with pytest.raises(KeyError, match='MASTER_ADDR'):
        _mpi_env()
    clean_env.setenv('MASTER_ADDR', 'host')
    for name, value in (('SIZE', '2'), ('RANK', '1'), ('LOCAL_RANK', '0')):
        clean_env.setenv(f'OMPI_COMM_WORLD_{name}', value)
    _mpi_env()
    assert [os.environ[name] for name in DIST_VARS] == ['1', '2', '0', 'host', '29500']


def test_pytorch_launcher_starts_a_gloo_group(clean_env):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    for name, value in zip(DIST_VARS, ('0', '1', '0', '127.0.0.1', str(port))):
        clean_env.setenv(name, value)
    init_cpu_process_group('pytorch', backend='gloo', timeout=30)  # seconds, as dist_cfg
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1
        assert dist.get_backend() == 'gloo'
    finally:
        dist.destroy_process_group()


def test_timeout_in_seconds_becomes_a_timedelta(clean_env, monkeypatch):
    seen = {}
    monkeypatch.setattr(dist, 'init_process_group', lambda **kwargs: seen.update(kwargs))
    init_cpu_process_group('pytorch', backend='gloo', timeout=45)
    assert seen == dict(backend='gloo', timeout=datetime.timedelta(seconds=45))


def test_unknown_launcher():
    with pytest.raises(ValueError, match="'pytorch', 'slurm' or 'mpi'"):
        init_cpu_process_group('none')
