"""The op benchmark behind tools/benchmark_op.py (mmdeform.analysis.op_benchmark): how it
takes turns between backends and what its memory figure means. No timing is asserted (the
benchmark is not a test)."""
import pytest
import torch

from mmdeform.analysis import op_benchmark as bench
from mmdeform.ops import extension_available


def test_rounds_alternate_with_a_warm_up_each():
    calls = []
    fns = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    medians, count = bench.time_in_rounds(fns, torch.device('cpu'), repeats=7, min_seconds=0)
    # Two rounds reach 7 timings: each round is one untimed and five timed calls.
    assert calls == (['a'] * 6 + ['b'] * 6) * 2
    assert count == 10
    assert set(medians) == {'a', 'b'} and all(m >= 0 for m in medians.values())


def test_returned_bytes_are_output_and_input_gradients():
    inputs = bench.make_inputs([(4, 5), (2, 3)], 2, 7, torch.device('cpu'), torch.float32)
    grad_out = torch.rand(2, 7, 8 * 32)
    value, _, _, locations, weights = inputs
    expected = 4 * (value.numel() + locations.numel() + weights.numel() + grad_out.numel())
    assert bench.returned_bytes(inputs, grad_out) == expected


@pytest.mark.skipif(not extension_available(), reason='needs the compiled extension')
def test_memory_probe_follows_live_tensors():
    """The compiled op's peak is what it returns; the reference keeps more."""
    case = 'decoder 512x512 (Lq=300)'
    spec = bench.SHAPES['cpu'][case]
    inputs = bench.make_inputs(spec['levels'], spec['n'], spec['num_query'],
                               torch.device('cpu'), torch.float32)
    floor = bench.returned_bytes(inputs, torch.empty(1, spec['num_query'], 8 * 32))
    compiled = bench.measure_cpu_memory(case, 'compiled', torch.float32)
    reference = bench.measure_cpu_memory(case, 'reference', torch.float32)
    assert 0.9 * floor <= compiled <= 1.1 * floor
    assert reference > 2 * compiled
