"""Runner hooks."""
from .det_visualization_hook import DetVisualizationHook

__all__ = ['DetVisualizationHook']
