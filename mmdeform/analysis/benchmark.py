"""Inference speed of a detector: images per second at given batch sizes.

What is timed: ``model(inputs, None, mode='tensor')`` on a random
(B, 3, H, W) normalized input without padding (backbone to head, every
decoder layer; no data loading, preprocessing or top-k post-processing),
under ``torch.no_grad``, after ``num_warmup`` untimed passes (which also
absorb ``torch.compile``'s compilation). On CUDA each timing is bracketed by
``torch.cuda.synchronize``.
"""
import contextlib
from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch

from .timing import time_calls

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass
class BenchmarkResult:
    """Timing of one batch size.

    Attributes:
        batch_size (int): B.
        fps (float): Images per second (B * iterations / seconds).
        latency_ms (float): Mean milliseconds per forward pass.
        num_iters (int): Timed iterations.
    """
    batch_size: int
    fps: float
    latency_ms: float
    num_iters: int


def benchmark_model(model: torch.nn.Module, input_shape: Tuple[int, int] = (800, 1333),
                    batch_sizes: Sequence[int] = (1, 4), num_warmup: int = 5,
                    num_iters: int = 20, amp: Optional[str] = None,
                    compile_model: bool = False) -> List[BenchmarkResult]:
    """Time the detector's forward pass (module docstring).

    Args:
        model (nn.Module): A ``DeformableDETR`` (put in eval mode).
        input_shape (tuple[int, int]): (H, W) of the input.
        batch_sizes (Sequence[int]): Batch sizes to time, in order.
        num_warmup (int): Untimed passes per batch size.
        num_iters (int): Timed passes per batch size.
        amp (str, optional): ``'bf16'`` or ``'fp16'``: run under
            ``torch.autocast`` of the model's device type with that dtype.
        compile_model (bool): Time ``torch.compile(model)`` instead.

    Returns:
        list[BenchmarkResult]: One per batch size.
    """
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f'benchmark: amp must be one of {sorted(AMP_DTYPES)} or None, '
                         f'got {amp!r}')
    if num_iters < 1 or num_warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f'benchmark: need num_iters >= 1, num_warmup >= 0 and batch sizes '
                         f'>= 1, got {num_iters}, {num_warmup}, {list(batch_sizes)}')
    device = next(model.parameters()).device
    model.eval()
    runner = torch.compile(model) if compile_model else model
    autocast = (torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp
                else contextlib.nullcontext())
    results = []
    for batch_size in batch_sizes:
        inputs = torch.randn(batch_size, 3, *input_shape, device=device)
        with torch.no_grad(), autocast:
            seconds = time_calls(partial(runner, inputs, None, mode='tensor'), device,
                                 num_iters, num_warmup)
        results.append(BenchmarkResult(batch_size=batch_size,
                                       fps=batch_size * num_iters / seconds,
                                       latency_ms=1000 * seconds / num_iters,
                                       num_iters=num_iters))
    return results


def format_benchmark(results: Sequence[BenchmarkResult], header: str = '') -> str:
    """A small table of :func:`benchmark_model`'s results."""
    lines = [header] if header else []
    lines.append(f'{"batch":>5} {"images/s":>10} {"ms/batch":>10} {"iters":>6}')
    lines += [f'{r.batch_size:>5} {r.fps:>10.2f} {r.latency_ms:>10.1f} {r.num_iters:>6}'
              for r in results]
    return '\n'.join(lines)
