"""Decoders: fixed references, iterative box refinement, or DETR's dense decoder."""
from .deformable_decoder import DeformableDecoder, scale_by_valid_ratios
from .dense_decoder import DenseDecoder
from .refine_decoder import RefineDeformableDecoder

__all__ = ['DeformableDecoder', 'DenseDecoder', 'RefineDeformableDecoder',
           'scale_by_valid_ratios']
