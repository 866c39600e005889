"""Runs the emulated CUDA kernels under a sanitizer (started by test_cuda_emu_sanitize.py).

Usage: ``python sanitize_run.py {tsan,asan} [--misaligned]`` in a process whose
environment comes from ``emu_build.sanitizer_env`` (the sanitizer runtime preloaded).
Without ``--misaligned``: forward, atomic and deterministic backward on a few cases
(several warps per block, several rounds, several tiles, 16-bit values, hostile level
sizes with the host check skipped), each checked against the reference; prints
``sanitize: <n> runs clean``. With ``--misaligned`` (asan): a forced 16-byte vector load
from a misaligned value pointer, which UndefinedBehaviorSanitizer must stop; exits 3 if
it returns.
"""
import argparse
import os
import sys

# The runtime is loaded by now; the compiler started by the build must not inherit it.
os.environ.pop('LD_PRELOAD', None)

import emu_build  # noqa: E402
import torch  # noqa: E402
from emu_cases import (  # noqa: E402
    CASES,
    H100_SMS,
    SMALL_SMS,
    assert_matches,
    emulate,
    grad_output_for,
    make_inputs,
    reference,
)

RUNS = [  # (case, dtype, sms)
    ('D6', torch.float32, H100_SMS),
    ('D160_rounds', torch.float32, H100_SMS),
    ('two_tiles_D32', torch.float32, H100_SMS),
    ('D32_zero_weights', torch.float16, H100_SMS),
    ('D8', torch.float64, H100_SMS),
]
SMALL_GPU = dict(shapes=[(6, 5)], n=1, m=8, d=32, lq=32, p=1)  # 256 threads, 8 warps
TOLS = {torch.float64: (1e-12,) * 4, torch.float32: (1e-5,) * 4,
        torch.float16: (2e-3, 2e-3, 1e-5, 1e-5)}


def run_cases(ops):
    runs = 0
    cases = [(CASES[name], dtype, sms) for name, dtype, sms in RUNS]
    for case, dtype, sms in [*cases, (SMALL_GPU, torch.float32, SMALL_SMS)]:
        inputs = make_inputs(dtype, coord_dtype=torch.float32 if dtype == torch.float16 else None,
                             **case)
        grad_output = grad_output_for(inputs)
        expected = reference(inputs, grad_output)
        for deterministic in (False, True):
            results, _, _ = emulate(ops, inputs, grad_output, sms=sms,
                                    deterministic=deterministic)
            assert_matches(results, expected, TOLS[dtype])
            runs += 1
    # Level sizes the host check would refuse, unchecked (CUDA graph capture).
    big = 2**62
    value = torch.rand(1, 4, 1, 2, dtype=torch.float64)
    locs = torch.rand(1, 3, 1, 2, 1, 2, dtype=torch.float64)
    weights = torch.rand(1, 3, 1, 2, 1, dtype=torch.float64)
    shapes = torch.tensor([[big, 1], [1, 4]])
    starts = torch.tensor([0, big])
    ops.forward(value, shapes, starts, locs, weights, H100_SMS, 0, False)
    for deterministic in (False, True):
        ops.backward(value, shapes, starts, locs, weights, torch.ones(1, 3, 2, dtype=torch.float64),
                     deterministic, H100_SMS, 0, False)
        runs += 1
    return runs


def run_misaligned(ops):
    inputs = make_inputs(torch.float32, **CASES['D32_zero_weights'])
    value = inputs[0]
    inputs[0] = torch.empty(value.numel() + 1)[1:].view(value.shape).copy_(value)
    ops.forward(*inputs, H100_SMS, 4, True)  # VEC = 4 forced on a 4-byte-aligned pointer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('variant', choices=['tsan', 'asan'])
    parser.add_argument('--misaligned', action='store_true')
    parser.add_argument('--barrier-timeout', type=float, default=120.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    built = emu_build.build(args.variant)
    ops = built['ops']
    ops.set_barrier_timeout(args.barrier_timeout)
    print(f'sanitize: {args.variant} build ready in {built["seconds"]:.1f} s', flush=True)
    if args.misaligned:
        run_misaligned(ops)
        print('sanitize: the misaligned vector load was not reported', flush=True)
        return 3
    print(f'sanitize: {run_cases(ops)} runs clean', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
