"""mmdeform: Deformable DETR as registered, swappable components."""
__version__ = '0.1.0'
