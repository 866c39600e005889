"""Start a process group on a machine without CUDA, for the launchers mmengine knows.

mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device(local_rank)``
before ``init_process_group`` for every launcher, which raises on a CPU-only
torch. :func:`init_cpu_process_group` does what ``init_dist`` does apart
from that call: it derives the ``env://`` variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the way
mmengine's launcher of the same name does and starts the process group.
"""
import datetime
import os
import subprocess
from typing import Optional

import torch.distributed as dist

DEFAULT_PORT = 29500


def _slurm_env(port: Optional[int]) -> None:
    """As mmengine's slurm launcher: ranks from ``SLURM_*``, the master is the
    first host of ``SLURM_NODELIST`` (``scontrol``) unless ``MASTER_ADDR`` is set."""
    node_list = os.environ['SLURM_NODELIST']
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', str(DEFAULT_PORT))
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def _mpi_env() -> None:
    """As mmengine's mpi launcher: ranks from ``OMPI_COMM_WORLD_*``."""
    if 'MASTER_ADDR' not in os.environ:
        raise KeyError('init_cpu_process_group: the mpi launcher needs MASTER_ADDR in the '
                       'environment')
    os.environ.setdefault('MASTER_PORT', str(DEFAULT_PORT))
    os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
    os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
    os.environ['LOCAL_RANK'] = os.environ['OMPI_COMM_WORLD_LOCAL_RANK']


def init_cpu_process_group(launcher: str, backend: str = 'gloo', **kwargs) -> None:
    """Set the ``env://`` variables for ``launcher`` and start the process group.

    Args:
        launcher (str): ``'pytorch'`` (torchrun has set the variables),
            ``'slurm'`` or ``'mpi'``.
        backend (str): ``torch.distributed`` backend; ``'gloo'`` on a CPU.
        **kwargs: ``port`` (slurm only, as in mmengine) and the keyword
            arguments of ``torch.distributed.init_process_group``; ``timeout``
            in seconds, as mmengine's ``dist_cfg`` gives it (or a timedelta).

    Raises:
        ValueError: an unknown launcher.
    """
    port = kwargs.pop('port', None)
    if launcher == 'slurm':
        _slurm_env(port)
    elif launcher == 'mpi':
        _mpi_env()
    elif launcher != 'pytorch':
        raise ValueError(f"init_cpu_process_group: launcher must be 'pytorch', 'slurm' or "
                         f"'mpi', got {launcher!r}")
    if isinstance(kwargs.get('timeout'), (int, float)):
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    dist.init_process_group(backend=backend, **kwargs)
