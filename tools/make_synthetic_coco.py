"""Write the synthetic shapes dataset in COCO format.

Usage: python tools/make_synthetic_coco.py OUT_DIR [--num-train N] [--num-val N]
       [--image-size S] [--seed K] [--ext png|jpg] [--max-objects M]
       [--min-object-size PX] [--max-object-fraction F] [--size-class-fractions S M L]
"""
import argparse
import time
from typing import List, Optional

from mmdeform.datasets.synthetic import make_synthetic_coco


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description='Write the synthetic shapes COCO dataset.')
    parser.add_argument('out_dir')
    parser.add_argument('--num-train', type=int, default=2000)
    parser.add_argument('--num-val', type=int, default=200)
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--ext', choices=('png', 'jpg'), default='png')
    parser.add_argument('--max-objects', type=int, default=5)
    parser.add_argument('--min-object-size', type=float, default=8,
                        help='smallest object side in pixels')
    parser.add_argument('--max-object-fraction', type=float, default=0.5,
                        help='largest object side as a fraction of the image side')
    parser.add_argument('--size-class-fractions', type=float, nargs=3, default=None,
                        metavar=('SMALL', 'MEDIUM', 'LARGE'),
                        help='draw each object\'s COCO size class first with these shares '
                             '(e.g. 0.41 0.34 0.25); default: uniform sides')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = make_synthetic_coco(args.out_dir, args.num_train, args.num_val, args.image_size,
                                  args.seed, args.ext, min_object_size=args.min_object_size,
                                  max_object_fraction=args.max_object_fraction,
                                  max_objects=args.max_objects,
                                  size_class_fractions=args.size_class_fractions)
    print(f'\nwrote {args.out_dir} in {time.perf_counter() - start:.1f} s')
    for split, stats in summary.items():
        print(f'  {split}: {stats}')
    return summary


if __name__ == '__main__':
    main()
