"""Helpers for tests of mmdeform and of code built on it (as ``mmdet.testing``); the op
inputs are :func:`mmdeform.ops.op_inputs.make_op_inputs`."""
from mmdeform.ops.op_inputs import make_op_inputs

from .detector_inputs import make_batch, shrink_model_cfg

__all__ = ['make_batch', 'make_op_inputs', 'shrink_model_cfg']
