"""``EvalProgressHook``: a progress bar over the validation images, and their metrics."""
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from mmdeform.registry import HOOKS


@HOOKS.register_module()
class EvalProgressHook(Hook):
    """Show a progress bar over the validation images; keep the latest metrics.

    Args:
        show (bool): Draw the progress bar (the metrics are kept either way).

    Attributes:
        metrics (dict): The metrics of the last validation (empty before).
    """

    priority = 'VERY_LOW'

    def __init__(self, show: bool = True):
        self.show = show
        self.metrics = {}
        self._bar = None

    def before_val_epoch(self, runner) -> None:
        if self.show:
            self._bar = ProgressBar(len(runner.val_dataloader.dataset))

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            self._bar.update(len(outputs))

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._bar is not None:
            self._bar.file.write('\n')
            self._bar = None
        self.metrics = dict(metrics or {})
