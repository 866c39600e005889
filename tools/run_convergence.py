"""Convergence against DETR: iterations each model needs to reach the same AP.

Trains the single-scale Deformable DETR and DETR (its own decoder, half the
learning rate, as in the paper) on the same synthetic data from the same
frozen, pretrained backbone, with every seed; finished runs are read back,
not retrained. ``--deformable-lrs`` / ``--detr-lrs`` with several rates sweep
them first (first seed, ``--sweep-iters``, written to ``lr_sweep.md``) and
compare each model at its best rate. Prints the measured wall time and writes ``convergence.md``
(iterations to 90 % of the lower plateau AP, their ratio, fixed-AP milestones)
and ``convergence.png`` under ``--work-dir``. See
:mod:`projects.synthetic_ablations.convergence`.
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
from projects.synthetic_ablations.ablations import find_rows  # noqa: E402
from projects.synthetic_ablations.convergence import DEFAULT_ROWS, run_convergence  # noqa: E402
from projects.synthetic_ablations.runs import (  # noqa: E402
    add_run_arguments,
    row_name,
    synthetic_overrides,
)

CONFIG_DIR = str(CONVERGENCE_DIR)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    rows = find_rows(CONFIG_DIR, DEFAULT_ROWS)
    parser = argparse.ArgumentParser(
        description='Train a deformable DETR and DETR with every seed, report the iterations '
                    'each needs to reach the same AP; write convergence.md and convergence.png.')
    parser.add_argument('--deformable-config', default=rows[DEFAULT_ROWS[0]])
    parser.add_argument('--detr-config', default=rows[DEFAULT_ROWS[1]])
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--milestones', type=float, nargs='*', default=[5.0, 10.0, 20.0],
                        help='fixed APs (points) whose iterations are reported too')
    parser.add_argument('--deformable-lrs', type=float, nargs='+', default=None,
                        help="learning rate(s) of the deformable model (default: the config's); "
                             'several are swept first with the first seed and the best is used')
    parser.add_argument('--detr-lrs', type=float, nargs='+', default=None,
                        help="learning rate(s) of DETR (default: the config's); several are "
                             'swept first with the first seed and the best is used')
    parser.add_argument('--sweep-iters', type=int, default=None,
                        help='iterations of each learning-rate sweep run (default: --max-iters '
                             "or the configs')")
    add_run_arguments(parser, 'work_dirs/convergence')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    configs = {row_name(path): path for path in (args.deformable_config, args.detr_config)}
    if len(configs) != 2:
        raise SystemExit('run_convergence: the deformable and DETR configs must be two rows')
    lrs = {name: values for name, values in zip(configs, (args.deformable_lrs, args.detr_lrs))
           if values}
    return run_convergence(configs, args.seeds, args.work_dir, args.data_root, args.max_iters,
                           args.val_interval, synthetic_overrides(args), args.threads,
                           not args.retrain, not args.no_progress, args.jobs,
                           args.pretrained_dir, args.pretrain_iters, args.milestones,
                           lrs, args.sweep_iters)


if __name__ == '__main__':
    main()
