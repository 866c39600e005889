"""Train the ablation rows of Deformable DETR for the same budget and compare them.

Pretrains the shared backbone once (unless its file is there), trains every
row with every seed (finished runs are read back, not retrained: a stopped
table goes on where it was), prints the measured wall time and writes
``results.md`` (table, plateau gates, the paper's orderings judged, every run)
and ``curves.png`` (AP / AP_S against iteration) under ``--work-dir``. See
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
from projects.synthetic_ablations.ablations import find_rows, run_ablations  # noqa: E402
from projects.synthetic_ablations.runs import add_run_arguments, synthetic_overrides  # noqa: E402

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
                      "one evaluation interval for the whole run (default: the configs' "
                      'evaluation points, scaled with --max-iters)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    return run_ablations(find_rows(args.config_dir, args.rows), args.seeds, args.work_dir,
                         args.data_root, args.max_iters, args.val_interval,
                         synthetic_overrides(args), args.threads, not args.retrain,
                         not args.no_progress, args.jobs, args.pretrained_dir,
                         args.pretrain_iters)


if __name__ == '__main__':
    main()
