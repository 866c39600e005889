// CUDA kernels of multi-scale deformable attention (see ms_deform_attn.h for
// shapes and ms_deform_attn_cpu.cpp for the reference semantics, which these
// kernels follow formula for formula): the host code. The device code is in
// ms_deform_attn_cuda.cuh and ms_deform_attn_cuda_deterministic.cuh, the launch
// planning in ms_deform_attn_cuda_plan.h; the CPU emulation of the kernels in
// tests/ops/cuda_cpu includes the same three headers.
//
// Thread mapping. An item is one (batch, query, head) triple. A power-of-two
// group of `group` <= 32 lanes of one warp handles an item; each lane owns a
// vector of VEC consecutive channels (16 bytes: 4 float, 8 half/bfloat16,
// 2 double; VEC = 1 when D is not a multiple of that or a pointer is not
// aligned). group = min(32, next_pow2(D / VEC)); when D / VEC > 32 a lane makes
// several rounds over its item. For the usual D = 32 that is 8 lanes per item
// in float32 and 4 in half, so each corner read of an item is one fully used
// 64- or 128-byte row fetched by a few 16-byte loads.
//
// Sample geometry is computed once per (item, sample), not once per channel:
// the block first fills a shared-memory tile with, per sample, the four corner
// token indices, lh, lw and the attention weight a, then every lane reads it
// with two 16-byte shared loads and forms the four bilinear weights itself (a
// few flops per sample). The forward adds a * (interpolated value), the
// reference's order, so that infinite weights give the reference's inf / NaN. The official/MMCV kernel instead
// runs one thread per channel and makes every thread reload the location and
// weight and redo the bilinear arithmetic. Tiles hold up to ~24 KB so that
// blocks of 256 threads keep the SM full; long L * P are split into tiles.
// The four corner rows of a sample are loaded before any is used (a corner
// outside the level reads token 0 and is then skipped), so four independent
// loads per lane are in flight. Blocks shrink from 256 to 64 threads when the
// grid would otherwise leave SMs idle (small decoder problems, Lq = 300).
//
// Backward. Each lane forms, per corner, the dot product of its grad_output
// channels with the corner's value channels; the three per-sample sums
// (d attention weight, d x, d y) are reduced over the lane group with warp
// shuffles and accumulated in shared memory, so grad_sampling_locations and
// grad_attention_weights are written once per sample with plain stores (no
// atomics at all). grad_value takes one atomic per corner per channel vector:
// on sm_90 a single float4 (float2) vector atomic, elsewhere scalar atomics.
// half/bfloat16 accumulate grad_value in a float32 buffer that is rounded once
// at the end (as the CPU kernel does), never with half-precision atomics.
//
// Deterministic backward (deterministic = true, which the autograd formula
// passes when torch.are_deterministic_algorithms_enabled()): grad_value uses
// no float atomics. corner_keys_kernel writes, for every (sample, corner)
// entry, the value row (n, token, m) it reads and its weight; a stable
// at::sort of the keys groups the entries of each row in ascending entry
// order, at::searchsorted finds each row's segment, and gather_grad_value
// sums weight * grad_output over a row's segment in that fixed order (one lane
// group per row, VEC channels per lane), writing every row exactly once. The
// sample gradients come from the same kernel as above with the atomics turned
// off; they are deterministic in both modes. The price is the sort and its
// memory: 4 * N * Lq * M * L * P entries of roughly 30 bytes each with the
// sort's buffers (about 0.7 GB for the encoder at N = 2, S = Lq = 22k), and
// keys are int32, so N * S * M must stay below 2^31.
//
// Dtypes: locations and weights (coord_t) are value's type or, for half /
// bfloat16 values, float (the autocast policy, see ms_deform_attn.h).
//
// Validation. check_ms_deform_attn_inputs checks shapes, dtypes and devices;
// check_level_values then copies spatial_shapes / level_start_index (3 L
// int64) to the host and runs the CPU path's overflow-safe check_level_sizes,
// so bad sizes get the same clear error on both devices. The copy waits for
// the stream (one small synchronization per call). It is skipped while the
// stream is being captured into a CUDA graph, where a synchronization is not
// allowed; the device code is memory-safe without it (see locate() in
// ms_deform_attn_cuda.cuh): bad sizes then give wrong numbers, never an
// out-of-bounds access.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ms_deform_attn.h"
#include "ms_deform_attn_cuda.cuh"
#include "ms_deform_attn_cuda_deterministic.cuh"
#include "ms_deform_attn_cuda_plan.h"

namespace mmdeform {
namespace {

namespace k = ms_deform_attn_cuda;

int multiprocessors(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device()));
  return std::max(count, 1);
}

// The host-side level check of the CPU path on copies of the device tensors,
// except during CUDA graph capture (see the top of this file).
void check_level_values(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &capture));
  if (capture != cudaStreamCaptureStatusNone) return;
  check_level_sizes(spatial_shapes.cpu(), level_start_index.cpu(), value.size(1));
}

void check_sizes(const at::Tensor& value, const at::Tensor& locs) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_cuda: value must be a CUDA tensor, got ",
              value.device());
  k::check_launch_sizes(value.sizes(), locs.sizes());
}

template <typename scalar_t, typename coord_t, int VEC>
void launch_forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                    const at::Tensor& locs, const at::Tensor& attn, at::Tensor& out) {
  k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), VEC);
  const k::Launch launch = k::plan_forward<scalar_t>(g, multiprocessors(value));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  k::forward_kernel<scalar_t, coord_t, VEC>
      <<<launch.blocks, launch.threads, launch.smem, stream>>>(
          value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
          locs.data_ptr<coord_t>(), attn.data_ptr<coord_t>(), out.data_ptr<scalar_t>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_value_acc undefined: the sample gradients only (deterministic path).
template <typename scalar_t, typename coord_t, int VEC>
void launch_backward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                     const at::Tensor& locs, const at::Tensor& attn, const at::Tensor& grad_out,
                     at::Tensor& grad_value_acc, at::Tensor& grad_locs, at::Tensor& grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), VEC);
  const k::Launch launch = k::plan_backward<scalar_t>(g, multiprocessors(value));
  acc_t* acc_ptr = grad_value_acc.defined() ? grad_value_acc.data_ptr<acc_t>() : nullptr;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  k::backward_kernel<scalar_t, coord_t, VEC>
      <<<launch.blocks, launch.threads, launch.smem, stream>>>(
          value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
          locs.data_ptr<coord_t>(), attn.data_ptr<coord_t>(), grad_out.data_ptr<scalar_t>(),
          acc_ptr, grad_locs.data_ptr<coord_t>(), grad_attn.data_ptr<coord_t>(), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Sorted entry order of the deterministic path: (order, row_start, weights).
template <typename scalar_t, typename coord_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sort_corner_entries(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
    const at::Tensor& locs, const at::Tensor& attn, int64_t num_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), 1);
  const int64_t entries = k::deterministic_entries(value.sizes(), g);
  const at::Tensor keys = at::empty({entries}, value.options().dtype(at::kInt));
  const at::Tensor weights =
      at::empty({entries}, value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const k::Launch launch = k::plan_corner_keys(entries / 4, multiprocessors(value));
  k::corner_keys_kernel<scalar_t, coord_t>
      <<<launch.blocks, launch.threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          locs.data_ptr<coord_t>(), attn.data_ptr<coord_t>(), shapes.data_ptr<int64_t>(),
          starts.data_ptr<int64_t>(), keys.data_ptr<int>(), weights.data_ptr<acc_t>(), num_rows,
          g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto [order, row_start] = k::sort_corner_keys(keys, num_rows);
  return {order, row_start, weights};
}

template <typename scalar_t, int VEC>
void launch_gather(const at::Tensor& value, const at::Tensor& locs, const at::Tensor& order,
                   const at::Tensor& row_start, const at::Tensor& weights,
                   const at::Tensor& grad_out, at::Tensor& grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), VEC);
  const int64_t num_rows = value.size(0) * value.size(1) * value.size(2);
  const k::Launch launch = k::plan_gather(g, num_rows, multiprocessors(value));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  k::gather_grad_value_kernel<scalar_t, VEC><<<launch.blocks, launch.threads, 0, stream>>>(
      order.data_ptr<int64_t>(), row_start.data_ptr<int64_t>(), weights.data_ptr<acc_t>(),
      grad_out.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), num_rows, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations_in,
                                       const at::Tensor& attention_weights_in) {
  check_ms_deform_attn_inputs(value_in, spatial_shapes, level_start_index, sampling_locations_in,
                              attention_weights_in);
  check_sizes(value_in, sampling_locations_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  check_level_values(value_in, spatial_shapes, level_start_index);
  const auto value = value_in.contiguous();
  const auto locs = sampling_locations_in.contiguous();
  const auto attn = attention_weights_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  auto out = at::empty({value.size(0), locs.size(1), value.size(2) * value.size(3)},
                       value.options());
  if (out.numel() == 0) return out;
  // No samples (L = 0 or P = 0), or no value tokens to read (S = 0; the
  // kernel reads token 0 for corners outside a level).
  if (attn.numel() == 0 || value.numel() == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        with_coord_type<scalar_t>(locs.scalar_type(), [&]<typename coord_t>() {
          k::with_vec<scalar_t>(value.size(3), {value.data_ptr(), out.data_ptr()}, [&]<int VEC>() {
            launch_forward<scalar_t, coord_t, VEC>(value, shapes, starts, locs, attn, out);
          });
        });
      });
  return out;
}

namespace {

// grad_value with atomics into a float32 (half/bfloat16) or own-type buffer.
template <typename scalar_t, typename coord_t>
at::Tensor backward_atomic(const at::Tensor& value, const at::Tensor& shapes,
                           const at::Tensor& starts, const at::Tensor& locs,
                           const at::Tensor& attn, const at::Tensor& grad_out,
                           at::Tensor& grad_locs, at::Tensor& grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor acc =
      at::zeros(value.sizes(), value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  k::with_vec<scalar_t>(
      value.size(3), {value.data_ptr(), grad_out.data_ptr(), acc.data_ptr()}, [&]<int VEC>() {
        launch_backward<scalar_t, coord_t, VEC>(value, shapes, starts, locs, attn, grad_out, acc,
                                                grad_locs, grad_attn);
      });
  return acc.scalar_type() == value.scalar_type() ? acc : acc.to(value.scalar_type());
}

// grad_value gathered row by row in a fixed order (bitwise reproducible).
template <typename scalar_t, typename coord_t>
at::Tensor backward_deterministic(const at::Tensor& value, const at::Tensor& shapes,
                                  const at::Tensor& starts, const at::Tensor& locs,
                                  const at::Tensor& attn, const at::Tensor& grad_out,
                                  at::Tensor& grad_locs, at::Tensor& grad_attn) {
  at::Tensor no_atomics;
  auto grad_value = at::empty_like(value);
  k::with_vec<scalar_t>(value.size(3), {value.data_ptr(), grad_out.data_ptr()}, [&]<int VEC>() {
    launch_backward<scalar_t, coord_t, VEC>(value, shapes, starts, locs, attn, grad_out,
                                            no_atomics, grad_locs, grad_attn);
  });
  const int64_t num_rows = value.size(0) * value.size(1) * value.size(2);
  auto [order, row_start, weights] =
      sort_corner_entries<scalar_t, coord_t>(value, shapes, starts, locs, attn, num_rows);
  k::with_vec<scalar_t>(value.size(3), {grad_out.data_ptr(), grad_value.data_ptr()},
                     [&]<int VEC>() {
                       launch_gather<scalar_t, VEC>(value, locs, order, row_start, weights,
                                                    grad_out, grad_value);
                     });
  return grad_value;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in, const at::Tensor& grad_output_in,
    bool deterministic) {
  check_ms_deform_attn_inputs(value_in, spatial_shapes, level_start_index, sampling_locations_in,
                              attention_weights_in);
  check_sizes(value_in, sampling_locations_in);
  const int64_t N = value_in.size(0), M = value_in.size(2), D = value_in.size(3);
  const int64_t Lq = sampling_locations_in.size(1);
  TORCH_CHECK(grad_output_in.dim() == 3 && grad_output_in.size(0) == N &&
                  grad_output_in.size(1) == Lq && grad_output_in.size(2) == M * D,
              "ms_deform_attn: grad_output must be (N, Lq, M*D) = (", N, ", ", Lq, ", ", M * D,
              "), got shape ", grad_output_in.sizes());
  TORCH_CHECK(grad_output_in.device() == value_in.device(),
              "ms_deform_attn: grad_output is on ", grad_output_in.device(),
              " but value is on ", value_in.device());
  const c10::cuda::CUDAGuard guard(value_in.device());
  check_level_values(value_in, spatial_shapes, level_start_index);
  const auto value = value_in.contiguous();
  const auto locs = sampling_locations_in.contiguous();
  const auto attn = attention_weights_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto grad_out = grad_output_in.to(value.scalar_type()).contiguous();
  auto grad_locs = at::empty_like(locs);
  auto grad_attn = at::empty_like(attn);
  if (grad_out.numel() == 0 || value.numel() == 0 || attn.numel() == 0) {
    return {at::zeros_like(value), grad_locs.zero_(), grad_attn.zero_()};
  }
  at::Tensor grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
        with_coord_type<scalar_t>(locs.scalar_type(), [&]<typename coord_t>() {
          grad_value =
              deterministic
                  ? backward_deterministic<scalar_t, coord_t>(value, shapes, starts, locs, attn,
                                                              grad_out, grad_locs, grad_attn)
                  : backward_atomic<scalar_t, coord_t>(value, shapes, starts, locs, attn,
                                                       grad_out, grad_locs, grad_attn);
        });
      });
  return {grad_value, grad_locs, grad_attn};
}

TORCH_LIBRARY_IMPL(mmdeform, CUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace mmdeform
