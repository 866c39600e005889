"""Export a detector (tensor mode) as a torch.export program and/or an ONNX file.

Usage: python tools/export.py CONFIG CHECKPOINT --out-dir DIR [--shape H W] [--batch-size 1]
       [--format program onnx] [--opset 17] [--verify] [--device cpu] [--cfg-options ...]

Writes DIR/<config name>.pt2 (torch.export.save; the deformable attention is
the registered operator torch.ops.mmdeform.ms_deform_attn_forward: load it
after `import mmdeform.ops`) and DIR/<config name>.onnx (the op decomposed
into GridSample and standard ops; needs the `onnx` package). Input: the
normalized image (B, 3, H, W) at the exported size; outputs: logits and
boxes_cxcywh of every decoder layer. --verify runs both on a random input
and prints the largest difference from PyTorch (onnxruntime for the ONNX file).
See mmdeform.analysis.export.
"""
import argparse
import os
import os.path as osp

import torch

from mmdeform.analysis import example_inputs, export_onnx, export_program, run_onnx
from mmdeform.apis import add_model_arguments, init_detector_from_args


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Export a detector')
    add_model_arguments(parser)
    parser.add_argument('--out-dir', required=True, help='output folder')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'),
                        help='fixed input height and width')
    parser.add_argument('--batch-size', type=int, default=1, help='fixed batch size')
    parser.add_argument('--format', nargs='+', choices=('program', 'onnx'),
                        default=['program', 'onnx'])
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (>= 16)')
    parser.add_argument('--verify', action='store_true',
                        help='compare the exported outputs with PyTorch on a random input')
    args = parser.parse_args(argv)
    model = init_detector_from_args(args)
    inputs = example_inputs(tuple(args.shape), args.batch_size).to(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    name = osp.splitext(osp.basename(args.config))[0]
    with torch.no_grad():
        expected = model(inputs, None, mode='tensor')
    if 'program' in args.format:
        out_file = osp.join(args.out_dir, f'{name}.pt2')
        program = export_program(model, inputs, out_file)
        print(f'export: torch.export program -> {out_file}')
        if args.verify:
            outputs = program.module()(inputs)
            print('  max |program - pytorch|: ' + _differences(outputs, expected))
    if 'onnx' in args.format:
        out_file = export_onnx(model, inputs, osp.join(args.out_dir, f'{name}.onnx'),
                               opset_version=args.opset)
        print(f'export: ONNX (opset {args.opset}) -> {out_file}')
        if args.verify:
            outputs = run_onnx(out_file, inputs.cpu().numpy())
            print('  max |onnxruntime - pytorch|: ' + _differences(outputs, expected))


def _differences(outputs, expected) -> str:
    names = ('logits', 'boxes_cxcywh')
    return ', '.join(
        f'{name} {float((torch.as_tensor(out).cpu() - ref.cpu()).abs().max()):.2e}'
        for name, out, ref in zip(names, outputs, expected))


if __name__ == '__main__':
    main()
