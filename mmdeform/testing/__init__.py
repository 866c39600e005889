"""Helpers for tests of mmdeform and of code built on it (as ``mmdet.testing``)."""
from .detector_inputs import make_batch, shrink_model_cfg
from .op_inputs import make_op_inputs
from .process_group import gloo_group, run_processes

__all__ = ['gloo_group', 'make_batch', 'make_op_inputs', 'run_processes', 'shrink_model_cfg']
