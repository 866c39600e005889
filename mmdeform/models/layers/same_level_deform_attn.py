"""``SameLevelDeformAttn``: encoder self-attention that stays within each level."""
from typing import Tuple

import torch

from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS


@MODELS.register_module()
class SameLevelDeformAttn(MSDeformAttn):
    """Deformable self-attention in which a token samples only its own level.

    The ablation "multi-scale inputs without multi-scale attention" of
    Deformable DETR (Table 2): the encoder sees all levels, but no
    information crosses levels. The queries must be the value tokens
    themselves (encoder self-attention, ``Lq == S``), so the level of each
    query is known from ``spatial_shapes``. A query of level l gets
    attention weights softmaxed over the ``num_points`` samples of level l
    alone (per head) and weight exactly zero on every other level.

    Parameters, their names, shapes and initialization are those of
    ``MSDeformAttn`` (the offset and weight projections keep their
    ``M * L * P`` outputs; a query uses only its own level's), so checkpoints
    and parameter counts match. Outputs of other levels get no gradient.

    Cost: the same op as ``MSDeformAttn`` is called with zero weights on the
    other levels, so it still samples all ``L * P`` points per head; a
    per-level call would sample L times fewer. The weight projection is also
    evaluated twice (the parent's joint softmax is discarded). This favours
    one code path over speed.

    Arguments are those of ``MSDeformAttn``; ``forward`` too, except that
    ``query`` must hold one query per value token, in the token order of
    ``value`` (levels concatenated).
    """

    def token_levels(self, spatial_shapes: torch.Tensor) -> torch.Tensor:
        """Level index of every flattened token.

        Args:
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).

        Returns:
            Tensor: (S,) int64, level l repeated ``H_l * W_l`` times.
        """
        counts = spatial_shapes.prod(1)
        levels = torch.arange(spatial_shapes.shape[0], device=spatial_shapes.device)
        return torch.repeat_interleave(levels, counts)

    def sampling(self, query: torch.Tensor, reference_points: torch.Tensor,
                 spatial_shapes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations and own-level attention weights.

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
        num_tokens = int(spatial_shapes.prod(1).sum())
        if num_query != num_tokens:
            raise ValueError(
                'SameLevelDeformAttn: the queries must be the value tokens themselves '
                f'(encoder self-attention): query has Lq={num_query} rows but '
                f'spatial_shapes {spatial_shapes.tolist()} give S={num_tokens} tokens')
        locations, _ = super().sampling(query, reference_points, spatial_shapes)
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        # softmax over the P points of each level separately
        weights = self.attention_weights(query).view(n, num_query, m, lv, p).softmax(-1)
        # (S,) -> (S, L) one-hot of each query's own level
        own_level = torch.nn.functional.one_hot(self.token_levels(spatial_shapes), lv)
        # (N, S, M, L, P) * (1, S, 1, L, 1)
        weights = weights * own_level.to(weights.dtype)[None, :, None, :, None]
        return locations, weights
