"""Convert an official Deformable DETR checkpoint to mmdeform names.

Usage: python tools/convert_official_ckpt.py SRC DST

SRC is a checkpoint of github.com/fundamentalvision/Deformable-DETR (its
``'model'`` entry is used) or a bare official state_dict; DST receives
``{'state_dict': ...}`` for ``mmengine.runner.load_checkpoint`` / ``load_from``.
"""
import argparse

from mmdeform.converters.official import convert_official_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output checkpoint for mmdeform')
    args = parser.parse_args()
    converted = convert_official_checkpoint(args.src, args.dst)
    print(f'converted {len(converted)} tensors: {args.src} -> {args.dst}')


if __name__ == '__main__':
    main()
