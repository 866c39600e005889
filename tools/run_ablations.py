"""Train the ablation rows of Deformable DETR for the same budget and compare them.

Writes ``results.md`` (table, the paper's orderings checked, every run) and
``curves.png`` (AP / AP_S against iteration) under ``--work-dir``. See
:mod:`mmdeform.analysis.ablations` and ``python tools/run_ablations.py --help``.
"""
import argparse
import os
from pathlib import Path
from typing import List, Optional

# OpenMP threads that wait for work sleep instead of spinning (see tools/demo.py).
# Must be set before torch loads; the runs' processes inherit it.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from mmdeform.analysis.ablations import find_rows, run_ablations  # noqa: E402

DEFAULT_CONFIG_DIR = str(Path(__file__).resolve().parents[1] / 'configs' / 'synthetic'
                         / 'ablations')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train the ablation rows of Deformable DETR on synthetic shapes for the '
                    'same budget; write results.md and curves.png.')
    parser.add_argument('--config-dir', default=DEFAULT_CONFIG_DIR,
                        help='folder of row configs (one per row)')
    parser.add_argument('--rows', nargs='+', default=None,
                        help='only these rows (name or variant, e.g. ss-k1 ms-attn-k4)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--max-iters', type=int, default=None,
                        help="iterations of every run (default: the configs')")
    parser.add_argument('--val-interval', type=int, default=None)
    parser.add_argument('--work-dir', default='work_dirs/ablations')
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
    return run_ablations(find_rows(args.config_dir, args.rows), args.seeds, args.work_dir,
                         args.data_root, args.max_iters, args.val_interval, overrides or None,
                         args.threads, args.resume, not args.no_progress)


if __name__ == '__main__':
    main()
