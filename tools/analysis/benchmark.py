"""Inference speed (images/s) of a config's detector at batch sizes 1 and 4.

Usage: python tools/analysis/benchmark.py CONFIG [--checkpoint CKPT] [--shape H W]
       [--batch-sizes 1 4] [--warmup 5] [--iters 20] [--amp bf16|fp16] [--compile]
       [--device cpu] [--cfg-options KEY=VALUE ...]

Times the forward pass in tensor mode on random inputs after warm-up passes
(see mmdeform.analysis.benchmark for exactly what is timed).
"""
import argparse

import torch

from mmdeform.analysis import benchmark_model, format_benchmark
from mmdeform.apis import add_model_arguments, init_detector_from_args


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Benchmark inference speed')
    add_model_arguments(parser, checkpoint='optional')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='input height and width')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--warmup', type=int, default=5, help='untimed passes per batch size')
    parser.add_argument('--iters', type=int, default=20, help='timed passes per batch size')
    parser.add_argument('--amp', choices=('bf16', 'fp16'), help='autocast dtype')
    parser.add_argument('--compile', action='store_true', help='time torch.compile(model)')
    args = parser.parse_args(argv)
    model = init_detector_from_args(args)
    results = benchmark_model(model, tuple(args.shape), args.batch_sizes, num_warmup=args.warmup,
                              num_iters=args.iters, amp=args.amp, compile_model=args.compile)
    header = (f'{args.config} on {args.device} ({torch.get_num_threads()} threads), input '
              f'{args.shape[0]}x{args.shape[1]}, amp={args.amp}, compile={args.compile}')
    print(format_benchmark(results, header))


if __name__ == '__main__':
    main()
