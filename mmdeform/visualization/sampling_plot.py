"""Drawing deformable attention's sampling points (see :mod:`.sampling` for the
coordinates); :mod:`mmdeform.apis.sampling` runs the model and calls it."""
import os
from typing import Optional, Sequence

import numpy as np

from .sampling import QuerySampling

_MARKERS = 'osD^vP'  # scatter marker of each level (cycled)


def plot_sampling(img_rgb: np.ndarray, queries: Sequence[QuerySampling], out_file: str,
                  layout: str = 'levels', title: Optional[str] = None) -> str:
    """Draw queries' sampling points on the image and save a PNG.

    Points are coloured by head and sized by attention weight (area
    proportional to the weight, relative to the largest drawn one); the
    reference point is a yellow star, a detection's box a white rectangle.

    Args:
        img_rgb (np.ndarray): (H, W, 3) uint8 RGB image the pixels refer to.
        queries (Sequence[QuerySampling]): At least one query.
        out_file (str): PNG to write (folders are created).
        layout (str): ``'levels'``: one panel per feature level;
            ``'overlay'``: all levels in one panel (marker shape by level).
        title (str, optional): Figure title.

    Returns:
        str: ``out_file``.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if layout not in ('levels', 'overlay'):
        raise ValueError(f"plot_sampling: layout must be 'levels' or 'overlay', got {layout!r}")
    if not queries:
        raise ValueError('plot_sampling: no query to draw')
    num_heads, num_levels = queries[0].points_xy.shape[:2]
    height, width = img_rgb.shape[:2]
    panels = [[level] for level in range(num_levels)] if layout == 'levels' else \
        [list(range(num_levels))]
    colors = plt.get_cmap('tab10' if num_heads <= 10 else 'hsv')(
        np.arange(num_heads) / (10 if num_heads <= 10 else num_heads))
    panel_w = 5.0 * min(width / height, 2.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_w * len(panels), 5.2), squeeze=False)
    for ax, levels in zip(axes[0], panels):
        _draw_panel(ax, img_rgb, queries, levels, colors)
    axes[0][-1].legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file


def _draw_panel(ax, img_rgb: np.ndarray, queries: Sequence[QuerySampling],
                levels: Sequence[int], colors: np.ndarray) -> None:
    """One panel: the image, then per query its box, its points on ``levels``
    (colour = head, area ~ weight, marker = level when several levels share the
    panel) and its reference star."""
    from matplotlib.patches import Rectangle

    height, width = img_rgb.shape[:2]
    max_weight = max(float(q.weights.max()) for q in queries) or 1.0
    markers = {level: _MARKERS[level % len(_MARKERS)] if len(levels) > 1 else 'o'
               for level in levels}
    # extent: continuous pixel coordinates, pixel i spans [i, i + 1)
    ax.imshow(img_rgb, extent=(0, width, height, 0))
    for query in queries:
        if query.box_xyxy is not None:
            x1, y1, x2, y2 = query.box_xyxy
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                   edgecolor='white', linewidth=1.2))
        for head in range(query.points_xy.shape[0]):
            for level in levels:
                points = query.points_xy[head, level]  # (P, 2)
                first = query is queries[0] and level == levels[0]
                ax.scatter(points[:, 0], points[:, 1],
                           s=4 + 160 * query.weights[head, level] / max_weight,
                           color=colors[head], marker=markers[level],
                           alpha=0.85, edgecolors='black', linewidths=0.3,
                           label=f'head {head}' if first else None)
        ax.scatter(*query.reference_xy, marker='*', s=180, c='yellow', edgecolors='black',
                   linewidths=0.8, zorder=5)
        ax.annotate(query.label, query.reference_xy, xytext=(4, -6),
                    textcoords='offset points', color='yellow', fontsize=7)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.set_title(f'level {levels[0]}' if len(levels) == 1 else 'all levels (' + ', '.join(
        f'{markers[level]} = level {level}' for level in levels) + ')',
        fontsize=9)
