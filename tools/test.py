"""Test a checkpoint: evaluate it, dump predictions (--out), draw them (--show-dir).

Usage: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out PKL] [--show-dir DIR]
       [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

The steps are mmdeform.engine.launch.parse_test_args / build_test_cfg / test.
"""
from mmdeform.engine.launch import run_test

if __name__ == '__main__':
    run_test()
