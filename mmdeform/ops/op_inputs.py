"""Seeded random inputs of the ``ms_deform_attn`` op: for tests on any device, the op
benchmark and the precision report (the one maker of op inputs)."""
from typing import List, Optional, Sequence, Tuple

import torch

VALUE_INITS = ('uniform', 'normal')
WEIGHT_INITS = ('uniform', 'normalized', 'softmax')


def _attention_weights(shape: Tuple[int, ...], init: str, gen: torch.Generator) -> torch.Tensor:
    """Float64 weights of ``shape`` (N, Lq, M, L, P) drawn as ``init`` says."""
    if init == 'softmax':
        logits = torch.randn(*shape[:3], shape[3] * shape[4], generator=gen, dtype=torch.float64)
        return logits.softmax(-1).view(shape)
    weights = torch.rand(shape, generator=gen, dtype=torch.float64)
    return weights / weights.sum((-1, -2), keepdim=True) if init == 'normalized' else weights



def make_op_inputs(shapes: Sequence[Tuple[int, int]], n: int = 2, m: int = 3, d: int = 5,
                   lq: int = 7, p: int = 2, dtype: torch.dtype = torch.float64,
                   spread: Tuple[float, float] = (-0.2, 1.2), seed: int = 0,
                   requires_grad: bool = False, zero_weights: bool = False,
                   device: Optional[torch.device] = None, value_init: str = 'uniform',
                   weight_init: str = 'uniform') -> List[torch.Tensor]:
    """Random op inputs; locations uniform in ``spread`` (outside [0, 1] too).

    Values are drawn in float64 and then cast, so the same seed gives the
    same inputs (rounded) in every dtype: a low-precision run can be compared
    with the float64 reference of the same call.

    Args:
        shapes: (H_l, W_l) of each level.
        n, m, d, lq, p: batch, heads, channels per head, queries, points.
        dtype: dtype of value, locations and weights.
        spread: range of the normalized sampling locations.
        seed: generator seed.
        requires_grad: make value, locations and weights leaves with gradients.
        zero_weights: set about 30 % of the attention weights to exactly 0.
        device: where the tensors go (default CPU).
        value_init: ``'uniform'`` in [0, 1) or ``'normal'`` (standard normal).
        weight_init: ``'uniform'`` in [0, 1); ``'normalized'``: uniform divided
            by each head's sum over the L * P samples; ``'softmax'``: a
            softmax of standard normal logits over them (as the model's).

    Returns:
        list[Tensor]: value (N, S, M, D), spatial_shapes (L, 2) int64,
        level_start_index (L,) int64, sampling_locations (N, Lq, M, L, P, 2),
        attention_weights (N, Lq, M, L, P).
    """
    if value_init not in VALUE_INITS or weight_init not in WEIGHT_INITS:
        raise ValueError(f'make_op_inputs: value_init must be one of {VALUE_INITS} and '
                         f'weight_init one of {WEIGHT_INITS}, got {value_init!r}, '
                         f'{weight_init!r}')
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_levels = len(shapes)
    draw = torch.randn if value_init == 'normal' else torch.rand
    value = draw(n, int(sizes.sum()), m, d, generator=gen, dtype=torch.float64)
    lo, hi = spread
    locations = torch.rand(n, lq, m, num_levels, p, 2, generator=gen,
                           dtype=torch.float64) * (hi - lo) + lo
    weights = _attention_weights((n, lq, m, num_levels, p), weight_init, gen)
    if zero_weights:
        weights[torch.rand(weights.shape, generator=gen) < 0.3] = 0
    inputs = [value.to(dtype), spatial_shapes, level_start_index, locations.to(dtype),
              weights.to(dtype)]
    inputs = [t.to(device) for t in inputs] if device is not None else inputs
    for i in (0, 3, 4):
        inputs[i].requires_grad_(requires_grad)
    return inputs
