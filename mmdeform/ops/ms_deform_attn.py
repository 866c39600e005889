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

Dtype policy. Outside autocast, value, sampling_locations and
attention_weights must share one dtype (a clear TypeError otherwise). Under
``torch.autocast`` on value's device, ``ms_deform_attn`` reads value in the
autocast dtype (float16 / bfloat16: the op is bound by reading value, so this
halves its memory traffic) while sampling_locations and attention_weights are
taken in float32: a bfloat16 location is off by up to 0.5 px on a 256-pixel
level. Interpolation and sums run in float32, the output has the autocast
dtype (as for a linear layer under autocast). Inputs in float64 are left alone.
``tools/ms_deform_attn_precision.py`` measures the error of this policy.

Non-finite inputs follow the reference: a sample at a NaN or infinite location
makes its output row NaN (as ``F.grid_sample`` does), and the output is
``sum(weight * sampled value)`` in that order, so an infinite weight gives the
reference's inf / NaN pattern. Second-order gradients of the compiled op
raise a clear error (the reference's follow ``F.grid_sample``).
"""
import functools
import logging
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

__all__ = ['ms_deform_attn', 'ms_deform_attn_reference', 'ms_deform_attn_grid_sample',
           'get_backend', 'extension_available', 'autocast_inputs',
           'check_deterministic_backward_size']

BUILD_HINT = ('build it with `pip install --no-build-isolation -e .` in the '
              'mmdeform checkout (or `make build`)')
# torch.sort (the deterministic CUDA backward's) refuses more elements than this.
SORT_LIMIT = 2**31 - 1
_REDUCED = (torch.float16, torch.bfloat16)


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


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, float32_geometry: bool = False) -> None:
    """Checks shapes, dtypes and devices (metadata only: compile friendly).

    With ``float32_geometry`` (the autocast combination) locations and weights
    may also be float32 when value is float16 / bfloat16.
    """
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
    allowed = (value.dtype, torch.float32) if (
        float32_geometry and value.dtype in _REDUCED) else (value.dtype,)
    for name, t in (('sampling_locations', loc), ('attention_weights', attention_weights)):
        if t.dtype not in allowed or t.dtype != loc.dtype:
            raise TypeError(f'ms_deform_attn: {name} has dtype {t.dtype} but value '
                            f'has {value.dtype}; they must match (under torch.autocast '
                            'value is read in the autocast dtype and locations and '
                            'weights in float32)')
    for name, t in (('spatial_shapes', spatial_shapes),
                    ('level_start_index', level_start_index),
                    ('sampling_locations', loc),
                    ('attention_weights', attention_weights)):
        if t.device != value.device:
            raise ValueError(f'ms_deform_attn: {name} is on {t.device} but value '
                             f'is on {value.device}')


def _check_levels(value, spatial_shapes, level_start_index) -> list:
    """Checks level sizes against S (reads the tensors: eager only).

    The same checks, in the same order and words, as the kernels' host-side
    ``check_level_sizes`` (Python ints cannot overflow; the bound by S keeps
    the messages alike).
    """
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    num_value = value.shape[1]
    total = 0
    for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h <= 0 or w <= 0:
            raise ValueError(f'ms_deform_attn: spatial_shapes[{lvl}] = ({h}, {w}) '
                             'must be positive')
        if start != total:
            raise ValueError(
                f'ms_deform_attn: level_start_index[{lvl}] = {start} is inconsistent '
                f'with spatial_shapes (expected {total})')
        end = total + h * w
        if end > num_value:
            shown = end if end < 2**63 else 'more than 2^63 - 1'
            raise ValueError(f'ms_deform_attn: value has S = {num_value} tokens but '
                             f'spatial_shapes sum to {shown} by level {lvl} ({h} x {w})')
        total = end
    if total != num_value:
        raise ValueError(f'ms_deform_attn: value has S = {value.shape[1]} tokens but '
                         f'spatial_shapes sum to {total}')
    return shapes


def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: torch.Tensor,
                             level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor,
                             attention_weights: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch multi-scale deformable attention (the tests' ground truth).

    Same arguments and result as :func:`ms_deform_attn` (see the module
    docstring); built on ``F.grid_sample(align_corners=False)``. Accepts the
    compiled op's dtypes: locations and weights in value's dtype, or float32
    for a float16 / bfloat16 value (computed in float32, output in value's
    dtype). With no levels (L = 0, hence S = 0) the output is zeros, like the
    kernels'.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, float32_geometry=True)
    shapes = _check_levels(value, spatial_shapes, level_start_index)
    if not shapes:
        return _no_samples(value, sampling_locations, attention_weights)
    return ms_deform_attn_grid_sample(value, shapes, sampling_locations, attention_weights)


def _no_samples(value, sampling_locations, attention_weights):
    """The output for L = 0 (and S = 0): an empty sum, zeros of (N, Lq, M*D).

    Built from sums over the empty dimensions, which are exact zeros, so that
    the result depends on every input and backward gives (empty) gradients.
    """
    n, _, m, d = value.shape
    num_query = sampling_locations.shape[1]
    geometry = sampling_locations.sum((3, 4, 5)) + attention_weights.sum((3, 4))  # (N, Lq, M)
    out = value.sum(1)[:, None] + geometry[..., None].to(value.dtype)  # (N, Lq, M, D)
    return out.reshape(n, num_query, m * d)


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
        attention_weights (Tensor): (N, Lq, M, L, P), dtype of the locations.

    Returns:
        Tensor: (N, Lq, M*D) in value's dtype, computed in the wider of
        value's and the locations' dtypes.
    """
    n, _, m, d = value.shape
    _, num_query, _, num_levels, num_points, _ = sampling_locations.shape
    out_dtype = value.dtype
    # a float16 / bfloat16 value with float32 locations is read in float32
    value = value.to(torch.promote_types(value.dtype, sampling_locations.dtype))
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
    return out.transpose(1, 2).to(out_dtype).contiguous()


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
        Tensor: (N, Lq, M*D), heads concatenated head-major; value's dtype,
        or the autocast dtype under ``torch.autocast`` (see the module
        docstring for the dtype policy).
    """
    value, sampling_locations, attention_weights, autocast = autocast_inputs(
        value, sampling_locations, attention_weights)
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, float32_geometry=autocast)
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
    # the casts are done: grid_sample must not be recast by autocast
    with torch.autocast(value.device.type, enabled=False):
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights)


def autocast_inputs(value: torch.Tensor, sampling_locations: torch.Tensor,
                    attention_weights: torch.Tensor) -> tuple:
    """The inputs as the op reads them under the current autocast state.

    Under ``torch.autocast`` on value's device type, value is cast to the
    autocast dtype and sampling_locations / attention_weights to float32;
    otherwise (or when any of them is float64, which autocast leaves alone)
    nothing changes.

    Returns:
        tuple: (value, sampling_locations, attention_weights, autocast) with
        ``autocast`` True when the policy applied.
    """
    device_type = value.device.type
    tensors = (value, sampling_locations, attention_weights)
    if (not torch.is_autocast_enabled(device_type)
            or any(t.dtype not in (torch.float32, *_REDUCED) for t in tensors)):
        return (*tensors, False)
    low = torch.get_autocast_dtype(device_type)
    return (value.to(low), sampling_locations.to(torch.float32),
            attention_weights.to(torch.float32), True)


def check_deterministic_backward_size(sampling_locations: torch.Tensor) -> None:
    """Refuses problems too large for the deterministic CUDA backward.

    That backward sorts one entry per (sample, bilinear corner), 4 * N * Lq *
    M * L * P in all, and ``torch.sort`` refuses more than 2^31 - 1 elements.
    Reads shapes only.

    Args:
        sampling_locations (Tensor): (N, Lq, M, L, P, 2).

    Raises:
        RuntimeError: naming the count, the limit and the alternatives.
    """
    n, num_query, m, num_levels, num_points, _ = sampling_locations.shape
    entries = 4 * n * num_query * m * num_levels * num_points
    if entries > SORT_LIMIT:
        raise RuntimeError(
            f'ms_deform_attn: the deterministic CUDA backward sorts 4 * N * Lq * M * L * P '
            f'= {entries} entries (N={n}, Lq={num_query}, M={m}, L={num_levels}, '
            f"P={num_points}), more than torch.sort's limit of 2^31 - 1 = {SORT_LIMIT}. "
            'Use the default (non-deterministic, atomic) backward by turning off '
            'torch.use_deterministic_algorithms, or a smaller batch or fewer queries.')


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
        # contiguous, like the kernels' results (not empty_like of a strided input)
        return (value.new_empty(value.shape),
                sampling_locations.new_empty(sampling_locations.shape),
                attention_weights.new_empty(attention_weights.shape))

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        deterministic = torch.are_deterministic_algorithms_enabled()
        if deterministic and value.device.type == 'cuda':
            check_deterministic_backward_size(locations)
        grad_value, grad_locations, grad_weights = \
            torch.ops.mmdeform.ms_deform_attn_backward(
                value, shapes, starts, locations, weights, grad_output, deterministic)
        return grad_value, None, None, grad_locations, grad_weights

    def _double_backward(ctx, *grads):
        raise RuntimeError(
            'ms_deform_attn: second-order gradients (a backward through gradients '
            'computed with create_graph=True, e.g. gradgradcheck or a gradient '
            'penalty) are not implemented by the compiled op. Use '
            'mmdeform.ops.ms_deform_attn_reference for them.')

    torch.library.register_autograd('mmdeform::ms_deform_attn_forward', _backward,
                                    setup_context=_setup_context)
    torch.library.register_autograd('mmdeform::ms_deform_attn_backward', _double_backward)


if _EXTENSION_ERROR is None:
    _register_python_parts()
