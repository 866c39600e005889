"""``MSDeformAttn``: the multi-scale deformable attention layer."""
import math
import warnings
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import nn

from mmdeform.registry import MODELS

from .ms_deform_attn import ms_deform_attn


def geometry_precision(*tensors: torch.Tensor) -> tuple:
    """Under autocast, cast predicted geometry (offsets, weights, references) to float32.

    The projections' 16-bit outputs become float32 (float64 stays float64);
    outside autocast the tensors are returned as they are.
    """
    if not torch.is_autocast_enabled(tensors[0].device.type):
        return tensors
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def marks_padding(padding_mask: Optional[torch.Tensor]) -> bool:
    """Whether ``padding_mask`` has to be applied: False for None or, in eager mode on
    the CPU, for a mask without a True entry (a batch of equal-size images).

    Skipping the all-False mask saves a copy of the values and of their gradient
    in every attention layer. On other devices (reading the mask would wait for
    the device) and while tracing, exporting or compiling (the graph must mask
    whatever the input; such runs see tensor subclasses such as fake tensors,
    or set the tracing / compiling flags) the mask is always applied.
    """
    if padding_mask is None:
        return False
    if (type(padding_mask) is not torch.Tensor or padding_mask.device.type != 'cpu'
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return True
    return bool(padding_mask.any())


def offsets_to_locations(reference_points: torch.Tensor, offsets: torch.Tensor,
                         spatial_shapes: torch.Tensor) -> torch.Tensor:
    """Sampling locations from reference points and predicted offsets.

    Args:
        reference_points (Tensor): (N, Lq, L, 2) normalized (x, y) points, or
            (N, Lq, L, 4) normalized (cx, cy, w, h) boxes.
        offsets (Tensor): (N, Lq, M, L, P, 2) offsets: pixels of each level
            for points, units of half the box size / P for boxes.
        spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l) of the same L
            levels (used for points only).

    Returns:
        Tensor: (N, Lq, M, L, P, 2) normalized (x, y) locations.
    """
    # Per-query terms are spread over the L * P * 2 innermost values and broadcast over
    # the heads only: an elementwise op whose innermost broadcast dimension has 2 values
    # is several times slower on the CPU (same arithmetic, same order, same bits).
    n, num_query, m, lv, p, _ = offsets.shape
    flat = offsets.reshape(n, num_query, m, lv * p * 2)

    def per_point(t: torch.Tensor) -> torch.Tensor:  # (N, Lq, L, 2) -> (N, Lq, 1, L*P*2)
        return t[:, :, :, None, :].expand(n, num_query, lv, p, 2).reshape(
            n, num_query, 1, lv * p * 2)

    if reference_points.shape[-1] == 2:
        # offsets are in pixels of each level: divide by (W_l, H_l)
        normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1)
        normalizer = normalizer.to(offsets.dtype)[:, None, :].expand(lv, p, 2).reshape(-1)
        locations = per_point(reference_points) + flat / normalizer
    else:
        # offsets are in units of half the box size per point
        locations = (per_point(reference_points[..., :2])
                     + flat / p * per_point(reference_points[..., 2:]) * 0.5)
    return locations.view(n, num_query, m, lv, p, 2)


@MODELS.register_module()
class MSDeformAttn(BaseModule):
    """Multi-scale deformable attention (Zhu et al., 2020, Eq. 2).

    Each query predicts, from its own feature, ``num_heads * num_levels * num_points``
    sampling offsets around its reference point and as many attention weights
    (softmax over the ``num_levels * num_points`` samples of each head). Values are
    read by bilinear interpolation; there is no query-key product.

    Under ``torch.autocast`` the projections run in the autocast dtype, and the
    sampling geometry is then formed in float32: offsets and attention logits
    are taken to float32 before they are added to the reference points and
    softmaxed (as CUDA autocast does for softmax), so the op reads value in
    the autocast dtype and locations / weights in float32 (the policy of
    :func:`~mmdeform.ops.ms_deform_attn`). The output has the autocast dtype.
    Outside autocast every tensor keeps the module's dtype.

    Args:
        embed_dims (int): Channels of queries, values and output. The argument
            names are those of mmcv's ``MultiScaleDeformableAttention``.
        num_heads (int): Attention heads M. ``embed_dims`` must be divisible by it.
        num_levels (int): Feature levels L.
        num_points (int): Sampling points P per head and level.
        init_cfg (dict, optional): mmengine initialization config.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads != 0:
            raise ValueError(f'MSDeformAttn: embed_dims ({embed_dims}) must be divisible by '
                             f'num_heads ({num_heads})')
        head_dim = embed_dims // num_heads
        if head_dim & (head_dim - 1) != 0:
            warnings.warn(
                f'MSDeformAttn: embed_dims / num_heads = {head_dim} is not a power of two; '
                'the CUDA kernel is most efficient with power-of-two head sizes.',
                stacklevel=2)
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def init_weights(self) -> None:
        """The paper's initialization, then ``init_cfg`` (if any) on top.

        Every call gives the same weights: mmengine applies an ``init_cfg``
        once per module, so it is re-armed after the paper's init resets them.
        """
        self.reset_parameters()
        if self.init_cfg:
            self._is_init = False
            super().init_weights()

    def reset_parameters(self) -> None:
        """The initialization of the paper's code.

        Offsets start on a ring: head ``m`` points in direction ``2*pi*m/M``
        (scaled so the larger of |cos|, |sin| is 1), point ``p`` at distance
        ``p + 1``, the same for every level. Attention weights start uniform
        (zero projection), value/output projections are Xavier-uniform.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        # (M, 1, 1, 2) * (1, 1, P, 1) -> (M, L, P, 2), the bias' layout
        bias = directions[:, None, None, :] * scale[None, None, :, None]
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def project_value(self, value: torch.Tensor,
                      value_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Project the value tokens, zero the padded ones and split the heads.

        Args:
            value (Tensor): (N, S, C) flattened features of all levels.
            value_padding_mask (Tensor, optional): (N, S) bool, True = padding.

        Returns:
            Tensor: (N, S, M, C / M).
        """
        n, num_value, _ = value.shape
        value = self.value_proj(value)
        if marks_padding(value_padding_mask):
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        return value.view(n, num_value, self.num_heads, self.embed_dims // self.num_heads)

    def sampling(self, query: torch.Tensor, reference_points: torch.Tensor,
                 spatial_shapes: torch.Tensor) -> tuple:
        """Sampling locations and attention weights predicted by the queries.

        Args:
            query (Tensor): (N, Lq, C) queries (position embedding included).
            reference_points (Tensor): (N, Lq, L, 2) normalized (x, y) points,
                or (N, Lq, L, 4) normalized (cx, cy, w, h) boxes.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).

        Returns:
            tuple[Tensor, Tensor]: locations (N, Lq, M, L, P, 2) normalized
            (x, y) and weights (N, Lq, M, L, P), softmaxed over L*P per head.
        """
        n, num_query, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        if spatial_shapes.shape[0] != lv:
            raise ValueError(f'MSDeformAttn: built for {lv} levels but spatial_shapes '
                             f'has {spatial_shapes.shape[0]} rows')
        if reference_points.shape[:3] != (n, num_query, lv) or \
                reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                'MSDeformAttn: reference_points must be (N, Lq, L, 2 or 4) = '
                f'({n}, {num_query}, {lv}, 2|4), got {tuple(reference_points.shape)}')
        offsets = self.sampling_offsets(query).view(n, num_query, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, num_query, m, lv * p)
        offsets, weights, reference_points = geometry_precision(offsets, weights,
                                                                reference_points)
        weights = weights.softmax(-1).view(n, num_query, m, lv, p)
        return offsets_to_locations(reference_points, offsets, spatial_shapes), weights

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor,
                value: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor,
                value_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend from ``query`` to the multi-scale ``value`` tokens.

        Args:
            query (Tensor): (N, Lq, C) queries (position embedding included).
            reference_points (Tensor): (N, Lq, L, 2) points or (N, Lq, L, 4)
                boxes, normalized to each level's valid region.
            value (Tensor): (N, S, C) flattened features of all levels.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).
            level_start_index (Tensor): (L,) int64 first token of each level.
            value_padding_mask (Tensor, optional): (N, S) bool, True = padding;
                padded values are zeroed before sampling.

        Returns:
            Tensor: (N, Lq, C).
        """
        value = self.project_value(value, value_padding_mask)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)
