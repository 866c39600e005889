"""Convergence against DETR: iterations each model needs to reach the same AP.

The paper's "10x fewer training epochs" compares how long Deformable DETR
and DETR train to reach a given accuracy. :func:`run_convergence` trains a
deformable and a DETR config (by default ``deformable-detr_ss-k4`` and
``detr_ss`` of ``configs/convergence``: the same single-scale C5 input from
the same frozen, pretrained backbone; DETR's own decoder; the paper's
learning-rate ratio, DETR at half the deformable rate) with every seed, for
the configs' full length at a constant learning rate after the warm-up,
evaluating every ``val_interval`` iterations, and writes under ``work_dir``:

- ``convergence.md``: per seed, both models' plateau AP (mean of the last two
  evaluations) and plateau gate (:func:`~projects.synthetic_ablations.intervals.plateau_gate`);
  the comparison at **equal final AP**: the target is
  :data:`PLATEAU_FRACTION` (90 %) of the lower of the two plateau APs, and
  each model's iterations to reach it give the ratio DETR / deformable
  (geometric mean over seeds, with a 95 % t-interval of the log ratios);
  and the iterations to fixed AP milestones;
- ``convergence.png``: AP against iteration of both models (mean over seeds,
  min-max band);
- ``convergence.json`` and each run's logs (``<row>/seed<k>/``).

Iterations to an AP: the first crossing of the curve, linearly interpolated
between the evaluation below it and the first one at or above it
(:func:`iterations_to_target`). Finished runs are read back, not retrained.
"""
import json
import math
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.utils import mkdir_or_exist

from mmdeform.datasets.synthetic import prepare_synthetic_data
from projects.synthetic_ablations.intervals import (
    PLATEAU_RELATIVE_TOLERANCE,
    PLATEAU_TOLERANCE,
    plateau_gate,
    t_half_width,
)
from projects.synthetic_ablations.plots import plot_ablation_curves
from projects.synthetic_ablations.pretraining import (
    checkpoint_option,
    describe_backbones,
    prepare_pretrained_backbones,
)
from projects.synthetic_ablations.runs import (
    LR_KEY,
    check_same_budget,
    data_root_of,
    map_side_by_side,
    threads_per_job,
    train_or_reuse,
)

DEFAULT_ROWS = ('deformable-detr_ss-k4', 'detr_ss')
# equal final AP: each model's iterations to this share of the lower plateau AP
PLATEAU_FRACTION = 0.9


def iterations_to_target(iters: Sequence[float], aps: Sequence[float],
                         target: float) -> Optional[float]:
    """Iteration at which an AP curve first reaches ``target``.

    The first evaluation with ``AP >= target`` counts (a later drop below
    the target does not undo it). If the evaluation before it is below the
    target, the crossing is linearly interpolated between the two; reached
    at the first evaluation, the answer is that evaluation's iteration
    (nothing is assumed before it).

    Args:
        iters (Sequence[float]): Iterations of the evaluations, increasing.
        aps (Sequence[float]): AP at each evaluation (same units as ``target``).
        target (float): The AP to reach.

    Returns:
        float | None: The iteration, or None when no evaluation reaches it.

    Raises:
        ValueError: lengths differ or iterations do not increase.
    """
    if len(iters) != len(aps):
        raise ValueError(f'iterations_to_target: {len(iters)} iterations but {len(aps)} APs')
    if any(b <= a for a, b in zip(iters, iters[1:])):
        raise ValueError(f'iterations_to_target: iterations must increase, got {list(iters)}')
    for index, (it, ap) in enumerate(zip(iters, aps)):
        if ap >= target:
            if index == 0:
                return float(it)
            prev_it, prev_ap = iters[index - 1], aps[index - 1]
            return float(prev_it + (target - prev_ap) / (ap - prev_ap) * (it - prev_it))
    return None


def convergence_ratio(deformable: Optional[float], dense: Optional[float],
                      max_iters: int, deformable_at_first_evaluation: bool = False) -> str:
    """``DETR / deformable`` iterations in words.

    A lower bound when DETR never gets there, or when the deformable model
    was already there at its first evaluation (its count is then an upper
    bound: nothing is known before that evaluation).
    """
    if deformable is None:
        return 'not measurable: the deformable model does not reach the target'
    if dense is None:
        return (f'more than {max_iters / deformable:.1f}x (DETR does not reach the target '
                f'within {max_iters} iterations)')
    if deformable_at_first_evaluation:
        return (f'at least {dense / deformable:.1f}x (deformable already there at its first '
                'evaluation)')
    return f'{dense / deformable:.1f}x'


def _points(run: dict) -> Tuple[List[float], List[float]]:
    """A run's evaluation iterations and AP in points."""
    return [p['iter'] for p in run['curve']], [100 * p['AP'] for p in run['curve']]


def plateau_ap(run: dict) -> float:
    """Mean AP (points) of a run's last two evaluations (the last one alone if it has one)."""
    aps = _points(run)[1][-2:]
    return float(np.mean(aps)) if aps else float('nan')


def _reached(run: dict, target: float) -> Tuple[Optional[float], bool]:
    """Iterations of ``run`` to ``target`` and whether its first evaluation was already there."""
    iters, aps = _points(run)
    return iterations_to_target(iters, aps, target), bool(aps) and aps[0] >= target


def compare_seed(deformable: dict, detr: dict, max_iters: int) -> dict:
    """The equal-final-AP comparison of one seed's two runs (module docstring).

    Returns:
        dict: ``seed``, ``plateau`` and ``gate`` (per model), ``target``
        (points), ``iters`` (per model, None when not reached), ``ratio``
        (float; None unless both runs pass the plateau gate and both reach
        the target after their first evaluation) and ``ratio_text``.
    """
    runs = dict(deformable=deformable, detr=detr)
    plateau = {k: plateau_ap(r) for k, r in runs.items()}
    gate = {k: plateau_gate(r['curve']) for k, r in runs.items()}
    target = PLATEAU_FRACTION * min(plateau.values())
    (deform_iters, first), (detr_iters, _) = _reached(deformable, target), _reached(detr, target)
    ratio = detr_iters / deform_iters if deform_iters and detr_iters and not first else None
    ratio_text = convergence_ratio(deform_iters, detr_iters, max_iters, first)
    unsettled = [name for name, (passed, _) in gate.items() if not passed]
    if unsettled:  # a final AP that is still moving is no final AP: no ratio, no mean
        ratio = None
        ratio_text = (f'not at equal final AP ({" and ".join(unsettled)} not at a plateau); '
                      f'at 90 % of the lower last AP: {ratio_text}')
    return dict(seed=deformable['seed'], plateau=plateau, gate=gate, target=target,
                iters=dict(deformable=deform_iters, detr=detr_iters), ratio=ratio,
                ratio_text=ratio_text)


def geometric_mean_ratio(ratios: Sequence[float]) -> str:
    """``3.1x [2.0, 4.8]``: geometric mean and 95 % t-interval of the log ratios."""
    logs = np.log(np.asarray(ratios, dtype=float))
    if not len(logs):
        return 'not measurable'
    half = t_half_width(logs)
    if half is None:
        return f'{math.exp(logs.mean()):.1f}x (1 seed)'
    return (f'{math.exp(logs.mean()):.1f}x [{math.exp(logs.mean() - half):.1f}, '
            f'{math.exp(logs.mean() + half):.1f}] ({len(logs)} seeds)')


def _gate_text(gate: Tuple[Optional[bool], str]) -> str:
    return f'{"plateau" if gate[0] else "NOT at plateau"} ({gate[1]})'


def _milestone_lines(pairs: Sequence[Tuple[dict, dict]], max_iters: int,
                     milestones: Sequence[float]) -> List[str]:
    lines = ['Iterations to fixed APs (mean over the seeds that reach it; reached / seeds):', '',
             '| AP | deformable | DETR | DETR / deformable |', '|---|---|---|---|']
    for milestone in milestones:
        cells = []
        means = []
        for index in (0, 1):
            its = [_reached(pair[index], milestone)[0] for pair in pairs]
            hit = [i for i in its if i is not None]
            means.append(float(np.mean(hit)) if len(hit) == len(its) else None)
            cells.append(f'{np.mean(hit):.0f} ({len(hit)}/{len(its)})' if hit else
                         f'not reached within {max_iters}')
        ratio = f'{means[1] / means[0]:.1f}x' if None not in means else '-'
        lines.append(f'| {milestone:g} | {cells[0]} | {cells[1]} | {ratio} |')
    return lines + ['']


def _length_text(pairs: Sequence[Tuple[dict, dict]], max_iters: int) -> str:
    """The models' scheduled and trained lengths in words."""
    scheduled = [sorted({pair[index].get('scheduled_iters', max_iters) for pair in pairs})
                 for index in (0, 1)]
    trained = [sorted({pair[index].get('iters', max_iters) for pair in pairs})
               for index in (0, 1)]

    def numbers(values: Sequence[int]) -> str:
        return ', '.join(str(v) for v in values)

    if scheduled[0] == scheduled[1]:
        lengths = sorted(set(trained[0]) | set(trained[1]))
        if lengths == scheduled[0]:
            return f'Both models: {numbers(lengths)} iterations'
        return (f'Both models: {numbers(scheduled[0])} iterations scheduled, trained on to the '
                f'plateau gate (PlateauExtensionHook): {numbers(lengths)}')
    deformable, detr = (f'{numbers(scheduled[i])} iterations scheduled (trained: '
                        f'{numbers(trained[i])})' for i in (0, 1))
    return (f'Deformable model: {deformable}; DETR: {detr}; a run trains on to the plateau gate '
            '(PlateauExtensionHook)')


def _lr_text(pairs: Sequence[Tuple[dict, dict]], sweep_file: Optional[str]) -> str:
    if 'lr' not in pairs[0][0]:
        return ''
    rates = [f'{model} at lr {run["lr"]:g}'
             for model, run in zip(('deformable', 'DETR'), pairs[0])]
    source = (f' (chosen by the learning-rate sweep, `{osp.basename(sweep_file)}`)'
              if sweep_file else '')
    return f'{" and ".join(rates)}{source}. '


def write_convergence_report(pairs: Sequence[Tuple[dict, dict]], max_iters: int, out_file: str,
                             milestones: Sequence[float] = (5.0, 10.0, 20.0),
                             sweep_file: Optional[str] = None,
                             pretrained: Optional[Dict[str, dict]] = None
                             ) -> Tuple[str, List[dict]]:
    """Write the markdown report of (deformable, DETR) run pairs, one pair per seed.

    Each run is reported with its own scheduled and trained lengths
    (``scheduled_iters``, ``iters``); ``max_iters`` stands in for a run record
    without them. ``sweep_file``: the
    learning-rate sweep the rates came from, named in the report. ``pretrained``:
    the backbones of :func:`prepare_pretrained_backbones`, named with their
    checksum.

    Returns:
        tuple: ``out_file`` and the per-seed comparisons (:func:`compare_seed`).
    """
    compared = [compare_seed(a, b, b.get('iters', max_iters)) for a, b in pairs]
    lines = [
        '# Convergence against DETR on synthetic shapes', '',
        f'{_length_text(pairs, max_iters)}, at a '
        f'constant learning rate after the warm-up, seeds {[c["seed"] for c in compared]}; '
        f'{_lr_text(pairs, sweep_file)}Plateau AP: mean of the last two evaluations; '
        f'gate: those two within {PLATEAU_TOLERANCE:g} AP and '
        f'{100 * PLATEAU_RELATIVE_TOLERANCE:g} % of their mean. Equal final AP: each model\'s '
        f'iterations to {100 * PLATEAU_FRACTION:.0f} % of the lower plateau AP (first crossing, '
        'linearly interpolated between evaluations).', '',
        '| seed | deformable plateau | DETR plateau | target AP | deformable iterations | '
        'DETR iterations | DETR / deformable |', '|---|---|---|---|---|---|---|']
    for c, pair in zip(compared, pairs):
        its = [f'{v:.0f}' if v is not None else f'not reached within {r.get("iters", max_iters)}'
               for v, r in zip(c['iters'].values(), pair)]
        lines.append(f'| {c["seed"]} | {c["plateau"]["deformable"]:.1f}, '
                     f'{_gate_text(c["gate"]["deformable"])} | {c["plateau"]["detr"]:.1f}, '
                     f'{_gate_text(c["gate"]["detr"])} | {c["target"]:.1f} | {its[0]} | '
                     f'{its[1]} | {c["ratio_text"]} |')
    ratios = [c['ratio'] for c in compared if c['ratio'] is not None]
    lines += ['', f'DETR / deformable iterations at equal final AP: '
                  f'{geometric_mean_ratio(ratios)} (the paper: about 10x fewer epochs); '
                  f'{len(ratios)} of {len(compared)} seeds measured (a seed counts when both '
                  'runs pass the plateau gate and both reach the target after their first '
                  'evaluation).', '']
    lines += _milestone_lines(pairs, max(r.get('iters', max_iters) for p in pairs for r in p),
                              milestones)
    backbones = describe_backbones(pretrained or {})
    if backbones:
        lines += [backbones, '']
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    with open(out_file, 'w') as f:
        f.write('\n'.join(lines))
    return out_file, compared


def lr_sweep_table(sweep: Dict[str, List[dict]], chosen: Dict[str, float]) -> List[str]:
    """Markdown lines of a learning-rate sweep: per model and rate, AP at every evaluation,
    the plateau AP (the mean of the last two, the sweep's criterion) and the rate chosen."""
    lines = ['| model | lr | AP at each evaluation | plateau AP | chosen |',
             '|---|---|---|---|---|']
    for name, runs in sweep.items():
        for run in runs:
            iters, aps = _points(run)
            curve = ' / '.join(f'{ap:.1f}' for ap in aps)
            lines.append(f'| {name} | {run["lr"]:g} | {curve} (at {iters[0]:g}..{iters[-1]:g}) | '
                         f'{plateau_ap(run):.1f} | {"yes" if run["lr"] == chosen[name] else ""} |')
    return lines


def choose_lr(runs: Sequence[dict]) -> float:
    """The learning rate of the run with the highest plateau AP (the lower rate on a tie)."""
    if not runs:
        raise ValueError('choose_lr: no run to choose from')
    return min(runs, key=lambda r: (-round(plateau_ap(r), 6), r['lr']))['lr']


def run_convergence(configs: Dict[str, str], seeds: Sequence[int] = (0, 1, 2),
                    work_dir: str = 'work_dirs/convergence', data_root: Optional[str] = None,
                    max_iters: Optional[int] = None, val_interval: Optional[int] = None,
                    synthetic_overrides: Optional[dict] = None,
                    num_threads: Optional[int] = None, resume: bool = True,
                    progress: bool = True, jobs: int = 1, pretrained_dir: Optional[str] = None,
                    pretrain_iters: Optional[int] = None,
                    milestones: Sequence[float] = (5.0, 10.0, 20.0),
                    lrs: Optional[Dict[str, Sequence[float]]] = None,
                    sweep_iters: Optional[int] = None) -> dict:
    """Train both models with every seed and write the convergence report (module docstring).

    Args:
        configs (dict[str, str]): row name -> config, the deformable model
            first and DETR second.
        seeds (Sequence[int]): Training seeds of both models (paired by seed).
        work_dir (str): Output folder.
        data_root (str, optional): Dataset folder (default: the configs').
        max_iters (int, optional): Iterations (default: the configs').
        val_interval (int, optional): Evaluation interval (default: the configs').
        synthetic_overrides (dict, optional): Updates ``synthetic_data``.
        num_threads (int, optional): Torch threads of each run.
        resume (bool): Read back finished runs (same config, seed, iterations
            and learning rate).
        progress (bool): Progress bars of the data generation.
        jobs (int): Runs trained side by side, each in its own process.
        pretrained_dir (str, optional): Folder of the pretrained backbone
            (default: the path the configs name, shared with the table).
        pretrain_iters (int, optional): Overrides the pretraining iterations.
        milestones (Sequence[float]): Fixed APs (points) also reported.
        lrs (dict[str, Sequence[float]], optional): row name -> learning
            rates. One rate replaces the config's; several are swept first:
            each is trained with the first seed for ``sweep_iters`` at a fixed
            length (no plateau extension), evaluated every 5 % of it (or every
            ``val_interval``), the one with the highest plateau AP
            (:func:`choose_lr`) is used for the comparison, and the sweep is
            written to ``lr_sweep.md``. A row not named keeps its config's rate.
        sweep_iters (int, optional): Iterations of each sweep run (default:
            ``max_iters`` or the configs').

    Returns:
        dict: ``runs``, ``compared`` (per seed), ``report``, ``curves``,
        ``times``, ``lrs`` (row name -> the rate used; None: the config's) and
        ``sweep`` (row name -> sweep runs; empty without a sweep).
    """
    if len(configs) != 2:
        raise ValueError(f'run_convergence: give two configs (deformable, DETR), got '
                         f'{list(configs)}')
    lrs = {name: [float(lr) for lr in values] for name, values in (lrs or {}).items()}
    unknown = sorted(set(lrs) - set(configs))
    bad = [lr for values in lrs.values() for lr in values if not 0 < lr < 1]
    if unknown or bad or any(not values for values in lrs.values()):
        raise ValueError(f'run_convergence: learning rates must be given for {list(configs)} '
                         f'as one or more values in (0, 1); got {lrs}')
    num_threads = threads_per_job(num_threads, jobs, 'run_convergence')
    # the lengths may differ: at a constant rate the schedule only says where a run stops
    budget = check_same_budget(configs, max_iters, same_length=False)
    scheduled = budget['max_iters']  # row name -> iterations
    budget['synthetic_data'].update(synthetic_overrides or {})
    data_root = data_root_of(next(iter(configs.values())), data_root)
    prepare_synthetic_data(osp.join(data_root, ''), budget['synthetic_data'], progress=progress)
    pretrained = prepare_pretrained_backbones(configs, data_root, pretrained_dir,
                                              pretrain_iters, num_threads and num_threads * jobs)

    def run_one(seed: int, name: str, lr: Optional[float], sweep: bool = False) -> dict:
        config = configs[name]
        options = checkpoint_option(config, pretrained[name]['checkpoint']) \
            if name in pretrained else {}
        folder = name if lr is None else f'{name}_lr{lr:g}'
        if lr is not None:
            options[LR_KEY] = lr
        iters, interval = max_iters, val_interval
        if sweep:  # a fixed length: the rates are compared at the same iteration
            options['custom_hooks'] = []
            folder = osp.join('lr_sweep', folder)
            iters = sweep_iters or max_iters
            # one interval, 5 % of the run, for every model: the sweep compares plateaus, not
            # early crossings (a config's denser early evaluations are for those)
            interval = val_interval or max((iters or scheduled[name]) // 20, 1)
        result = train_or_reuse(
            dict(config=config, work_dir=osp.join(work_dir, folder, f'seed{seed}'),
                 data_root=data_root, seed=seed, max_iters=iters,
                 val_interval=interval, synthetic_overrides=synthetic_overrides,
                 num_threads=num_threads, cfg_options=options or None),
            resume, iters or scheduled[name])
        print(f'convergence{" sweep" if sweep else ""}: {name} lr {result["lr"]:g} seed {seed}: '
              f'last AP {100 * result["metrics"]["AP"]:.1f} after {result["iters"]} iterations, '
              f'train {result["train_seconds"]:.0f} s ({result["seconds_per_iter"]:.3f} s/it)'
              f'{", read back" if result["reused"] else ""}', flush=True)
        return result

    start = time.perf_counter()
    swept = [(seeds[0], name, lr, True) for name, values in lrs.items() if len(values) > 1
             for lr in values]
    def length(seed: int, name: str, lr: Optional[float], sweep: bool = False) -> int:
        return (sweep_iters or max_iters or scheduled[name]) if sweep else scheduled[name]

    # the longest runs start first (map_side_by_side): no job idles at the end
    sweep_runs = map_side_by_side(run_one, swept, jobs, cost=length)
    sweep = {name: [r for r, item in zip(sweep_runs, swept) if item[1] == name]
             for name in configs if any(item[1] == name for item in swept)}
    chosen = {name: (choose_lr(sweep[name]) if name in sweep else
                     (lrs[name][0] if name in lrs else None)) for name in configs}
    sweep_file = None
    if sweep:
        sweep_file = osp.join(work_dir, 'lr_sweep.md')
        mkdir_or_exist(work_dir)
        with open(sweep_file, 'w') as f:
            f.write('\n'.join(
                ['# Learning-rate sweep', '',
                 f'Seed {seeds[0]}, {sweep_runs[0]["iters"]} iterations at a fixed length; the '
                 'rate with the highest plateau AP (mean of the last two evaluations) is used '
                 'for the comparison.', ''] + lr_sweep_table(sweep, chosen) + ['']))
    runs = map_side_by_side(run_one, [(s, n, chosen[n]) for s in seeds for n in configs], jobs,
                            cost=length)
    times = (f'convergence: {sum(not r["reused"] for r in sweep_runs + runs)} runs trained '
             f'({len(sweep_runs)} in the learning-rate sweep); wall time '
             f'{(time.perf_counter() - start) / 60:.1f} min for the runs, backbone pretraining '
             f'{sum({s["checkpoint"]: s["seconds"] for s in pretrained.values()}.values()):.0f}'
             ' s (0 when reused)')
    print(times, flush=True)
    with open(osp.join(work_dir, 'convergence.json'), 'w') as f:
        json.dump(dict(budget=budget, pretrained_backbones=pretrained, runs=runs, times=times,
                       lrs=chosen, sweep=sweep), f, indent=1)
    pairs = [(runs[2 * i], runs[2 * i + 1]) for i in range(len(seeds))]
    report, compared = write_convergence_report(pairs, max(scheduled.values()),
                                                osp.join(work_dir, 'convergence.md'), milestones,
                                                sweep_file, pretrained)
    curves = osp.join(work_dir, 'convergence.png')
    plot_ablation_curves(runs, curves, metrics=('AP', ),
                         title=f'convergence: deformable vs DETR, seeds {list(seeds)}')
    with open(report) as f:
        print(f.read(), flush=True)
    return dict(runs=runs, compared=compared, report=report, curves=curves, times=times,
                lrs=chosen, sweep=sweep)
