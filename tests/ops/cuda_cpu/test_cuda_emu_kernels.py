"""The real CUDA kernels of ms_deform_attn, run on the CPU, against the float64 reference.

``ops/ms_deform_attn/ms_deform_attn_cuda.cuh`` and the deterministic path's kernels are
compiled unmodified with g++ against ``cuda_builtins.h`` (this folder) and launched with the
geometry the CUDA host code plans (``ms_deform_attn_cuda_plan.h``): lane groups, rounds,
shared-memory tiles, barriers, shuffles and atomics all execute. Each test also checks that
the launch took the branch it is meant to cover.
"""
import pytest
import torch
from emu_cases import (
    BLOCKS,
    CASES,
    DECODER,
    GROUP,
    H100_SMS,
    ROUNDS,
    SMALL_SMS,
    THREADS,
    TILE,
    VEC,
    assert_matches,
    emulate,
    grad_output_for,
    make_inputs,
    reference,
)

# Tolerances relative to max(1, max |reference|), for output, grad_value,
# grad_locations, grad_weights.
TOLS = {
    torch.float64: (1e-12, 1e-12, 1e-12, 1e-12),
    torch.float32: (1e-6, 1e-5, 1e-5, 1e-5),
    # 16-bit output and grad_value are rounded once; the sample gradients stay float32.
    torch.float16: (2e-3, 2e-3, 1e-5, 1e-5),
    torch.bfloat16: (1e-2, 1e-2, 1e-5, 1e-5),
}


def _samples(case):
    return len(case['shapes']) * case.get('p', 2)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('case', list(CASES.values()), ids=list(CASES))
def test_forward_and_both_backwards_match_reference(sm90, case, dtype):
    inputs = make_inputs(dtype, **case)
    grad_output = grad_output_for(inputs)
    expected = reference(inputs, grad_output)
    for deterministic in (False, True):
        results, fwd, bwd = emulate(sm90, inputs, grad_output, deterministic=deterministic)
        assert_matches(results, expected, TOLS[dtype])
    vec = 16 // inputs[0].element_size()
    assert fwd[VEC] == (vec if case['d'] % vec == 0 else 1)
    if case['d'] == 160:
        assert fwd[ROUNDS] > 1 and bwd[ROUNDS] > 1


@pytest.mark.parametrize('name, tiles', [('two_tiles_D32', 2), ('three_tiles_D1', 3)])
def test_long_items_take_several_tiles(sm90, name, tiles):
    """In float32 the tile cases split an item's L * P samples over several tiles."""
    case = CASES[name]
    inputs = make_inputs(torch.float32, **case)
    _, fwd, bwd = emulate(sm90, inputs, grad_output_for(inputs))
    assert -(-_samples(case) // fwd[TILE]) == tiles
    assert bwd[TILE] < _samples(case)


@pytest.mark.parametrize('case', ['D8', 'D32_zero_weights', 'D160_rounds'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_vector_and_scalar_atomics(emu, case, dtype):
    """sm_90 adds grad_value with float4 / float2 atomics, older GPUs with scalar ones."""
    coord = torch.float32
    inputs = make_inputs(dtype, coord_dtype=coord, **CASES[case])
    grad_output = grad_output_for(inputs)
    results, fwd, bwd = emulate(emu, inputs, grad_output)
    assert bwd[VEC] == 16 // inputs[0].element_size()
    assert_matches(results, reference(inputs, grad_output), TOLS[dtype])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('case', ['D12', 'D32_zero_weights', 'D160_rounds'])
def test_sixteen_bit_values_with_float32_geometry(sm90, case, dtype):
    """The autocast policy: value in 16 bits, locations and weights in float32."""
    inputs = make_inputs(dtype, coord_dtype=torch.float32, **CASES[case])
    assert inputs[3].dtype == inputs[4].dtype == torch.float32
    grad_output = grad_output_for(inputs)
    expected = reference(inputs, grad_output)
    for deterministic in (False, True):
        results, _, _ = emulate(sm90, inputs, grad_output, deterministic=deterministic)
        assert results[0].dtype == results[1].dtype == dtype
        assert results[2].dtype == results[3].dtype == torch.float32
        assert_matches(results, expected, TOLS[dtype])


def test_sixteen_bit_geometry(sm90):
    """Locations and weights in the value's 16-bit type (no autocast)."""
    inputs = make_inputs(torch.float16, **CASES['D32_zero_weights'])
    grad_output = grad_output_for(inputs)
    results, _, _ = emulate(sm90, inputs, grad_output)
    assert results[2].dtype == torch.float16
    assert_matches(results, reference(inputs, grad_output), (2e-3, 2e-3, 2e-2, 2e-2))


@pytest.mark.parametrize('dtype, group', [(torch.float32, 8), (torch.float16, 4)])
def test_decoder_shape_takes_64_thread_blocks_on_an_h100(sm90, dtype, group):
    inputs = make_inputs(dtype, coord_dtype=torch.float32, **DECODER)
    grad_output = grad_output_for(inputs)
    results, fwd, bwd = emulate(sm90, inputs, grad_output, sms=H100_SMS)
    assert fwd[THREADS] == bwd[THREADS] == 64 and fwd[GROUP] == group
    assert fwd[BLOCKS] == 30 * 8 // (64 // group)
    assert_matches(results, reference(inputs, grad_output), TOLS[dtype])


@pytest.mark.parametrize('case, threads', [
    # 256 items of 8-lane groups: 8 warps per block, shuffles in every warp.
    (dict(shapes=[(6, 5)], n=1, m=8, d=32, lq=32, p=2), 256),
    # 2048 one-lane items: 256-thread blocks without shuffles.
    (dict(shapes=[(4, 4), (2, 2)], n=1, m=8, d=4, lq=256, p=1), 256),
    (dict(shapes=[(4, 4), (2, 2)], n=1, m=8, d=4, lq=150, p=1), 128),
], ids=['256_threads_D32', '256_threads_D4', '128_threads_D4'])
def test_larger_blocks_on_a_small_gpu(sm90, case, threads):
    """With few SMs the host code keeps 256- or 128-thread blocks (several warps)."""
    inputs = make_inputs(torch.float32, **case)
    grad_output = grad_output_for(inputs)
    results, fwd, bwd = emulate(sm90, inputs, grad_output, sms=SMALL_SMS)
    assert fwd[THREADS] == bwd[THREADS] == threads
    assert_matches(results, reference(inputs, grad_output), TOLS[torch.float32])


def test_misaligned_value_takes_the_scalar_path(sm90):
    """A value pointer off the 16-byte grid gives VEC = 1: D = 160 lanes make 5 rounds."""
    inputs = make_inputs(torch.float32, **CASES['D160_rounds'])
    value = inputs[0]
    storage = torch.empty(value.numel() + 1, dtype=value.dtype)
    inputs[0] = storage[1:].view(value.shape).copy_(value)
    grad_output = grad_output_for(inputs)
    expected = reference(inputs, grad_output)
    for deterministic in (False, True):
        results, fwd, bwd = emulate(sm90, inputs, grad_output, deterministic=deterministic)
        assert fwd[VEC] == bwd[VEC] == 1 and fwd[ROUNDS] == 5
        assert_matches(results, expected, TOLS[torch.float32])
