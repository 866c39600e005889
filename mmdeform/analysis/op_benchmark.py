"""Benchmark of the compiled ms_deform_attn op against the pure-PyTorch reference.

What ``tools/benchmark_op.py`` prints: for each shape of :data:`SHAPES`,
forward and forward+backward time and peak extra memory of both backends,
and the ratios reference / compiled, all measured in the same run. Times are
medians over rounds in which the two backends take turns
(:func:`time_in_rounds`: each round one warm-up call, then five timed calls;
at least ``repeats`` timed calls each and ``min_seconds`` per shape and
mode), so that load from other tenants of a shared machine falls on both
alike.

CPU peak memory is measured in a fresh subprocess per case
(``python -m mmdeform.analysis.op_benchmark CASE_JSON``) as the growth of
the process' peak resident set size (VmHWM, reset before the run) during one
forward+backward, with glibc told to map every allocation of 64 KiB or more
separately so that freed tensors leave the resident set at once; CUDA peak
memory with torch.cuda.max_memory_allocated. "mem ratio floor" is what any
implementation must return (output and the three input gradients) divided by
the reference's peak: no kernel's ratio can be meaningfully lower (the
resident-set figure can come out a few per cent under it when some returned
pages were already resident). The CUDA table also gives the effective
bandwidth: the bytes the op must at least read and write (value, locations,
weights, output; for backward also their gradients) divided by the time.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from mmdeform.ops import ms_deform_attn, ms_deform_attn_reference
from mmdeform.ops.op_inputs import make_op_inputs

from .timing import time_calls

IMPLS = {'compiled': ms_deform_attn, 'reference': ms_deform_attn_reference}


def level_shapes_for_image(height, width, strides=(8, 16, 32, 64)):
    return [(-(-height // s), -(-width // s)) for s in strides]


SHAPES = {
    'cpu': {
        'encoder 512x512': dict(levels=[(64, 64), (32, 32), (16, 16), (8, 8)], n=1,
                                num_query=None),
        'decoder 512x512 (Lq=300)': dict(levels=[(64, 64), (32, 32), (16, 16), (8, 8)], n=1,
                                         num_query=300),
    },
    'cuda': {
        # A COCO image of 640x480 resized to 800x1067 (issue 14): levels 100x134 .. 13x17.
        'encoder 800x1067': dict(levels=level_shapes_for_image(800, 1067), n=2, num_query=None),
        'decoder 800x1067 (Lq=300)': dict(levels=level_shapes_for_image(800, 1067), n=2,
                                          num_query=300),
        'B=4, 64..8, Lq=10000': dict(levels=[(64, 64), (32, 32), (16, 16), (8, 8)], n=4,
                                     num_query=10000),
    },
}


def make_inputs(levels, n, num_query, device, dtype, heads=8, channels=32, points=4, seed=0):
    """:func:`~mmdeform.ops.op_inputs.make_op_inputs` of a benchmark case: ``Lq = S``
    (the encoder) when ``num_query`` is None, locations in [0, 1], weights summing to 1
    per head, value / locations / weights with gradients."""
    num_query = sum(h * w for h, w in levels) if num_query is None else num_query
    return make_op_inputs(levels, n=n, m=heads, d=channels, lq=num_query, p=points, dtype=dtype,
                          spread=(0.0, 1.0), seed=seed, requires_grad=True, device=device,
                          weight_init='normalized')


def time_in_rounds(fns, device, repeats, min_seconds, per_round=5):
    """Median wall time of each callable in ``fns`` (a dict), measured in rounds.

    A round gives each function one untimed call (its caches warm again after
    the other's run) and then ``per_round`` timed calls; rounds go on until
    every function has at least ``repeats`` timings and ``min_seconds`` have
    passed. Slow spells of a shared machine (other tenants' load on the caches
    and memory bus) thus fall on all functions alike, and none runs right
    after another has flushed its data out of the caches.
    """
    times = {name: [] for name in fns}
    start_all = time.perf_counter()
    while (min(len(t) for t in times.values()) < repeats
           or time.perf_counter() - start_all < min_seconds):
        for name, fn in fns.items():
            time_calls(fn, device, iters=0, warmup=1)
            times[name] += [time_calls(fn, device) for _ in range(per_round)]
    return ({name: statistics.median(t) for name, t in times.items()},
            min(len(t) for t in times.values()))


def run_case(impl, inputs, grad_out):
    def forward():
        with torch.no_grad():
            return IMPLS[impl](*inputs)

    def forward_backward():
        out = IMPLS[impl](*inputs)
        torch.autograd.grad(out, (inputs[0], inputs[3], inputs[4]), grad_out)

    return forward, forward_backward


def measure_cpu_memory(case, impl, dtype):
    """Runs one forward+backward in a subprocess; returns its peak RSS growth (bytes)."""
    cmd = [sys.executable, '-m', __name__, json.dumps([case, impl, str(dtype)])]
    # Every allocation of 64 KiB or more gets its own mapping, returned to the
    # system when freed: the resident set then follows the live tensors, and
    # the peak does not depend on what glibc's heap happened to keep cached.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return int(result.stdout.strip().splitlines()[-1])


def memory_probe(arg):
    """Subprocess body of :func:`measure_cpu_memory`: prints the peak RSS growth."""
    case, impl, dtype_name = json.loads(arg)
    dtype = getattr(torch, dtype_name.replace('torch.', ''))
    spec = SHAPES['cpu'][case]
    # Warm up on a tiny input (thread pools, one-time allocations of the
    # libraries), so that the real run's growth is the op's own memory.
    tiny = make_inputs([(4, 4), (2, 2)], 1, 8, torch.device('cpu'), dtype)
    run_case(impl, tiny, torch.rand(1, 8, 8 * 32, dtype=dtype))[1]()
    inputs = make_inputs(spec['levels'], spec['n'], spec['num_query'], torch.device('cpu'), dtype)
    grad_out = torch.rand(inputs[3].shape[0], inputs[3].shape[1], 8 * 32, dtype=dtype)
    before = _reset_peak_rss()
    run_case(impl, inputs, grad_out)[1]()
    print(_peak_rss() - before)


def _peak_rss():
    """Peak resident set size of this process in bytes (Linux /proc)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('op_benchmark: no VmHWM in /proc/self/status')


def _reset_peak_rss():
    """Resets the peak RSS to the current RSS; returns it (bytes).

    getrusage's ru_maxrss is no use here: Linux carries it over from the parent
    across fork + exec.
    """
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return _peak_rss()


def measure_cuda_memory(impl, inputs, grad_out, device):
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run_case(impl, inputs, grad_out)[1]()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def minimum_bytes(inputs, grad_out):
    value, _, _, locations, weights = inputs
    forward = sum(t.numel() * t.element_size() for t in (value, locations, weights, grad_out))
    return forward, 2 * forward


def returned_bytes(inputs, grad_out):
    """Bytes a forward+backward must hand back whatever the implementation:
    the output and the gradients of value, locations and weights."""
    value, _, _, locations, weights = inputs
    return sum(t.numel() * t.element_size() for t in (grad_out, value, locations, weights))


def benchmark(device, dtype, repeats, min_seconds, shapes=None):
    rows = []
    for case, spec in SHAPES[device.type].items():
        if shapes and case not in shapes:
            continue
        inputs = make_inputs(spec['levels'], spec['n'], spec['num_query'], device, dtype)
        grad_out = torch.rand(inputs[3].shape[0], inputs[3].shape[1], 8 * 32, device=device,
                              dtype=dtype)
        row = dict(case=case, lq=inputs[3].shape[1])
        cases = {impl: run_case(impl, inputs, grad_out) for impl in IMPLS}
        for mode, index in (('fwd', 0), ('fwdbwd', 1)):
            medians, row[f'{mode}_repeats'] = time_in_rounds(
                {impl: fns[index] for impl, fns in cases.items()}, device, repeats, min_seconds)
            for impl, median in medians.items():
                row[f'{impl}_{mode}'] = median
        for impl in IMPLS:
            if device.type == 'cuda':
                row[f'{impl}_mem'] = measure_cuda_memory(impl, inputs, grad_out, device)
            else:
                row[f'{impl}_mem'] = measure_cpu_memory(case, impl, dtype)
        row['bytes_fwd'], row['bytes_fwdbwd'] = minimum_bytes(inputs, grad_out)
        row['bytes_returned'] = returned_bytes(inputs, grad_out)
        rows.append(row)
    return rows


def print_table(rows, device):
    header = ('| shape | Lq | fwd compiled | fwd reference | fwd speed-up | fwd+bwd compiled '
              '| fwd+bwd reference | fwd+bwd speed-up | peak mem compiled | peak mem reference '
              '| mem ratio | mem ratio floor | repeats |')
    if device.type == 'cuda':
        header += ' fwd GB/s | fwd+bwd GB/s |'
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for r in rows:
        line = (f"| {r['case']} | {r['lq']} | {r['compiled_fwd'] * 1e3:.2f} ms "
                f"| {r['reference_fwd'] * 1e3:.2f} ms "
                f"| {r['reference_fwd'] / r['compiled_fwd']:.1f}x "
                f"| {r['compiled_fwdbwd'] * 1e3:.2f} ms | {r['reference_fwdbwd'] * 1e3:.2f} ms "
                f"| {r['reference_fwdbwd'] / r['compiled_fwdbwd']:.1f}x "
                f"| {r['compiled_mem'] / 2**20:.1f} MiB | {r['reference_mem'] / 2**20:.1f} MiB "
                f"| {r['compiled_mem'] / max(r['reference_mem'], 1):.3f} "
                f"| {r['bytes_returned'] / max(r['reference_mem'], 1):.3f} "
                f"| {r['fwd_repeats']}/{r['fwdbwd_repeats']} |")
        if device.type == 'cuda':
            line += (f" {r['bytes_fwd'] / r['compiled_fwd'] / 1e9:.0f} "
                     f"| {r['bytes_fwdbwd'] / r['compiled_fwdbwd'] / 1e9:.0f} |")
        print(line)



if __name__ == '__main__':
    memory_probe(sys.argv[1])
