"""L1 box regression loss."""
from typing import Union

import torch
from torch import nn

from mmdeform.registry import MODELS

from .utils import check_avg_factor, check_same_shape


@MODELS.register_module()
class L1Loss(nn.Module):
    """Sum of absolute differences divided by ``avg_factor``.

    Args:
        loss_weight (float): Multiplier of the result.
    """

    def __init__(self, loss_weight: float = 5.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                avg_factor: Union[float, torch.Tensor]) -> torch.Tensor:
        """Compute ``loss_weight * |pred - target|.sum() / avg_factor``.

        Args:
            pred (Tensor): (K, 4) predicted boxes of the matched queries
                (normalized cxcywh in Deformable DETR).
            target (Tensor): (K, 4) their ground-truth boxes, same format.
            avg_factor (float | Tensor): Normalizer, e.g. the number of
                ground-truth boxes in the batch (at least 1).

        Returns:
            Tensor: () weighted loss; an exact zero connected to ``pred``
            when K = 0.
        """
        check_same_shape(pred, target, 'L1Loss', 'pred', 'target')
        check_avg_factor(avg_factor, 'L1Loss')
        return (pred - target).abs().sum() / avg_factor * self.loss_weight
