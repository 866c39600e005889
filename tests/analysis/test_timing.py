"""The one timing helper (mmdeform.analysis.timing)."""
import time

import torch

from mmdeform.analysis.timing import time_calls


def test_time_calls_times_only_the_timed_calls():
    calls = []

    def fn():
        calls.append(len(calls))
        time.sleep(0.05 if len(calls) > 2 else 0.0)  # the two warm-up calls are fast

    seconds = time_calls(fn, torch.device('cpu'), iters=2, warmup=2)
    assert calls == [0, 1, 2, 3]
    assert 0.1 <= seconds < 1.0
    assert time_calls(fn, torch.device('cpu'), iters=0, warmup=1) < 0.05
