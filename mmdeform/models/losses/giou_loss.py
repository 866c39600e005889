"""Generalized IoU loss (Rezatofighi et al., 2019) on matched box pairs."""
from typing import Union

import torch
from torch import nn

from mmdeform.registry import MODELS
from mmdeform.structures import box_area

from .utils import check_avg_factor, check_same_shape


def aligned_generalized_box_iou(boxes1_xyxy: torch.Tensor,
                                boxes2_xyxy: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of row i of ``boxes1_xyxy`` with row i of ``boxes2_xyxy``.

    Gives the diagonal of ``generalized_box_iou`` without the (K, K) matrix,
    with the same elementwise arithmetic.

    Args:
        boxes1_xyxy (Tensor): (K, 4) boxes, x2 >= x1 and y2 >= y1.
        boxes2_xyxy (Tensor): (K, 4) boxes, x2 >= x1 and y2 >= y1.

    Returns:
        Tensor: (K,) GIoU values in [-1, 1].
    """
    for name, boxes in (('boxes1_xyxy', boxes1_xyxy), ('boxes2_xyxy', boxes2_xyxy)):
        if not bool((boxes[:, 2:] >= boxes[:, :2]).all()):
            raise ValueError(f'aligned_generalized_box_iou: {name} has boxes with x2 < x1 or '
                             'y2 < y1, or non-finite values')
    area1, area2 = box_area(boxes1_xyxy), box_area(boxes2_xyxy)
    top_left = torch.max(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    bottom_right = torch.min(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / union
    top_left = torch.min(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    bottom_right = torch.max(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[:, 0] * wh[:, 1]
    return iou - (enclosing - union) / enclosing


@MODELS.register_module()
class GIoULoss(nn.Module):
    """Sum of ``1 - GIoU`` over aligned box pairs divided by ``avg_factor``.

    Args:
        loss_weight (float): Multiplier of the result.
    """

    def __init__(self, loss_weight: float = 2.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'

    def forward(self, pred_boxes_xyxy: torch.Tensor, target_boxes_xyxy: torch.Tensor,
                avg_factor: Union[float, torch.Tensor]) -> torch.Tensor:
        """Compute ``loss_weight * sum(1 - GIoU(pred_i, target_i)) / avg_factor``.

        Args:
            pred_boxes_xyxy (Tensor): (K, 4) predicted boxes of the matched
                queries, corners (normalized in Deformable DETR).
            target_boxes_xyxy (Tensor): (K, 4) their ground-truth boxes.
            avg_factor (float | Tensor): Normalizer, e.g. the number of
                ground-truth boxes in the batch (at least 1).

        Returns:
            Tensor: () weighted loss; an exact zero connected to
            ``pred_boxes_xyxy`` when K = 0.
        """
        check_same_shape(pred_boxes_xyxy, target_boxes_xyxy, 'GIoULoss', 'pred_boxes_xyxy',
                         'target_boxes_xyxy')
        if pred_boxes_xyxy.dim() != 2 or pred_boxes_xyxy.shape[-1] != 4:
            raise ValueError(f'GIoULoss: pred_boxes_xyxy must be (K, 4), got '
                             f'{tuple(pred_boxes_xyxy.shape)}')
        check_avg_factor(avg_factor, 'GIoULoss')
        giou = aligned_generalized_box_iou(pred_boxes_xyxy, target_boxes_xyxy)
        return (1 - giou).sum() / avg_factor * self.loss_weight
