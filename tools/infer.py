"""Detect objects in an image or a folder of images; write drawn images and a results json.

Usage: python tools/infer.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR [--score-thr 0.3]
       [--batch-size 1] [--device cpu] [--cfg-options KEY=VALUE ...]

Writes DIR/<image name>.png (boxes, class names, scores >= --score-thr) and
DIR/results.json (per image: file, boxes_xyxy in original pixels, scores,
labels, class_names). An image that cannot be read is reported and skipped
(listed under "failed" in results.json); the exit status is then 1, after
all the other images are done. See mmdeform.apis (init_detector,
inference_detector, infer_and_save).
"""
import argparse
import sys

from mmdeform.apis import add_model_arguments, infer_and_save, init_detector_from_args, list_images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Run a detector on images')
    parser.add_argument('images', help='an image file or a folder of images')
    add_model_arguments(parser)
    parser.add_argument('--out-dir', required=True, help='output folder')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='smallest score drawn and saved')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass (same-size images only)')
    args = parser.parse_args(argv)
    files = list_images(args.images)
    model = init_detector_from_args(args)
    json_file, failed = infer_and_save(model, files, args.out_dir, score_thr=args.score_thr,
                                       batch_size=args.batch_size)
    print(f'infer: {len(files) - len(failed)} image(s) -> {args.out_dir} ({json_file})')
    if failed:
        print(f'infer: {len(failed)} of {len(files)} image(s) failed:', file=sys.stderr)
        for item in failed:
            print(f'  {item["file"]}: {item["error"]}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
