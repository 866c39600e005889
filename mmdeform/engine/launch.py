"""What ``tools/train.py`` and ``tools/test.py`` do: command line -> config -> Runner.

Each script is ``run_train(argv)`` / ``run_test(argv)``; the steps are public
so that they can be reused and tested one by one:

    args = parse_train_args(argv)     # argparse
    cfg = build_train_cfg(args)       # Config with the command line applied
    runner = train(cfg)               # SafeLoadingRunner: train (and validate)

``--cfg-options`` are checked against the config
(:mod:`mmdeform.engine.config_options`), as are the hook types.

Resuming (``tools/train.py``), as mmdet but with the bare flag explicit:

- ``--resume``: from the checkpoint named by ``<work_dir>/last_checkpoint``;
  an error if there is none (or it names a missing file);
- ``--resume auto``: the same if there is one, else train from scratch;
- ``--resume CKPT``: from ``CKPT``, which must exist.

Resuming needs the model that wrote the checkpoint (checked before loading);
``load_from`` and ``tools/test.py``'s checkpoint load strictly unless
``--partial-load`` (:class:`mmdeform.engine.runner.SafeLoadingRunner`).

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
  another one. :func:`run_train` and :func:`run_test` destroy the group
  (and release the Runner that holds it) before they return.
"""
import argparse
import gc
import inspect
import os
import os.path as osp
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.utils.dl_utils import set_multi_processing
from torch.nn.parallel import DistributedDataParallel

from .config_options import CfgOptionsAction, apply_cfg_options, check_hook_types
from .cpu_distributed import init_cpu_process_group
from .runner import SafeLoadingRunner

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
# What --amp turns optim_wrapper.type='OptimWrapper' into.
_AMP_WRAPPER = 'DeviceAmpOptimWrapper'
# --resume without a value (argparse's const): the latest checkpoint, which must exist.
RESUME_LATEST = '<latest>'
RESUME_AUTO = 'auto'


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: '
                        './work_dirs/<config file name without .py>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction, default={},
        help='override existing config entries, e.g. train_dataloader.batch_size=4 '
        "'param_scheduler.0.milestones=[8,11]'")
    parser.add_argument('--partial-load', action='store_true',
                        help='load only the checkpoint tensors whose names and shapes match '
                        'the model (default: any difference is an error); not for --resume')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher for distributed runs')
    # torch.distributed.launch passes --local-rank (or --local_rank in old versions)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def parse_train_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/train.py`` (see ``--help``)."""
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', const=RESUME_LATEST, default=None,
                        metavar='CKPT|auto',
                        help='resume from CKPT; without a value from the latest checkpoint '
                        'in the work dir (an error if there is none); "auto": from the '
                        'latest checkpoint if there is one, else from scratch')
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
                launcher: str, edit: Optional[Callable[[Config], None]] = None) -> Config:
    """Read ``config``, apply ``cfg_options``, set ``work_dir`` and ``launcher``.

    As mmengine's ``tools/train.py``: ``cfg_options`` are merged first, then
    the other command-line changes (``launcher``, ``edit``, the CPU
    distributed settings), and the option keys are checked against the result
    (:func:`~mmdeform.engine.config_options.apply_cfg_options`).
    ``work_dir``: the argument, else the config's ``work_dir``, else
    ``./work_dirs/<config file name without .py>``.

    Args:
        edit (callable, optional): More command-line changes, ``edit(cfg)``
            (``--amp``, ``--auto-scale-lr`` of :func:`build_train_cfg`).

    Raises:
        FileNotFoundError: ``config`` does not exist.
        KeyError: a ``cfg_options`` key the config does not have, or a hook
            type that is not registered (named).
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config} does not exist')
    cfg = Config.fromfile(config)

    def command_line_edits(cfg: Config) -> None:
        cfg.launcher = launcher
        if edit is not None:
            edit(cfg)
        configure_cpu_distributed(cfg)

    apply_cfg_options(cfg, cfg_options, edit=command_line_edits)
    check_hook_types(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
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
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher,
                      edit=partial(apply_train_flags, amp=args.amp,
                                   auto_scale_lr=args.auto_scale_lr, config=args.config))
    if args.resume is not None:
        resume_from = resolve_resume(args.resume, cfg.work_dir)
        cfg.resume = resume_from is not None
        if resume_from is not None:
            cfg.load_from = resume_from
    return cfg


def apply_train_flags(cfg: Config, amp: bool, auto_scale_lr: bool, config: str) -> None:
    """``--amp`` and ``--auto-scale-lr`` (after ``--cfg-options``, as mmengine).

    Raises:
        ValueError: see :func:`build_train_cfg`.
    """
    if amp:
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type == 'OptimWrapper':
            cfg.optim_wrapper.type = _AMP_WRAPPER
        elif 'Amp' not in wrapper_type:
            raise ValueError(f'--amp: the config uses optim_wrapper type {wrapper_type!r}; '
                             f"--amp can only turn 'OptimWrapper' into '{_AMP_WRAPPER}'")
    if auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise ValueError(f'--auto-scale-lr: {config} has no '
                             'auto_scale_lr=dict(base_batch_size=...)')
        cfg.auto_scale_lr.enable = True


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint named by ``<work_dir>/last_checkpoint``; None without that file.

    Raises:
        FileNotFoundError: the file names a checkpoint that does not exist.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        path = f.read().strip()
    if not path or not osp.isfile(path):
        raise FileNotFoundError(f'{pointer} names the checkpoint {path!r}, which does not exist')
    return path


def resolve_resume(resume: str, work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` means (module doc), None to train from scratch.

    Args:
        resume (str): :data:`RESUME_LATEST` (the bare flag), ``'auto'`` or a path.
        work_dir (str): Where training writes its checkpoints.

    Raises:
        FileNotFoundError: nothing to resume from, or a path that does not exist.
    """
    if resume in (RESUME_LATEST, RESUME_AUTO):
        latest = latest_checkpoint(work_dir)
        if latest is None and resume == RESUME_LATEST:
            raise FileNotFoundError(
                f'--resume: no checkpoint to resume from in {work_dir} (no last_checkpoint '
                'file). Pass --resume CKPT, or --resume auto to start from scratch when '
                'there is nothing to resume')
        if latest is None:
            print_log(f'--resume auto: no checkpoint in {work_dir}; training from scratch',
                      logger='current')
        return latest
    if not osp.isfile(resume):
        raise FileNotFoundError(f'--resume: checkpoint {resume} does not exist')
    return resume


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


def build_runner(cfg: Config, strict_load: bool = True) -> SafeLoadingRunner:
    """Start the process group if needed and build the Runner of ``cfg``.

    Args:
        cfg (Config): The complete config.
        strict_load (bool): ``load_from`` must match the model exactly
            (False: ``--partial-load``). Resuming is always strict.
    """
    init_distributed(cfg)
    runner = SafeLoadingRunner.from_cfg(cfg)
    runner.strict_load = strict_load
    return runner


def train(cfg: Config, strict_load: bool = True) -> SafeLoadingRunner:
    """Build a Runner from ``cfg`` and train; returns the Runner."""
    runner = build_runner(cfg, strict_load)
    runner.train()
    return runner


def test(cfg: Config, strict_load: bool = True) -> dict:
    """Build a Runner from ``cfg`` and test; returns the metrics."""
    return build_runner(cfg, strict_load).test()


def run_train(argv: Optional[List[str]] = None) -> None:
    """``tools/train.py``."""
    args = parse_train_args(argv)
    with _own_process_group():
        train(build_train_cfg(args), strict_load=not args.partial_load)


def run_test(argv: Optional[List[str]] = None) -> None:
    """``tools/test.py``."""
    args = parse_test_args(argv)
    with _own_process_group():
        test(build_test_cfg(args), strict_load=not args.partial_load)


@contextmanager
def _own_process_group() -> Iterator[None]:
    """Ends a process group started inside (by :func:`init_distributed` or the
    Runner) while the interpreter is fully alive: after a barrier (no rank
    leaves while another still talks to it), the Runner is collected (its DDP
    wrapper holds the group) and the group destroyed. A gloo group left to the
    interpreter's shutdown can abort the process ("terminate called without
    an active exception")."""
    started_before = dist.is_available() and dist.is_initialized()
    finished = False
    try:
        yield
        finished = True
    finally:
        if not started_before and dist.is_available() and dist.is_initialized():
            if finished:
                dist.barrier()
            gc.collect()
            dist.destroy_process_group()
            gc.collect()
