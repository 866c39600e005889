// Multi-scale deformable attention: sampling kernels of mmdeform._C.
//
// Shapes (N batch, S = sum_l H_l * W_l value tokens, M heads, D channels per
// head, Lq queries, L levels, P points per level and head):
//   value               (N, S, M, D)
//   spatial_shapes      (L, 2) int64, rows (H_l, W_l)
//   level_start_index   (L,) int64, exclusive cumulative sum of H_l * W_l
//   sampling_locations  (N, Lq, M, L, P, 2), normalized (x, y); pixel i of a
//                       level of width W has its centre at (i + 0.5) / W
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
// Samples outside a level read zeros (bilinear interpolation, zero padding).
//
// Dtypes: sampling_locations and attention_weights share one dtype, which is
// either value's or, when value is float16 / bfloat16, float32 (the autocast
// policy of mmdeform/ops/ms_deform_attn.py: value read in low precision, sample
// geometry kept in float32). Output and grad_value have value's dtype,
// grad_sampling_locations and grad_attention_weights that of the locations.
//
// Non-finite inputs follow the reference (F.grid_sample, then a weighted sum):
// a sample whose location is NaN or infinite contributes NaN to its output row
// and has NaN location and weight gradients, and an output is
// attention_weight * (bilinearly sampled value), so an infinite weight on a
// sample that reads zeros gives NaN.
//
// The operators are declared once in ops/register.cpp (TORCH_LIBRARY) and each
// device source registers its implementation with TORCH_LIBRARY_IMPL.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <type_traits>

namespace mmdeform {

// Calls body.template operator()<coord_t>() with the C++ type of the
// locations / weights: scalar_t, or float for 16-bit values with float32
// geometry (the autocast combination, see above).
template <typename scalar_t, typename Body>
void with_coord_type(at::ScalarType coord, Body&& body) {
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
    if (coord == at::kFloat) return body.template operator()<float>();
  }
  body.template operator()<scalar_t>();
}

// Overflow-safe check of the level sizes against S = num_value: every H_l and
// W_l positive, every level_start_index[l] equal to the sum of the levels
// before it, and every running sum of H_l * W_l (computed with checked
// multiplications and additions) at most S, the last one equal to S. Takes
// host (CPU) tensors; the CUDA path copies the device tensors to the host.
void check_level_sizes(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       int64_t num_value);

// Checks shared by every backend; raises c10::Error naming the argument.
// Reads spatial_shapes / level_start_index (check_level_sizes) only when they
// are on the CPU.
void check_ms_deform_attn_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights);

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

// Returns (grad_value, grad_sampling_locations, grad_attention_weights). The CPU
// backward is always deterministic; `deterministic` is accepted for a uniform
// schema.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, bool deterministic);

#ifdef MMDEFORM_WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

// With deterministic=true the gradient of `value` is computed without float
// atomics and is bitwise reproducible.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, bool deterministic);
#endif

}  // namespace mmdeform
