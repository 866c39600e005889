"""Data transforms of our own; resizing, flipping and random choice come
from mmcv (``Resize``, ``RandomChoiceResize``, ``RandomFlip``,
``RandomChoice``), which the registry finds by name."""
from .formatting import PackDetInputs
from .loading import LoadDetAnnotations, LoadImage
from .random_crop import RandomCropDet

__all__ = ['LoadDetAnnotations', 'LoadImage', 'PackDetInputs', 'RandomCropDet']
