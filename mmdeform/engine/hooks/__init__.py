"""Runner hooks."""
from .checkpoint_hook import AtomicCheckpointHook
from .det_visualization_hook import DetVisualizationHook

__all__ = ['AtomicCheckpointHook', 'DetVisualizationHook']
