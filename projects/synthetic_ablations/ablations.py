"""Deformable DETR's ablations (paper Table 2) re-run on the synthetic shapes data.

:func:`run_ablations` trains every row config (one file per row, found by
:func:`find_rows` in a folder the caller names: ``tools/run_ablations.py``
passes the checkout's ``projects/synthetic_ablations/configs/ablations``) for the same number of
iterations with the same seeds, each run in its own process, on data
generated once; then it writes under ``work_dir``:

- ``results.md``: the table (AP, AP50, AP_S, AP_M, AP_L in COCO points,
  training seconds, parameters; mean +- 95 % t half-width over seeds), the
  paper's orderings judged with 95 % intervals over seeds
  (:mod:`projects.synthetic_ablations.intervals`), and every run's values;
- ``results.json``: the same numbers, one record per run;
- ``curves.png``: AP and AP_S against iteration, one line per row (mean over
  seeds, min-max band);
- ``<row>/seed<k>/``: each run's mmengine logs and ``result.json``.

A row is named by the first two ``_``-separated fields of its file name:
``deformable-detr_ms-attn-k4_r18_1xb8-600i_synthetic.py`` is row
``deformable-detr_ms-attn-k4``.
"""
import json
import multiprocessing
import os
import os.path as osp
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from glob import glob
from typing import Dict, Optional, Sequence

import numpy as np
from mmengine.config import Config
from mmengine.utils import mkdir_or_exist
from torch import nn

from mmdeform.datasets.synthetic import prepare_synthetic_data
from mmdeform.models.layers import SameLevelDeformAttn
from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS
from mmdeform.visualization.curves import load_scalars
from projects.synthetic_ablations.experiment import build_synthetic_config, train_and_evaluate
from projects.synthetic_ablations.report import plot_ablation_curves, write_report

# short name -> CocoMetric key
METRICS = {'AP': 'coco/bbox_mAP', 'AP50': 'coco/bbox_mAP_50', 'AP_S': 'coco/bbox_mAP_s',
           'AP_M': 'coco/bbox_mAP_m', 'AP_L': 'coco/bbox_mAP_l'}
# table order of the known rows (paper Table 2 from top, then the extras); others follow
ROW_ORDER = ('deformable-detr_ss-k1', 'deformable-detr_ss-k4', 'deformable-detr_ms-inputs-k1',
             'deformable-detr_ms-inputs-k4', 'deformable-detr_ms-attn-k1',
             'deformable-detr_ms-attn-k4', 'deformable-detr_ms-attn-k4-fpn')
_RESULT_FILE = 'result.json'


def row_name(config: str) -> str:
    """``algorithm_variant`` from a config file name (see the module docstring)."""
    parts = osp.splitext(osp.basename(config))[0].split('_')
    if len(parts) < 3:
        raise ValueError(f'row_name: {config} is not named <algorithm>_<variant>_<rest>.py')
    return f'{parts[0]}_{parts[1]}'


def find_rows(config_dir: str, patterns: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """Row configs of ``config_dir`` in table order, optionally filtered.

    Args:
        config_dir (str): Folder of row configs (``*.py``).
        patterns (Sequence[str], optional): Keep the rows whose name, or
            variant (the part after ``_``), equals one of these.

    Returns:
        dict[str, str]: row name -> config path.

    Raises:
        FileNotFoundError: no config in ``config_dir``.
        ValueError: two configs give the same row name, or a pattern
            matches no row.
    """
    rows: Dict[str, str] = {}
    for path in sorted(glob(osp.join(config_dir, '*.py'))):
        name = row_name(path)
        if name in rows:
            raise ValueError(f'find_rows: {rows[name]} and {path} are both row {name}')
        rows[name] = path
    if not rows:
        raise FileNotFoundError(f'find_rows: no *.py config in {config_dir}')
    if patterns:
        unknown = [p for p in patterns
                   if not any(p in (name, name.split('_', 1)[1]) for name in rows)]
        if unknown:
            raise ValueError(f'find_rows: {unknown} match no row of {config_dir}; rows: '
                             f'{list(rows)}')
        rows = {name: path for name, path in rows.items()
                if any(p in (name, name.split('_', 1)[1]) for p in patterns)}
    order = {name: i for i, name in enumerate(ROW_ORDER)}
    return dict(sorted(rows.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def describe_row(model: nn.Module) -> Dict[str, str]:
    """What a row's detector is made of: levels, encoder attention, K, neck.

    Read from the built model: the config writes the level count only
    through the backbone and neck (the detector derives the rest).

    Args:
        model (nn.Module): A built ``DeformableDETR``.

    Returns:
        dict[str, str]: ``levels`` (feature levels), ``attention``
        (``multi-scale``, ``within-level``, ``single-level`` or ``dense``),
        ``K`` (sampling points; ``-`` for dense attention) and ``neck``.
    """
    levels = model.encoder.num_levels
    attn = getattr(model.encoder.layers[0], 'self_attn', None)
    if not isinstance(attn, MSDeformAttn):
        attention, points = 'dense', '-'
    elif isinstance(attn, SameLevelDeformAttn):
        attention, points = 'within-level', str(attn.num_points)
    else:
        attention = 'multi-scale' if levels > 1 else 'single-level'
        points = str(attn.num_points)
    return dict(levels=str(levels), attention=attention, K=points,
                neck=type(model.neck).__name__)


def describe_config(config: str) -> Dict[str, str]:
    """:func:`describe_row` of the model a config builds (random weights)."""
    model_cfg = Config.fromfile(config).model
    model_cfg.backbone.init_cfg = None
    return describe_row(MODELS.build(model_cfg))


def _budget(config: str) -> dict:
    """What must be equal across rows: data, iterations, batch size."""
    cfg = Config.fromfile(config)
    if 'synthetic_data' not in cfg:
        raise KeyError(f'ablations: {config} has no "synthetic_data"; the rows must be '
                       'synthetic configs (e.g. projects/synthetic_ablations/configs/ablations)')
    return dict(synthetic_data=cfg.synthetic_data.to_dict(),
                max_iters=cfg.train_cfg.max_iters,
                batch_size=cfg.train_dataloader.batch_size)


def check_same_budget(rows: Dict[str, str], max_iters: Optional[int] = None) -> dict:
    """The budget shared by every row (``max_iters`` overrides the configs').

    Raises:
        ValueError: two rows differ in data, batch size or (without
            ``max_iters``) iterations; the message names both configs.
    """
    budgets = {name: _budget(path) for name, path in rows.items()}
    if max_iters is not None:
        for budget in budgets.values():
            budget['max_iters'] = max_iters
    first_name, first = next(iter(budgets.items()))
    for name, budget in budgets.items():
        for key, value in budget.items():
            if value != first[key]:
                raise ValueError(f'ablations: rows must share the budget, but {key} is '
                                 f'{first[key]} in {rows[first_name]} and {value} in '
                                 f'{rows[name]}')
    return first


def train_row(config: str, work_dir: str, data_root: str, seed: int,
              max_iters: Optional[int] = None, val_interval: Optional[int] = None,
              synthetic_overrides: Optional[dict] = None,
              num_threads: Optional[int] = None, stop_at_ap: Optional[float] = None,
              cfg_options: Optional[dict] = None) -> dict:
    """Train one row with one seed and evaluate it (data must already be there).

    Args:
        config (str): Row config (see
            :func:`projects.synthetic_ablations.experiment.build_synthetic_config`).
        work_dir (str): Output folder of this run (no checkpoint is saved).
        data_root (str): Dataset folder prepared by the caller.
        seed (int): Training seed.
        max_iters (int, optional): Overrides the config's iterations.
        val_interval (int, optional): Overrides the validation interval.
        synthetic_overrides (dict, optional): Updates ``synthetic_data`` (only
            recorded in the dumped config; the data is not regenerated).
        num_threads (int, optional): ``torch.set_num_threads``.
        stop_at_ap (float, optional): Stop training at the first evaluation
            whose AP (in [0, 1]) reaches this value (mmengine's
            ``EarlyStoppingHook`` threshold; never stops for lack of progress).
        cfg_options (dict, optional): Dotted keys merged into the config
            last (``Config.merge_from_dict``), e.g. a checkpoint path.

    Returns:
        dict: ``row``, ``config``, ``seed``, ``iters``, ``metrics`` (short
        names of :data:`METRICS`), ``curve`` (one dict per validation:
        ``iter`` and the metrics), ``train_seconds`` (training iterations
        with data loading, validation excluded), ``total_seconds``,
        ``params`` and ``log_dir``.
    """
    import torch
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    cfg = build_synthetic_config(config, work_dir, data_root, seed, max_iters, val_interval,
                                 synthetic_overrides)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.default_hooks.checkpoint = None  # a few hundred MB per run, never reused
    if stop_at_ap is not None:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(
            type='EarlyStoppingHook', monitor=METRICS['AP'], rule='greater',
            # the hook compares strictly; an AP equal to the target counts as reached
            stopping_threshold=stop_at_ap - 1e-12, patience=cfg.train_cfg.max_iters + 1)]
    cfg.experiment_name = f'{row_name(config)}_seed{seed}_{uuid.uuid4().hex[:8]}'
    cfg.visualizer.name = cfg.experiment_name
    start = time.perf_counter()
    runner, metrics = train_and_evaluate(cfg, progress=False)
    total_seconds = time.perf_counter() - start
    # IterTimerHook's per-iteration times (data loading included), kept by the message hub
    iter_times = runner.message_hub.get_scalar('train/time').data[0]
    _, val_records = load_scalars(osp.join(runner.log_dir, 'vis_data', 'scalars.json'))
    curve = [dict(iter=int(r['step']), **{k: float(r[v]) for k, v in METRICS.items() if v in r})
             for r in val_records if METRICS['AP'] in r]
    return dict(row=row_name(config), config=osp.abspath(config), seed=seed, iters=runner.iter,
                metrics={k: float(metrics[v]) for k, v in METRICS.items() if v in metrics},
                curve=curve, train_seconds=float(np.sum(iter_times)),
                total_seconds=total_seconds,
                params=int(sum(p.numel() for p in runner.model.parameters())),
                log_dir=runner.log_dir)


def _train_row_to_file(kwargs: dict, result_file: str) -> None:
    """Child process body: :func:`train_row`, its result written as json."""
    result = train_row(**kwargs)
    with open(result_file, 'w') as f:
        json.dump(result, f, indent=1)


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
              stopped_at_ap: Optional[float] = None) -> Optional[dict]:
    """A finished run's result when it matches the config, seed and iterations.

    With ``stopped_at_ap``, a run that ended earlier because its last AP
    reached that value (``train_row(stop_at_ap=...)``) is finished too.
    """
    if not osp.isfile(result_file):
        return None
    with open(result_file) as f:
        result = json.load(f)
    iters = result.get('iters')
    finished = iters == max_iters or (
        stopped_at_ap is not None and isinstance(iters, int) and iters < max_iters
        and result.get('metrics', {}).get('AP', -1) >= stopped_at_ap)
    same = (result.get('config') == osp.abspath(config) and result.get('seed') == seed
            and finished)
    return result if same else None


def train_or_reuse(kwargs: dict, resume: bool, max_iters: int,
                   stopped_at_ap: Optional[float] = None) -> dict:
    """One run of :func:`train_row` (``kwargs``) in its own process, or its finished result.

    With ``resume``, the ``result.json`` under ``kwargs['work_dir']`` is reused
    when :func:`reusable_result` accepts it. The returned record carries the
    config's ``description``.
    """
    result_file = osp.join(kwargs['work_dir'], _RESULT_FILE)
    result = reusable_result(result_file, kwargs['config'], kwargs['seed'], max_iters,
                             stopped_at_ap) if resume else None
    if result is None:
        mkdir_or_exist(kwargs['work_dir'])
        result = run_in_process(kwargs, result_file)
    result['description'] = describe_config(kwargs['config'])
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


def map_side_by_side(function, items: Sequence[tuple], jobs: int) -> list:
    """``[function(*item) for item in items]`` with ``jobs`` calls at a time, in order.

    Each call only waits on the training process it spawns, so threads suffice.
    """
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda item: function(*item), items))


def run_ablations(rows: Dict[str, str], seeds: Sequence[int] = (0, ),
                  work_dir: str = 'work_dirs/ablations',
                  data_root: str = 'data/synthetic_ablations',
                  max_iters: Optional[int] = None, val_interval: Optional[int] = None,
                  synthetic_overrides: Optional[dict] = None,
                  num_threads: Optional[int] = None, resume: bool = False,
                  progress: bool = True, jobs: int = 1) -> dict:
    """Train every row with every seed, then write the report (module docstring).

    Args:
        rows (dict[str, str]): row name -> config, e.g. from :func:`find_rows`.
        seeds (Sequence[int]): Training seeds; every row runs with each.
        work_dir (str): Output folder.
        data_root (str): Dataset folder, generated once from the rows'
            (shared) ``synthetic_data``.
        max_iters (int, optional): Iterations of every run (default: the
            configs', which must agree).
        val_interval (int, optional): Validation interval; default the
            configs', or ``max_iters // 4`` when ``max_iters`` is given.
        synthetic_overrides (dict, optional): Updates ``synthetic_data``.
        num_threads (int, optional): Torch threads of each run.
        resume (bool): Reuse the ``result.json`` of finished runs with the
            same config, seed and iterations.
        progress (bool): Progress bars of the data generation.
        jobs (int): Runs trained at the same time, each in its own process
            (with ``cpu_count // jobs`` threads unless ``num_threads`` is given).
            On 2 cores, two one-thread runs side by side had 1.3x the
            throughput of two-thread runs one after another (idle, measured
            for the synthetic rows). Each run is seeded on its own; only its
            thread count (the order of floating-point sums) can change a result.

    Returns:
        dict: ``runs`` (list of :func:`train_row` results), ``budget``,
        ``report`` (``results.md`` path), ``curves`` (``curves.png`` path)
        and ``table`` (the markdown table also printed).
    """
    if not rows:
        raise ValueError('run_ablations: no rows given')
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'run_ablations: seeds must be distinct and not empty, got {seeds}')
    budget = check_same_budget(rows, max_iters)
    budget['synthetic_data'].update(synthetic_overrides or {})
    if max_iters is not None and val_interval is None:
        val_interval = max(1, max_iters // 4)
    budget['seeds'] = list(seeds)
    prepare_synthetic_data(osp.join(data_root, ''), budget['synthetic_data'], progress=progress)
    num_threads = threads_per_job(num_threads, jobs, 'run_ablations')
    plan = [(seed, name, config) for seed in seeds for name, config in rows.items()]

    def run_one(seed: int, name: str, config: str) -> dict:
        result = train_or_reuse(
            dict(config=config, work_dir=osp.join(work_dir, name, f'seed{seed}'),
                 data_root=data_root, seed=seed, max_iters=max_iters,
                 val_interval=val_interval, synthetic_overrides=synthetic_overrides,
                 num_threads=num_threads),
            resume, budget['max_iters'])
        print(f'ablations {name} seed {seed}: AP {result["metrics"]["AP"]:.3f}'
              f', train {result["train_seconds"]:.0f} s', flush=True)
        return result

    runs = map_side_by_side(run_one, plan, jobs)
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(dict(budget=budget, runs=runs), f, indent=1)
    report, table = write_report(runs, budget, osp.join(work_dir, 'results.md'))
    curves = osp.join(work_dir, 'curves.png')
    plot_ablation_curves(runs, curves)
    print(table, flush=True)
    return dict(runs=runs, budget=budget, report=report, curves=curves, table=table)


def add_run_arguments(parser, work_dir: str,
                      val_interval_help: str = "evaluation interval (default: the configs')"
                      ) -> None:
    """The command-line options shared by the ablation and convergence tools.

    Adds ``--max-iters``, ``--val-interval``, ``--work-dir`` (default
    ``work_dir``), ``--data-root``, ``--num-train``, ``--num-val``,
    ``--threads``, ``--resume`` and ``--no-progress`` to an
    ``argparse.ArgumentParser``; :func:`synthetic_overrides` reads two of them.
    """
    parser.add_argument('--max-iters', type=int, default=None,
                        help="iterations of every run (default: the configs')")
    parser.add_argument('--val-interval', type=int, default=None, help=val_interval_help)
    parser.add_argument('--work-dir', default=work_dir)
    parser.add_argument('--data-root', default='data/synthetic_ablations',
                        help='dataset folder (generated when missing)')
    parser.add_argument('--num-train', type=int, default=None,
                        help="synthetic training images (default: the configs')")
    parser.add_argument('--num-val', type=int, default=None,
                        help="synthetic validation images (default: the configs')")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads per run')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs trained side by side, each in its own process with '
                             'cpu_count // jobs threads unless --threads is given')
    parser.add_argument('--resume', action='store_true',
                        help='reuse finished runs (same config, seed and iterations)')
    parser.add_argument('--no-progress', action='store_true')


def synthetic_overrides(args) -> Optional[dict]:
    """``synthetic_data`` updates from ``--num-train`` / ``--num-val`` (None if neither)."""
    overrides = {key: value for key, value in
                 (('num_train', args.num_train), ('num_val', args.num_val)) if value is not None}
    return overrides or None
