"""Runner hooks."""
from .checkpoint_hook import AtomicCheckpointHook
from .det_visualization_hook import DetVisualizationHook
from .eval_progress_hook import EvalProgressHook
from .train_time_limit_hook import TrainTimeLimitHook

__all__ = ['AtomicCheckpointHook', 'DetVisualizationHook', 'EvalProgressHook', 'TrainTimeLimitHook']
