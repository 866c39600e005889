// Device kernels of the deterministic backward of the CUDA multi-scale
// deformable attention (the path is described at the top of
// ms_deform_attn_cuda.cu, which launches them; the CPU emulation in
// tests/ops/cuda_cpu runs them too).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "ms_deform_attn_cuda.cuh"

namespace mmdeform {
namespace ms_deform_attn_cuda {

// For every (sample, corner) entry e = 4 * sample + corner: the row of value
// (viewed as (N * S * M, D)) it reads, or `num_rows` when the corner is
// outside its level, and its weight (attention weight * bilinear weight).
template <typename scalar_t, typename coord_t>
__global__ void corner_keys_kernel(const coord_t* __restrict__ locs,
                                   const coord_t* __restrict__ attn,
                                   const int64_t* __restrict__ shapes,
                                   const int64_t* __restrict__ starts, int* __restrict__ keys,
                                   at::opmath_type<scalar_t>* __restrict__ weights,
                                   int64_t num_rows, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_samples = g.num_items * g.samples;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       s < num_samples; s += stride) {
    const int64_t item = s / g.samples;
    const int lp = static_cast<int>(s % g.samples);
    const int64_t n = item / (g.num_query * g.heads), m = item % g.heads;
    const auto f = read_sample<coord_t, acc_t>(locs, shapes, starts, s, lp, g);
    const acc_t a = static_cast<acc_t>(attn[s]);
    acc_t bw[4], dw[4], dh[4];
    corner_weights(f.lh, f.lw, bw, dw, dh);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const bool inside = f.tok[c] >= 0;
      keys[4 * s + c] =
          static_cast<int>(inside ? (n * g.num_value + f.tok[c]) * g.heads + m : num_rows);
      weights[4 * s + c] = inside ? a * bw[c] : acc_t(0);
    }
  }
}

// One lane group per value row: sums weight * grad_output over the entries
// that read the row, in the order of the stable sort (ascending entry index),
// so the result is bitwise reproducible. Every row is written (zero when no
// sample reads it).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(256)
    gather_grad_value_kernel(const int64_t* __restrict__ order,
                             const int64_t* __restrict__ row_start,
                             const at::opmath_type<scalar_t>* __restrict__ weights,
                             const scalar_t* __restrict__ grad_out,
                             scalar_t* __restrict__ grad_value, int64_t num_rows, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int local = threadIdx.x >> g.log_group, lane = threadIdx.x & (g.group - 1);
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> g.log_group) + local;
  if (r >= num_rows) return;  // no block- or warp-wide synchronization below
  const int64_t begin = row_start[r], end = row_start[r + 1];
  for (int chunk = lane; chunk < g.chunks; chunk += g.group) {
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = acc_t(0);
#pragma unroll 4
    for (int64_t i = begin; i < end; ++i) {
      const int64_t e = order[i];
      const acc_t w = weights[e];
      acc_t go[VEC];
      load_vec<VEC>(grad_out + (e / 4 / g.samples) * g.channels + chunk * VEC, go);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += w * go[k];
    }
    store_vec<VEC>(grad_value + r * g.channels + chunk * VEC, acc);
  }
}

}  // namespace ms_deform_attn_cuda
}  // namespace mmdeform
