"""Error of ``ms_deform_attn``'s dtype choices against the float64 reference.

Used by ``tools/ms_deform_attn_precision.py`` to justify the autocast policy
(see :mod:`mmdeform.ops.ms_deform_attn`): value read in float16 / bfloat16
while sampling locations and attention weights stay float32, against the
alternative of casting every input to the low-precision dtype.
"""
from typing import Dict, List, Sequence, Tuple

import torch

from mmdeform.ops import ms_deform_attn, ms_deform_attn_reference
from mmdeform.ops.op_inputs import make_op_inputs

# Levels of the encoder for an 800 x 1067 image (strides 8, 16, 32, 64).
ENCODER_LEVELS = ((100, 134), (50, 67), (25, 34), (13, 17))

# name -> (value dtype, locations / weights dtype); None means float32 under
# autocast in that dtype (the policy) rather than a plain cast.
POLICIES = {
    'float32': (torch.float32, torch.float32),
    'autocast bfloat16 (policy: value bf16, geometry f32)': (torch.bfloat16, None),
    'autocast float16 (policy: value f16, geometry f32)': (torch.float16, None),
    'all bfloat16 (cast everything)': (torch.bfloat16, torch.bfloat16),
    'all float16 (cast everything)': (torch.float16, torch.float16),
}


def make_encoder_inputs(levels: Sequence[Tuple[int, int]] = ENCODER_LEVELS, batch: int = 1,
                        num_query: int = 2000, heads: int = 8, channels: int = 32,
                        points: int = 4, seed: int = 0) -> tuple:
    """Float64 op inputs at the encoder's level sizes.

    Values are standard normal, locations uniform over the maps, weights a
    softmax over each head's L * P samples (as the model's).

    Returns:
        tuple: (value (N, S, M, D), spatial_shapes (L, 2), level_start_index
        (L,), sampling_locations (N, Lq, M, L, P, 2), attention_weights
        (N, Lq, M, L, P)).
    """
    return tuple(make_op_inputs(levels, n=batch, m=heads, d=channels, lq=num_query, p=points,
                                spread=(0.0, 1.0), seed=seed, value_init='normal',
                                weight_init='softmax'))


def _run(inputs: tuple, value_dtype: torch.dtype, geometry_dtype, grad_output: torch.Tensor):
    """Output and input gradients (float64) of one dtype choice."""
    value, shapes, starts, locations, weights = inputs
    if geometry_dtype is None:  # the autocast policy
        leaves = [value.float(), locations.float(), weights.float()]
    else:
        leaves = [value.to(value_dtype), locations.to(geometry_dtype),
                  weights.to(geometry_dtype)]
    leaves = [t.detach().requires_grad_() for t in leaves]
    if geometry_dtype is None:
        with torch.autocast(value.device.type, dtype=value_dtype):
            out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    else:
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_output.to(out.dtype))
    return [out.double()] + [g.double() for g in grads]


def _relative_errors(results: List[torch.Tensor],
                     reference: List[torch.Tensor]) -> List[Tuple[float, float]]:
    """(RMS, max) of each tensor's error divided by the reference's RMS."""
    errors = []
    for result, expected in zip(results, reference):
        error, rms = (result - expected).detach(), expected.detach().pow(2).mean().sqrt()
        errors.append((float(error.pow(2).mean().sqrt() / rms), float(error.abs().max() / rms)))
    return errors


def measure_policies(inputs: tuple, seed: int = 1) -> Dict[str, Dict[str, float]]:
    """Errors of every entry of :data:`POLICIES` against the float64 reference.

    Returns:
        dict: policy name -> ``out``, ``grad_value``, ``grad_locations``,
        ``grad_weights`` (each a pair: RMS and largest absolute error divided
        by the reference's RMS, for the output and the three input gradients)
        and ``location_px`` (largest rounding error of a location on the
        widest level, in pixels).
    """
    value, shapes, starts, locations, weights = inputs
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    ref_out = ms_deform_attn_reference(leaves[0], shapes, starts, leaves[1], leaves[2])
    gen = torch.Generator().manual_seed(seed)
    grad_output = torch.randn(ref_out.shape, generator=gen, dtype=torch.float64)
    reference = [ref_out] + list(torch.autograd.grad(ref_out, leaves, grad_output))
    widest = int(shapes[:, 1].max())
    report = {}
    for name, (value_dtype, geometry_dtype) in POLICIES.items():
        results = _run(inputs, value_dtype, geometry_dtype, grad_output)
        errors = _relative_errors(results, reference)
        stored = locations.to(geometry_dtype or torch.float32).double()
        report[name] = dict(zip(('out', 'grad_value', 'grad_locations', 'grad_weights'), errors),
                            location_px=float((stored - locations).abs().max() * widest))
    return report


def format_report(report: Dict[str, Dict[str, float]], header: str) -> str:
    """A Markdown table of :func:`measure_policies`' result."""
    keys = ('out', 'grad_value', 'grad_locations', 'grad_weights')
    lines = [header, '',
             '| dtypes | output | grad value | grad locations | grad weights | location '
             'rounding (px, widest level) |',
             '|---|---|---|---|---|---|']
    for name, row in report.items():
        cells = ' | '.join(f'{row[k][0]:.1e} / {row[k][1]:.1e}' for k in keys)
        lines.append(f"| {name} | {cells} | {row['location_px']:.3f} |")
    return '\n'.join(lines)
