"""``AssignResult``: the one-to-one matching of queries to ground truth."""
from dataclasses import dataclass

import torch


@dataclass
class AssignResult:
    """Matched pairs of one image.

    Attributes:
        query_index (Tensor): (k,) int64 indices of the matched queries, in
            ascending order.
        gt_index (Tensor): (k,) int64 index of the ground truth each of
            those queries is matched to. ``k = min(Q, n)``.
    """
    query_index: torch.Tensor
    gt_index: torch.Tensor

    @property
    def num_matched(self) -> int:
        """Number of matched pairs ``k``."""
        return int(self.query_index.numel())
