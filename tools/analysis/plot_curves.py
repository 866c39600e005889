"""Plot the loss and mAP curves of a training run into a PNG.

Usage: python tools/analysis/plot_curves.py WORK_DIR_OR_JSON [--out FILE] [--loss-keys K ...]
       [--metric-keys K ...] [--smooth N] [--title T]

WORK_DIR_OR_JSON: an mmengine work dir (its latest run with losses), a run
folder (<work_dir>/<timestamp>) or a vis_data/scalars.json file. Default
output: curves.png next to the run folder. See mmdeform.visualization.curves.
"""
import argparse
import os.path as osp

from mmdeform.analysis import find_scalar_log
from mmdeform.visualization import plot_curves
from mmdeform.visualization.curves import DEFAULT_METRICS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Plot training curves')
    parser.add_argument('log', help='work dir, run folder or scalars.json')
    parser.add_argument('--out', help='output image (default: <run folder>/../curves.png)')
    parser.add_argument('--loss-keys', nargs='+', help='training scalars (default: loss and '
                        'the last layer\'s loss_cls, loss_bbox, loss_iou)')
    parser.add_argument('--metric-keys', nargs='+', default=list(DEFAULT_METRICS),
                        help='validation scalars')
    parser.add_argument('--smooth', type=int, default=5, help='moving-average window')
    parser.add_argument('--title', help='figure title')
    args = parser.parse_args(argv)
    json_file = find_scalar_log(args.log)
    # <work_dir>/<timestamp>/vis_data/scalars.json -> <work_dir>/curves.png
    out = args.out or osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(json_file)))),
                               'curves.png')
    counts = plot_curves(json_file, out, loss_keys=args.loss_keys,
                         metric_keys=args.metric_keys, smooth_window=args.smooth,
                         title=args.title)
    print(f'plot_curves: {json_file} -> {out} (points: {counts})')


if __name__ == '__main__':
    main()
