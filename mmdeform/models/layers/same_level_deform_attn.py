"""``SameLevelDeformAttn``: encoder self-attention that stays within each level."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mmdeform.ops import ms_deform_attn
from mmdeform.ops.ms_deform_attn_module import (
    MSDeformAttn,
    geometry_precision,
    offsets_to_locations,
)
from mmdeform.registry import MODELS


@MODELS.register_module()
class SameLevelDeformAttn(MSDeformAttn):
    """Deformable self-attention in which a token samples only its own level.

    The ablation "multi-scale inputs without multi-scale attention" of
    Deformable DETR (Table 2): the encoder sees all levels, but no
    information crosses levels. The queries must be the value tokens
    themselves (encoder self-attention, ``Lq == S``), so the queries of
    level l are the contiguous token range of level l. A query of level l
    gets attention weights softmaxed over the ``num_points`` samples of
    level l alone (per head) and none on any other level.

    Parameters, their names, shapes and initialization are those of
    ``MSDeformAttn`` (the offset and weight projections keep their
    ``M * L * P`` outputs; a query uses only its own level's), so checkpoints
    and parameter counts match. Outputs of other levels get no gradient.

    Cost: ``forward`` runs, for each level l, the rows of the two
    projections that belong to level l on the queries of level l only, and
    calls the op once with level l's value tokens alone (one level, P points
    per head): ``S * M * P`` samples in all, L times fewer than a
    multi-level call, and each projection evaluated once.

    Arguments are those of ``MSDeformAttn``; ``forward`` too, except that
    ``query`` must hold one query per value token, in the token order of
    ``value`` (levels concatenated).
    """

    def level_rows(self, level: int, per_row: int) -> slice:
        """Output rows of a projection that belong to one level, per head.

        Args:
            level (int): Level index l.
            per_row (int): Outputs per (head, level, point): 2 for offsets,
                1 for attention weights.

        Returns:
            slice: columns of level l in a projection's output viewed as
            (M, L * P * per_row).
        """
        width = self.num_points * per_row
        return slice(level * width, (level + 1) * width)

    def level_linear(self, linear: torch.nn.Linear, query: torch.Tensor, level: int,
                     per_row: int) -> torch.Tensor:
        """Level l's outputs of ``linear`` (layout (M, L, P, per_row)).

        Args:
            linear (nn.Linear): ``sampling_offsets`` or ``attention_weights``.
            query (Tensor): (N, Q, C) queries of level l.
            level (int): Level index l.
            per_row (int): 2 for offsets, 1 for attention weights.

        Returns:
            Tensor: (N, Q, M, P * per_row), the rows of level l only.
        """
        m, dims = self.num_heads, self.embed_dims
        cols = self.level_rows(level, per_row)
        # (M*L*P*k, C) -> (M, L*P*k, C) -> level l's (M*P*k, C)
        weight = linear.weight.view(m, -1, dims)[:, cols].reshape(-1, dims)
        bias = linear.bias.view(m, -1)[:, cols].reshape(-1)
        return F.linear(query, weight, bias).view(*query.shape[:2], m, -1)

    def level_sampling(self, query: torch.Tensor, reference_points: torch.Tensor,
                       level: int, spatial_shape: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations and weights of level l's queries on level l.

        Args:
            query (Tensor): (N, Q, C) the queries of level l.
            reference_points (Tensor): (N, Q, 1, 2|4) their reference points
                on level l.
            level (int): Level index l.
            spatial_shape (Tensor): (1, 2) int64 row (H_l, W_l).

        Returns:
            tuple[Tensor, Tensor]: locations (N, Q, M, 1, P, 2) normalized
            (x, y) and weights (N, Q, M, 1, P) softmaxed over the P points.
        """
        n, num_query, _ = query.shape
        m, p = self.num_heads, self.num_points
        offsets = self.level_linear(self.sampling_offsets, query, level, 2)
        offsets = offsets.view(n, num_query, m, 1, p, 2)
        logits = self.level_linear(self.attention_weights, query, level, 1)
        # under autocast: float32 geometry, as in MSDeformAttn
        offsets, logits, reference_points = geometry_precision(offsets, logits, reference_points)
        weights = logits.softmax(-1).view(n, num_query, m, 1, p)
        return offsets_to_locations(reference_points, offsets, spatial_shape), weights

    def check_tokens(self, num_query: int, shapes: Sequence[Tuple[int, int]]) -> None:
        """Raise unless there is one query per token of the L levels."""
        if len(shapes) != self.num_levels:
            raise ValueError(f'SameLevelDeformAttn: built for {self.num_levels} levels but '
                             f'spatial_shapes has {len(shapes)} rows')
        num_tokens = sum(h * w for h, w in shapes)
        if num_query != num_tokens:
            raise ValueError(
                'SameLevelDeformAttn: the queries must be the value tokens themselves '
                f'(encoder self-attention): query has Lq={num_query} rows but '
                f'spatial_shapes {[list(s) for s in shapes]} give S={num_tokens} tokens')

    def sampling(self, query: torch.Tensor, reference_points: torch.Tensor,
                 spatial_shapes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """All-level view of the sampling (for inspection; ``forward`` does not use it).

        Args:
            query (Tensor): (N, S, C) one query per value token (position
                embedding included), levels concatenated.
            reference_points (Tensor): (N, S, L, 2|4) as in ``MSDeformAttn``.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).

        Returns:
            tuple[Tensor, Tensor]: locations (N, S, M, L, P, 2) normalized
            (x, y) as in ``MSDeformAttn``, and weights (N, S, M, L, P) that
            sum to 1 over the P points of the query's own level and are 0 on
            the other levels.
        """
        n, num_query, _ = query.shape
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        self.check_tokens(num_query, shapes)
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(n, num_query, m, lv, p, 2)
        # softmax over the P points of each level separately
        weights = self.attention_weights(query).view(n, num_query, m, lv, p).softmax(-1)
        levels = torch.repeat_interleave(torch.arange(lv, device=query.device),
                                         torch.tensor([h * w for h, w in shapes],
                                                      device=query.device))
        # (S,) -> (S, L) one-hot of each query's own level
        own_level = F.one_hot(levels, lv).to(weights.dtype)
        # (N, S, M, L, P) * (1, S, 1, L, 1)
        weights = weights * own_level[None, :, None, :, None]
        return offsets_to_locations(reference_points, offsets, spatial_shapes), weights

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor,
                value: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor,
                value_padding_mask: Optional[torch.Tensor] = None,
                spatial_shapes_list: Optional[List[Tuple[int, int]]] = None) -> torch.Tensor:
        """Attend from each token to its own level only, one op call per level.

        Args:
            query (Tensor): (N, S, C) one query per value token (position
                embedding included), levels concatenated as in ``value``.
            reference_points (Tensor): (N, S, L, 2) points or (N, S, L, 4)
                boxes; a query of level l uses its level-l entry.
            value (Tensor): (N, S, C) flattened features of all levels.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).
            level_start_index (Tensor): (L,) int64 first token of each level
                (the tokens are taken as contiguous in level order).
            value_padding_mask (Tensor, optional): (N, S) bool, True = padding.
            spatial_shapes_list (list[tuple[int, int]], optional): the L
                pairs as Python ints; read from ``spatial_shapes`` when absent.

        Returns:
            Tensor: (N, S, C).
        """
        shapes = spatial_shapes_list
        if shapes is None:
            shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        self.check_tokens(query.shape[1], shapes)
        value = self.project_value(value, value_padding_mask)  # (N, S, M, D)
        start_index = level_start_index.new_zeros(1)
        # one split per tensor (its backward is one concatenation, not L full-size sums)
        counts = [height * width for height, width in shapes]
        per_level = zip(query.split(counts, 1), reference_points.split(counts, 1),
                        value.split(counts, 1))
        outs = []
        for level, (level_query, level_ref, level_value) in enumerate(per_level):
            spatial_shape = spatial_shapes[level:level + 1]
            # (N, S_l, L, 2|4) -> (N, S_l, 1, 2|4): the reference point on its own level
            locations, weights = self.level_sampling(
                level_query, level_ref[:, :, level:level + 1], level, spatial_shape)
            outs.append(ms_deform_attn(level_value, spatial_shape, start_index, locations,
                                       weights))
        # L x (N, S_l, M*D) -> (N, S, M*D)
        return self.output_proj(torch.cat(outs, dim=1))
