"""Encoders over the flattened multi-scale tokens."""
from .deformable_encoder import (
    DeformableEncoder,
    check_encoder_inputs,
    flatten_levels,
    get_encoder_reference_points,
    get_level_shapes,
    get_level_start_index,
    get_valid_ratios,
)
from .dense_encoder import DenseEncoder

__all__ = ['DeformableEncoder', 'DenseEncoder', 'check_encoder_inputs', 'flatten_levels',
           'get_encoder_reference_points', 'get_level_shapes', 'get_level_start_index',
           'get_valid_ratios']
