"""Export an mmdeform Deformable DETR to a HuggingFace transformers folder.

Usage: python tools/export_hf.py CONFIG CHECKPOINT OUT_DIR [--allow-tie]

OUT_DIR receives what ``DeformableDetrForObjectDetection.from_pretrained`` and
``DeformableDetrImageProcessor.from_pretrained`` read (config.json, weights,
preprocessor_config.json). Class names come from the checkpoint's meta or the
config's test dataset. Models transformers cannot express (FPN neck, dense or
per-level attention, two-stage without refinement, ...) are refused with the
reason. Where the installed transformers ties heads that differ in ours
(5.x ties the class heads of every layer with box refinement), the export is
refused unless ``--allow-tie``, which writes layer 0's head for every layer
and says that the exported model differs. Needs ``transformers``.
"""
import argparse
import sys

from mmdeform.apis import init_detector
from mmdeform.models.hf_export import export_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmdeform config file')
    parser.add_argument('checkpoint', help='mmdeform checkpoint')
    parser.add_argument('out_dir', help='output folder')
    parser.add_argument('--allow-tie', action='store_true',
                        help="where transformers ties heads that differ in ours, write the "
                             "source's head (the exported model then differs)")
    args = parser.parse_args()
    model = init_detector(args.config, args.checkpoint, device='cpu')
    classes = (model.dataset_meta or {}).get('classes')
    if classes is not None and len(classes) != model.bbox_head.num_classes:
        classes = None  # e.g. a dataset's names for a model with another class count
    differs = export_hf(model, args.out_dir, classes, allow_tie=args.allow_tie)
    for line in differs:
        print(f'warning: {line}', file=sys.stderr)
    print(f'exported {args.checkpoint} -> {args.out_dir}'
          + (' (differs from the checkpoint: see the warnings)' if differs else ''))


if __name__ == '__main__':
    main()
