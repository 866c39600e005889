"""Losses (registered in ``MODELS``)."""
from .focal_loss import FocalLoss, sigmoid_focal_loss
from .giou_loss import GIoULoss, aligned_generalized_box_iou
from .l1_loss import L1Loss

__all__ = ['FocalLoss', 'GIoULoss', 'L1Loss', 'aligned_generalized_box_iou',
           'sigmoid_focal_loss']
