"""benchmark_model on the tiny model, 2 timed iterations."""

import pytest
import torch

from mmdeform.analysis import benchmark_model, format_benchmark
from mmdeform.apis import init_detector

pytestmark = pytest.mark.usefixtures('one_thread')


def test_benchmark_bf16(tiny_config):
    model = init_detector(tiny_config)
    calls = []
    hook = model.backbone.register_forward_pre_hook(
        lambda module, args: calls.append((args[0].shape[0], torch.is_autocast_enabled('cpu'))))
    try:
        results = benchmark_model(model, (64, 64), batch_sizes=(1, 2), num_warmup=1,
                                  num_iters=2, amp='bf16')
    finally:
        hook.remove()
    assert calls == [(1, True)] * 3 + [(2, True)] * 3  # 1 warm-up + 2 timed per batch size
    assert [r.batch_size for r in results] == [1, 2]
    for r in results:
        assert r.fps > 0 and r.num_iters == 2
        assert r.fps == pytest.approx(1000 * r.batch_size / r.latency_ms)
    assert 'images/s' in format_benchmark(results)
    with pytest.raises(ValueError, match='amp'):
        benchmark_model(model, (64, 64), amp='int8')
