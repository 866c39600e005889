"""Convert a HuggingFace transformers Deformable DETR checkpoint folder to mmdeform.

Usage: python tools/convert_hf_ckpt.py SRC DST_DIR [--overwrite] [--debug]

SRC is a folder written by ``DeformableDetrForObjectDetection.save_pretrained``
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``). DST_DIR
receives ``config.py`` (inheriting our config of the matching variant) and
``model.pth`` (weights + class names), for ``init_detector`` and tools/test.py.

The config keys and every tensor are checked against the model the config
describes before anything is written; DST_DIR is then written whole (a
temporary folder renamed into place). A non-empty DST_DIR is refused unless
``--overwrite``, which replaces it (its files are deleted). Errors are one
line and exit status 1 (``--debug``: with the traceback).
"""
import argparse
from pathlib import Path

from mmdeform.converters.hf import convert_hf_folder, hf_base_config_name, load_hf_config
from mmdeform.converters.hf_checks import exit_on_error

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'deformable_detr'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='transformers checkpoint folder')
    parser.add_argument('dst_dir', help='output folder for config.py and model.pth')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a non-empty DST_DIR whole (every file in it is deleted)')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
    args = parser.parse_args()
    with exit_on_error('convert_hf_ckpt', args.debug):
        config = load_hf_config(args.src)
        base = CONFIG_DIR / f'{hf_base_config_name(config)}_r50_16xb2-50e_coco.py'
        converted = convert_hf_folder(args.src, args.dst_dir, str(base), args.overwrite)
    print(f'converted {len(converted)} tensors: {args.src} -> {args.dst_dir}/model.pth, '
          f'config {args.dst_dir}/config.py (base {base.name})')


if __name__ == '__main__':
    main()
