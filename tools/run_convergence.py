"""Convergence against DETR: iterations to a fixed AP, deformable vs dense attention.

Trains a single-scale Deformable DETR and the dense-attention DETR baseline on
the same synthetic data with the same seed, evaluates them often and writes
``convergence.md`` (iterations to ``--target-ap``, their ratio) and
``convergence.png`` under ``--work-dir``. See :mod:`projects.synthetic_ablations.convergence`.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

# OpenMP threads that wait for work sleep instead of spinning (see tools/demo.py).
# Must be set before torch loads; the runs' processes inherit it.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# projects/ is imported from the checkout (it is not part of the installed package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from projects.synthetic_ablations import CONVERGENCE_DIR  # noqa: E402
from projects.synthetic_ablations.ablations import (  # noqa: E402
    add_run_arguments,
    find_rows,
    row_name,
    synthetic_overrides,
)
from projects.synthetic_ablations.convergence import DEFAULT_ROWS, run_convergence  # noqa: E402

CONFIG_DIR = str(CONVERGENCE_DIR)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    rows = find_rows(CONFIG_DIR, DEFAULT_ROWS)
    parser = argparse.ArgumentParser(
        description='Train a deformable and a dense-attention DETR, report the iterations '
                    'each needs to reach a fixed AP; write convergence.md and convergence.png.')
    parser.add_argument('--deformable-config', default=rows[DEFAULT_ROWS[0]])
    parser.add_argument('--dense-config', default=rows[DEFAULT_ROWS[1]])
    parser.add_argument('--target-ap', type=float, default=10.0, help='AP in points (x 100)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--milestones', type=float, nargs='*', default=[1.0, 2.0, 5.0],
                        help='lower APs (points) whose iterations are reported too')
    parser.add_argument('--pretrain-iters', type=int, default=None,
                        help="iterations of the backbone pretraining (default: the configs')")
    add_run_arguments(parser, 'work_dirs/convergence')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    configs = {row_name(path): path for path in (args.deformable_config, args.dense_config)}
    return run_convergence(configs, args.target_ap, args.seed, args.work_dir, args.data_root,
                           args.max_iters, args.val_interval, synthetic_overrides(args),
                           args.threads, args.resume, not args.no_progress, args.jobs,
                           args.pretrain_iters, args.milestones)


if __name__ == '__main__':
    main()
