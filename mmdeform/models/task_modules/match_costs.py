"""Pairwise matching costs between predictions and ground truth.

Every cost is called as ``cost(pred_logits, pred_boxes_cxcywh, gt_labels,
gt_boxes_cxcywh)`` and returns a ``(Q, n)`` weighted cost, low = good match.
Boxes are normalized ``(cx, cy, w, h)``. The costs follow the official
Deformable DETR matcher; the summed cost decides the Hungarian assignment.
"""
import torch

from mmdeform.registry import TASK_UTILS
from mmdeform.structures import box_cxcywh_to_xyxy, box_iou, generalized_box_iou


def check_match_inputs(pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
                       gt_labels: torch.Tensor, gt_boxes_cxcywh: torch.Tensor) -> None:
    """Raise a ValueError naming the argument whose shape is wrong.

    Args:
        pred_logits (Tensor): (Q, C) classification logits.
        pred_boxes_cxcywh (Tensor): (Q, 4) predicted boxes.
        gt_labels (Tensor): (n,) int64 class indices.
        gt_boxes_cxcywh (Tensor): (n, 4) ground-truth boxes.
    """
    if pred_logits.dim() != 2:
        raise ValueError(f'pred_logits must be (Q, C), got shape {tuple(pred_logits.shape)}')
    num_queries = pred_logits.shape[0]
    if pred_boxes_cxcywh.shape != (num_queries, 4):
        raise ValueError(f'pred_boxes_cxcywh must be (Q, 4) with Q={num_queries}, '
                         f'got shape {tuple(pred_boxes_cxcywh.shape)}')
    if gt_labels.dim() != 1:
        raise ValueError(f'gt_labels must be (n,), got shape {tuple(gt_labels.shape)}')
    if gt_boxes_cxcywh.shape != (gt_labels.shape[0], 4):
        raise ValueError(f'gt_boxes_cxcywh must be (n, 4) with n={gt_labels.shape[0]}, '
                         f'got shape {tuple(gt_boxes_cxcywh.shape)}')
    if gt_boxes_cxcywh.dtype != pred_boxes_cxcywh.dtype:
        raise ValueError(f'gt_boxes_cxcywh ({gt_boxes_cxcywh.dtype}) must have the dtype of '
                         f'pred_boxes_cxcywh ({pred_boxes_cxcywh.dtype})')


@TASK_UTILS.register_module()
class FocalLossCost:
    """Sigmoid focal classification cost at each ground-truth label.

    With ``p = sigmoid(logit of the gt label)``:
    ``weight * (alpha * (1-p)^gamma * -log(p+eps) - (1-alpha) * p^gamma * -log(1-p+eps))``.
    The official matcher hard-codes alpha 0.25, gamma 2 and eps 1e-8.

    Args:
        weight (float): Multiplier of the cost.
        alpha (float): Weight of the positive term; ``1 - alpha`` weights
            the negative term.
        gamma (float): Focusing exponent.
        eps (float): Added inside the logarithms.
    """

    def __init__(self, weight: float = 2.0, alpha: float = 0.25, gamma: float = 2.0,
                 eps: float = 1e-8) -> None:
        self.weight = weight
        self.alpha = alpha
        self.gamma = gamma
        self.eps = eps

    def __call__(self, pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """Args and shapes as in :func:`check_match_inputs`. Returns (Q, n)."""
        check_match_inputs(pred_logits, pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh)
        num_classes = pred_logits.shape[1]
        if gt_labels.numel() and not bool(((gt_labels >= 0) & (gt_labels < num_classes)).all()):
            raise ValueError(f'gt_labels must lie in [0, {num_classes}) for pred_logits of shape '
                             f'{tuple(pred_logits.shape)}, got {gt_labels.tolist()}')
        prob = pred_logits[:, gt_labels].sigmoid()  # (Q, n)
        neg_cost = (1 - self.alpha) * (prob ** self.gamma) * (-(1 - prob + self.eps).log())
        pos_cost = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + self.eps).log())
        return self.weight * (pos_cost - neg_cost)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(weight={self.weight}, alpha={self.alpha}, '
                f'gamma={self.gamma}, eps={self.eps})')


@TASK_UTILS.register_module()
class BBoxL1Cost:
    """L1 distance between normalized cxcywh boxes, times ``weight``.

    Args:
        weight (float): Multiplier of the cost.
    """

    def __init__(self, weight: float = 5.0) -> None:
        self.weight = weight

    def __call__(self, pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """Args and shapes as in :func:`check_match_inputs`. Returns (Q, n)."""
        check_match_inputs(pred_logits, pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh)
        return self.weight * torch.cdist(pred_boxes_cxcywh, gt_boxes_cxcywh, p=1)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(weight={self.weight})'


@TASK_UTILS.register_module()
class IoUCost:
    """Negative IoU or generalized IoU of the boxes (compared as xyxy), times ``weight``.

    MMDetection's ``IoUCost``; Deformable DETR matches with
    ``iou_mode='giou'``.

    Args:
        iou_mode (str): ``'giou'`` (generalized IoU) or ``'iou'``.
        weight (float): Multiplier of the cost.
    """

    def __init__(self, iou_mode: str = 'giou', weight: float = 2.0) -> None:
        if iou_mode not in ('giou', 'iou'):
            raise ValueError(f"IoUCost: iou_mode must be 'giou' or 'iou', got {iou_mode!r}")
        self.iou_mode = iou_mode
        self.weight = weight

    def __call__(self, pred_logits: torch.Tensor, pred_boxes_cxcywh: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """Args and shapes as in :func:`check_match_inputs`. Returns (Q, n)."""
        check_match_inputs(pred_logits, pred_boxes_cxcywh, gt_labels, gt_boxes_cxcywh)
        pred_xyxy = box_cxcywh_to_xyxy(pred_boxes_cxcywh)
        gt_xyxy = box_cxcywh_to_xyxy(gt_boxes_cxcywh)
        if self.iou_mode == 'giou':
            overlap = generalized_box_iou(pred_xyxy, gt_xyxy)
        else:
            overlap = box_iou(pred_xyxy, gt_xyxy)[0]
        return self.weight * -overlap

    def __repr__(self) -> str:
        return f'{type(self).__name__}(iou_mode={self.iou_mode!r}, weight={self.weight})'
