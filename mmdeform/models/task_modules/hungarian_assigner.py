"""One-to-one Hungarian assignment of queries to ground-truth objects."""
from typing import List, Sequence

import torch
from scipy.optimize import linear_sum_assignment

from mmdeform.registry import TASK_UTILS

from .assign_result import AssignResult
from .match_costs import check_match_inputs

DEFAULT_MATCH_COSTS = (dict(type='FocalLossCost', weight=2.0),
                       dict(type='BBoxL1Cost', weight=5.0),
                       dict(type='IoUCost', iou_mode='giou', weight=2.0))


@TASK_UTILS.register_module()
class HungarianAssigner:
    """Match each ground-truth object to one query by minimum total cost.

    The cost matrix is the sum of the configured match costs, computed
    without gradient on the device of the predictions; the assignment is
    solved on the CPU with ``scipy.optimize.linear_sum_assignment``, as in
    the official matcher.

    Args:
        match_costs (Sequence[dict]): Configs of the costs (built from
            ``TASK_UTILS``), each called as ``cost(pred_logits,
            pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh) -> (Q, n)``.
    """

    def __init__(self, match_costs: Sequence[dict] = DEFAULT_MATCH_COSTS) -> None:
        if len(match_costs) == 0:
            raise ValueError('HungarianAssigner needs at least one entry in match_costs')
        self.match_costs = [TASK_UTILS.build(cfg) for cfg in match_costs]

    def __repr__(self) -> str:
        return f'{type(self).__name__}(match_costs={self.match_costs})'

    def assign(self, pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
               gt_labels: torch.Tensor, gt_boxes_cxcywh: torch.Tensor) -> AssignResult:
        """Assign the queries of one image.

        Args:
            pred_logits (Tensor): (Q, C) classification logits.
            pred_boxes_cxcywh (Tensor): (Q, 4) normalized predicted boxes.
            gt_labels (Tensor): (n,) int64 class indices.
            gt_boxes_cxcywh (Tensor): (n, 4) normalized ground-truth boxes.

        Returns:
            AssignResult: ``min(Q, n)`` pairs sorted by query index; empty
            index tensors when ``n == 0``. On the device of the predictions.
        """
        check_match_inputs(pred_logits, pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh)
        cost = self._cost_matrix(pred_logits, pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh)
        return self._solve(cost.cpu(), pred_logits.device)

    def assign_batch(self, pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
                     gt_labels: List[torch.Tensor],
                     gt_boxes_cxcywh: List[torch.Tensor]) -> List[AssignResult]:
        """Assign the queries of every image with one cost computation.

        The costs are computed once between all ``B*Q`` queries and all
        ground truth of the batch, then each image's block is solved.
        The result equals calling :meth:`assign` per image.

        Args:
            pred_logits (Tensor): (B, Q, C) classification logits.
            pred_boxes_cxcywh (Tensor): (B, Q, 4) normalized predicted boxes.
            gt_labels (list[Tensor]): B tensors (n_b,) int64 class indices.
            gt_boxes_cxcywh (list[Tensor]): B tensors (n_b, 4) normalized
                ground-truth boxes.

        Returns:
            list[AssignResult]: one result per image.
        """
        if pred_logits.dim() != 3:
            raise ValueError(f'pred_logits must be (B, Q, C), got shape {tuple(pred_logits.shape)}')
        batch_size, num_queries = pred_logits.shape[:2]
        if len(gt_labels) != batch_size or len(gt_boxes_cxcywh) != batch_size:
            raise ValueError(f'gt_labels and gt_boxes_cxcywh must hold B={batch_size} tensors, '
                             f'got {len(gt_labels)} and {len(gt_boxes_cxcywh)}')
        if pred_boxes_cxcywh.shape != (batch_size, num_queries, 4):
            raise ValueError(f'pred_boxes_cxcywh must be (B, Q, 4) = ({batch_size}, '
                             f'{num_queries}, 4), got shape {tuple(pred_boxes_cxcywh.shape)}')
        for i, (labels, boxes) in enumerate(zip(gt_labels, gt_boxes_cxcywh)):
            if labels.dim() != 1 or boxes.shape != (labels.shape[0], 4):
                raise ValueError(f'image {i}: gt_labels must be (n,) and gt_boxes_cxcywh (n, 4), '
                                 f'got {tuple(labels.shape)} and {tuple(boxes.shape)}')
        sizes = [int(labels.shape[0]) for labels in gt_labels]
        # (B, Q, C) -> (B*Q, C) against all sum(n_b) objects of the batch.
        cost = self._cost_matrix(pred_logits.flatten(0, 1), pred_boxes_cxcywh.flatten(0, 1),
                                 torch.cat(list(gt_labels)), torch.cat(list(gt_boxes_cxcywh)))
        # (B*Q, sum n) -> (B, Q, sum n), then image b keeps its own n_b columns.
        blocks = cost.view(batch_size, num_queries, sum(sizes)).cpu().split(sizes, dim=-1)
        return [self._solve(block[b], pred_logits.device) for b, block in enumerate(blocks)]

    @torch.no_grad()
    def _cost_matrix(self, pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
                     gt_labels: torch.Tensor, gt_boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """Sum of all match costs: (Q, C), (Q, 4), (n,), (n, 4) -> (Q, n)."""
        for name, value in (('pred_logits', pred_logits),
                            ('pred_boxes_cxcywh', pred_boxes_cxcywh),
                            ('gt_boxes_cxcywh', gt_boxes_cxcywh)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f'HungarianAssigner: {name} (shape {tuple(value.shape)}) '
                                 'contains NaN or inf')
        costs = [match_cost(pred_logits, pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh)
                 for match_cost in self.match_costs]
        total = costs[0]
        for cost in costs[1:]:
            total = total + cost
        if not bool(torch.isfinite(total).all()):
            bad = [repr(match_cost) for match_cost, cost in zip(self.match_costs, costs)
                   if not bool(torch.isfinite(cost).all())]
            raise ValueError(f'HungarianAssigner: the cost matrix (shape {tuple(total.shape)}) '
                             f'contains NaN or inf, produced by {", ".join(bad)}')
        return total

    @staticmethod
    def _solve(cost: torch.Tensor, device: torch.device) -> AssignResult:
        """Solve one (Q, n) CPU cost matrix; indices are put on ``device``."""
        query_index, gt_index = linear_sum_assignment(cost.double().numpy())
        return AssignResult(
            query_index=torch.as_tensor(query_index, dtype=torch.int64, device=device),
            gt_index=torch.as_tensor(gt_index, dtype=torch.int64, device=device))
