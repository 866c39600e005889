"""Encoders over the flattened multi-scale tokens."""
from .deformable_encoder import DeformableEncoder, get_encoder_reference_points, get_valid_ratios

__all__ = ['DeformableEncoder', 'get_encoder_reference_points', 'get_valid_ratios']
