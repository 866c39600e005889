"""Convergence against DETR: iterations each model needs to reach a fixed AP.

The paper's "10x fewer training epochs" compares how long Deformable DETR
and DETR train to reach a given accuracy. :func:`run_convergence` trains a
deformable and a dense-attention config (by default the single-scale rows
``deformable-detr_ss-k4`` and ``dense-detr_ss`` of the ablation folder, so the
input is the same) with the run machinery of
:mod:`projects.synthetic_ablations.ablations`, evaluates every ``val_interval``
iterations and writes under ``work_dir``:

- ``convergence.md``: per model the iterations to reach ``target_ap``, the
  iterations trained, the last AP and the training time, and the ratio
  dense / deformable;
- ``convergence.png``: AP against iteration of both models, target line;
- ``convergence.json`` and each run's logs (``<row>/seed<k>/``).

Each run stops at its first evaluation at or above the target (nothing after
it changes the count); the convergence configs keep the learning rate constant
after the warm-up, so a stopped run followed the same path as a longer one.
Iterations to target: the first crossing of the AP curve, linearly
interpolated between the evaluation below the target and the first one at
or above it (:func:`iterations_to_target`).
"""
import json
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.utils import mkdir_or_exist

from mmdeform.datasets.synthetic import prepare_synthetic_data
from projects.synthetic_ablations.ablations import (
    check_same_budget,
    map_side_by_side,
    threads_per_job,
    train_or_reuse,
)
from projects.synthetic_ablations.pretraining import pretrain_backbone, pretraining_settings
from projects.synthetic_ablations.report import format_table, plot_ablation_curves, summarize

DEFAULT_ROWS = ('deformable-detr_ss-k4', 'dense-detr_ss')


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
        aps (Sequence[float]): AP at each evaluation (same units as
            ``target``).
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
    """``dense / deformable`` iterations in words.

    A lower bound when dense never gets there, or when the deformable model
    was already there at its first evaluation (its count is then an upper
    bound: nothing is known before that evaluation).
    """
    if deformable is None:
        return 'not measurable: the deformable model does not reach the target'
    if dense is None:
        return (f'more than {max_iters / deformable:.1f}x (dense does not reach the target '
                f'within {max_iters} iterations)')
    if deformable_at_first_evaluation:
        return (f'at least {dense / deformable:.1f}x (deformable already there at its first '
                'evaluation)')
    return f'{dense / deformable:.1f}x'


def _at_first_evaluation(run: dict, target: float) -> bool:
    """Whether the run's first evaluation already reached ``target`` (AP points)."""
    return bool(run['curve']) and 100 * run['curve'][0]['AP'] >= target


def _reached_text(iteration: Optional[float], max_iters: int, upper_bound: bool = False) -> str:
    if iteration is None:
        return f'not reached within {max_iters}'
    return f'<= {iteration:.0f}' if upper_bound else f'{iteration:.0f}'


def write_convergence_report(runs: Sequence[dict], target_ap: float, max_iters: int,
                             out_file: str, milestones: Sequence[float] = (1.0, 2.0, 5.0)
                             ) -> Tuple[str, Dict[str, Optional[float]]]:
    """Write the markdown report of a deformable run and a dense run.

    Besides the target, the report gives the iterations to each of the
    ``milestones`` below it: where the dense model starts learning but does
    not reach the target, the ratio at a lower AP is still a measurement.

    Args:
        runs (Sequence[dict]): Two run records (``train_row`` results with
            ``description``), the deformable model first.
        target_ap (float): Target AP in points.
        max_iters (int): Iterations of each run.
        out_file (str): Markdown file to write.
        milestones (Sequence[float]): Lower APs (points) also reported;
            those at or above ``target_ap`` are left out.

    Returns:
        tuple: ``out_file`` and row -> iterations to the target (None: not
        reached).
    """
    reached = {}
    for run in runs:
        curve = run['curve']
        reached[run['row']] = iterations_to_target(
            [p['iter'] for p in curve], [100 * p['AP'] for p in curve], target_ap)
    deformable, dense = (reached[run['row']] for run in runs)
    lines = [
        '# Convergence against DETR on synthetic shapes', '',
        f'Both models: at most {max_iters} iterations, stopped at the first evaluation that '
        f'reaches the target; seed {runs[0]["seed"]}, evaluation every '
        f'{runs[0]["curve"][0]["iter"] if runs[0]["curve"] else "-"} iterations. Iterations '
        f'to reach {target_ap:g} AP: first crossing, linearly interpolated between '
        'evaluations.', '',
        '| model | config | iterations to target | iterations trained | last AP | train s |',
        '|---|---|---|---|---|---|']
    for run in runs:
        reached_text = _reached_text(reached[run['row']], max_iters,
                                     _at_first_evaluation(run, target_ap))
        lines.append(f'| {run["row"]} | `{osp.basename(run["config"])}` | {reached_text} | '
                     f'{run["iters"]} | {100 * run["metrics"]["AP"]:.1f} | '
                     f'{run["train_seconds"]:.0f} |')
    ratio = convergence_ratio(deformable, dense, max_iters,
                              _at_first_evaluation(runs[0], target_ap))
    lines += ['', f'Ratio (dense / deformable iterations): {ratio} (the paper: about 10x '
                  'fewer epochs than DETR).', '']
    lower = sorted(m for m in milestones if m < target_ap)
    if lower:
        lines += ['Iterations to lower APs (same runs):', '',
                  '| AP | ' + ' | '.join(run['row'] for run in runs) + ' | dense / deformable |',
                  '|---|---|---|---|']
        for milestone in lower:
            its = [iterations_to_target([p['iter'] for p in run['curve']],
                                        [100 * p['AP'] for p in run['curve']], milestone)
                   for run in runs]
            first = [_at_first_evaluation(run, milestone) for run in runs]
            lines.append(f'| {milestone:g} | '
                         + ' | '.join(_reached_text(i, max_iters, f) for i, f in zip(its, first))
                         + f' | {convergence_ratio(its[0], its[1], max_iters, first[0])} |')
        lines.append('')
    lines += [format_table(summarize(runs)), '']
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    with open(out_file, 'w') as f:
        f.write('\n'.join(lines))
    return out_file, reached


def prepare_pretrained_backbones(configs: Dict[str, str], data_root: str, work_dir: str,
                                 pretrain_iters: Optional[int] = None,
                                 num_threads: Optional[int] = None) -> Dict[str, dict]:
    """Train the backbone checkpoints the configs start from, unless already there.

    A config with ``backbone_pretraining`` (see
    :func:`projects.synthetic_ablations.pretraining.pretraining_settings`) starts
    from a backbone pretrained by shape counting on ``data_root``. The file
    is kept under ``work_dir`` with the config's file name (the configs name
    ``work_dirs/convergence/<file>``, the default ``work_dir``, so that
    ``tools/train.py`` finds it there) and reused while its recorded settings
    and data folder match; otherwise it is trained again. Configs naming the
    same file must give the same settings.

    Args:
        configs (dict[str, str]): row name -> config.
        data_root (str): Dataset folder.
        work_dir (str): Where the checkpoints are kept.
        pretrain_iters (int, optional): Overrides the settings' ``iters``.
        num_threads (int, optional): Torch threads of the pretraining.

    Returns:
        dict: row name -> settings with ``checkpoint`` set to the file under
        ``work_dir`` (rows without pretraining are absent).

    Raises:
        ValueError: two configs name one file with different settings.
    """
    by_row, by_file = {}, {}
    for name, config in configs.items():
        cfg = Config.fromfile(config)
        settings = pretraining_settings(cfg)
        if settings is None:
            continue
        if pretrain_iters is not None:
            settings['iters'] = pretrain_iters
        settings['checkpoint'] = osp.join(work_dir, osp.basename(settings['checkpoint']))
        known = by_file.setdefault(settings['checkpoint'], (settings, cfg))[0]
        if known != settings:
            raise ValueError(f'run_convergence: {config} pretrains {settings["checkpoint"]} with '
                             f'{settings}, another config with {known}')
        by_row[name] = settings
    for path, (settings, cfg) in by_file.items():
        if _pretrained_matches(path, settings, data_root):
            print(f'convergence: reusing the pretrained backbone {path}', flush=True)
            continue
        print(f'convergence: pretraining the backbone into {path} ({settings["iters"]} '
              'iterations of shape counting)', flush=True)
        pretrain_backbone(cfg, data_root, num_threads=num_threads, **settings)
    return by_row


def _pretrained_matches(path: str, settings: dict, data_root: str) -> bool:
    """Whether ``path`` holds a backbone pretrained with ``settings`` on ``data_root``."""
    if not osp.isfile(path):
        return False
    try:
        meta = torch.load(path, map_location='cpu', weights_only=True).get('meta', {})
    except Exception as error:  # a truncated or foreign file: train it again
        print(f'convergence: cannot read {path} ({type(error).__name__}: {error}); '
              'pretraining again', flush=True)
        return False
    wanted = {k: v for k, v in settings.items() if k != 'checkpoint'}
    return (all(meta.get(k) == v for k, v in wanted.items())
            and osp.abspath(meta.get('data_root', '')) == osp.abspath(data_root))


def run_convergence(configs: Dict[str, str], target_ap: float = 10.0, seed: int = 0,
                    work_dir: str = 'work_dirs/convergence',
                    data_root: str = 'data/synthetic_ablations',
                    max_iters: Optional[int] = None, val_interval: Optional[int] = None,
                    synthetic_overrides: Optional[dict] = None,
                    num_threads: Optional[int] = None, resume: bool = False,
                    progress: bool = True, jobs: int = 1,
                    pretrain_iters: Optional[int] = None,
                    milestones: Sequence[float] = (1.0, 2.0, 5.0)) -> dict:
    """Train the two models and write the convergence report (module docstring).

    Args:
        configs (dict[str, str]): row name -> config, the deformable model
            first and the dense baseline second.
        target_ap (float): AP (points) whose first crossing is reported.
        seed (int): Training seed of both runs.
        work_dir (str): Output folder.
        data_root (str): Dataset folder (generated when missing).
        max_iters (int, optional): Iterations (default: the configs').
        val_interval (int, optional): Evaluation interval (default: the
            configs').
        synthetic_overrides (dict, optional): Updates ``synthetic_data``.
        num_threads (int, optional): Torch threads of each run.
        resume (bool): Reuse finished runs (same config, seed, iterations).
        progress (bool): Progress bars of the data generation.
        jobs (int): 2 trains both models side by side (each in its own
            process), 1 one after the other.

    Returns:
        dict: ``runs``, ``reached`` (row -> iterations or None),
        ``report`` and ``curves`` paths.
    """
    if len(configs) != 2:
        raise ValueError(f'run_convergence: give two configs (deformable, dense), got '
                         f'{list(configs)}')
    budget = check_same_budget(configs, max_iters)
    budget['synthetic_data'].update(synthetic_overrides or {})
    prepare_synthetic_data(osp.join(data_root, ''), budget['synthetic_data'], progress=progress)
    pretrained = prepare_pretrained_backbones(configs, data_root, work_dir, pretrain_iters,
                                              num_threads)
    num_threads = threads_per_job(num_threads, jobs, 'run_convergence')

    def run_one(name: str, config: str) -> dict:
        cfg_options = None
        if name in pretrained:
            cfg_options = {'model.backbone.init_cfg.checkpoint': pretrained[name]['checkpoint']}
        result = train_or_reuse(
            dict(config=config, work_dir=osp.join(work_dir, name, f'seed{seed}'),
                 data_root=data_root, seed=seed, max_iters=budget['max_iters'],
                 val_interval=val_interval, synthetic_overrides=synthetic_overrides,
                 num_threads=num_threads, stop_at_ap=target_ap / 100, cfg_options=cfg_options),
            resume, budget['max_iters'], stopped_at_ap=target_ap / 100)
        print(f'convergence: {name}: {result["iters"]} iterations, '
              f'last AP {100 * result["metrics"]["AP"]:.1f}, '
              f'train {result["train_seconds"]:.0f} s', flush=True)
        return result

    runs = map_side_by_side(run_one, list(configs.items()), jobs)
    with open(osp.join(work_dir, 'convergence.json'), 'w') as f:
        json.dump(dict(budget=budget, target_ap=target_ap, pretrained_backbones=pretrained,
                       runs=runs), f, indent=1)
    report, reached = write_convergence_report(runs, target_ap, budget['max_iters'],
                                               osp.join(work_dir, 'convergence.md'), milestones)
    curves = osp.join(work_dir, 'convergence.png')
    plot_ablation_curves(runs, curves, metrics=('AP', ), target=target_ap,
                         title=f'convergence: deformable vs dense attention, seed {seed}')
    with open(report) as f:
        print(f.read(), flush=True)
    return dict(runs=runs, reached=reached, report=report, curves=curves)
