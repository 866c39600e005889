"""Wall-clock timing of callables on a device: the one timing helper of the package.

CUDA runs asynchronously, so every measurement synchronizes the device before
the clock starts and before it stops (on the CPU there is nothing to wait for).
Used by the model benchmark, the op benchmark, the comparison with
``transformers`` and the GPU check.
"""
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA); nothing on other devices."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, iters: int = 1,
               warmup: int = 0) -> float:
    """Seconds that ``iters`` calls of ``fn`` take after ``warmup`` untimed calls.

    Args:
        fn (Callable): Called without arguments; its result is dropped.
        device (torch.device): Where ``fn`` computes (synchronized around the
            timed calls).
        iters (int): Timed calls.
        warmup (int): Untimed calls first.

    Returns:
        float: Wall-clock seconds of the ``iters`` calls together.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return time.perf_counter() - start
