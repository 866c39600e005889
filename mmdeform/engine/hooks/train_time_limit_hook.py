"""``TrainTimeLimitHook``: stop training after a wall-time budget."""
import time

from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmdeform.registry import HOOKS


@HOOKS.register_module()
class TrainTimeLimitHook(Hook):
    """Stop training after ``seconds`` of wall time.

    The loop ends after the iteration that crossed the limit; the loop's own
    last checkpoint and validation are then skipped, so the caller saves and
    evaluates (as the synthetic experiments of ``projects/synthetic_ablations`` do).

    Args:
        seconds (float): Training time allowed, counted from ``before_train``.

    Attributes:
        stopped_at (int, optional): The iteration (1-based) after which the
            limit stopped training; None while it has not.
    """

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f'TrainTimeLimitHook: seconds must be positive, got {seconds}')
        self.seconds = seconds
        self.stopped_at = None
        self._start = None

    def before_train(self, runner) -> None:
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if time.perf_counter() - self._start > self.seconds and self.stopped_at is None:
            self.stopped_at = runner.iter + 1
            runner.train_loop.stop_training = True
            print_log(f'training time limit of {self.seconds:.0f} s reached: stopping after '
                      f'iteration {self.stopped_at}', logger='current')
