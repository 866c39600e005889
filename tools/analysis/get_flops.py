"""Parameters and FLOPs of a config's detector at a fixed input size (deformable op included).

Usage: python tools/analysis/get_flops.py CONFIG [--shape H W] [--batch-size B]
       [--device cpu] [--cfg-options KEY=VALUE ...]

Counts one forward pass in tensor mode at --shape (default 800 1333) with
torch's FlopCounterMode on fake tensors (nothing is computed), 2 FLOPs per
multiply-add, the multi-scale deformable attention op by its own formula
(see mmdeform.analysis.flops). For the paper's configs, prints the paper's
number beside ours in its unit (multiply-adds).
"""
import argparse
import os.path as osp

from mmdeform.analysis import count_flops, format_flop_report
from mmdeform.apis import add_model_arguments, init_detector_from_args

# Table 1 of the paper (and the official README): GFLOPs of the ResNet-50 models, counted
# in multiply-adds by detectron2's flop counter, averaged over the first 100 COCO val2017
# images (each resized to shorter side 800, longer <= 1333).
PAPER_GFLOPS = {
    'deformable-detr_r50_16xb2-50e_coco.py': 173.0,
    'deformable-detr-refine_r50_16xb2-50e_coco.py': 173.0,
    'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py': 173.0,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Count parameters and FLOPs')
    add_model_arguments(parser, checkpoint='optional')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='input height and width')
    parser.add_argument('--batch-size', type=int, default=1)
    args = parser.parse_args(argv)
    model = init_detector_from_args(args)
    report = count_flops(model, tuple(args.shape), batch_size=args.batch_size)
    print(format_flop_report(report, PAPER_GFLOPS.get(osp.basename(args.config))))


if __name__ == '__main__':
    main()
