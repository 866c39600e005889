"""Train a detector (optionally distributed, see tools/dist_train.sh).

Usage: python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
       [--auto-scale-lr] [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

The steps are mmdeform.engine.launch.parse_train_args / build_train_cfg / train.
"""
from mmdeform.engine.launch import run_train

if __name__ == '__main__':
    run_train()
