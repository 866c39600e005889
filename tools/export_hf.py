"""Export an mmdeform Deformable DETR to a HuggingFace transformers folder.

Usage: python tools/export_hf.py CONFIG CHECKPOINT OUT_DIR [--allow-tie] [--overwrite] [--debug]

OUT_DIR receives what ``DeformableDetrForObjectDetection.from_pretrained`` and
``DeformableDetrImageProcessor.from_pretrained`` read (config.json, weights,
preprocessor_config.json), written whole (a temporary folder renamed into
place). A non-empty OUT_DIR is refused unless ``--overwrite``, which replaces
it (its files are deleted, so no earlier export's weights remain). The
checkpoint must fit CONFIG exactly. Class names come from the checkpoint's
meta or the config's test dataset. Models transformers cannot express (FPN
neck, dense or per-level attention, two-stage without refinement, ...) are
refused with the reason. Where the installed transformers ties heads that
differ in ours (5.x ties the class heads of every layer with box refinement),
the export is refused unless ``--allow-tie``, which writes layer 0's head for
every layer and says that the exported model differs. Errors are one line and
exit status 1 (``--debug``: with the traceback). Needs ``transformers``.
"""
import argparse
import sys

from mmdeform.apis import init_detector
from mmdeform.converters.hf_checks import exit_on_error
from mmdeform.converters.hf_export import export_hf
from mmdeform.fileio import check_output_folder

MISMATCH_HINT = ('. export_hf.py exports only a checkpoint that fits CONFIG exactly: give the '
                 'config it was trained with (e.g. the refine config for a refine checkpoint)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmdeform config file')
    parser.add_argument('checkpoint', help='mmdeform checkpoint')
    parser.add_argument('out_dir', help='output folder')
    parser.add_argument('--allow-tie', action='store_true',
                        help="where transformers ties heads that differ in ours, write the "
                             "source's head (the exported model then differs)")
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a non-empty OUT_DIR whole (every file in it is deleted)')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
    args = parser.parse_args()
    with exit_on_error('export_hf', args.debug):
        check_output_folder(args.out_dir, args.overwrite, inputs=(args.config, args.checkpoint))
        model = init_detector(args.config, args.checkpoint, device='cpu',
                              mismatch_hint=MISMATCH_HINT)
        classes = (model.dataset_meta or {}).get('classes')
        if classes is not None and len(classes) != model.bbox_head.num_classes:
            classes = None  # e.g. a dataset's names for a model with another class count
        differs = export_hf(model, args.out_dir, classes, overwrite=args.overwrite,
                            allow_tie=args.allow_tie)
    for line in differs:
        print(f'warning: {line}', file=sys.stderr)
    print(f'exported {args.checkpoint} -> {args.out_dir}'
          + (' (differs from the checkpoint: see the warnings)' if differs else ''))


if __name__ == '__main__':
    main()
