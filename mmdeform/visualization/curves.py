"""Training curves from mmengine's scalar log: loss against iteration, metrics against iteration.

mmengine's ``LocalVisBackend`` appends one json object per line to
``<work_dir>/<timestamp>/vis_data/scalars.json``: training lines carry
``loss`` (and ``loss_*`` terms, ``lr``, ``time``...) with ``step`` = the
iteration (epoch-based logs also carry ``epoch``); validation lines carry
the metrics (``coco/bbox_mAP``, ...) with ``step`` = the iteration when
``LoggerHook(log_metric_by_epoch=False)``, else the epoch.
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.utils import mkdir_or_exist

DEFAULT_METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50')


def load_scalars(json_file: str) -> Tuple[List[dict], List[dict]]:
    """Read a ``scalars.json`` log and split it into training and validation records.

    Args:
        json_file (str): Path of the log (one json object per line).

    Returns:
        tuple[list[dict], list[dict]]: training records (those with a
        ``loss`` key) and the other records (validation), each in file order.

    Raises:
        FileNotFoundError: ``json_file`` does not exist.
        ValueError: a line is not a json object or has no ``step``.
    """
    if not osp.isfile(json_file):
        raise FileNotFoundError(f'load_scalars: no scalar log at {json_file}')
    train, val = [], []
    with open(json_file) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f'{json_file}:{number}: not json ({err})') from None
            if not isinstance(record, dict) or 'step' not in record:
                raise ValueError(f'{json_file}:{number}: expected an object with a "step", '
                                 f'got {line.strip()[:80]!r}')
            (train if 'loss' in record else val).append(record)
    return train, val


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or len(values) < 2:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    starts = np.arange(1, len(values) + 1) - counts
    return (cumsum[np.arange(1, len(values) + 1)] - cumsum[starts]) / counts


def _series(records: Sequence[dict], key: str) -> Tuple[np.ndarray, np.ndarray]:
    points = [(r['step'], r[key]) for r in records if key in r]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def plot_curves(json_file: str, out_file: str,
                loss_keys: Optional[Sequence[str]] = None,
                metric_keys: Sequence[str] = DEFAULT_METRICS,
                smooth_window: int = 5, title: Optional[str] = None) -> Dict[str, int]:
    """Draw the loss curves and the metric curves side by side into a PNG.

    Args:
        json_file (str): mmengine ``scalars.json`` log (see the module docstring).
        out_file (str): Image to write (folders are created); the format
            follows the extension (``.png``).
        loss_keys (Sequence[str], optional): Training scalars to draw on the
            left; default ``loss`` plus the final decoder layer's terms
            (``loss_cls``, ``loss_bbox``, ``loss_iou``) when logged.
        metric_keys (Sequence[str]): Validation scalars to draw on the right
            (the ones absent from the log are skipped).
        smooth_window (int): Moving-average window for the loss curves
            (the raw total loss is drawn faintly beneath).
        title (str, optional): Figure title.

    Returns:
        dict[str, int]: number of points drawn per key.

    Raises:
        ValueError: the log holds no training record and no metric.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train, val = load_scalars(json_file)
    if loss_keys is None:
        loss_keys = [k for k in ('loss', 'loss_cls', 'loss_bbox', 'loss_iou')
                     if any(k in r for r in train)]
    counts = {}
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key in loss_keys:
        steps, values = _series(train, key)
        if not len(steps):
            continue
        if key == loss_keys[0]:
            ax_loss.plot(steps, values, color='0.8', linewidth=0.8)
        # markers keep curves of a few points visible
        ax_loss.plot(steps, _smooth(values, smooth_window), label=key,
                     marker='.' if len(steps) < 20 else None)
        counts[key] = len(steps)
    for key in metric_keys:
        steps, values = _series(val, key)
        if not len(steps):
            continue
        ax_metric.plot(steps, values, marker='o', label=key)
        for step, value in zip(steps[-1:], values[-1:]):
            ax_metric.annotate(f'{value:.3f}', (step, value), textcoords='offset points',
                               xytext=(-10, 6))
        counts[key] = len(steps)
    if not counts:
        plt.close(fig)
        raise ValueError(f'plot_curves: {json_file} has none of the keys '
                         f'{list(loss_keys) + list(metric_keys)}')
    ax_loss.set(xlabel='iteration', ylabel='loss', title='training loss', yscale='log')
    ax_metric.set(xlabel='iteration', ylabel='metric', title='validation', ylim=(0, 1))
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    mkdir_or_exist(osp.dirname(osp.abspath(out_file)))
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return counts
