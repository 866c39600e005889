"""The multi-scale deformable attention sampling op.

``ms_deform_attn`` is the public function. It runs the compiled operator
``torch.ops.mmdeform.ms_deform_attn_forward`` (from ``mmdeform._C``) when the
extension is built and has a kernel for the input's device, and the
pure-PyTorch ``ms_deform_attn_reference`` otherwise, with one warning that says
how to build the extension. While ``torch.onnx.export`` (TorchScript-based)
traces a model, it is the reference, so the file holds standard ONNX
operators (``GridSample``) instead of our custom one. The compiled operator
has a fake (meta) kernel and an autograd formula registered here, so
``torch.compile(fullgraph=True)`` and ``torch.export`` see a single opaque
operator instead of a graph break.

Shapes used throughout (N batch, S value tokens, M heads, D channels per head,
Lq queries, L levels, P points):

* value: (N, S, M, D), S = sum over levels of H_l * W_l
* spatial_shapes: (L, 2) int64, rows (H_l, W_l)
* level_start_index: (L,) int64, start token of each level in S
* sampling_locations: (N, Lq, M, L, P, 2), normalized (x, y); pixel i of a
  level of width W has its centre at (i + 0.5) / W; outside [0, 1] reads zeros
* attention_weights: (N, Lq, M, L, P)
* output: (N, Lq, M * D)
"""
import functools
import logging
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

__all__ = ['ms_deform_attn', 'ms_deform_attn_reference', 'ms_deform_attn_grid_sample',
           'get_backend',
           'extension_available']

BUILD_HINT = ('build it with `pip install --no-build-isolation -e .` in the '
              'mmdeform checkout (or `make build`)')


def _import_extension():
    """Import ``mmdeform._C``; returns the ImportError or None."""
    try:
        from mmdeform import _C  # noqa: F401  (registers torch.ops.mmdeform)
    except ImportError as error:
        return error
    return None


def _has_kernel(device_type: str) -> bool:
    key = {'cpu': 'CPU', 'cuda': 'CUDA'}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        'mmdeform::ms_deform_attn_forward', key)


# Resolved once at import, so that torch.compile traces a plain set lookup.
_EXTENSION_ERROR = _import_extension()
_COMPILED_DEVICE_TYPES = frozenset() if _EXTENSION_ERROR is not None else frozenset(
    device_type for device_type in ('cpu', 'cuda') if _has_kernel(device_type))


def extension_available() -> bool:
    """Whether the compiled op library ``mmdeform._C`` could be imported."""
    return _EXTENSION_ERROR is None


def get_backend(device: torch.device) -> str:
    """Name of the backend ``ms_deform_attn`` uses for tensors on ``device``.

    Returns:
        str: ``'compiled'`` or ``'reference'``.
    """
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return 'compiled' if device_type in _COMPILED_DEVICE_TYPES else 'reference'


@functools.cache
def _warn_reference_fallback(device_type: str) -> None:
    if _EXTENSION_ERROR is not None:
        reason = f'the compiled extension mmdeform._C is not importable ({_EXTENSION_ERROR})'
    else:
        reason = f'mmdeform._C was built without a {device_type} kernel'
    print_log(
        f'ms_deform_attn: {reason}; using the pure-PyTorch reference on '
        f'{device_type}, which is much slower and uses more memory. To get '
        f'the kernel, {BUILD_HINT}.', logger='current', level=logging.WARNING)


def _check_inputs(value, spatial_shapes, level_start_index,
                  sampling_locations, attention_weights) -> None:
    """Checks shapes, dtypes and devices (metadata only: compile friendly)."""
    if value.dim() != 4:
        raise ValueError(
            f'ms_deform_attn: value must be (N, S, M, D), got {tuple(value.shape)}')
    n, _, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError('ms_deform_attn: spatial_shapes must be (L, 2), got '
                         f'{tuple(spatial_shapes.shape)}')
    num_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(
            f'ms_deform_attn: level_start_index must be (L,) = ({num_levels},), '
            f'got {tuple(level_start_index.shape)}')
    for name, t in (('spatial_shapes', spatial_shapes),
                    ('level_start_index', level_start_index)):
        if t.dtype != torch.int64:
            raise TypeError(f'ms_deform_attn: {name} must be int64, got {t.dtype}')
    loc = sampling_locations
    if (loc.dim() != 6 or loc.shape[0] != n or loc.shape[2] != m
            or loc.shape[3] != num_levels or loc.shape[5] != 2):
        raise ValueError(
            'ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2) = '
            f'({n}, Lq, {m}, {num_levels}, P, 2), got {tuple(loc.shape)}')
    expected = (n, loc.shape[1], m, num_levels, loc.shape[4])
    if tuple(attention_weights.shape) != expected:
        raise ValueError(
            'ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = '
            f'{expected}, got {tuple(attention_weights.shape)}')
    if not value.is_floating_point():
        raise TypeError(f'ms_deform_attn: value must be floating point, got {value.dtype}')
    for name, t in (('sampling_locations', loc), ('attention_weights', attention_weights)):
        if t.dtype != value.dtype:
            raise TypeError(f'ms_deform_attn: {name} has dtype {t.dtype} but value '
                            f'has {value.dtype}; they must match')
    for name, t in (('spatial_shapes', spatial_shapes),
                    ('level_start_index', level_start_index),
                    ('sampling_locations', loc),
                    ('attention_weights', attention_weights)):
        if t.device != value.device:
            raise ValueError(f'ms_deform_attn: {name} is on {t.device} but value '
                             f'is on {value.device}')


def _check_levels(value, spatial_shapes, level_start_index) -> list:
    """Checks level sizes against S (reads the tensors: eager only)."""
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    total = 0
    for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h <= 0 or w <= 0:
            raise ValueError(f'ms_deform_attn: spatial_shapes[{lvl}] = ({h}, {w}) '
                             'must be positive')
        if start != total:
            raise ValueError(
                f'ms_deform_attn: level_start_index[{lvl}] = {start} is inconsistent '
                f'with spatial_shapes (expected {total})')
        total += h * w
    if total != value.shape[1]:
        raise ValueError(f'ms_deform_attn: value has S = {value.shape[1]} tokens but '
                         f'spatial_shapes sum to {total}')
    return shapes


def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: torch.Tensor,
                             level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor,
                             attention_weights: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch multi-scale deformable attention (the tests' ground truth).

    Same arguments and result as :func:`ms_deform_attn` (see the module
    docstring); built on ``F.grid_sample(align_corners=False)``.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights)
    shapes = _check_levels(value, spatial_shapes, level_start_index)
    return ms_deform_attn_grid_sample(value, shapes, sampling_locations, attention_weights)


def ms_deform_attn_grid_sample(value: torch.Tensor, level_shapes: Sequence[Tuple[int, int]],
                               sampling_locations: torch.Tensor,
                               attention_weights: torch.Tensor) -> torch.Tensor:
    """The reference computation with the level sizes given as Python ints.

    No checks and no reads of tensor values, so it traces and exports
    (``torch.export``, ONNX ``GridSample``) with static level sizes.

    Args:
        value (Tensor): (N, S, M, D), S = sum of H_l * W_l.
        level_shapes (Sequence[tuple[int, int]]): L pairs (H_l, W_l).
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalized (x, y).
        attention_weights (Tensor): (N, Lq, M, L, P).

    Returns:
        Tensor: (N, Lq, M*D).
    """
    n, _, m, d = value.shape
    _, num_query, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in level_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # [0, 1] -> grid_sample's [-1, 1]
    samples = []
    for lvl, (h, w) in enumerate(level_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        level_value = value_per_level[lvl].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_value, grid, mode='bilinear',
                                     padding_mode='zeros', align_corners=False))
    # L x (N*M, D, Lq, P) -> (N*M, D, Lq, L*P)
    sampled = torch.stack(samples, dim=-2).flatten(-2)
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(
        n * m, 1, num_query, num_levels * num_points)
    out = (sampled * weights).sum(-1).view(n, m * d, num_query)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor,
                   level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention sampling.

    Args:
        value (Tensor): (N, S, M, D) projected values of all levels.
        spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).
        level_start_index (Tensor): (L,) int64 first token of each level.
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalized (x, y).
        attention_weights (Tensor): (N, Lq, M, L, P) weights of the samples.

    Returns:
        Tensor: (N, Lq, M*D), heads concatenated head-major.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights)
    if torch.onnx.is_in_onnx_export():
        # ONNX has no such operator: the reference is written with GridSample and
        # standard ops (the level sizes it reads become constants of the graph)
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights)
    if get_backend(value.device) == 'compiled':
        return torch.ops.mmdeform.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations,
            attention_weights)
    _warn_reference_fallback(value.device.type)
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights)


def _register_python_parts() -> None:
    """Fake kernels and the autograd formula of the compiled operators."""

    @torch.library.register_fake('mmdeform::ms_deform_attn_forward')
    def _forward_fake(value, spatial_shapes, level_start_index,
                      sampling_locations, attention_weights):
        n, _, m, d = value.shape
        return value.new_empty((n, sampling_locations.shape[1], m * d))

    @torch.library.register_fake('mmdeform::ms_deform_attn_backward')
    def _backward_fake(value, spatial_shapes, level_start_index,
                       sampling_locations, attention_weights, grad_output,
                       deterministic):
        return (torch.empty_like(value), torch.empty_like(sampling_locations),
                torch.empty_like(attention_weights))

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = \
            torch.ops.mmdeform.ms_deform_attn_backward(
                value, shapes, starts, locations, weights, grad_output,
                torch.are_deterministic_algorithms_enabled())
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd('mmdeform::ms_deform_attn_forward', _backward,
                                    setup_context=_setup_context)


if _EXTENSION_ERROR is None:
    _register_python_parts()
