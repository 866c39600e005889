"""The ablation report: per-row table, the paper's orderings checked, mAP curves.

Used by :mod:`projects.synthetic_ablations.ablations`; works on its run records (dicts
with ``row``, ``seed``, ``iters``, ``metrics``, ``curve``, ``train_seconds``,
``total_seconds``, ``params``, ``description``). Metrics are COCO AP in
[0, 1] (-1 when the split has no object of that size) and are reported in
points (x 100).
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.utils import mkdir_or_exist

from projects.synthetic_ablations.intervals import (
    EQUIVALENCE_MARGIN,
    difference,
    t_half_width,
    verdict,
)

TABLE_METRICS = ('AP', 'AP50', 'AP_S', 'AP_M', 'AP_L')
DEFORMABLE_ROW = 'deformable-detr_ms-attn-k4'
DENSE_ROW = 'dense-detr_ss'


@dataclass(frozen=True)
class Claim:
    """One ordering of the paper: row ``higher`` beats row ``lower`` in ``metric``.

    Attributes:
        text (str): The claim in words.
        higher (str): Row expected to score higher (for ``no_gain``: the
            row with the addition).
        lower (str): The other row.
        paper (str): The paper's difference in points (and its values).
        metric (str): A key of :data:`TABLE_METRICS`.
        no_gain (bool): The paper finds no gain of ``higher`` over ``lower``.
    """
    text: str
    higher: str
    lower: str
    paper: str
    metric: str = 'AP'
    no_gain: bool = False


# Paper Table 2 (COCO val, ResNet-50, 50 epochs). Dense attention (DETR) is compared by the
# convergence run (projects.synthetic_ablations.convergence), not here.
CLAIMS = (
    Claim('multi-scale inputs beat a single-scale input (K=1, attention within each level)',
          'deformable-detr_ms-inputs-k1', 'deformable-detr_ss-k1', '+1.7 (41.4 vs 39.7)'),
    Claim('... and more so on small objects', 'deformable-detr_ms-inputs-k1',
          'deformable-detr_ss-k1', '+2.9', metric='AP_S'),
    Claim('K=4 sampling points beat K=1 (multi-scale inputs, attention within each level)',
          'deformable-detr_ms-inputs-k4', 'deformable-detr_ms-inputs-k1', '+0.9 (42.3 vs 41.4)'),
    Claim('K=4 sampling points beat K=1 (multi-scale attention)',
          DEFORMABLE_ROW, 'deformable-detr_ms-attn-k1', 'not in Table 2'),
    Claim('multi-scale attention beats attention within each level (K=4)',
          DEFORMABLE_ROW, 'deformable-detr_ms-inputs-k4', '+1.5 (43.8 vs 42.3)'),
    Claim('an FPN neck adds nothing to multi-scale attention',
          'deformable-detr_ms-attn-k4-fpn', DEFORMABLE_ROW, '+0.0 (43.8 vs 43.8)', no_gain=True),
    Claim('the full model clearly beats single-scale K=1 (close to deformable convolution)',
          DEFORMABLE_ROW, 'deformable-detr_ss-k1', '+4.1 (43.8 vs 39.7)'),
)


def summarize(runs: Sequence[dict]) -> Dict[str, dict]:
    """Per row (in the order of ``runs``): values over seeds.

    Returns:
        dict[str, dict]: row -> ``description``, ``seeds``, ``values``
        (metric -> per-seed array in points, NaN where COCO gave -1),
        ``train_seconds`` and ``params`` (per-seed lists) and ``curve``
        (``iters`` array, ``AP`` / ``AP_S`` arrays of shape (seeds, evals)).
    """
    summary: Dict[str, dict] = {}
    for run in runs:
        row = summary.setdefault(run['row'], dict(description=run.get('description', {}),
                                                  seeds=[], runs=[]))
        row['seeds'].append(run['seed'])
        row['runs'].append(run)
    for row in summary.values():
        row['values'] = {
            m: np.array([100 * r['metrics'][m] if r['metrics'].get(m, -1) >= 0 else np.nan
                         for r in row['runs']]) for m in TABLE_METRICS}
        row['train_seconds'] = [r['train_seconds'] for r in row['runs']]
        row['params'] = [r['params'] for r in row['runs']]
        iters = sorted({point['iter'] for r in row['runs'] for point in r['curve']})
        row['curve'] = dict(iters=np.array(iters))
        for m in ('AP', 'AP_S'):
            row['curve'][m] = np.array(
                [[next((100 * p[m] if p.get(m, -1) >= 0 else np.nan for p in r['curve']
                        if p['iter'] == i), np.nan) for i in iters] for r in row['runs']])
    return summary


def _mean_interval(values: np.ndarray) -> str:
    """``mean ± 95 % half-width`` over seeds (the value alone for one seed)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return 'n/a'
    if len(values) == 1:
        return f'{values[0]:.1f}'
    return f'{values.mean():.1f} ± {t_half_width(values):.1f}'


def format_table(summary: Dict[str, dict]) -> str:
    """Markdown table: one line per row, mean ± 95 % t half-width over seeds."""
    head = ['row', 'levels', 'attention', 'K', 'neck', *TABLE_METRICS, 'train s', 'params',
            'seeds']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, row in summary.items():
        desc = row['description']
        cells = [name, desc.get('levels', ''), desc.get('attention', ''), desc.get('K', ''),
                 desc.get('neck', '')]
        cells += [_mean_interval(row['values'][m]) for m in TABLE_METRICS]
        cells += [f'{np.mean(row["train_seconds"]):.0f}', f'{row["params"][0] / 1e6:.2f} M',
                  str(len(row['seeds']))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def check_claim(claim: Claim, summary: Dict[str, dict]) -> Tuple[str, str, str]:
    """The difference ``higher - lower`` with its 95 % interval, and the verdict.

    The interval and verdict rules are those of
    :mod:`projects.synthetic_ablations.intervals` (paired by seed when the rows
    share two seeds or more; ``no_gain`` claims are judged as equivalence
    within ± ``EQUIVALENCE_MARGIN`` points).

    Returns:
        tuple[str, str, str]: the difference (points, ``mean [low, high]``;
        ``-`` if a row is missing), how the interval was formed, and the
        verdict.
    """
    if claim.higher not in summary or claim.lower not in summary:
        missing = [r for r in (claim.higher, claim.lower) if r not in summary]
        return '-', '-', f'not run ({", ".join(missing)} missing)'
    higher, lower = summary[claim.higher], summary[claim.lower]
    diff = difference(dict(zip(higher['seeds'], higher['values'][claim.metric])),
                      dict(zip(lower['seeds'], lower['values'][claim.metric])))
    if diff is None:
        return '-', '-', f'not measurable ({claim.metric} undefined)'
    return diff.text(), diff.method, verdict(diff, equivalence=claim.no_gain)


def _runs_table(summary: Dict[str, dict]) -> str:
    head = ['row', 'seed', *TABLE_METRICS, 'AP at each evaluation (iteration: AP)', 'train s',
            'total s']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, row in summary.items():
        for index, run in enumerate(row['runs']):
            values = [row['values'][m][index] for m in TABLE_METRICS]
            curve = ', '.join(f'{p["iter"]}: {100 * p["AP"]:.1f}' for p in run['curve'])
            cells = [name, str(run['seed'])]
            cells += ['n/a' if np.isnan(v) else f'{v:.1f}' for v in values]
            cells += [curve, f'{run["train_seconds"]:.0f}', f'{run["total_seconds"]:.0f}']
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_report(runs: Sequence[dict], budget: dict, out_file: str) -> Tuple[str, str]:
    """Write ``results.md``: the table, the paper's orderings, every run.

    Args:
        runs (Sequence[dict]): Run records (module docstring).
        budget (dict): ``max_iters``, ``batch_size``, ``seeds``, ``synthetic_data``.
        out_file (str): Markdown file to write.

    Returns:
        tuple[str, str]: ``out_file`` and the main table.
    """
    summary = summarize(runs)
    table = format_table(summary)
    lines = [
        '# Deformable DETR ablations on synthetic shapes', '',
        f'Every run: {budget["max_iters"]} iterations x batch {budget["batch_size"]}, '
        f'seeds {budget["seeds"]}; data: `{budget["synthetic_data"]}`. COCO bbox AP in points '
        '(x 100) on the validation split, mean ± half-width of the 95 % t-interval over seeds '
        '(the value alone for one seed); n/a: no object of that size. "train s": seconds of '
        'training iterations (data loading included, evaluation excluded), mean over seeds.', '',
        table, '',
        "## The paper's orderings", '',
        'Difference = first row minus second row, in points, with its 95 % t-interval over '
        'seeds: paired by seed when the rows share two seeds or more (same data order and '
        'shared initialization per seed), Welch otherwise; no interval with one seed. '
        'Verdict: reproduced (interval excludes 0, the paper\'s sign), not reproduced '
        '(excludes 0, opposite sign), not established (contains 0). "Adds nothing" is '
        f'reproduced when the whole interval lies within ±{EQUIVALENCE_MARGIN:.0f} point.', '',
        '| claim | rows | metric | paper | here [95 % interval] | interval from | verdict |',
        '|---|---|---|---|---|---|---|']
    for claim in CLAIMS:
        diff, method, judged = check_claim(claim, summary)
        lines.append(f'| {claim.text} | {claim.higher} vs {claim.lower} | {claim.metric} | '
                     f'{claim.paper} | {diff} | {method} | {judged} |')
    lines += ['', '## Every run', '', _runs_table(summary), '']
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    with open(out_file, 'w') as f:
        f.write('\n'.join(lines))
    return out_file, table


def plot_ablation_curves(runs: Sequence[dict], out_file: str,
                         metrics: Sequence[str] = ('AP', 'AP_S'),
                         target: Optional[float] = None,
                         title: Optional[str] = None) -> Dict[str, int]:
    """AP (and AP_S) against iteration: one line per row, mean over seeds, min-max band.

    Args:
        runs (Sequence[dict]): Run records (module docstring).
        out_file (str): PNG to write.
        metrics (Sequence[str]): One panel per metric.
        target (float, optional): A horizontal line at this AP (points) on
            the first panel (the convergence target).
        title (str, optional): Figure title (default: the rows and seeds).

    Returns:
        dict[str, int]: number of evaluations drawn per row.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    summary = summarize(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    colours = plt.get_cmap('tab10')
    counts: Dict[str, int] = {}
    for index, (name, row) in enumerate(summary.items()):
        iters = row['curve']['iters']
        counts[name] = len(iters)
        style = dict(color='black', linestyle='--') if name == DENSE_ROW else dict(
            color=colours(index % 10))
        for ax, metric in zip(axes[0], metrics):
            values = row['curve'][metric]
            if not len(iters) or np.isnan(values).all():
                continue
            ax.plot(iters, np.nanmean(values, 0), marker='o', label=name, **style)
            if len(values) > 1:
                ax.fill_between(iters, np.nanmin(values, 0), np.nanmax(values, 0),
                                color=style['color'], alpha=0.15)
    if target is not None:
        axes[0][0].axhline(target, color='grey', linestyle=':', label=f'target {target:g}')
    for ax, metric in zip(axes[0], metrics):
        ax.set(xlabel='iteration', ylabel=f'{metric} (points)', title=f'validation {metric}')
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize='small')
    seeds = sorted({run['seed'] for run in runs})
    fig.suptitle(title or f'ablation rows, mean over seeds {seeds} (band: min-max)')
    fig.tight_layout()
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return counts


def claims_rows() -> List[str]:
    """Every row named by :data:`CLAIMS` (for checks that the configs exist)."""
    return sorted({c.higher for c in CLAIMS} | {c.lower for c in CLAIMS})
