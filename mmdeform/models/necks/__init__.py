"""mmdeform.models.necks."""
from .fpn import FPN
from .multi_scale_projection import MultiScaleProjection

__all__ = ['FPN', 'MultiScaleProjection']
