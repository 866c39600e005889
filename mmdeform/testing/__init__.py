"""Helpers for tests of mmdeform and of code built on it (as ``mmdet.testing``); the op
inputs are :func:`mmdeform.ops.op_inputs.make_op_inputs`."""
from mmdeform.ops.op_inputs import make_op_inputs

from .detector_inputs import make_batch, shrink_model_cfg
from .process_group import gloo_group, run_processes
from .stage_inputs import (
    loss_and_backward,
    make_encoder_output,
    parameters_without_gradient,
    perturb_parameters,
)

__all__ = ['gloo_group', 'loss_and_backward', 'make_batch', 'make_encoder_output',
           'make_op_inputs', 'parameters_without_gradient', 'perturb_parameters',
           'run_processes', 'shrink_model_cfg']
