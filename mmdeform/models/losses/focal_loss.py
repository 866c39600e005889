"""Sigmoid focal loss (Lin et al., 2017) for the classification branch."""
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from mmdeform.registry import MODELS

from .utils import check_avg_factor, check_same_shape


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Elementwise sigmoid focal loss, the official Deformable DETR formula.

    ``ce = BCE-with-logits(x, t)``, ``p_t = p*t + (1-p)*(1-t)``,
    ``loss = ce * (1 - p_t)^gamma``, then times ``alpha*t + (1-alpha)*(1-t)``
    unless ``alpha < 0``. The cross entropy comes from the logits, so large
    logits give finite values.

    Args:
        logits (Tensor): (..., C) raw classification logits.
        targets (Tensor): (..., C) targets in [0, 1], same dtype as logits.
        alpha (float): Weight of positives; negative disables weighting.
        gamma (float): Focusing exponent.

    Returns:
        Tensor: (..., C) unreduced loss.
    """
    prob = logits.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


@MODELS.register_module()
class FocalLoss(nn.Module):
    """Sigmoid focal loss summed over all entries and divided by ``avg_factor``.

    Args:
        alpha (float): Weight of positives; negative disables weighting.
        gamma (float): Focusing exponent.
        loss_weight (float): Multiplier of the result.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def extra_repr(self) -> str:
        return f'alpha={self.alpha}, gamma={self.gamma}, loss_weight={self.loss_weight}'

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                avg_factor: Union[float, torch.Tensor]) -> torch.Tensor:
        """Compute ``loss_weight * sum(focal(logits, targets)) / avg_factor``.

        Args:
            logits (Tensor): (K, C) raw classification logits.
            targets (Tensor): (K, C) one-hot rows for matched queries, zero
                rows otherwise. Floating targets must have the dtype of
                ``logits``; bool or integer targets are cast to it.
            avg_factor (float | Tensor): Normalizer, e.g. the number of
                ground-truth boxes in the batch (at least 1).

        Returns:
            Tensor: () weighted loss; an exact zero connected to ``logits``
            when K = 0.
        """
        check_same_shape(logits, targets, 'FocalLoss', 'logits', 'targets')
        check_avg_factor(avg_factor, 'FocalLoss')
        if not targets.is_floating_point():
            targets = targets.to(logits.dtype)
        elif targets.dtype != logits.dtype:
            raise TypeError(f'FocalLoss: targets dtype {targets.dtype} differs from logits '
                            f'dtype {logits.dtype}')
        loss = sigmoid_focal_loss(logits, targets, self.alpha, self.gamma)
        return loss.sum() / avg_factor * self.loss_weight
