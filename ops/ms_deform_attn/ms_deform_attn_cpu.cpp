// CPU implementation of multi-scale deformable attention (see ms_deform_attn.h):
// input checks, dispatch and operator registration. The kernel bodies are in
// ms_deform_attn_cpu_kernel.h, compiled twice: for the baseline instruction set
// and, on x86-64 with GCC/Clang, for AVX2+FMA, chosen once at run time from the
// CPU's features. Both are deterministic (see the kernel header).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"

namespace mmdeform {

namespace {

struct Dims {
  int64_t batch, num_value, heads, channels, num_query, levels, points;
};

Dims read_dims(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Dims{value.size(0),
              value.size(1),
              value.size(2),
              value.size(3),
              sampling_locations.size(1),
              sampling_locations.size(3),
              sampling_locations.size(4)};
}

namespace baseline {
#include "ms_deform_attn_cpu_kernel.h"
}  // namespace baseline

#if defined(__x86_64__) && defined(__GNUC__)
#define MMDEFORM_HAVE_AVX2_KERNEL 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "ms_deform_attn_cpu_kernel.h"
}  // namespace avx2
#pragma GCC pop_options

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename scalar_t, typename coord_t>
void run_forward(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                 const coord_t* locs, const coord_t* attn, scalar_t* out, const Dims& d) {
#ifdef MMDEFORM_HAVE_AVX2_KERNEL
  if (cpu_has_avx2()) {
    return avx2::forward<scalar_t, coord_t>(value, shapes, starts, locs, attn, out, d);
  }
#endif
  baseline::forward<scalar_t, coord_t>(value, shapes, starts, locs, attn, out, d);
}

template <typename scalar_t, typename coord_t, typename acc_t>
void run_backward(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                  const coord_t* locs, const coord_t* attn, const scalar_t* grad_out,
                  acc_t* grad_value_acc, coord_t* grad_locs, coord_t* grad_attn,
                  const Dims& d) {
#ifdef MMDEFORM_HAVE_AVX2_KERNEL
  if (cpu_has_avx2()) {
    return avx2::backward<scalar_t, coord_t, acc_t>(value, shapes, starts, locs, attn, grad_out,
                                                    grad_value_acc, grad_locs, grad_attn, d);
  }
#endif
  baseline::backward<scalar_t, coord_t, acc_t>(value, shapes, starts, locs, attn, grad_out,
                                               grad_value_acc, grad_locs, grad_attn, d);
}

}  // namespace

void check_level_sizes(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       int64_t num_value) {
  TORCH_CHECK(spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(),
              "ms_deform_attn: check_level_sizes needs host tensors");
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const int64_t* sh = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  int64_t total = 0;  // tokens of the levels before l; never above num_value
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t height = sh[2 * l], width = sh[2 * l + 1];
    TORCH_CHECK(height > 0 && width > 0, "ms_deform_attn: spatial_shapes[", l, "] = (", height,
                ", ", width, ") must be positive");
    TORCH_CHECK(st[l] == total, "ms_deform_attn: level_start_index[", l, "] = ", st[l],
                " is inconsistent with spatial_shapes (expected ", total, ")");
    // Checked: H * W and the running sum may overflow int64 for hostile
    // shapes, and a wrapped sum could pass the comparison with S.
    int64_t area = 0, end = 0;
    const bool overflow = c10::mul_overflows(height, width, &area) ||
                          c10::add_overflows(total, area, &end);
    TORCH_CHECK(!overflow && end <= num_value, "ms_deform_attn: value has S = ", num_value,
                " tokens but spatial_shapes sum to ",
                overflow ? std::string("more than 2^63 - 1") : std::to_string(end),
                " by level ", l, " (", height, " x ", width, ")");
    total = end;
  }
  TORCH_CHECK(total == num_value, "ms_deform_attn: value has S = ", num_value,
              " tokens but spatial_shapes sum to ", total);
}

void check_ms_deform_attn_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got shape ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2), got shape ", spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L,
              "ms_deform_attn: level_start_index must be (L,) = (", L, ",), got shape ",
              level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  const int64_t N = value.size(0), M = value.size(2);
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == N &&
                  sampling_locations.size(2) == M && sampling_locations.size(3) == L &&
                  sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2) = (", N, ", Lq, ",
              M, ", ", L, ", P, 2), got shape ", sampling_locations.sizes());
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  TORCH_CHECK(attention_weights.dim() == 5 && attention_weights.size(0) == N &&
                  attention_weights.size(1) == Lq && attention_weights.size(2) == M &&
                  attention_weights.size(3) == L && attention_weights.size(4) == P,
              "ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = (", N, ", ", Lq,
              ", ", M, ", ", L, ", ", P, "), got shape ", attention_weights.sizes());
  const auto dtype = value.scalar_type();
  const auto coord = sampling_locations.scalar_type();
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(attention_weights.scalar_type() == coord &&
                  (coord == dtype || (reduced && coord == at::kFloat)),
              "ms_deform_attn: sampling_locations and attention_weights must have value's "
              "dtype (or float32 when value is float16 / bfloat16), got value ", dtype,
              ", sampling_locations ", coord, ", attention_weights ",
              attention_weights.scalar_type());
  TORCH_CHECK(sampling_locations.device() == value.device() &&
                  attention_weights.device() == value.device() &&
                  spatial_shapes.device() == value.device() &&
                  level_start_index.device() == value.device(),
              "ms_deform_attn: all inputs must be on the device of value (", value.device(), ")");
  if (spatial_shapes.device().is_cpu()) {
    check_level_sizes(spatial_shapes, level_start_index, value.size(1));
  }
}

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations_in,
                                      const at::Tensor& attention_weights_in) {
  check_ms_deform_attn_inputs(value_in, spatial_shapes, level_start_index, sampling_locations_in,
                              attention_weights_in);
  const auto value = value_in.contiguous();
  const auto locs = sampling_locations_in.contiguous();
  const auto attn = attention_weights_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const Dims d = read_dims(value, locs);
  auto out = at::empty({d.batch, d.num_query, d.heads * d.channels}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        with_coord_type<scalar_t>(locs.scalar_type(), [&]<typename coord_t>() {
          run_forward<scalar_t, coord_t>(value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                                         starts.data_ptr<int64_t>(), locs.data_ptr<coord_t>(),
                                         attn.data_ptr<coord_t>(), out.data_ptr<scalar_t>(), d);
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in, const at::Tensor& grad_output_in,
    bool /*deterministic*/) {
  check_ms_deform_attn_inputs(value_in, spatial_shapes, level_start_index, sampling_locations_in,
                              attention_weights_in);
  const auto value = value_in.contiguous();
  const auto locs = sampling_locations_in.contiguous();
  const auto attn = attention_weights_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const Dims d = read_dims(value, locs);
  TORCH_CHECK(grad_output_in.dim() == 3 && grad_output_in.size(0) == d.batch &&
                  grad_output_in.size(1) == d.num_query &&
                  grad_output_in.size(2) == d.heads * d.channels,
              "ms_deform_attn: grad_output must be (N, Lq, M*D) = (", d.batch, ", ", d.num_query,
              ", ", d.heads * d.channels, "), got shape ", grad_output_in.sizes());
  const auto grad_output = grad_output_in.to(value.scalar_type()).contiguous();
  auto grad_locs = at::empty_like(locs);
  auto grad_attn = at::empty_like(attn);
  // Value gradients accumulate over many samples: reduced-precision inputs
  // accumulate them in float32 and are rounded once at the end.
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // Zeroed by one contiguous, parallel fill: the (batch, head) slices the
  // kernel owns are strided 128-byte pieces, too short to clear fast.
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(
                                                     reduced ? at::kFloat : value.scalar_type()));
  if (grad_output.numel() > 0 && value.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          with_coord_type<scalar_t>(locs.scalar_type(), [&]<typename coord_t>() {
            run_backward<scalar_t, coord_t, acc_t>(
                value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                starts.data_ptr<int64_t>(), locs.data_ptr<coord_t>(), attn.data_ptr<coord_t>(),
                grad_output.data_ptr<scalar_t>(), grad_value_acc.data_ptr<acc_t>(),
                grad_locs.data_ptr<coord_t>(), grad_attn.data_ptr<coord_t>(), d);
          });
        });
  } else {
    grad_locs.zero_();
    grad_attn.zero_();
  }
  auto grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locs, grad_attn};
}

TORCH_LIBRARY_IMPL(mmdeform, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace mmdeform
