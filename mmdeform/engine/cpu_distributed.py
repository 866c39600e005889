"""Distributed runs on a machine without CUDA, with the launchers mmengine knows.

Distributed runs on a CPU-only machine (``--launcher pytorch|slurm|mpi``
without CUDA) need three changes to mmengine 0.10.7's defaults, made by
:func:`configure_cpu_distributed` and :func:`init_distributed` (both called by
:mod:`mmdeform.engine.launch`):

- ``env_cfg.dist_cfg.backend = 'gloo'`` (NCCL needs GPUs);
- ``model_wrapper_cfg = dict(type='MMDistributedDataParallel',
  device_ids=None, forward_sync_buffers=False, find_unused_parameters=...)``:
  mmengine's default wrapper passes ``device_ids=[LOCAL_RANK]``, which DDP
  rejects for CPU modules (``forward_sync_buffers=False`` is torch 2.13's
  name for mmengine's ``broadcast_buffers=False``; ``find_unused_parameters``
  comes from the config, default False: every parameter of our detectors gets
  a gradient, with or without ground truth boxes);
- mmengine's launchers call ``torch.cuda.set_device(local_rank)``
  unconditionally, which raises on a CPU-only torch. :func:`init_distributed`
  starts the process group before the Runner exists with
  :func:`init_cpu_process_group`. The Runner then finds the process group
  initialised and does not start another one.

:func:`init_cpu_process_group` does what mmengine's ``init_dist`` does apart
from the ``set_device`` call: it derives the ``env://`` variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the way
mmengine's launcher of the same name does (slurm: the master host from
``scontrol``, as mmengine) and starts the process group.
"""
import datetime
import inspect
import os
import subprocess
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import is_distributed
from mmengine.utils.dl_utils import set_multi_processing
from torch.nn.parallel import DistributedDataParallel

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


def configure_cpu_distributed(cfg: Config) -> None:
    """gloo backend and a CPU DDP wrapper when distributed without CUDA.

    Keeps other ``dist_cfg`` keys (e.g. ``timeout``) and a ``model_wrapper_cfg``
    given by the config (its ``device_ids`` becomes None). A new wrapper
    takes ``find_unused_parameters`` from the config (default False).
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        find_unused_parameters=cfg.get('find_unused_parameters', False),
        **_no_forward_buffer_sync())
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def _no_forward_buffer_sync() -> dict:
    """DDP arguments for not broadcasting buffers before every forward (as
    mmengine's default wrapper): torch >= 2.13 deprecates
    ``broadcast_buffers=False`` in favour of ``forward_sync_buffers=False``."""
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters:
        return dict(forward_sync_buffers=False)
    return dict(broadcast_buffers=False)


def init_distributed(cfg: Config) -> None:
    """Start the process group of a CPU-only distributed run (module doc).

    Does nothing without a launcher, with CUDA (the Runner starts NCCL as
    usual) or when a process group exists already.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available() or is_distributed():
        return
    env_cfg = cfg.get('env_cfg', {})
    # as the Runner does before starting the process group (start method, threads)
    set_multi_processing(**env_cfg.get('mp_cfg', {}), distributed=True)
    init_cpu_process_group(cfg.launcher, **env_cfg.get('dist_cfg', {}))
