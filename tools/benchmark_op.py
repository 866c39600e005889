"""Benchmark the compiled ms_deform_attn op against the pure-PyTorch reference.

Prints, for each shape, forward and forward+backward time and peak extra
memory of both backends, and the ratios reference / compiled, all measured in
the same run (method: :mod:`mmdeform.analysis.op_benchmark`).

    python tools/benchmark_op.py                 # CPU shapes of issue 2
    python tools/benchmark_op.py --device cuda   # GPU shapes of issues 5 and 14
"""
import argparse

import torch

from mmdeform.analysis.op_benchmark import SHAPES, benchmark, print_table
from mmdeform.ops import get_backend


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--repeats', type=int, default=20,
                        help='at least this many timed calls of each backend per mode')
    parser.add_argument('--min-seconds', type=float, default=2.0,
                        help='and at least this long per shape and mode')
    parser.add_argument('--shapes', nargs='+', metavar='NAME',
                        help='only these shapes of the device (default: all)')
    parser.add_argument('--deterministic', action='store_true',
                        help='torch.use_deterministic_algorithms(True, warn_only=True): the '
                        "compiled op's deterministic backward")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    unknown = sorted(set(args.shapes or ()) - set(SHAPES[device.type]))
    if unknown:
        raise SystemExit(f'benchmark_op: unknown --shapes {unknown} for {device.type}; '
                         f'known: {sorted(SHAPES[device.type])}')
    if args.deterministic:
        # warn_only: the reference's grid_sample backward has no deterministic CUDA kernel.
        torch.use_deterministic_algorithms(True, warn_only=True)
    if get_backend(device) != 'compiled':
        raise SystemExit(f'benchmark_op: no compiled kernel for {device.type}; build the '
                         'extension first (pip install --no-build-isolation -e .)')
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'CPU, {torch.get_num_threads()} threads')
    print(f'ms_deform_attn benchmark on {name}, {args.dtype}, torch {torch.__version__}, '
          f'M=8 D=32 P=4, medians of alternating rounds'
          + (', deterministic algorithms' if args.deterministic else ''))
    rows = benchmark(device, getattr(torch, args.dtype), args.repeats, args.min_seconds,
                     args.shapes)
    print_table(rows, device)


if __name__ == '__main__':
    main()
