"""Export a detector: a ``torch.export`` program and an ONNX file.

Both take the detector in ``'tensor'`` mode: input ``inputs`` (B, 3, H, W),
the *normalized* image (the data preprocessor's output: BGR->RGB, mean/std),
un-padded, at the fixed size given at export; outputs ``logits``
(D, B, Q, K) and ``boxes_cxcywh`` (D, B, Q, 4) of every decoder layer
(normalized boxes; the last layer is the prediction).

- :func:`export_program`: ``torch.export.export``; multi-scale deformable
  attention stays one node, our registered operator
  ``torch.ops.mmdeform.ms_deform_attn_forward`` (the program runs where
  ``mmdeform.ops`` is imported). Saved with ``torch.export.save``.
- :func:`export_onnx`: the TorchScript-based exporter
  (``torch.onnx.export(dynamo=False)``, no ``onnxscript`` needed). While it
  traces, ``ms_deform_attn`` computes with its pure-PyTorch reference, so the
  attention is decomposed into ``GridSample`` and standard ONNX ops.

The model is exported as it is: the encoder carries the level sizes as
Python ints (``EncoderOutput.spatial_shapes_list``), so nothing reads them
back from a tensor. They are static in both formats; a new input size needs
a new export.
"""
import importlib.util
import warnings
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

OUTPUT_NAMES = ('logits', 'boxes_cxcywh')


class TensorModeWrapper(nn.Module):
    """``forward(inputs) = model(inputs, None, mode='tensor')``.

    Args:
        model (nn.Module): A ``DeformableDETR``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model(inputs, None, mode='tensor')


def example_inputs(input_shape: Tuple[int, int], batch_size: int = 1,
                   seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) float32 standard-normal stand-in for normalized images."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, *input_shape, generator=generator)


def _check_model(model: nn.Module) -> None:
    if model.training:
        raise ValueError('export: put the model in eval mode first (dropout)')


def export_program(model: nn.Module, inputs: torch.Tensor,
                   out_file: str = None) -> torch.export.ExportedProgram:
    """``torch.export`` the detector in tensor mode (module docstring).

    Args:
        model (nn.Module): A ``DeformableDETR`` in eval mode.
        inputs (Tensor): (B, 3, H, W) example input; B, H and W are fixed.
        out_file (str, optional): Save the program there (``.pt2``).

    Returns:
        ExportedProgram: its ``module()`` runs like the model.
    """
    _check_model(model)
    with torch.no_grad():
        program = torch.export.export(TensorModeWrapper(model), (inputs,), strict=False)
    if out_file is not None:
        torch.export.save(program, out_file)
    return program


def export_onnx(model: nn.Module, inputs: torch.Tensor, out_file: str,
                opset_version: int = 17) -> str:
    """Export the detector in tensor mode to ONNX (module docstring).

    Args:
        model (nn.Module): A ``DeformableDETR`` in eval mode.
        inputs (Tensor): (B, 3, H, W) example input; B, H and W are fixed.
        out_file (str): The ``.onnx`` file to write.
        opset_version (int): ONNX opset; ``GridSample`` needs >= 16.

    Returns:
        str: ``out_file``. Input name ``inputs``, outputs ``logits``,
        ``boxes_cxcywh``.

    Raises:
        ImportError: the ``onnx`` package (which the exporter needs) is missing.
    """
    _check_model(model)
    if importlib.util.find_spec('onnx') is None:
        raise ImportError('export_onnx needs the onnx package: pip install onnx (see '
                          'requirements/constraints.txt for the tested version)')
    if opset_version < 16:
        raise ValueError(f'export_onnx: opset_version must be >= 16 (GridSample), '
                         f'got {opset_version}')
    with torch.no_grad(), warnings.catch_warnings():
        # python ints taken from tensors become constants: intended (static sizes)
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(TensorModeWrapper(model), (inputs,), out_file, dynamo=False,
                          opset_version=opset_version, input_names=['inputs'],
                          output_names=list(OUTPUT_NAMES))
    return out_file


def run_onnx(onnx_file: str, inputs: np.ndarray) -> List[np.ndarray]:
    """Run an exported file with onnxruntime on the CPU.

    Args:
        onnx_file (str): From :func:`export_onnx`.
        inputs (np.ndarray): (B, 3, H, W) float32 at the exported size.

    Returns:
        list[np.ndarray]: ``logits``, ``boxes_cxcywh``.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError('run_onnx needs onnxruntime: pip install onnxruntime '
                          '(see requirements/constraints.txt for the tested version)') from None
    session = onnxruntime.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    return session.run(list(OUTPUT_NAMES), {'inputs': inputs})
