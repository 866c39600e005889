"""Error of ms_deform_attn's dtype policy under autocast against float64.

Usage: python tools/ms_deform_attn_precision.py [--queries 2000] [--batch 1]

Runs the op at the encoder's level sizes for an 800 x 1067 image (100x134,
50x67, 25x34, 13x17; M=8, D=32, P=4) on the CPU with a reduced number of
queries, and prints, for float32, the autocast policy (value in bfloat16 /
float16, locations and weights in float32) and for casting every input to
bfloat16 / float16, the largest error of the output and of the three input
gradients relative to the float64 reference's RMS (RMS error / largest error). See
mmdeform.analysis.op_precision.
"""
import argparse

from mmdeform.analysis.op_precision import format_report, make_encoder_inputs, measure_policies


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--queries', type=int, default=2000, help='queries Lq (default 2000)')
    parser.add_argument('--batch', type=int, default=1, help='batch size N (default 1)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    inputs = make_encoder_inputs(batch=args.batch, num_query=args.queries, seed=args.seed)
    report = measure_policies(inputs)
    print(format_report(report, f'ms_deform_attn vs float64 reference, encoder levels '
                                f'100x134 50x67 25x34 13x17, N={args.batch}, '
                                f'Lq={args.queries}, M=8, D=32, P=4; RMS error / largest error, '
                                f'both relative to the reference RMS'))


if __name__ == '__main__':
    main()
