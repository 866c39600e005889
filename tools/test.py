"""Test a checkpoint: evaluate it, dump predictions (--out), draw them (--show-dir).

Usage: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PKL] [--show-dir DIR]
       [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

The command line is tools/launch_args.py; the steps are
mmdeform.engine.launch.build_test_cfg / test.
"""
from typing import List, Optional

from launch_args import parse_test_args

from mmdeform.engine.launch import build_test_cfg, own_process_group, test


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_test_args(argv)
    with own_process_group():
        return test(build_test_cfg(args), strict_load=not args.partial_load)


if __name__ == '__main__':
    main()
