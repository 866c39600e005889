"""What ``tools/train.py`` and ``tools/test.py`` do: command line -> config -> Runner.

The scripts parse their command lines (``tools/launch_args.py``); the steps
here are public so that they can be reused and tested one by one:

    args = parse_train_args(argv)     # tools/launch_args.py (argparse)
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
without CUDA) need changes to mmengine's defaults:
:mod:`mmdeform.engine.cpu_distributed` (:func:`configure_cpu_distributed`,
called by :func:`load_config`, and :func:`init_distributed`, called by
:func:`build_runner`). :func:`own_process_group` ends a group started inside
it (and releases the Runner that holds it) before ``tools/train.py`` and
``tools/test.py`` return.
"""
import gc
import os.path as osp
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator, Optional

import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

from .config_options import apply_cfg_options, check_hook_types
from .cpu_distributed import configure_cpu_distributed, init_distributed
from .runner import SafeLoadingRunner

# What --amp turns optim_wrapper.type='OptimWrapper' into.
_AMP_WRAPPER = 'DeviceAmpOptimWrapper'
# --resume without a value (argparse's const): the latest checkpoint, which must exist.
RESUME_LATEST = '<latest>'
RESUME_AUTO = 'auto'


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


def build_train_cfg(args) -> Config:
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


def build_test_cfg(args) -> Config:
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


@contextmanager
def own_process_group() -> Iterator[None]:
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
