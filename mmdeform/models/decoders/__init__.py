"""Decoders: fixed references, iterative box refinement, DETR's dense attention with
references (``DenseDecoder``) or DETR's own decoder without them (``DetrDecoder``)."""
from .deformable_decoder import DeformableDecoder, scale_by_valid_ratios
from .dense_decoder import DenseDecoder
from .detr_decoder import DetrDecoder
from .refine_decoder import RefineDeformableDecoder

__all__ = ['DeformableDecoder', 'DenseDecoder', 'DetrDecoder', 'RefineDeformableDecoder',
           'scale_by_valid_ratios']
