"""What the GPU check's worker processes run (``.dev_scripts/run_gpu_check.py --worker NAME``).

Each worker prints its results as ``RESULT_PREFIX`` + JSON lines as soon as it
has them, so that a worker killed at its time limit still reports what it
measured. Workers:

- ``device-info``: torch, CUDA and the device (name, compute capability).
- ``backend``: which backend ``ms_deform_attn`` uses on the device, and its
  largest difference from the reference on a small random input.
- ``coco-train-step``: ms per training iteration and peak memory of a config's
  detector on a random COCO-shaped batch (random boxes), in fp32 and AMP.
- ``inference``: images/s of a config's detector in fp32, bf16 autocast and
  ``torch.compile`` (:func:`mmdeform.analysis.benchmark.benchmark_model`).

Models are built from the config through the registry with random weights
(nothing is downloaded). On the CPU the same code runs with tiny sizes.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .runner import RESULT_PREFIX


def report(**result) -> None:
    """Print one result line for the parent (see the module docstring)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _peak_memory_mib(device: torch.device) -> Optional[float]:
    if device.type != 'cuda':
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def device_info(device: torch.device) -> None:
    """Report torch, CUDA, Python and the device."""
    info = dict(torch=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), cpus=os.cpu_count())
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f'{props.major}.{props.minor}',
                    multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info.update(name=f'CPU {platform.machine()}', capability=None)
    report(**info)


def backend_check(device: torch.device) -> None:
    """Report the op's backend on ``device`` and its difference from the reference."""
    from mmdeform.ops import get_backend, ms_deform_attn, ms_deform_attn_reference
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[6, 7], [3, 4]])
    starts = torch.tensor([0, 42])
    value = torch.randn(2, 54, 4, 8, generator=gen)
    locations = torch.rand(2, 9, 4, 2, 3, 2, generator=gen) * 1.2 - 0.1
    weights = torch.rand(2, 9, 4, 2, 3, generator=gen)
    inputs = [t.to(device) for t in (value, shapes, starts, locations, weights)]
    difference = (ms_deform_attn(*inputs) - ms_deform_attn_reference(*inputs)).abs().max()
    report(backend=get_backend(device), max_abs_difference=float(difference))


def _build_detector(config: str, device: torch.device):
    from mmdeform.apis import init_detector
    return init_detector(config, None, device=device)


def _amp_wrapper_cfg(cfg, device: torch.device) -> dict:
    """The config's optim wrapper as ``--amp`` makes it: float16 with a loss
    scaler on CUDA, bfloat16 on the CPU (the only dtype it allows there)."""
    wrapper = dict(cfg.optim_wrapper, type='DeviceAmpOptimWrapper')
    wrapper['dtype'] = 'float16' if device.type == 'cuda' else 'bfloat16'
    return wrapper


def coco_train_step(device: torch.device, config: str, image_size: Sequence[int],
                    batch_size: int, warmup: int, iters: int, precisions: Sequence[str]) -> None:
    """Report ms per ``model.train_step`` and peak memory for each precision.

    What is timed is mmengine's ``train_step``: data preprocessing (moving the
    batch to the device, normalizing), forward, Hungarian assignment, losses,
    backward, gradient clipping and the optimizer step of the config.
    """
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    from mmdeform.analysis.timing import time_calls
    model = _build_detector(config, device)
    model.train()
    num_classes = model.cfg.model.bbox_head.num_classes
    from mmdeform.testing import make_batch
    data = make_batch([tuple(image_size)] * batch_size, [10] * batch_size, num_classes,
                      min_box_size=4)
    for precision in precisions:
        wrapper_cfg = (dict(model.cfg.optim_wrapper) if precision == 'fp32'
                       else _amp_wrapper_cfg(model.cfg, device))
        init_default_scope('mmdeform')
        optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
        _reset_peak_memory(device)
        losses = []

        def step(losses=losses, optim_wrapper=optim_wrapper):
            losses.append(float(model.train_step(data, optim_wrapper)['loss']))

        seconds = time_calls(step, device, iters, warmup)
        report(precision=precision, dtype=str(getattr(optim_wrapper, 'cast_dtype', 'float32')),
               ms_per_iter=1000 * seconds / iters, peak_memory_mib=_peak_memory_mib(device),
               losses_finite=all(math.isfinite(v) for v in losses), last_loss=losses[-1],
               image_size=list(image_size), batch_size=batch_size)


def inference_speed(device: torch.device, config: str, image_size: Sequence[int], warmup: int,
                    iters: int, variants: Sequence[str], compile_backend: str) -> bool:
    """Report images/s at batch 1 of each variant ('fp32', 'bf16', 'compile').

    Returns:
        bool: Whether every variant ran.
    """
    from mmdeform.analysis.benchmark import benchmark_model
    model = _build_detector(config, device)
    runs: Dict[str, Callable[[], List]] = {
        'fp32': lambda: benchmark_model(model, tuple(image_size), (1, ), warmup, iters),
        'bf16': lambda: benchmark_model(model, tuple(image_size), (1, ), warmup, iters,
                                        amp='bf16'),
        # At least two untimed passes: the first one compiles.
        'compile': lambda: benchmark_model(torch.compile(model, backend=compile_backend),
                                           tuple(image_size), (1, ), max(warmup, 2), iters),
    }
    all_ran = True
    for variant in variants:
        _reset_peak_memory(device)
        start = time.perf_counter()
        try:
            result = runs[variant]()[0]
        except Exception as err:  # report it and go on with the next variant
            report(variant=variant, error=f'{type(err).__name__}: {str(err)[:500]}')
            all_ran = False
            continue
        report(variant=variant, images_per_s=result.fps, latency_ms=result.latency_ms,
               wall_s=time.perf_counter() - start, peak_memory_mib=_peak_memory_mib(device),
               image_size=list(image_size), compile_backend=compile_backend
               if variant == 'compile' else None)
    return all_ran


def run_worker(argv: Optional[Sequence[str]] = None) -> int:
    """Entry of ``.dev_scripts/run_gpu_check.py --worker NAME``; returns the exit status."""
    parser = argparse.ArgumentParser(description='a GPU check worker')
    parser.add_argument('--worker', required=True,
                        choices=['device-info', 'backend', 'coco-train-step', 'inference'])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--config')
    parser.add_argument('--image-size', type=int, nargs=2, default=(800, 1333))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--variants', nargs='+', default=['fp32', 'bf16', 'compile'])
    parser.add_argument('--precisions', nargs='+', default=['fp32', 'amp'])
    parser.add_argument('--compile-backend', default='inductor')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_check worker: --device cuda, but torch sees no CUDA device', file=sys.stderr)
        return 2
    if args.worker in ('coco-train-step', 'inference') and not args.config:
        parser.error(f'--worker {args.worker} needs --config')
    if args.worker == 'device-info':
        device_info(device)
    elif args.worker == 'backend':
        backend_check(device)
    elif args.worker == 'coco-train-step':
        coco_train_step(device, args.config, args.image_size, args.batch_size, args.warmup,
                        args.iters, args.precisions)
    elif not inference_speed(device, args.config, args.image_size, args.warmup, args.iters,
                             args.variants, args.compile_backend):
        return 1
    return 0
