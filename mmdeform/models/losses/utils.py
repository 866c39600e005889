"""Checks shared by the loss modules."""
from typing import Union

import torch


def check_avg_factor(avg_factor: Union[float, torch.Tensor], loss_name: str) -> None:
    """Raise a ValueError for a non-positive Python ``avg_factor``.

    Tensor factors (e.g. all-reduced box counts) are not inspected, to avoid
    a device synchronization; the caller clamps them.
    """
    if not isinstance(avg_factor, torch.Tensor) and not avg_factor > 0:
        raise ValueError(f'{loss_name}: avg_factor must be > 0, got {avg_factor}')


def check_same_shape(pred: torch.Tensor, target: torch.Tensor, loss_name: str,
                     pred_name: str, target_name: str) -> None:
    """Raise a ValueError naming both arguments when their shapes differ."""
    if pred.shape != target.shape:
        raise ValueError(f'{loss_name}: {pred_name} {tuple(pred.shape)} and {target_name} '
                         f'{tuple(target.shape)} must have the same shape')
