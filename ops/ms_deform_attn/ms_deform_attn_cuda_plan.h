// Host-side launch planning of the CUDA multi-scale deformable attention
// kernels: problem geometry, block size, shared-memory tile size, vector width,
// the size limits and the sort of the deterministic path. Included by
// ms_deform_attn_cuda.cu and by the CPU emulation of the kernels
// (tests/ops/cuda_cpu), so both launch with exactly the same geometry. Nothing
// here touches a GPU: the number of SMs is a parameter.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <tuple>

#include "ms_deform_attn_cuda.cuh"

namespace mmdeform {
namespace ms_deform_attn_cuda {

inline constexpr int kMaxThreads = 256;
inline constexpr int64_t kTileBytes = 24 * 1024;
// Dynamic shared memory a block gets without cudaFuncSetAttribute.
inline constexpr int64_t kMaxSharedBytes = 48 * 1024;
// Threads of a block of corner_keys_kernel, and its grid cap per SM.
inline constexpr int kKeyThreads = 256;
inline constexpr int64_t kKeyBlocksPerSm = 64;

struct Launch {
  int threads;
  unsigned blocks;
  size_t smem;
};

template <typename scalar_t>
constexpr int max_vec() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

inline bool aligned(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

// Refuses sizes the kernels index with int: S, M * D and L * P.
inline void check_launch_sizes(at::IntArrayRef value_sizes, at::IntArrayRef locs_sizes) {
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  TORCH_CHECK(value_sizes[1] < kMaxInt && value_sizes[2] * value_sizes[3] < kMaxInt &&
                  locs_sizes[3] * locs_sizes[4] < kMaxInt,
              "ms_deform_attn_cuda: S, M * D and L * P must each be below 2^31, got value ",
              value_sizes, " and sampling_locations ", locs_sizes);
}

// Sizes of the problem and the lane group of `vec` channels per lane, from
// value (N, S, M, D) and sampling_locations (N, Lq, M, L, P, 2).
inline Geometry make_geometry(at::IntArrayRef value_sizes, at::IntArrayRef locs_sizes, int vec) {
  Geometry g{};
  g.num_value = value_sizes[1];
  g.heads = static_cast<int>(value_sizes[2]);
  g.channels = static_cast<int>(value_sizes[3]);
  g.num_query = locs_sizes[1];
  g.points = static_cast<int>(locs_sizes[4]);
  g.samples = static_cast<int>(locs_sizes[3] * locs_sizes[4]);
  g.num_items = value_sizes[0] * g.num_query * g.heads;
  g.chunks = g.channels / vec;
  g.group = 1;
  g.log_group = 0;
  while (g.group < g.chunks && g.group < 32) {
    g.group *= 2;
    ++g.log_group;
  }
  g.rounds = (g.chunks + g.group - 1) / g.group;
  return g;
}

// Block size (halved down to 64 threads while the grid would not give every
// SM two blocks), shared tile size and grid for `items` lane groups on a GPU
// with `sms` multiprocessors. Sets g.tile and g.tile_stride.
inline Launch plan(Geometry& g, int64_t items, int64_t bytes_per_sample, int sms) {
  Launch launch{kMaxThreads, 0, 0};
  auto blocks_for = [&](int threads) {
    const int64_t per_block = threads >> g.log_group;
    return (items + per_block - 1) / per_block;
  };
  while (launch.threads > 64 && blocks_for(launch.threads) < 2 * sms) launch.threads /= 2;
  const int64_t blocks = blocks_for(launch.threads);
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(),
              "ms_deform_attn_cuda: problem too large for one launch (", items, " items)");
  launch.blocks = static_cast<unsigned>(blocks);
  const int64_t per_block = launch.threads >> g.log_group;
  // Items are tile_stride = tile | 1 cells apart (odd), so the lane groups of a
  // warp read different shared-memory banks; that can exceed kTileBytes by at
  // most half (tile = 2), which stays below kMaxSharedBytes.
  const int64_t fit =
      bytes_per_sample > 0 ? std::max<int64_t>(1, kTileBytes / (per_block * bytes_per_sample)) : 1;
  g.tile = static_cast<int>(std::min<int64_t>(g.samples, fit));
  g.tile_stride = g.tile | 1;
  launch.smem = static_cast<size_t>(per_block * g.tile_stride * bytes_per_sample);
  return launch;
}

// forward_kernel: per (item, sample) the corner tokens and (lh, lw, weight).
template <typename scalar_t>
Launch plan_forward(Geometry& g, int sms) {
  using acc_t = at::opmath_type<scalar_t>;
  return plan(g, g.num_items, sizeof(Vec<int, 4>) + sizeof(Vec<acc_t, 4>), sms);
}

// backward_kernel: the forward's tile plus the per-sample partial sums.
template <typename scalar_t>
Launch plan_backward(Geometry& g, int sms) {
  using acc_t = at::opmath_type<scalar_t>;
  return plan(g, g.num_items, sizeof(Vec<int, 4>) + 2 * sizeof(Vec<acc_t, 4>), sms);
}

// gather_grad_value_kernel: one lane group per value row, no shared memory.
inline Launch plan_gather(Geometry& g, int64_t num_rows, int sms) {
  return plan(g, num_rows, 0, sms);
}

// corner_keys_kernel: a grid-stride loop over the samples.
inline Launch plan_corner_keys(int64_t num_samples, int sms) {
  const int64_t blocks = std::min<int64_t>((num_samples + kKeyThreads - 1) / kKeyThreads,
                                           kKeyBlocksPerSm * sms);
  return Launch{kKeyThreads, static_cast<unsigned>(blocks), 0};
}

// The vector width with_vec picks: the widest that divides D and keeps every
// pointer in `ptrs` aligned, else 1.
template <typename scalar_t>
int pick_vec(int64_t channels, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = max_vec<scalar_t>();
  bool wide = channels % kVec == 0;
  for (const void* p : ptrs) wide = wide && aligned(p, kVec * sizeof(scalar_t));
  return wide ? kVec : 1;
}

// Calls body.template operator()<VEC>() with pick_vec's width.
template <typename scalar_t, typename Body>
void with_vec(int64_t channels, std::initializer_list<const void*> ptrs, Body&& body) {
  if (pick_vec<scalar_t>(channels, ptrs) == max_vec<scalar_t>()) {
    body.template operator()<max_vec<scalar_t>()>();
  } else {
    body.template operator()<1>();
  }
}

// Number of (sample, corner) entries the deterministic backward sorts, after
// checking its limits. Keys are int32 (radix sort passes scale with the key
// width), hence the limit on the number of value rows N * S * M; at::sort takes
// at most 2^31 - 1 entries (the Python autograd formula gives the same limit a
// fuller message before calling the backward).
inline int64_t deterministic_entries(at::IntArrayRef value_sizes, const Geometry& g) {
  const int64_t num_rows = value_sizes[0] * value_sizes[1] * value_sizes[2];
  TORCH_CHECK(num_rows < std::numeric_limits<int>::max(),
              "ms_deform_attn_cuda: the deterministic backward needs N * S * M < 2^31, got "
              "value of shape ", value_sizes);
  const int64_t entries = 4 * g.num_items * g.samples;
  TORCH_CHECK(entries <= std::numeric_limits<int>::max(),
              "ms_deform_attn_cuda: the deterministic backward sorts 4 * N * Lq * M * L * P = ",
              entries, " entries, more than the 2^31 - 1 that at::sort takes; use the default "
              "(atomic) backward or a smaller batch");
  return entries;
}

// The sort step of the deterministic backward on the keys of
// corner_keys_kernel (int32, on any device): (order, row_start), where a stable
// sort groups the entries of each of the num_rows rows in ascending entry
// order and row_start[r] .. row_start[r + 1] is row r's segment of `order`.
inline std::tuple<at::Tensor, at::Tensor> sort_corner_keys(const at::Tensor& keys,
                                                           int64_t num_rows) {
  auto [sorted_keys, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto row_start = at::searchsorted(sorted_keys, at::arange(num_rows + 1, keys.options()));
  return {order, row_start};
}

}  // namespace ms_deform_attn_cuda
}  // namespace mmdeform
