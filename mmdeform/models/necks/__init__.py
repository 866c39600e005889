"""mmdeform.models.necks."""
from .multi_scale_projection import MultiScaleProjection

__all__ = ['MultiScaleProjection']
