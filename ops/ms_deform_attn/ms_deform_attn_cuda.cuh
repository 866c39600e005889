// Device code of the CUDA multi-scale deformable attention kernels: shared
// helpers, the forward kernel and the sample-parallel backward kernel. The
// design is described at the top of ms_deform_attn_cuda.cu, which launches
// them with the geometry of ms_deform_attn_cuda_plan.h; the deterministic-path
// kernels are in ms_deform_attn_cuda_deterministic.cuh. The CPU emulation in
// tests/ops/cuda_cpu compiles this file unmodified with g++.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

namespace mmdeform {
namespace ms_deform_attn_cuda {

// N values of type T moved with one load or store (at most 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N > 16 ? 16 : sizeof(T) * N) Vec {
  T v[N];
};

// Problem sizes and launch geometry shared by the kernels. An item is one
// (batch, query, head) triple; its L * P samples are contiguous in
// sampling_locations and attention_weights, and its D outputs are row `item`
// of the output viewed as (N * Lq * M, D).
struct Geometry {
  int64_t num_items;   // N * Lq * M
  int64_t num_value;   // S
  int64_t num_query;   // Lq
  int heads;           // M
  int channels;        // D
  int points;          // P
  int samples;         // L * P samples per item
  int chunks;          // D / VEC vectors per channel row
  int group;           // lanes per item: power of two, at most 32
  int log_group;
  int rounds;          // ceil(chunks / group): passes of a lane over its item
  int tile;            // samples per item held in shared memory at once
  int tile_stride;     // tile rounded up to odd: groups of a warp hit distinct banks
};

// Sampling geometry of one sample: four corner tokens (index into S, or -1
// when the corner lies outside its level), the fractional position, and
// whether the location is non-finite (such a sample reads NaN, as in the
// reference; its tokens are all -1).
template <typename acc_t>
struct Corners {
  int tok[4];
  acc_t lh, lw;
  bool nonfinite;
};

// Half-pixel convention of ms_deform_attn_cpu.cpp: pixel i of a level of
// width W has its centre at (i + 0.5) / W. The host checks the level sizes
// (check_level_sizes) before every launch except during CUDA graph capture;
// for that case the device code stays memory-safe on its own: a level whose
// H, W or start lies outside [0, S] reads nothing (so, with S < 2^31, no
// product below can overflow), and every token is bounded to [0, S).
template <typename acc_t>
__device__ __forceinline__ Corners<acc_t> locate(acc_t loc_x, acc_t loc_y, int64_t height,
                                                 int64_t width, int64_t start,
                                                 int64_t num_value) {
  Corners<acc_t> f;
  f.lh = acc_t(0);
  f.lw = acc_t(0);
  f.nonfinite = !(isfinite(loc_x) && isfinite(loc_y));
  for (int c = 0; c < 4; ++c) f.tok[c] = -1;
  const bool sane = height <= num_value && width <= num_value && start >= 0 &&
                    start <= num_value;
  const acc_t w_im = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t h_im = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
  const bool any = sane && h_im > acc_t(-1) && w_im > acc_t(-1) &&
                   h_im < static_cast<acc_t>(height) && w_im < static_cast<acc_t>(width);
  if (!any) return f;
  const int64_t h_low = static_cast<int64_t>(::floor(h_im));
  const int64_t w_low = static_cast<int64_t>(::floor(w_im));
  f.lh = h_im - static_cast<acc_t>(h_low);
  f.lw = w_im - static_cast<acc_t>(w_low);
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t y = h_low + (c >> 1), x = w_low + (c & 1);
    const int64_t tok = start + y * width + x;
    const bool inside = y >= 0 && y < height && x >= 0 && x < width && tok >= 0 &&
                        tok < num_value;
    f.tok[c] = inside ? static_cast<int>(tok) : -1;
  }
  return f;
}

// Bilinear weights of the corners (top-left, top-right, bottom-left,
// bottom-right) and their derivatives with respect to the pixel coordinates.
template <typename acc_t>
__device__ __forceinline__ void corner_weights(acc_t lh, acc_t lw, acc_t (&w)[4], acc_t (&dw)[4],
                                               acc_t (&dh)[4]) {
  const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
  w[0] = hh * hw;
  w[1] = hh * lw;
  w[2] = lh * hw;
  w[3] = lh * lw;
  dw[0] = -hh;
  dw[1] = hh;
  dw[2] = -lh;
  dw[3] = lh;
  dh[0] = -hw;
  dh[1] = -lw;
  dh[2] = hw;
  dh[3] = lw;
}

// Reads sample `lp` (level-major inside an item) of item `item`.
template <typename coord_t, typename acc_t>
__device__ __forceinline__ Corners<acc_t> read_sample(const coord_t* __restrict__ locs,
                                                      const int64_t* __restrict__ shapes,
                                                      const int64_t* __restrict__ starts,
                                                      int64_t sample, int lp,
                                                      const Geometry& g) {
  const int l = lp / g.points;
  return locate<acc_t>(static_cast<acc_t>(locs[2 * sample]),
                       static_cast<acc_t>(locs[2 * sample + 1]), shapes[2 * l], shapes[2 * l + 1],
                       starts[l], g.num_value);
}

template <int VEC, typename scalar_t>
__device__ __forceinline__ Vec<scalar_t, VEC> load_raw(const scalar_t* p) {
  return *reinterpret_cast<const Vec<scalar_t, VEC>*>(p);
}

template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_vec(const scalar_t* p, acc_t (&out)[VEC]) {
  const Vec<scalar_t, VEC> v = *reinterpret_cast<const Vec<scalar_t, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<acc_t>(v.v[k]);
}

template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_vec(scalar_t* p, const acc_t (&in)[VEC]) {
  Vec<scalar_t, VEC> v;
#pragma unroll
  for (int k = 0; k < VEC; ++k) v.v[k] = static_cast<scalar_t>(in[k]);
  *reinterpret_cast<Vec<scalar_t, VEC>*>(p) = v;
}

// dst[k] += src[k] with the widest float atomics the architecture has
// (sm_90: one float4 / float2 reduction instead of four / two scalar ones).
template <int VEC>
__device__ __forceinline__ void atomic_add_vec(float* dst, const float (&src)[VEC]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kStep = VEC % 4 == 0 ? 4 : (VEC % 2 == 0 ? 2 : 1);
#else
  constexpr int kStep = 1;
#endif
#pragma unroll
  for (int k = 0; k < VEC; k += kStep) {
    if constexpr (kStep == 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + k),
                make_float4(src[k], src[k + 1], src[k + 2], src[k + 3]));
    } else if constexpr (kStep == 2) {
      atomicAdd(reinterpret_cast<float2*>(dst + k), make_float2(src[k], src[k + 1]));
    } else {
      atomicAdd(dst + k, src[k]);
    }
  }
}

template <int VEC>
__device__ __forceinline__ void atomic_add_vec(double* dst, const double (&src)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) atomicAdd(dst + k, src[k]);
}

// Sum over the `group` lanes of an item (aligned power-of-two lane groups of
// one warp); every lane of the group gets the total. All 32 lanes of the warp
// must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int group) {
  for (int offset = group >> 1; offset > 0; offset >>= 1)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// ---------------------------------------------------------------- forward --

// Shared-memory tile of the forward: per (item, sample) the four corner tokens
// and (lh, lw, attention weight); the weight is NaN for a non-finite location,
// so that the sample adds NaN like the reference's.
template <typename coord_t, typename acc_t>
__device__ void fill_forward_tile(const coord_t* __restrict__ locs,
                                  const coord_t* __restrict__ attn,
                                  const int64_t* __restrict__ shapes,
                                  const int64_t* __restrict__ starts, int64_t item0,
                                  int items_per_block, int tile0, const Geometry& g,
                                  Vec<int, 4>* s_tok, Vec<acc_t, 4>* s_w) {
  for (int e = threadIdx.x; e < items_per_block * g.tile; e += blockDim.x) {
    const int i = e / g.tile, j = e % g.tile, cell = i * g.tile_stride + j;
    const int64_t item = item0 + i;
    const int lp = tile0 + j;
    Vec<int, 4> tok = {{-1, -1, -1, -1}};
    Vec<acc_t, 4> w = {{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
    if (item < g.num_items && lp < g.samples) {
      const int64_t sample = item * g.samples + lp;
      const auto f = read_sample<coord_t, acc_t>(locs, shapes, starts, sample, lp, g);
#pragma unroll
      for (int c = 0; c < 4; ++c) tok.v[c] = f.tok[c];
      w.v[0] = f.lh;
      w.v[1] = f.lw;
      w.v[2] = f.nonfinite ? CUDART_NAN_F : static_cast<acc_t>(attn[sample]);
    }
    s_tok[cell] = tok;
    s_w[cell] = w;
  }
}

// Each sample adds a * (bilinearly interpolated value), in the reference's
// order: a finite weight on a sample that reads zeros adds 0, an infinite or
// NaN one adds NaN (0 * inf), as in the reference.
template <typename scalar_t, typename coord_t, int VEC>
__global__ void __launch_bounds__(256)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const coord_t* __restrict__ locs,
                   const coord_t* __restrict__ attn, scalar_t* __restrict__ out, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int items_per_block = blockDim.x >> g.log_group;
  auto* s_w = reinterpret_cast<Vec<acc_t, 4>*>(smem);
  auto* s_tok = reinterpret_cast<Vec<int, 4>*>(s_w + items_per_block * g.tile_stride);
  const int local = threadIdx.x >> g.log_group, lane = threadIdx.x & (g.group - 1);
  const int64_t item0 = static_cast<int64_t>(blockIdx.x) * items_per_block;
  const int64_t item = item0 + local;
  const int64_t n = item / (g.num_query * g.heads), m = item % g.heads;
  const int64_t row = static_cast<int64_t>(g.heads) * g.channels;  // token stride
  const scalar_t* value_nm = value + n * g.num_value * row + m * g.channels;
  const int num_tiles = (g.samples + g.tile - 1) / g.tile;
  for (int r = 0; r < g.rounds; ++r) {
    const int chunk = r * g.group + lane;
    const bool active = item < g.num_items && chunk < g.chunks;
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = acc_t(0);
    for (int t = 0; t < num_tiles; ++t) {
      if (num_tiles > 1 || r == 0) {  // block-uniform condition
        __syncthreads();
        fill_forward_tile<coord_t, acc_t>(locs, attn, shapes, starts, item0, items_per_block,
                                          t * g.tile, g, s_tok, s_w);
        __syncthreads();
      }
      const int count = min(g.tile, g.samples - t * g.tile);
      if (!active) continue;
      const Vec<int, 4>* tok = s_tok + local * g.tile_stride;
      const Vec<acc_t, 4>* w = s_w + local * g.tile_stride;
      for (int j = 0; j < count; ++j) {
        const Vec<int, 4> tj = tok[j];
        const Vec<acc_t, 4> wj = w[j];
        // The four corner loads are issued together (an outside corner reads
        // token 0 and is skipped below) so their latencies overlap; they stay
        // in the input type until used, to save registers.
        Vec<scalar_t, VEC> v[4];
#pragma unroll
        for (int c = 0; c < 4; ++c)
          v[c] = load_raw<VEC>(value_nm + max(tj.v[c], 0) * row + chunk * VEC);
        acc_t bw[4], dw[4], dh[4];
        corner_weights(wj.v[0], wj.v[1], bw, dw, dh);
        acc_t sampled[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) sampled[k] = acc_t(0);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (tj.v[c] < 0) continue;
#pragma unroll
          for (int k = 0; k < VEC; ++k) sampled[k] += bw[c] * static_cast<acc_t>(v[c].v[k]);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += wj.v[2] * sampled[k];
      }
    }
    if (active) store_vec<VEC>(out + item * g.channels + chunk * VEC, acc);
  }
}

// --------------------------------------------------------------- backward --

// Shared-memory tile of the backward: per (item, sample) the corner tokens,
// (lh, lw, attention weight, NaN for a non-finite location else 0) and the
// partial sums (d attn, d x, d y) of the sample, accumulated over the rounds
// of the item's lanes.
template <typename coord_t, typename acc_t>
__device__ void fill_backward_tile(const coord_t* __restrict__ locs,
                                   const coord_t* __restrict__ attn,
                                   const int64_t* __restrict__ shapes,
                                   const int64_t* __restrict__ starts, int64_t item0,
                                   int items_per_block, int tile0, const Geometry& g,
                                   Vec<int, 4>* s_tok, Vec<acc_t, 4>* s_geo,
                                   Vec<acc_t, 4>* s_part) {
  for (int e = threadIdx.x; e < items_per_block * g.tile; e += blockDim.x) {
    const int i = e / g.tile, j = e % g.tile, cell = i * g.tile_stride + j;
    const int64_t item = item0 + i;
    const int lp = tile0 + j;
    Vec<int, 4> tok = {{-1, -1, -1, -1}};
    Vec<acc_t, 4> geo = {{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
    if (item < g.num_items && lp < g.samples) {
      const int64_t sample = item * g.samples + lp;
      const auto f = read_sample<coord_t, acc_t>(locs, shapes, starts, sample, lp, g);
#pragma unroll
      for (int c = 0; c < 4; ++c) tok.v[c] = f.tok[c];
      geo.v[0] = f.lh;
      geo.v[1] = f.lw;
      geo.v[2] = static_cast<acc_t>(attn[sample]);
      geo.v[3] = f.nonfinite ? CUDART_NAN_F : acc_t(0);
    }
    s_tok[cell] = tok;
    s_geo[cell] = geo;
    s_part[cell] = Vec<acc_t, 4>{{acc_t(0), acc_t(0), acc_t(0), acc_t(0)}};
  }
}

// Writes grad_attention_weights and grad_sampling_locations of the tile's
// samples of one item; lane i owns samples i, i + group, ... (the lanes that
// accumulated them in s_part). A non-finite location's are NaN (geo.v[3]).
template <typename coord_t, typename acc_t>
__device__ __forceinline__ void write_sample_grads(const Vec<acc_t, 4>* s_geo,
                                                   const Vec<acc_t, 4>* s_part,
                                                   const int64_t* __restrict__ shapes,
                                                   int64_t item, int tile0, int count, int lane,
                                                   const Geometry& g, coord_t* grad_locs,
                                                   coord_t* grad_attn) {
  for (int j = lane; j < count; j += g.group) {
    const int lp = tile0 + j, l = lp / g.points;
    const int64_t sample = item * g.samples + lp;
    const acc_t a = s_geo[j].v[2], nan_or_zero = s_geo[j].v[3];
    const Vec<acc_t, 4> part = s_part[j];
    grad_attn[sample] = static_cast<coord_t>(part.v[0] + nan_or_zero);
    grad_locs[2 * sample] = static_cast<coord_t>(
        (part.v[1] + nan_or_zero) * (a * static_cast<acc_t>(shapes[2 * l + 1])));
    grad_locs[2 * sample + 1] = static_cast<coord_t>(
        (part.v[2] + nan_or_zero) * (a * static_cast<acc_t>(shapes[2 * l])));
  }
}

// grad_value_acc (layout of value, float32 for half/bfloat16) receives the
// value gradients with atomics when it is non-null; the deterministic path
// passes null and computes them with gather_grad_value_kernel instead.
template <typename scalar_t, typename coord_t, int VEC>
__global__ void __launch_bounds__(256) backward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts, const coord_t* __restrict__ locs,
    const coord_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
    at::opmath_type<scalar_t>* __restrict__ grad_value_acc, coord_t* __restrict__ grad_locs,
    coord_t* __restrict__ grad_attn, Geometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int items_per_block = blockDim.x >> g.log_group;
  const int cells = items_per_block * g.tile_stride;
  auto* s_geo = reinterpret_cast<Vec<acc_t, 4>*>(smem);
  auto* s_part = s_geo + cells;
  auto* s_tok = reinterpret_cast<Vec<int, 4>*>(s_part + cells);
  const int local = threadIdx.x >> g.log_group, lane = threadIdx.x & (g.group - 1);
  const int64_t item0 = static_cast<int64_t>(blockIdx.x) * items_per_block;
  const int64_t item = item0 + local;
  const int64_t n = item / (g.num_query * g.heads), m = item % g.heads;
  const int64_t row = static_cast<int64_t>(g.heads) * g.channels;
  const int64_t base = n * g.num_value * row + m * g.channels;
  const int num_tiles = (g.samples + g.tile - 1) / g.tile;
  for (int t = 0; t < num_tiles; ++t) {
    __syncthreads();
    fill_backward_tile<coord_t, acc_t>(locs, attn, shapes, starts, item0, items_per_block,
                                       t * g.tile, g, s_tok, s_geo, s_part);
    __syncthreads();
    const int count = min(g.tile, g.samples - t * g.tile);
    const Vec<int, 4>* tok = s_tok + local * g.tile_stride;
    const Vec<acc_t, 4>* geo = s_geo + local * g.tile_stride;
    Vec<acc_t, 4>* part = s_part + local * g.tile_stride;
    for (int r = 0; r < g.rounds; ++r) {
      const int chunk = r * g.group + lane;
      const bool active = item < g.num_items && chunk < g.chunks;
      acc_t go[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) go[k] = acc_t(0);
      if (active) load_vec<VEC>(grad_out + item * g.channels + chunk * VEC, go);
      // Every lane of the warp runs the same number of iterations (count is
      // block-uniform): group_sum's shuffles need the whole warp.
      for (int j = 0; j < count; ++j) {
        const Vec<int, 4> tj = tok[j];
        const Vec<acc_t, 4> gj = geo[j];
        acc_t bw[4], dw[4], dh[4];
        corner_weights(gj.v[0], gj.v[1], bw, dw, dh);
        acc_t d_attn = acc_t(0), d_x = acc_t(0), d_y = acc_t(0);
        Vec<scalar_t, VEC> v[4];  // corner loads issued together, as in the forward
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (active) v[c] = load_raw<VEC>(value + base + max(tj.v[c], 0) * row + chunk * VEC);
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (!active || tj.v[c] < 0) continue;
          const int64_t offset = base + tj.v[c] * row + chunk * VEC;
          acc_t dot = acc_t(0);
#pragma unroll
          for (int k = 0; k < VEC; ++k) dot += go[k] * static_cast<acc_t>(v[c].v[k]);
          d_attn += bw[c] * dot;
          d_x += dw[c] * dot;
          d_y += dh[c] * dot;
          if (grad_value_acc != nullptr) {
            const acc_t w = gj.v[2] * bw[c];
            acc_t contrib[VEC];
#pragma unroll
            for (int k = 0; k < VEC; ++k) contrib[k] = w * go[k];
            atomic_add_vec<VEC>(grad_value_acc + offset, contrib);
          }
        }
        d_attn = group_sum(d_attn, g.group);
        d_x = group_sum(d_x, g.group);
        d_y = group_sum(d_y, g.group);
        if (lane == (j & (g.group - 1))) {
          part[j].v[0] += d_attn;
          part[j].v[1] += d_x;
          part[j].v[2] += d_y;
        }
      }
    }
    if (item < g.num_items)
      write_sample_grads<coord_t, acc_t>(geo, part, shapes, item, t * g.tile, count, lane, g,
                                         grad_locs, grad_attn);
  }
}

}  // namespace ms_deform_attn_cuda
}  // namespace mmdeform
