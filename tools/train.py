"""Train a detector (optionally distributed, see tools/dist_train.sh).

Usage: python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
       [--auto-scale-lr] [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

The command line is tools/launch_args.py; the steps are
mmdeform.engine.launch.build_train_cfg / train, inside own_process_group (a
process group started here is destroyed before the script returns).
"""
from typing import List, Optional

from launch_args import parse_train_args

from mmdeform.engine.launch import build_train_cfg, own_process_group, train


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_train_args(argv)
    with own_process_group():
        train(build_train_cfg(args), strict_load=not args.partial_load)


if __name__ == '__main__':
    main()
