"""The hooks of the synthetic experiment: training time limit and evaluation progress."""
import time
from types import SimpleNamespace

import pytest

from mmdeform.engine.hooks import EvalProgressHook, TrainTimeLimitHook


def test_train_time_limit_hook_stops_loop():
    hook = TrainTimeLimitHook(seconds=0.01)
    runner = SimpleNamespace(iter=4, train_loop=SimpleNamespace(stop_training=False))
    hook.before_train(runner)
    hook.after_train_iter(runner, 0)
    assert runner.train_loop.stop_training is False
    time.sleep(0.02)
    hook.after_train_iter(runner, 0)
    assert runner.train_loop.stop_training is True and hook.stopped_at == 5
    with pytest.raises(ValueError, match='seconds'):
        TrainTimeLimitHook(0)


def test_eval_progress_hook_keeps_metrics_and_counts_images():
    runner = SimpleNamespace(val_dataloader=SimpleNamespace(dataset=[0] * 5))
    hook = EvalProgressHook(show=True)
    hook.before_val_epoch(runner)
    hook.after_val_iter(runner, 0, outputs=[1, 2])
    hook.after_val_iter(runner, 1, outputs=[3, 4, 5])
    assert (hook._bar.completed, hook._bar.task_num) == (5, 5)  # one step per image
    hook.after_val_epoch(runner, metrics={'coco/bbox_mAP': 0.5})
    assert hook.metrics == {'coco/bbox_mAP': 0.5} and hook._bar is None
    quiet = EvalProgressHook(show=False)
    quiet.before_val_epoch(runner)
    quiet.after_val_iter(runner, 0, outputs=[1])
    quiet.after_val_epoch(runner, metrics=None)
    assert quiet.metrics == {} and quiet._bar is None
