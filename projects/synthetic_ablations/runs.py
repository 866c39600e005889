"""One training run of a synthetic config, in its own process, and the reuse of finished ones.

Shared by the Table 2 rows (:mod:`projects.synthetic_ablations.ablations`) and
the convergence pair (:mod:`projects.synthetic_ablations.convergence`):
:func:`train_row` trains one config with one seed and returns its record
(metrics, the AP curve, seconds, the feature cache's hits); :func:`train_or_reuse`
runs it in a fresh process unless ``result.json`` of the same config, seed
and iterations is already there, so a table or convergence run that was
stopped goes on where it was (finished runs are not trained again).
"""
import hashlib
import json
import multiprocessing
import os
import os.path as osp
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np
from mmengine.config import Config
from mmengine.utils import mkdir_or_exist

from mmdeform.fileio import write_text_atomic
from mmdeform.visualization.curves import load_scalars
from projects.synthetic_ablations.experiment import build_synthetic_config, train_and_evaluate
from projects.synthetic_ablations.intervals import plateau_gate
from projects.synthetic_ablations.plateau import PlateauExtensionHook

# short name -> CocoMetric key
METRICS = {'AP': 'coco/bbox_mAP', 'AP50': 'coco/bbox_mAP_50', 'AP_S': 'coco/bbox_mAP_s',
           'AP_M': 'coco/bbox_mAP_m', 'AP_L': 'coco/bbox_mAP_l'}
RESULT_FILE = 'result.json'


def row_name(config: str) -> str:
    """``algorithm_variant`` from a config file name: its first two ``_``-separated fields
    (``deformable-detr_ss-k1_r18_1xb8-600i_synthetic.py`` -> ``deformable-detr_ss-k1``)."""
    parts = osp.splitext(osp.basename(config))[0].split('_')
    if len(parts) < 3:
        raise ValueError(f'row_name: {config} is not named <algorithm>_<variant>_<rest>.py')
    return f'{parts[0]}_{parts[1]}'


def config_digest(config: str) -> str:
    """A fingerprint of what ``config`` sets, its ``_base_`` files included: the first 16 hex
    digits of the SHA-256 of its keys and values (sorted JSON). Editing a config, or a
    config it inherits from, changes it; comments and formatting do not."""
    content = json.dumps(Config.fromfile(config).to_dict(), sort_keys=True, default=repr)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def _budget(config: str) -> dict:
    """What must be equal across rows: data, iterations, batch size."""
    cfg = Config.fromfile(config)
    if 'synthetic_data' not in cfg:
        raise KeyError(f'ablations: {config} has no "synthetic_data"; the rows must be '
                       'synthetic configs (e.g. projects/synthetic_ablations/configs/ablations)')
    return dict(synthetic_data=cfg.synthetic_data.to_dict(),
                max_iters=cfg.train_cfg.max_iters,
                batch_size=cfg.train_dataloader.batch_size)


# the cfg_options key of the optimizer's learning rate (a learning-rate sweep sets it)
LR_KEY = 'optim_wrapper.optimizer.lr'


def check_same_budget(rows: dict, max_iters: Optional[int] = None,
                      same_length: bool = True) -> dict:
    """The budget shared by every row (``max_iters`` overrides the configs').

    With ``same_length=False`` the rows may be scheduled for different
    iterations: ``max_iters`` of the result is then a dict, row name -> its
    iterations (``max_iters`` when given, else the config's).

    Raises:
        ValueError: two rows differ in data, batch size or (without
            ``max_iters`` and with ``same_length``) iterations; the message
            names both configs.
    """
    budgets = {name: _budget(path) for name, path in rows.items()}
    if max_iters is not None:
        for budget in budgets.values():
            budget['max_iters'] = max_iters
    if not same_length:  # one dict of every row's length: equal in every budget
        lengths = {name: budget['max_iters'] for name, budget in budgets.items()}
        for budget in budgets.values():
            budget['max_iters'] = lengths
    first_name, first = next(iter(budgets.items()))
    for name, budget in budgets.items():
        for key, value in budget.items():
            if value != first[key]:
                raise ValueError(f'ablations: rows must share the budget, but {key} is '
                                 f'{first[key]} in {rows[first_name]} and {value} in '
                                 f'{rows[name]}')
    return first


def decay_iter(cfg: Config) -> Optional[int]:
    """First ``milestones`` entry of the config's schedulers (the step decay), or None."""
    milestones = [m for scheduler in cfg.get('param_scheduler', [])
                  for m in scheduler.get('milestones', [])]
    return int(min(milestones)) if milestones else None


def _curve(log_dir: str) -> list:
    """One dict per validation of the run: ``iter`` and the metrics of :data:`METRICS`."""
    _, val_records = load_scalars(osp.join(log_dir, 'vis_data', 'scalars.json'))
    return [dict(iter=int(r['step']), **{k: float(r[v]) for k, v in METRICS.items() if v in r})
            for r in val_records if METRICS['AP'] in r]


def train_row(config: str, work_dir: str, data_root: str, seed: int,
              max_iters: Optional[int] = None, val_interval: Optional[int] = None,
              synthetic_overrides: Optional[dict] = None,
              num_threads: Optional[int] = None, cfg_options: Optional[dict] = None) -> dict:
    """Train one row with one seed and evaluate it (data must already be there).

    Args:
        config (str): Row config (see
            :func:`projects.synthetic_ablations.experiment.build_synthetic_config`).
        work_dir (str): Output folder of this run (no checkpoint is saved).
        data_root (str): Dataset folder prepared by the caller.
        seed (int): Training seed.
        max_iters (int, optional): Overrides the config's iterations (the
            schedule and the evaluation points scale with it).
        val_interval (int, optional): Overrides the validation interval.
        synthetic_overrides (dict, optional): Updates ``synthetic_data`` (only
            recorded in the dumped config; the data is not regenerated).
        num_threads (int, optional): ``torch.set_num_threads``.
        cfg_options (dict, optional): Dotted keys merged into the config
            last (``Config.merge_from_dict``), e.g. a checkpoint path.

    Returns:
        dict: ``row``, ``config``, ``config_digest`` (:func:`config_digest`),
        ``seed``, ``iters``, ``metrics`` (short
        names of :data:`METRICS`), ``curve`` (one dict per validation:
        ``iter`` and the metrics), ``train_seconds`` (training iterations
        with data loading, validation excluded), ``seconds_per_iter``,
        ``total_seconds``, ``params``, ``cache`` (the feature cache's
        ``hits`` / ``misses`` / ``entries`` / ``bytes``, or None),
        ``decay_iter`` (:func:`decay_iter`), ``log_dir``, ``lr`` (the
        optimizer's base learning rate after ``cfg_options``),
        ``scheduled_iters`` (the config's ``max_iters``; ``iters`` is larger
        when the run was trained on to its plateau) and ``extension``
        (:meth:`~projects.synthetic_ablations.plateau.PlateauExtensionHook.summary`,
        None without the hook).
    """
    import torch
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    cfg = build_synthetic_config(config, work_dir, data_root, seed, max_iters, val_interval,
                                 synthetic_overrides)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.default_hooks.checkpoint = None  # a few hundred MB per run, never reused
    cfg.experiment_name = f'{row_name(config)}_seed{seed}_{uuid.uuid4().hex[:8]}'
    cfg.visualizer.name = cfg.experiment_name
    start = time.perf_counter()
    runner, metrics = train_and_evaluate(cfg, progress=False)
    total_seconds = time.perf_counter() - start
    # IterTimerHook's per-iteration times (data loading included), kept by the message hub
    train_seconds = float(np.sum(runner.message_hub.get_scalar('train/time').data[0]))
    backbone = runner.model.backbone
    extension = next((hook.summary() for hook in runner.hooks
                      if isinstance(hook, PlateauExtensionHook)), None)
    return dict(row=row_name(config), config=osp.abspath(config),
                config_digest=config_digest(config), seed=seed, iters=runner.iter,
                lr=float(cfg.optim_wrapper.optimizer.lr),
                scheduled_iters=int(cfg.train_cfg.max_iters), extension=extension,
                metrics={k: float(metrics[v]) for k, v in METRICS.items() if v in metrics},
                curve=_curve(runner.log_dir), train_seconds=train_seconds,
                seconds_per_iter=train_seconds / max(runner.iter, 1),
                total_seconds=total_seconds,
                params=int(sum(p.numel() for p in runner.model.parameters())),
                cache=backbone.cache_info() if hasattr(backbone, 'cache_info') else None,
                decay_iter=decay_iter(cfg), log_dir=runner.log_dir)


def _train_row_to_file(kwargs: dict, result_file: str) -> None:
    """Child process body: :func:`train_row`, its result written as json (atomically: the
    file marks a finished run for the resume, so a kill never leaves half of it)."""
    result = train_row(**kwargs)
    write_text_atomic(result_file, json.dumps(result, indent=1))


def run_in_process(kwargs: dict, result_file: str) -> dict:
    """:func:`train_row` in a fresh (spawned) process; mmengine's global state stays there.

    Raises:
        RuntimeError: the process failed or wrote no result; names the run.
    """
    context = multiprocessing.get_context('spawn')
    process = context.Process(target=_train_row_to_file, args=(kwargs, result_file))
    process.start()
    process.join()
    if process.exitcode != 0 or not osp.isfile(result_file):
        raise RuntimeError(f'ablations: the run of {kwargs["config"]} (seed {kwargs["seed"]}) '
                           f'failed with exit code {process.exitcode}; its log is under '
                           f'{kwargs["work_dir"]}')
    with open(result_file) as f:
        return json.load(f)


def reusable_result(result_file: str, config: str, seed: int, max_iters: int,
                    lr: Optional[float] = None,
                    custom_hooks: Optional[list] = None) -> Optional[dict]:
    """A finished run's result when it matches the config, seed and scheduled iterations
    (and ``lr``, the learning rate a ``cfg_options`` override asked for, when given).

    The config must also be what it was: a run whose recorded
    :func:`config_digest` differs from the config file's now is trained
    again (the line printed says so). A result written before runs recorded
    the digest is read back with a printed warning; a config file that is gone
    cannot be compared.

    A run trained on to its plateau (``PlateauExtensionHook``) matches by its
    ``scheduled_iters``. A result written without the hook's record while the
    run's hooks list it is reused only if it passes the plateau gate: the hook
    would not have touched that run, so it is the same run; one that fails is
    trained again, with the hook. The run's hooks are ``custom_hooks`` when a
    ``cfg_options`` override gives them (a learning-rate sweep runs without
    the hook), else the config's.
    """
    if not osp.isfile(result_file):
        return None
    with open(result_file) as f:
        result = json.load(f)
    same = (result.get('config') == osp.abspath(config) and result.get('seed') == seed
            and result.get('scheduled_iters', result.get('iters')) == max_iters
            and (lr is None or result.get('lr') == lr))
    if not same:
        return None
    recorded = result.get('config_digest')
    now = config_digest(config) if recorded is not None and osp.isfile(config) else recorded
    if recorded is None:
        print(f'{result_file}: written before runs recorded their config\'s digest; read back '
              f'without checking that {config} is unchanged (--retrain trains it again)',
              flush=True)
    elif now != recorded:
        print(f'{result_file}: {config} changed since this run (config digest {recorded}, now '
              f'{now}): trained again', flush=True)
        return None
    if result.get('extension') is not None or plateau_gate(result.get('curve', []))[0]:
        return result
    if custom_hooks is None:  # read only when it decides: the config file may be gone
        custom_hooks = Config.fromfile(config).get('custom_hooks', [])
    lists_hook = any(hook.get('type') == 'PlateauExtensionHook' for hook in custom_hooks)
    return None if lists_hook else result


def train_or_reuse(kwargs: dict, resume: bool, max_iters: int, describe=None) -> dict:
    """One run of :func:`train_row` (``kwargs``) in its own process, or its finished result.

    With ``resume``, the ``result.json`` under ``kwargs['work_dir']`` is reused
    when :func:`reusable_result` accepts it (``reused`` is then True in the
    record). ``describe`` (config path -> dict), when given, fills the
    record's ``description``.
    """
    result_file = osp.join(kwargs['work_dir'], RESULT_FILE)
    options = kwargs.get('cfg_options') or {}
    result = reusable_result(result_file, kwargs['config'], kwargs['seed'], max_iters,
                             options.get(LR_KEY), options.get('custom_hooks')) \
        if resume else None
    reused = result is not None
    if result is None:
        mkdir_or_exist(kwargs['work_dir'])
        result = run_in_process(kwargs, result_file)
    result['reused'] = reused
    if describe is not None:
        result['description'] = describe(kwargs['config'])
    return result


def threads_per_job(num_threads: Optional[int], jobs: int, owner: str) -> Optional[int]:
    """Torch threads of each of ``jobs`` runs side by side: ``num_threads`` when given,
    else the cores shared out (``None``, torch's default, for one job).

    Raises:
        ValueError: ``jobs < 1`` (named with ``owner``).
    """
    if jobs < 1:
        raise ValueError(f'{owner}: jobs must be >= 1, got {jobs}')
    if num_threads is None and jobs > 1:  # share the cores instead of oversubscribing them
        num_threads = max(1, (os.cpu_count() or 1) // jobs)
    return num_threads


def map_side_by_side(function, items: Sequence[tuple], jobs: int,
                     cost: Optional[Callable[..., float]] = None) -> list:
    """``[function(*item) for item in items]`` with ``jobs`` calls at a time.

    The results come back in the order of ``items``. With ``cost`` (called
    with an item's fields, like ``function``) the calls start in decreasing
    cost, ties in the order given: the longest runs first, so the last ones to
    start are short and no job idles through a long tail (longest processing
    time first). Each call only waits on the training process it spawns, so
    threads suffice.
    """
    order = list(range(len(items)))
    if cost is not None:
        costs = [cost(*item) for item in items]
        order.sort(key=lambda index: -costs[index])
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # its queue starts calls in submit order
        futures = {index: pool.submit(function, *items[index]) for index in order}
        return [futures[index].result() for index in range(len(items))]


def add_run_arguments(parser, work_dir: str,
                      val_interval_help: str = "evaluation interval (default: the configs')"
                      ) -> None:
    """The command-line options shared by the ablation and convergence tools.

    Adds ``--max-iters``, ``--val-interval``, ``--work-dir`` (default
    ``work_dir``), ``--data-root``, ``--num-train``, ``--num-val``,
    ``--threads``, ``--jobs``, ``--retrain``, ``--pretrained-dir``,
    ``--pretrain-iters`` and ``--no-progress`` to an
    ``argparse.ArgumentParser``; :func:`synthetic_overrides` reads two of them.
    """
    parser.add_argument('--max-iters', type=int, default=None,
                        help="iterations of every run (default: the configs')")
    parser.add_argument('--val-interval', type=int, default=None, help=val_interval_help)
    parser.add_argument('--work-dir', default=work_dir)
    parser.add_argument('--data-root', default=None,
                        help="dataset folder, generated when missing (default: the configs')")
    parser.add_argument('--num-train', type=int, default=None,
                        help="synthetic training images (default: the configs')")
    parser.add_argument('--num-val', type=int, default=None,
                        help="synthetic validation images (default: the configs')")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads per run')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs trained side by side, each in its own process with '
                             'cpu_count // jobs threads unless --threads is given')
    parser.add_argument('--retrain', action='store_true',
                        help='train every run again (default: finished runs with the same '
                             'config, seed and iterations are read back, not retrained)')
    parser.add_argument('--pretrained-dir', default=None,
                        help='folder of the pretrained backbone (default: the path the '
                             'configs name, shared by both tools)')
    parser.add_argument('--pretrain-iters', type=int, default=None,
                        help="iterations of the backbone pretraining (default: the configs')")
    parser.add_argument('--no-progress', action='store_true')


def synthetic_overrides(args) -> Optional[dict]:
    """``synthetic_data`` updates from ``--num-train`` / ``--num-val`` (None if neither)."""
    overrides = {key: value for key, value in
                 (('num_train', args.num_train), ('num_val', args.num_val)) if value is not None}
    return overrides or None


def data_root_of(config: str, data_root: Optional[str]) -> str:
    """``data_root`` when given, else the config's ``data_root``."""
    return data_root if data_root is not None else Config.fromfile(config).data_root
