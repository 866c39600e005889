"""Helpers for tests of mmdeform and of code built on it (as ``mmdet.testing``)."""
from .detector_inputs import make_batch, shrink_model_cfg
from .op_inputs import make_op_inputs

__all__ = ['make_batch', 'make_op_inputs', 'shrink_model_cfg']
