"""Draw where deformable attention samples: the last decoder layer's cross-attention of the
best detections and the encoder's self-attention of the query at one pixel.

Usage: python tools/visualize_sampling.py IMAGE CONFIG CHECKPOINT --out-dir DIR [--topk 3]
       [--score-thr 0] [--layout levels|overlay] [--encoder-point X Y] [--encoder-level 0]
       [--encoder-layer -1] [--decoder-layer -1] [--device cpu] [--cfg-options ...]

Writes DIR/<image name>_decoder.png and DIR/<image name>_encoder.png: the
reference point (star), the M x L x P sampling points coloured by head and
sized by attention weight, one panel per feature level (or all overlaid).
See mmdeform.visualization.sampling for the pixel mapping (valid ratios).
"""
import argparse

from mmdeform.apis import add_model_arguments, init_detector_from_args, visualize_sampling


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Draw deformable attention sampling points')
    parser.add_argument('image', help='image file')
    add_model_arguments(parser)
    parser.add_argument('--out-dir', required=True, help='output folder')
    parser.add_argument('--topk', type=int, default=3, help='detections to draw')
    parser.add_argument('--score-thr', type=float, default=0.0,
                        help='smallest score of a drawn detection')
    parser.add_argument('--layout', choices=('levels', 'overlay'), default='levels',
                        help='one panel per feature level, or all levels in one')
    parser.add_argument('--encoder-point', type=float, nargs=2, metavar=('X', 'Y'),
                        help='pixel of the encoder query (default: the image centre)')
    parser.add_argument('--encoder-level', type=int, default=0,
                        help='feature level of the encoder query')
    parser.add_argument('--encoder-layer', type=int, default=-1, help='encoder layer index')
    parser.add_argument('--decoder-layer', type=int, default=-1, help='decoder layer index')
    args = parser.parse_args(argv)
    model = init_detector_from_args(args)
    files = visualize_sampling(
        model, args.image, args.out_dir, topk=args.topk, score_thr=args.score_thr,
        layout=args.layout, encoder_point=args.encoder_point,
        encoder_level=args.encoder_level, encoder_layer=args.encoder_layer,
        decoder_layer=args.decoder_layer)
    print('visualize_sampling: wrote ' + ', '.join(files))


if __name__ == '__main__':
    main()
