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
// The operators are declared once in ops/register.cpp (TORCH_LIBRARY) and each
// device source registers its implementation with TORCH_LIBRARY_IMPL.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace mmdeform {

// Checks shared by every backend; raises c10::Error naming the argument.
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
