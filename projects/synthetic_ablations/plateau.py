"""Train a run until its plateau gate holds (``PlateauExtensionHook``).

The Table 2 rows are judged only at a plateau: the last two evaluations
within :data:`~projects.synthetic_ablations.intervals.PLATEAU_TOLERANCE` AP
and :data:`~projects.synthetic_ablations.intervals.PLATEAU_RELATIVE_TOLERANCE` of
their mean (:func:`~projects.synthetic_ablations.intervals.plateau_gate`, the report's
own rule). A run whose gate fails at the end of its schedule is trained on by
one evaluation interval at a time, at the learning rate it ended with (the
step schedule's ``end`` is behind it, so the rate stays at its decayed value),
until the gate holds or the extra iterations reach ``max_extra_fraction`` of
the schedule. A run that passes at the end of its schedule is untouched: with
the hook, it trains exactly as without it.

Registered in mmdeform's ``HOOKS``; the ablation configs import this module
through ``custom_imports`` and list the hook in ``custom_hooks``.
"""
from typing import Dict, List, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmdeform.registry import HOOKS
from projects.synthetic_ablations.intervals import (
    PLATEAU_RELATIVE_TOLERANCE,
    PLATEAU_TOLERANCE,
    plateau_gate,
)


@HOOKS.register_module()
class PlateauExtensionHook(Hook):
    """Extend an ``IterBasedTrainLoop`` until the plateau gate holds (module docstring).

    Args:
        metric (str): Validation metric of the gate, in [0, 1]
            (``coco/bbox_mAP``).
        tolerance (float): The gate's largest difference between the last two
            evaluations, in AP points (the report's, by default).
        relative_tolerance (float): The same as a share of their mean AP
            (the report's, by default).
        max_extra_fraction (float): Extra iterations allowed, as a fraction
            of the scheduled ``max_iters`` (0.3: at most 600 after 2000).

    After training, :meth:`summary` gives ``scheduled_iters``,
    ``extra_iters``, ``max_extra_fraction``, ``held`` (the gate at the last evaluation; None with
    fewer than two) and ``gate`` (its words).
    """

    priority = 'LOW'

    def __init__(self, metric: str = 'coco/bbox_mAP', tolerance: float = PLATEAU_TOLERANCE,
                 max_extra_fraction: float = 0.3,
                 relative_tolerance: float = PLATEAU_RELATIVE_TOLERANCE) -> None:
        if not 0 <= max_extra_fraction <= 10:
            raise ValueError(f'PlateauExtensionHook: max_extra_fraction must be in [0, 10], '
                             f'got {max_extra_fraction}')
        if tolerance < 0 or relative_tolerance < 0:
            raise ValueError(f'PlateauExtensionHook: tolerance and relative_tolerance must be '
                             f'>= 0, got {tolerance} and {relative_tolerance}')
        self.metric = metric
        self.tolerance = tolerance
        self.relative_tolerance = relative_tolerance
        self.max_extra_fraction = max_extra_fraction
        self.curve: List[dict] = []
        self.scheduled_iters: Optional[int] = None
        self.extra_iters = 0

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        if not hasattr(loop, '_max_iters'):
            raise TypeError('PlateauExtensionHook needs an iteration-based train loop '
                            f'(IterBasedTrainLoop), got {type(loop).__name__}')
        self.scheduled_iters = int(loop.max_iters)
        self.curve, self.extra_iters = [], 0

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if self.scheduled_iters is None:  # a validation outside training
            return
        loop = runner.train_loop
        if not metrics or self.metric not in metrics:
            print_log(f'PlateauExtensionHook: the validation at iteration {loop.iter} gave no '
                      f'{self.metric}; the run is not extended', logger='current')
            return
        self.curve.append(dict(iter=int(loop.iter), AP=float(metrics[self.metric])))
        if loop.iter < loop.max_iters:
            return
        held, words = plateau_gate(self.curve, tolerance=self.tolerance,
                                    relative_tolerance=self.relative_tolerance)
        if held is not False:
            return
        step = int(loop.val_interval)
        cap = self.scheduled_iters + round(self.max_extra_fraction * self.scheduled_iters)
        if loop.iter + step > cap:
            print_log(f'PlateauExtensionHook: not at a plateau ({words}) and the '
                      f'{cap - self.scheduled_iters} extra iterations are spent', logger='current')
            return
        # the loop runs while iter < _max_iters and validates at _max_iters
        loop._max_iters = int(loop.iter) + step
        self.extra_iters += step
        print_log(f'PlateauExtensionHook: not at a plateau ({words}); training on to '
                  f'iteration {loop._max_iters}', logger='current')

    def summary(self) -> dict:
        """The extension of the finished run (class docstring)."""
        held, words = plateau_gate(self.curve, tolerance=self.tolerance,
                                    relative_tolerance=self.relative_tolerance)
        return dict(scheduled_iters=self.scheduled_iters, extra_iters=self.extra_iters,
                    max_extra_fraction=self.max_extra_fraction, held=held, gate=words)
