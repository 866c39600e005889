"""What ``tools/train.py`` and ``tools/test.py`` do: command line -> config -> Runner.

Each script is ``run_train(argv)`` / ``run_test(argv)``; the steps are public
so that they can be reused and tested one by one:

    args = parse_train_args(argv)     # argparse
    cfg = build_train_cfg(args)       # Config with the command line applied
    runner = train(cfg)               # mmengine Runner: train (and validate)

Distributed runs on a CPU-only machine (``--launcher pytorch|slurm|mpi``
without CUDA) need three changes to mmengine 0.10.7's defaults, made by
:func:`configure_cpu_distributed` and :func:`init_distributed`:

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
  :func:`~mmdeform.engine.cpu_distributed.init_cpu_process_group` (the
  launcher's environment handling of mmengine, without that call). The
  Runner then finds the process group initialised and does not start
  another one.
"""
import argparse
import inspect
import os
import os.path as osp
from typing import List, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import is_distributed
from mmengine.runner import Runner
from mmengine.utils.dl_utils import set_multi_processing
from torch.nn.parallel import DistributedDataParallel

from .cpu_distributed import init_cpu_process_group

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
# What --amp turns optim_wrapper.type='OptimWrapper' into.
_AMP_WRAPPER = 'DeviceAmpOptimWrapper'


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: '
                        './work_dirs/<config file name without .py>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, default={},
        help='override config entries, e.g. train_dataloader.batch_size=4 '
        "'param_scheduler.0.milestones=[8,11]'")
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher for distributed runs')
    # torch.distributed.launch passes --local-rank (or --local_rank in old versions)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def parse_train_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/train.py`` (see ``--help``)."""
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or without a value from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (float16/bfloat16 on GPU, bfloat16 on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate linearly with the total batch size')
    _add_common_args(parser)
    return _export_local_rank(parser.parse_args(argv))


def parse_test_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/test.py`` (see ``--help``)."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the predictions to this .pkl file')
    parser.add_argument('--show-dir', help='write images with drawn predictions to '
                        '<work_dir>/<timestamp>/SHOW_DIR')
    _add_common_args(parser)
    return _export_local_rank(parser.parse_args(argv))


def _export_local_rank(args: argparse.Namespace) -> argparse.Namespace:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(config: str, work_dir: Optional[str], cfg_options: dict,
                launcher: str) -> Config:
    """Read ``config``, apply ``cfg_options``, set ``work_dir`` and ``launcher``.

    ``work_dir``: the argument, else the config's ``work_dir``, else
    ``./work_dirs/<config file name without .py>``.

    Raises:
        FileNotFoundError: ``config`` does not exist.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config} does not exist')
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    configure_cpu_distributed(cfg)
    return cfg


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


def build_train_cfg(args: argparse.Namespace) -> Config:
    """The training config with ``--resume``, ``--amp`` and ``--auto-scale-lr`` applied.

    Raises:
        ValueError: ``--amp`` with an optim wrapper other than ``OptimWrapper``
            or a mixed precision one; ``--auto-scale-lr`` with a config
            without ``auto_scale_lr.base_batch_size``.
    """
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.amp:
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type == 'OptimWrapper':
            cfg.optim_wrapper.type = _AMP_WRAPPER
        elif 'Amp' not in wrapper_type:
            raise ValueError(f'--amp: the config uses optim_wrapper type {wrapper_type!r}; '
                             f"--amp can only turn 'OptimWrapper' into '{_AMP_WRAPPER}'")
    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise ValueError(f'--auto-scale-lr: {args.config} has no '
                             'auto_scale_lr=dict(base_batch_size=...)')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':  # the latest checkpoint in work_dir
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def build_test_cfg(args: argparse.Namespace) -> Config:
    """The test config: weights from ``args.checkpoint``, ``--out`` and
    ``--show-dir`` applied.

    Raises:
        ValueError: ``--out`` not ending in ``.pkl`` / ``.pickle``.
    """
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out}')
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
        cfg.test_evaluator = evaluators + [dict(type='DumpResults', out_file_path=args.out)]
    if args.show_dir is not None:
        hooks = cfg.setdefault('default_hooks', {})
        hook = hooks.setdefault('visualization', dict(type='DetVisualizationHook'))
        hook.update(draw=True, test_out_dir=args.show_dir)
    return cfg


def train(cfg: Config) -> Runner:
    """Build a Runner from ``cfg`` and train; returns the Runner."""
    init_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def test(cfg: Config) -> dict:
    """Build a Runner from ``cfg`` and test; returns the metrics."""
    init_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    return runner.test()


def run_train(argv: Optional[List[str]] = None) -> Runner:
    """``tools/train.py``."""
    return train(build_train_cfg(parse_train_args(argv)))


def run_test(argv: Optional[List[str]] = None) -> dict:
    """``tools/test.py``."""
    return test(build_test_cfg(parse_test_args(argv)))
