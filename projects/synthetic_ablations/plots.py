"""AP curves of run records: one line per row (mean over seeds, min-max band).

Used by :mod:`projects.synthetic_ablations.ablations` (``curves.png``) and
:mod:`projects.synthetic_ablations.convergence` (``convergence.png``).
"""
import os.path as osp
from typing import Dict, Optional, Sequence

import numpy as np
from mmengine.utils import mkdir_or_exist

from projects.synthetic_ablations.report import summarize

# drawn dashed black: the DETR baseline of the convergence run
BASELINE_ROWS = ('dense-detr_ss', 'detr_ss')


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
        style = dict(color='black', linestyle='--') if name in BASELINE_ROWS else dict(
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
