"""mmdeform.models.heads."""
from .deformable_detr_head import DeformableDETRHead, boxes_from_reference

__all__ = ['DeformableDETRHead', 'boxes_from_reference']
