"""``PerLevelDeformAttn``: deformable attention with one softmax per level."""
from typing import Tuple

import torch

from mmdeform.ops import MSDeformAttn
from mmdeform.registry import MODELS


@MODELS.register_module()
class PerLevelDeformAttn(MSDeformAttn):
    """Deformable attention whose levels do not compete in one softmax.

    For decoder cross-attention in the ablations of Deformable DETR
    (Table 2). ``MSDeformAttn`` normalizes the weights of a head over all
    ``L * P`` samples; here each level's ``P`` weights are softmaxed on their
    own and divided by L, so the output is the average over levels of L
    single-level deformable attentions (per head), and every level
    contributes equally. With L = 1 this is ``MSDeformAttn``.

    Parameters, their names, shapes and initialization are those of
    ``MSDeformAttn``; so are the arguments and ``forward``. The cost is that
    of ``MSDeformAttn`` plus one more evaluation of the weight projection
    (the parent's joint softmax is computed by ``super().sampling`` and
    discarded).
    """

    def sampling(self, query: torch.Tensor, reference_points: torch.Tensor,
                 spatial_shapes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations and per-level attention weights.

        Args:
            query (Tensor): (N, Lq, C) queries (position embedding included).
            reference_points (Tensor): (N, Lq, L, 2|4) as in ``MSDeformAttn``.
            spatial_shapes (Tensor): (L, 2) int64 rows (H_l, W_l).

        Returns:
            tuple[Tensor, Tensor]: locations (N, Lq, M, L, P, 2) normalized
            (x, y) as in ``MSDeformAttn``, and weights (N, Lq, M, L, P) that
            sum to 1 / L over the P points of every level.
        """
        locations, _ = super().sampling(query, reference_points, spatial_shapes)
        n, num_query, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        # softmax over the P points of each level separately, then the mean over levels
        weights = self.attention_weights(query).view(n, num_query, m, lv, p).softmax(-1) / lv
        return locations, weights
