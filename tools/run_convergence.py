"""Convergence against DETR: iterations to a fixed AP, deformable vs dense attention.

Trains a single-scale Deformable DETR and the dense-attention DETR baseline on
the same synthetic data with the same seed, evaluates them often and writes
``convergence.md`` (iterations to ``--target-ap``, their ratio) and
``convergence.png`` under ``--work-dir``. See :mod:`mmdeform.analysis.convergence`.
"""
import argparse
import os
from pathlib import Path
from typing import List, Optional

# OpenMP threads that wait for work sleep instead of spinning (see tools/demo.py).
# Must be set before torch loads; the runs' processes inherit it.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from mmdeform.analysis.ablations import find_rows, row_name  # noqa: E402
from mmdeform.analysis.convergence import DEFAULT_ROWS, run_convergence  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / 'configs' / 'synthetic'
                 / 'convergence')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    rows = find_rows(CONFIG_DIR, DEFAULT_ROWS)
    parser = argparse.ArgumentParser(
        description='Train a deformable and a dense-attention DETR, report the iterations '
                    'each needs to reach a fixed AP; write convergence.md and convergence.png.')
    parser.add_argument('--deformable-config', default=rows[DEFAULT_ROWS[0]])
    parser.add_argument('--dense-config', default=rows[DEFAULT_ROWS[1]])
    parser.add_argument('--target-ap', type=float, default=10.0, help='AP in points (x 100)')
    parser.add_argument('--max-iters', type=int, default=None,
                        help="iterations of both runs (default: the configs')")
    parser.add_argument('--val-interval', type=int, default=None,
                        help="evaluation interval (default: the configs')")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default='work_dirs/convergence')
    parser.add_argument('--data-root', default='data/synthetic_ablations',
                        help='dataset folder (generated when missing)')
    parser.add_argument('--num-train', type=int, default=None,
                        help="synthetic training images (default: the configs')")
    parser.add_argument('--num-val', type=int, default=None,
                        help="synthetic validation images (default: the configs')")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads per run')
    parser.add_argument('--resume', action='store_true',
                        help='reuse finished runs (same config, seed and iterations)')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    overrides = {key: value for key, value in
                 (('num_train', args.num_train), ('num_val', args.num_val)) if value is not None}
    configs = {row_name(path): path for path in (args.deformable_config, args.dense_config)}
    return run_convergence(configs, args.target_ap, args.seed, args.work_dir, args.data_root,
                           args.max_iters, args.val_interval, overrides or None, args.threads,
                           args.resume, not args.no_progress)


if __name__ == '__main__':
    main()
