"""Parameters and FLOPs of a detector, the deformable attention op included.

Counting uses ``torch.utils.flop_counter.FlopCounterMode`` on fake tensors
(shapes only: nothing is computed, so the full model at 800x1333 takes a few
seconds). Its conventions, kept here:

- a multiply-add is **2 FLOPs** (matmul ``2*M*N*K``, convolutions likewise);
- only the ops with a formula count: convolutions, matmuls (``addmm``,
  ``bmm``, ...), attention kernels and, through a formula registered with
  ``custom_mapping``, our ``torch.ops.mmdeform.ms_deform_attn_forward``.
  Element-wise ops, normalizations, softmax, activations, pooling and the
  sampling offsets' arithmetic are not counted (as in fvcore / detectron2's
  counters, which the paper's numbers come from).

The op's formula (:func:`ms_deform_attn_flop`): per sample (query, head,
level, point) and channel, bilinear interpolation reads 4 corners and
multiply-adds each with its corner weight (4 x 2 FLOPs), then the result is
multiplied by the attention weight and added to the output (2 FLOPs):
``10 * N * Lq * M * L * P * D``. The 4 corner weights per sample (a dozen
FLOPs, shared by the D channels) are not counted.
"""
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmdeform.ops import get_backend

FLOPS_PER_SAMPLE_CHANNEL = 10  # 4 corners x (multiply + add) + weight multiply + accumulate
OP_NAME = 'mmdeform.ms_deform_attn_forward'


def ms_deform_attn_flop(value_shape, spatial_shapes_shape, level_start_index_shape,
                        sampling_locations_shape, attention_weights_shape,
                        out_shape=None, **kwargs) -> int:
    """FLOPs of one ``ms_deform_attn_forward`` call (module docstring).

    Args:
        value_shape: (N, S, M, D).
        sampling_locations_shape: (N, Lq, M, L, P, 2).
        Others: unused (FlopCounterMode passes every argument's shape).

    Returns:
        int: ``10 * N * Lq * M * L * P * D``.
    """
    n, num_query, heads, levels, points, _ = sampling_locations_shape
    return FLOPS_PER_SAMPLE_CHANNEL * n * num_query * heads * levels * points * value_shape[-1]


@dataclass
class FlopReport:
    """FLOPs of one forward pass in tensor mode.

    Attributes:
        input_shape (tuple): (B, 3, H, W) counted input.
        total (int): All counted FLOPs (2 per multiply-add).
        by_module (dict[str, int]): Per top-level child (backbone, neck,
            encoder, ...).
        by_op (dict[str, int]): Per operator (``aten.convolution``, ...,
            ``mmdeform.ms_deform_attn_forward``).
        params (int): Number of parameters.
    """
    input_shape: Tuple[int, ...]
    total: int
    by_module: Dict[str, int] = field(default_factory=dict)
    by_op: Dict[str, int] = field(default_factory=dict)
    params: int = 0


def count_flops(model: torch.nn.Module, input_shape: Tuple[int, int] = (800, 1333),
                batch_size: int = 1) -> FlopReport:
    """Count the FLOPs of ``model(inputs, None, mode='tensor')``.

    Args:
        model (nn.Module): A ``DeformableDETR`` (eval mode is set and restored).
        input_shape (tuple[int, int]): (H, W) of the un-padded input.
        batch_size (int): B.

    Returns:
        FlopReport: The counts.

    Raises:
        RuntimeError: the compiled op is not available on the model's
            device (the pure-PyTorch reference has no formula here).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = next(model.parameters()).device
    if get_backend(device) != 'compiled':
        raise RuntimeError('count_flops needs the compiled ms_deform_attn op (mmdeform._C) on '
                           f'{device}; build it with `pip install --no-build-isolation -e .`')
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.mmdeform.ms_deform_attn_forward: ms_deform_attn_flop})
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval().requires_grad_(False)
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            inputs = torch.empty(batch_size, 3, *input_shape, device=device)
            with counter:
                model(inputs, None, mode='tensor')
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {name[len(root) + 1:]: sum(ops.values()) for name, ops in counts.items()
                 if name.startswith(root + '.') and name.count('.') == 1}
    by_op = {str(op): int(flops) for op, flops in counts.get('Global', {}).items()}
    return FlopReport(input_shape=(batch_size, 3, *input_shape),
                      total=int(counter.get_total_flops()), by_module=by_module, by_op=by_op,
                      params=sum(p.numel() for p in model.parameters()))


def format_flop_report(report: FlopReport, paper_gflops: float = None) -> str:
    """Human-readable table of a :class:`FlopReport` (GFLOPs, M params)."""
    lines = [f'input {report.input_shape}',
             f'params: {report.params / 1e6:.2f} M',
             f'FLOPs:  {report.total / 1e9:.1f} G (2 FLOPs per multiply-add; '
             f'{report.total / 2e9:.1f} G multiply-adds)']
    lines += [f'  {name:<16} {flops / 1e9:9.2f} G' for name, flops in report.by_module.items()]
    lines.append('by operator:')
    lines += [f'  {name:<32} {flops / 1e9:9.2f} G'
              for name, flops in sorted(report.by_op.items(), key=lambda kv: -kv[1])]
    if paper_gflops is not None:
        lines.append(f'paper: {paper_gflops:g} GFLOPs (multiply-adds, averaged over the first '
                     f'100 COCO val2017 images, not a fixed 800x1333 input); ours in the same '
                     f'unit: {report.total / 2e9:.1f} G')
    return '\n'.join(lines)
