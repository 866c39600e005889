"""Train the ablation rows of Deformable DETR for the same budget and compare them.

Writes ``results.md`` (table, the paper's orderings checked, every run) and
``curves.png`` (AP / AP_S against iteration) under ``--work-dir``. See
:mod:`projects.synthetic_ablations.ablations` and ``python tools/run_ablations.py --help``.
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

from projects.synthetic_ablations import ABLATION_DIR  # noqa: E402
from projects.synthetic_ablations.ablations import (  # noqa: E402
    add_run_arguments,
    find_rows,
    run_ablations,
    synthetic_overrides,
)

DEFAULT_CONFIG_DIR = str(ABLATION_DIR)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train the ablation rows of Deformable DETR on synthetic shapes for the '
                    'same budget; write results.md and curves.png.')
    parser.add_argument('--config-dir', default=DEFAULT_CONFIG_DIR,
                        help='folder of row configs (one per row)')
    parser.add_argument('--rows', nargs='+', default=None,
                        help='only these rows (name or variant, e.g. ss-k1 ms-attn-k4)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    add_run_arguments(parser, 'work_dirs/ablations',
                      "evaluation interval (default: the configs', or a quarter of "
                      '--max-iters when it is given)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    return run_ablations(find_rows(args.config_dir, args.rows), args.seeds, args.work_dir,
                         args.data_root, args.max_iters, args.val_interval,
                         synthetic_overrides(args), args.threads, args.resume, not args.no_progress,
                         args.jobs)


if __name__ == '__main__':
    main()
