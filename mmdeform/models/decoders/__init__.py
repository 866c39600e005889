"""Decoders: fixed references or iterative box refinement."""
from .deformable_decoder import DeformableDecoder, scale_by_valid_ratios
from .refine_decoder import RefineDeformableDecoder

__all__ = ['DeformableDecoder', 'RefineDeformableDecoder', 'scale_by_valid_ratios']
