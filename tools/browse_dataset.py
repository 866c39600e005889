"""Write dataset samples as the model sees them (after the pipeline) with their gt boxes.

Usage: python tools/browse_dataset.py CONFIG [--output-dir DIR] [--num N]
       [--phase train|val|test] [--cfg-options KEY=VALUE ...]

Writes DIR/<index>_<image name>.png for the first N samples of the phase's
dataset (default: ./work_dirs/browse_<phase>/, 10 samples of 'train').
See mmdeform.visualization.browse_dataset.
"""
import argparse
import os.path as osp

from mmengine.config import Config

from mmdeform.engine import CfgOptionsAction, apply_cfg_options
from mmdeform.visualization import browse_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Browse a dataset after its pipeline')
    parser.add_argument('config', help='config file')
    parser.add_argument('--output-dir', help='output folder')
    parser.add_argument('--num', type=int, default=10, help='number of samples')
    parser.add_argument('--phase', choices=('train', 'val', 'test'), default='train')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default={},
                        help='override existing config entries')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config file {args.config} does not exist')
    cfg = Config.fromfile(args.config)
    apply_cfg_options(cfg, args.cfg_options)
    output_dir = args.output_dir or osp.join('work_dirs', f'browse_{args.phase}')
    files = browse_dataset(cfg, output_dir, num=args.num, phase=args.phase)
    print(f'browse_dataset: {len(files)} image(s) -> {output_dir}')


if __name__ == '__main__':
    main()
