"""mmdeform.models.heads."""
from .deformable_detr_head import DeformableDETRHead

__all__ = ['DeformableDETRHead']
