"""Train and evaluate a config on the synthetic shapes data: the demo's and the ablations' core.

:func:`run_demo` (what ``tools/demo.py`` runs) generates the synthetic
dataset described by the config's ``synthetic_data`` (unless ``data_root``
already holds it), trains the config's model with the project's ``SafeLoadingRunner``
(validating at the config's ``val_interval`` and after the last iteration),
draws the loss / mAP curves and prints one line::

    demo: bbox mAP=0.685 in 349 s; outputs in work_dirs/demo

The seconds count data generation, model building, training and evaluation
(not the environment set-up). Outputs under ``work_dir``: the config,
``<timestamp>/<timestamp>.log`` (mmengine's text log),
``<timestamp>/vis_data/scalars.json`` (its scalar log), the last checkpoint
``iter_<N>.pth`` and ``curves.png``.

:func:`build_synthetic_config` and :func:`train_and_evaluate` are the two
steps that :mod:`projects.synthetic_ablations.ablations` reuses for every row. Configs
are passed in (the demo's is :data:`projects.synthetic_ablations.DEMO_CONFIG`).
"""
import os.path as osp
import time
import uuid
from typing import Optional, Tuple

import torch
from mmengine.config import Config

import mmdeform.evaluation  # noqa: F401  (registers the metric)
import mmdeform.models  # noqa: F401  (registers the model parts)
from mmdeform.datasets.synthetic import prepare_synthetic_data
from mmdeform.engine import SafeLoadingRunner, save_checkpoint_atomic
from mmdeform.engine.hooks import EvalProgressHook, TrainTimeLimitHook
from mmdeform.visualization.curves import plot_curves

MAP_KEY = 'coco/bbox_mAP'


def build_synthetic_config(config: str, work_dir: str, data_root: str, seed: int = 0,
                           max_iters: Optional[int] = None,
                           val_interval: Optional[int] = None,
                           synthetic_overrides: Optional[dict] = None) -> Config:
    """Load ``config`` and point it at ``work_dir`` and ``data_root``.

    Args:
        config (str): Config path with a ``synthetic_data`` dict, an
            ``IterBasedTrainLoop`` and COCO-format train / val datasets.
        work_dir (str): Output folder.
        data_root (str): Dataset folder.
        seed (int): Training seed (``randomness.seed``).
        max_iters (int, optional): Overrides the training iterations; the
            schedulers' ``end`` and the checkpoint interval follow.
        val_interval (int, optional): Overrides the validation interval
            (and drops the loop's ``dynamic_intervals``).
        synthetic_overrides (dict, optional): Updates ``synthetic_data``.

    Returns:
        Config: the updated config.

    Raises:
        KeyError: ``config`` lacks one of the keys above (named).
        ValueError: ``config`` does not train with an ``IterBasedTrainLoop``.
    """
    cfg = Config.fromfile(config)
    for key in ('synthetic_data', 'train_cfg', 'train_dataloader', 'val_dataloader'):
        if key not in cfg:
            raise KeyError(f'build_synthetic_config: {config} has no "{key}"')
    if cfg.train_cfg.get('type') != 'IterBasedTrainLoop':
        raise ValueError(f'build_synthetic_config: {config} must use an IterBasedTrainLoop, '
                         f'got {cfg.train_cfg.get("type")!r}')
    cfg.synthetic_data.update(synthetic_overrides or {})
    cfg.work_dir = work_dir
    data_root = osp.join(data_root, '')
    cfg.data_root = data_root
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if loader in cfg:
            cfg[loader].dataset.data_root = data_root
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if evaluator in cfg:
            cfg[evaluator].ann_file = osp.join(data_root, 'val.json')
    cfg.randomness = dict(cfg.get('randomness', {}), seed=seed)
    if max_iters is not None:
        _set_max_iters(cfg, max_iters)
    if val_interval is not None:  # one fixed interval replaces the config's evaluation points
        cfg.train_cfg.val_interval = val_interval
        cfg.train_cfg.pop('dynamic_intervals', None)
    # validation scalars at the iteration they were computed at (for the curves)
    cfg.default_hooks.logger.log_metric_by_epoch = False
    return cfg


def _set_max_iters(cfg: Config, max_iters: int) -> None:
    """Rescale the schedule to ``max_iters``: loop, evaluations, schedulers, checkpoint.

    Every scheduler's ``begin`` / ``end`` and ``milestones`` are scaled by
    ``max_iters / old`` (keeping ``end > begin``); so are the validation
    interval and the loop's ``dynamic_intervals`` (each at least 1, at most
    ``max_iters``).
    """
    if max_iters < 1:
        raise ValueError(f'max_iters must be >= 1, got {max_iters}')
    ratio = max_iters / cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = max_iters

    def scaled(value: int) -> int:
        return min(max(round(value * ratio), 1), max_iters)

    cfg.train_cfg.val_interval = scaled(cfg.train_cfg.get('val_interval', max_iters))
    if cfg.train_cfg.get('dynamic_intervals'):
        cfg.train_cfg.dynamic_intervals = [(scaled(milestone), scaled(interval))
                                           for milestone, interval
                                           in cfg.train_cfg.dynamic_intervals]
    for scheduler in cfg.get('param_scheduler', []):
        begin = round(scheduler.get('begin', 0) * ratio)
        scheduler.begin = begin
        if scheduler.get('end') is not None:
            scheduler.end = max(round(scheduler.end * ratio), begin + 1)
        if scheduler.get('milestones') is not None:
            scheduler.milestones = [round(m * ratio) for m in scheduler.milestones]
    checkpoint = cfg.default_hooks.get('checkpoint')
    if checkpoint is not None:
        checkpoint.interval = max_iters


def _add_tensorboard(cfg: Config) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ImportError('run_demo: tensorboard=True needs the tensorboard package '
                          '(pip install tensorboard)') from None
    cfg.visualizer.vis_backends = list(cfg.visualizer.vis_backends) + [
        dict(type='TensorboardVisBackend')]


def train_and_evaluate(cfg: Config, max_train_minutes: Optional[float] = None,
                       progress: bool = True) -> Tuple[object, dict]:
    """Build a ``Runner`` from ``cfg``, train, and evaluate after the last iteration.

    Args:
        cfg (Config): Complete config (see :func:`build_synthetic_config`).
        max_train_minutes (float, optional): Training time limit; a stopped
            run saves ``iter_<N>.pth`` and is evaluated all the same.
        progress (bool): Progress bar over the validation images.

    Returns:
        tuple[Runner, dict]: the runner and the last validation's metrics.

    Raises:
        RuntimeError: the evaluation gave no ``coco/bbox_mAP``.
    """
    runner = SafeLoadingRunner.from_cfg(cfg)
    eval_hook = EvalProgressHook(show=progress)
    runner.register_hook(eval_hook)
    limit_hook = None
    if max_train_minutes is not None:
        limit_hook = TrainTimeLimitHook(max_train_minutes * 60)
        runner.register_hook(limit_hook)
    runner.train()
    if limit_hook is not None and limit_hook.stopped_at is not None:
        # stopped early: the loop skipped its last checkpoint and validation
        save_checkpoint_atomic(runner, cfg.work_dir, f'iter_{runner.iter}.pth',
                               meta=dict(epoch=runner.epoch, iter=runner.iter))
        runner.val_loop.run()
    if MAP_KEY not in eval_hook.metrics:
        raise RuntimeError(f'train_and_evaluate: the evaluation returned no {MAP_KEY}; '
                           f'got {eval_hook.metrics}')
    return runner, eval_hook.metrics


def run_demo(config: str, work_dir: str = 'work_dirs/demo',
             data_root: str = 'data/synthetic', seed: int = 0,
             max_iters: Optional[int] = None, val_interval: Optional[int] = None,
             max_train_minutes: Optional[float] = None,
             synthetic_overrides: Optional[dict] = None, num_threads: Optional[int] = None,
             progress: bool = True, tensorboard: bool = False) -> dict:
    """Generate the data if needed, train, evaluate, plot; print the summary line.

    Args:
        config (str): Demo config (see :func:`build_synthetic_config`), e.g.
            :data:`projects.synthetic_ablations.DEMO_CONFIG`.
        work_dir (str): Output folder (logs, checkpoint, ``curves.png``).
        data_root (str): Dataset folder, generated when missing or different.
        seed (int): Training seed.
        max_iters (int, optional): Overrides the config's training iterations.
        val_interval (int, optional): Overrides the validation interval.
        max_train_minutes (float, optional): Stop training after this many
            minutes (then evaluate); the learning-rate schedule is not
            shortened, so a stopped run ends at a higher learning rate.
        synthetic_overrides (dict, optional): Updates the config's
            ``synthetic_data`` (e.g. ``num_train``).
        num_threads (int, optional): ``torch.set_num_threads`` for the run.
        progress (bool): Progress bars for data generation and evaluation.
        tensorboard (bool): Also log scalars for TensorBoard (in
            ``<work_dir>/<timestamp>/vis_data``); needs the ``tensorboard``
            package, which is not among mmdeform's dependencies.

    Returns:
        dict: ``metrics`` (the last validation's, ``coco/bbox_mAP`` ...),
        ``seconds``, ``work_dir``, ``log_dir``, ``checkpoint``, ``curves``,
        ``iters`` (iterations trained) and ``line`` (the printed summary).
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    cfg = build_synthetic_config(config, work_dir, data_root, seed, max_iters, val_interval,
                                 synthetic_overrides)
    if tensorboard:
        _add_tensorboard(cfg)
    # unique names: mmengine keeps one logger and one visualizer per name in a process
    cfg.experiment_name = f'demo_seed{seed}_{uuid.uuid4().hex[:8]}'
    cfg.visualizer.name = cfg.experiment_name
    start = time.perf_counter()
    prepare_synthetic_data(cfg.data_root, cfg.synthetic_data, progress=progress)
    runner, metrics = train_and_evaluate(cfg, max_train_minutes, progress)
    seconds = time.perf_counter() - start
    result = dict(metrics=metrics, seconds=seconds, work_dir=work_dir, iters=runner.iter,
                  log_dir=runner.log_dir,
                  checkpoint=osp.join(work_dir, f'iter_{runner.iter}.pth'),
                  curves=osp.join(work_dir, 'curves.png'))
    plot_curves(osp.join(runner.log_dir, 'vis_data', 'scalars.json'), result['curves'],
                title=f'{osp.basename(config)} (seed {seed})')
    result['line'] = (f'demo: bbox mAP={metrics[MAP_KEY]:.3f} in {seconds:.0f} s; '
                      f'outputs in {work_dir}')
    print(result['line'], flush=True)
    return result
