"""Deformable DETR's ablations (paper Table 2) re-run on the synthetic shapes data.

:func:`run_ablations` trains every row config (one file per row, found by
:func:`find_rows` in a folder the caller names: ``tools/run_ablations.py``
passes the checkout's ``projects/synthetic_ablations/configs/ablations``) for the same number of
iterations with the same seeds, each run in its own process
(:mod:`projects.synthetic_ablations.runs`), on data generated once and from
one backbone pretrained once (:mod:`projects.synthetic_ablations.pretraining`);
then it writes under ``work_dir``:

- ``results.md``: the table (AP, AP50, AP_S, AP_M, AP_L in COCO points,
  training seconds, parameters; mean and 95 % interval over seeds), the
  plateau gate of every run, the paper's orderings judged
  (:mod:`projects.synthetic_ablations.report`), every run's values and the
  measured times;
- ``results.json``: the same numbers, one record per run;
- ``curves.png``: AP and AP_S against iteration, one line per row (mean over
  seeds, min-max band);
- ``<row>/seed<k>/``: each run's mmengine logs and ``result.json``.

Finished runs (``result.json`` of the same config, seed and iterations) are
read back, not retrained, unless ``resume=False``: a stopped table goes on
where it was. A row is named by :func:`projects.synthetic_ablations.runs.row_name`.
"""
import json
import os.path as osp
import time
from glob import glob
from typing import Dict, Optional, Sequence

from mmengine.config import Config
from mmengine.utils import mkdir_or_exist
from torch import nn

from mmdeform.datasets.synthetic import prepare_synthetic_data
from mmdeform.models.layers import SameLevelDeformAttn
from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS
from projects.synthetic_ablations.plots import plot_ablation_curves
from projects.synthetic_ablations.pretraining import (
    checkpoint_option,
    prepare_pretrained_backbones,
)
from projects.synthetic_ablations.report import write_report
from projects.synthetic_ablations.runs import (
    check_same_budget,
    data_root_of,
    map_side_by_side,
    row_name,
    threads_per_job,
    train_or_reuse,
)

# table order of the rows (paper Table 2 from top); others follow
ROW_ORDER = ('deformable-detr_ss-k1', 'deformable-detr_ss-k4', 'deformable-detr_ms-inputs-k1',
             'deformable-detr_ms-inputs-k4', 'deformable-detr_ms-attn-k4',
             'deformable-detr_ms-attn-k4-fpn')


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
    """What a row's detector is made of: levels, encoder attention, K, decoder, neck.

    Read from the built model: the config writes the level count only
    through the backbone and neck (the detector derives the rest).

    Args:
        model (nn.Module): A built ``DeformableDETR``.

    Returns:
        dict[str, str]: ``levels`` (feature levels), ``attention`` (of the
        encoder: ``multi-scale``, ``within-level``, ``single-level`` or
        ``dense``), ``K`` (sampling points; ``-`` for dense attention),
        ``decoder`` (its class) and ``neck``.
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
                decoder=type(model.decoder).__name__, neck=type(model.neck).__name__)


def describe_config(config: str) -> Dict[str, str]:
    """:func:`describe_row` of the model a config builds (random weights, nothing loaded)."""
    return describe_row(MODELS.build(Config.fromfile(config).model))


def _print_times(runs: Sequence[dict], pretrained: Dict[str, dict], data_seconds: float,
                 wall_seconds: float) -> str:
    """The measured times in one line (printed and written to the report)."""
    trained = [r for r in runs if not r.get('reused')]
    reused = [r for r in runs if r.get('reused')]
    pretrain = {s['checkpoint']: s['seconds'] for s in pretrained.values()}
    # a read-back run's time is the one it took when it was trained (on whatever machine, beside
    # whatever else): process time, not this call's wall time
    earlier = (f' (they took {sum(r["total_seconds"] for r in reused) / 60:.1f} process-min '
               'when trained)' if reused else '')
    line = (f'ablations: {len(trained)} runs trained, {len(reused)} read back{earlier}; '
            f'wall time {wall_seconds / 60:.1f} min for the runs, data {data_seconds:.0f} s, '
            f'backbone pretraining {sum(pretrain.values()):.0f} s (0 when reused)')
    print(line, flush=True)
    return line


def run_ablations(rows: Dict[str, str], seeds: Sequence[int] = (0, ),
                  work_dir: str = 'work_dirs/ablations', data_root: Optional[str] = None,
                  max_iters: Optional[int] = None, val_interval: Optional[int] = None,
                  synthetic_overrides: Optional[dict] = None,
                  num_threads: Optional[int] = None, resume: bool = True,
                  progress: bool = True, jobs: int = 1, pretrained_dir: Optional[str] = None,
                  pretrain_iters: Optional[int] = None) -> dict:
    """Pretrain the backbone if needed, train every row with every seed, write the report.

    Args:
        rows (dict[str, str]): row name -> config, e.g. from :func:`find_rows`.
        seeds (Sequence[int]): Training seeds; every row runs with each.
        work_dir (str): Output folder.
        data_root (str, optional): Dataset folder, generated once from the
            rows' (shared) ``synthetic_data``; default the configs'.
        max_iters (int, optional): Iterations of every run (default: the
            configs', which must agree); the schedule and the evaluation
            points scale with it.
        val_interval (int, optional): Overrides the validation interval.
        synthetic_overrides (dict, optional): Updates ``synthetic_data``.
        num_threads (int, optional): Torch threads of each run.
        resume (bool): Read back the ``result.json`` of finished runs with
            the same config, seed and iterations instead of training them.
        progress (bool): Progress bars of the data generation.
        jobs (int): Runs trained at the same time, each in its own process
            (with ``cpu_count // jobs`` threads unless ``num_threads`` is given).
        pretrained_dir (str, optional): Folder of the pretrained backbone
            (default: the path the configs name).
        pretrain_iters (int, optional): Overrides the pretraining iterations.

    Returns:
        dict: ``runs`` (list of ``train_row`` results), ``budget``,
        ``report`` (``results.md`` path), ``curves`` (``curves.png`` path),
        ``table`` (the markdown table also printed) and ``times``.
    """
    if not rows:
        raise ValueError('run_ablations: no rows given')
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'run_ablations: seeds must be distinct and not empty, got {seeds}')
    num_threads = threads_per_job(num_threads, jobs, 'run_ablations')
    budget = check_same_budget(rows, max_iters)
    budget['synthetic_data'].update(synthetic_overrides or {})
    budget['seeds'] = list(seeds)
    data_root = data_root_of(next(iter(rows.values())), data_root)
    start = time.perf_counter()
    prepare_synthetic_data(osp.join(data_root, ''), budget['synthetic_data'], progress=progress)
    data_seconds = time.perf_counter() - start
    # the pretraining runs alone: it gets the threads of all the jobs
    pretrained = prepare_pretrained_backbones(rows, data_root, pretrained_dir, pretrain_iters,
                                              num_threads and num_threads * jobs)
    budget['pretrained_backbones'] = pretrained
    plan = [(seed, name, config) for seed in seeds for name, config in rows.items()]
    # each row's model described once (a model build), for every seed's record and the order
    descriptions = {config: describe_config(config) for config in rows.values()}

    def run_one(seed: int, name: str, config: str) -> dict:
        options = checkpoint_option(config, pretrained[name]['checkpoint']) \
            if name in pretrained else None
        result = train_or_reuse(
            dict(config=config, work_dir=osp.join(work_dir, name, f'seed{seed}'),
                 data_root=data_root, seed=seed, max_iters=max_iters,
                 val_interval=val_interval, synthetic_overrides=synthetic_overrides,
                 num_threads=num_threads, cfg_options=options),
            resume, budget['max_iters'], descriptions.__getitem__)
        print(f'ablations {name} seed {seed}: AP {100 * result["metrics"]["AP"]:.1f}, '
              f'train {result["train_seconds"]:.0f} s ({result["seconds_per_iter"]:.3f} s/it)'
              f'{", read back" if result["reused"] else ""}', flush=True)
        return result

    start = time.perf_counter()
    # the multi-scale rows (3-4x the single-scale rows' time per iteration) start first, so
    # the last runs to start are short ones and no job idles through a long tail
    runs = map_side_by_side(run_one, plan, jobs,
                            cost=lambda seed, name, config: int(descriptions[config]['levels']))
    times = _print_times(runs, pretrained, data_seconds, time.perf_counter() - start)
    mkdir_or_exist(work_dir)
    with open(osp.join(work_dir, 'results.json'), 'w') as f:
        json.dump(dict(budget=budget, runs=runs, times=times), f, indent=1)
    report, table = write_report(runs, budget, osp.join(work_dir, 'results.md'), times)
    curves = osp.join(work_dir, 'curves.png')
    plot_ablation_curves(runs, curves)
    print(table, flush=True)
    return dict(runs=runs, budget=budget, report=report, curves=curves, table=table,
                times=times)
