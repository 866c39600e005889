"""Helpers for tests of mmdeform and of code built on it (as ``mmdet.testing``)."""
from .detector_inputs import make_batch, shrink_model_cfg

__all__ = ['make_batch', 'shrink_model_cfg']
