"""``make demo``: generate the synthetic shapes data, train, evaluate, plot.

Ends with ``demo: bbox mAP=<value> in <seconds> s; outputs in <dir>``. See
:mod:`projects.synthetic_ablations.experiment` and ``python tools/demo.py --help``.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

# OpenMP threads that wait for work sleep instead of spinning. On a busy
# 2-core machine spinning threads make each step up to ~2x slower; on an
# idle one sleeping costs a few percent. Must be set before torch loads.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# projects/ is imported from the checkout (it is not part of the installed package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from projects.synthetic_ablations import DEMO_CONFIG  # noqa: E402
from projects.synthetic_ablations.experiment import run_demo  # noqa: E402

DEFAULT_CONFIG = str(DEMO_CONFIG)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train and evaluate the small Deformable DETR on synthetic shapes.')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='demo config file')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='output folder')
    parser.add_argument('--data-root', default='data/synthetic',
                        help='dataset folder (generated when missing)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--iters', type=int, default=None,
                        help="training iterations (default: the config's)")
    parser.add_argument('--val-interval', type=int, default=None)
    parser.add_argument('--max-train-minutes', type=float, default=None,
                        help='stop training after this many minutes, then evaluate')
    parser.add_argument('--num-train', type=int, default=None,
                        help="synthetic training images (default: the config's)")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--tensorboard', action='store_true',
                        help='also write TensorBoard logs (needs the tensorboard package)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    overrides = {} if args.num_train is None else dict(num_train=args.num_train)
    return run_demo(args.config, args.work_dir, args.data_root, args.seed, args.iters,
                    args.val_interval, args.max_train_minutes, overrides, args.threads,
                    not args.no_progress, args.tensorboard)


if __name__ == '__main__':
    main()
