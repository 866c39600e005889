"""The command lines of ``tools/train.py`` and ``tools/test.py`` (argparse).

What they do with the parsed arguments is :mod:`mmdeform.engine.launch`.
"""
import argparse
import os
from typing import List, Optional

from mmdeform.engine import CfgOptionsAction
from mmdeform.engine.launch import RESUME_LATEST

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='folder for logs and checkpoints (default: '
                        './work_dirs/<config file name without .py>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction, default={},
        help='override existing config entries, e.g. train_dataloader.batch_size=4 '
        "'param_scheduler.0.milestones=[8,11]'")
    parser.add_argument('--partial-load', action='store_true',
                        help='load only the checkpoint tensors whose names and shapes match '
                        'the model (default: any difference is an error); not for --resume')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher for distributed runs')
    # torch.distributed.launch passes --local-rank (or --local_rank in old versions)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def parse_train_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/train.py`` (see ``--help``)."""
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', const=RESUME_LATEST, default=None,
                        metavar='CKPT|auto',
                        help='resume from CKPT; without a value from the latest checkpoint '
                        'in the work dir (an error if there is none); "auto": from the '
                        'latest checkpoint if there is one, else from scratch')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (float16/bfloat16 on GPU, bfloat16 on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate linearly with the total batch size')
    _add_common_args(parser)
    return _export_local_rank(parser.parse_args(argv))


def parse_test_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/test.py`` (see ``--help``)."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the predictions to this .pkl file')
    parser.add_argument('--show-dir', help='write images with drawn predictions to '
                        '<work_dir>/<timestamp>/SHOW_DIR')
    _add_common_args(parser)
    return _export_local_rank(parser.parse_args(argv))


def _export_local_rank(args: argparse.Namespace) -> argparse.Namespace:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args
