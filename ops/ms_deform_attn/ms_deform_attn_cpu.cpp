// CPU kernels of multi-scale deformable attention (see ms_deform_attn.h).
//
// Forward: parallel over (batch, query) blocks; each (n, q, m) accumulates its
// D channels in a private buffer of the accumulation type.
// Backward: parallel over (batch, head) pairs. A pair owns its slice of
// grad_value, so the scatter of value gradients needs no atomics and is done in
// a fixed order: results are bitwise identical from run to run whatever the
// number of threads. grad_sampling_locations and grad_attention_weights are
// written once per sample by the pair that owns it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "ms_deform_attn.h"

namespace mmdeform {

namespace {

// Bilinear footprint of one sampling location on one level: up to four
// corners, each a token offset inside the level and a weight. Corners outside
// the level get weight 0 and offset -1. dw_* / dh_* are the derivatives of the
// corner weights with respect to the pixel coordinates w_im and h_im.
template <typename acc_t>
struct Footprint {
  int64_t offset[4];
  acc_t weight[4];
  acc_t dw[4];
  acc_t dh[4];
  bool any;
};

template <typename acc_t>
inline Footprint<acc_t> bilinear_footprint(acc_t loc_x, acc_t loc_y, int64_t height,
                                           int64_t width) {
  Footprint<acc_t> f;
  // Half-pixel convention: pixel i has its centre at (i + 0.5) / size.
  const acc_t w_im = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t h_im = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
  f.any = h_im > acc_t(-1) && w_im > acc_t(-1) && h_im < static_cast<acc_t>(height) &&
          w_im < static_cast<acc_t>(width);
  if (!f.any) return f;
  const int64_t h_low = static_cast<int64_t>(std::floor(h_im));
  const int64_t w_low = static_cast<int64_t>(std::floor(w_im));
  const acc_t lh = h_im - static_cast<acc_t>(h_low);
  const acc_t lw = w_im - static_cast<acc_t>(w_low);
  const acc_t hh = acc_t(1) - lh;
  const acc_t hw = acc_t(1) - lw;
  const int64_t ys[4] = {h_low, h_low, h_low + 1, h_low + 1};
  const int64_t xs[4] = {w_low, w_low + 1, w_low, w_low + 1};
  const acc_t weights[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
  const acc_t dws[4] = {-hh, hh, -lh, lh};
  const acc_t dhs[4] = {-hw, -lw, hw, lw};
  for (int c = 0; c < 4; ++c) {
    const bool inside = ys[c] >= 0 && ys[c] < height && xs[c] >= 0 && xs[c] < width;
    f.offset[c] = inside ? ys[c] * width + xs[c] : -1;
    f.weight[c] = weights[c];
    f.dw[c] = dws[c];
    f.dh[c] = dhs[c];
  }
  return f;
}

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

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* locs, const scalar_t* attn, scalar_t* out, const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = d.heads * d.channels;  // stride between value tokens
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, d.heads * d.levels));
  at::parallel_for(0, d.batch * d.num_query, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(d.channels);
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / d.num_query;
      const scalar_t* value_n = value + n * d.num_value * row;
      for (int64_t m = 0; m < d.heads; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t sample0 = (nq * d.heads + m) * d.levels * d.points;
        for (int64_t l = 0; l < d.levels; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const scalar_t* level = value_n + starts[l] * row + m * d.channels;
          for (int64_t p = 0; p < d.points; ++p) {
            const int64_t s = sample0 + l * d.points + p;
            const auto f = bilinear_footprint<acc_t>(locs[2 * s], locs[2 * s + 1], height, width);
            if (!f.any) continue;
            const acc_t a = attn[s];
            for (int c = 0; c < 4; ++c) {
              if (f.offset[c] < 0) continue;
              const acc_t w = a * f.weight[c];
              const scalar_t* v = level + f.offset[c] * row;
              for (int64_t k = 0; k < d.channels; ++k) acc[k] += w * static_cast<acc_t>(v[k]);
            }
          }
        }
        scalar_t* o = out + (nq * d.heads + m) * d.channels;
        for (int64_t k = 0; k < d.channels; ++k) o[k] = static_cast<scalar_t>(acc[k]);
      }
    }
  });
}

// grad_value_acc has the layout of value, in the accumulation type.
template <typename scalar_t, typename acc_t>
void backward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const scalar_t* locs, const scalar_t* attn, const scalar_t* grad_out,
                     acc_t* grad_value_acc, scalar_t* grad_locs, scalar_t* grad_attn,
                     const Dims& d) {
  const int64_t row = d.heads * d.channels;
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> go(d.channels);
    for (int64_t nm = begin; nm < end; ++nm) {
      const int64_t n = nm / d.heads, m = nm % d.heads;
      const int64_t base = n * d.num_value * row + m * d.channels;
      for (int64_t q = 0; q < d.num_query; ++q) {
        const int64_t nqm = (n * d.num_query + q) * d.heads + m;
        const scalar_t* g = grad_out + nqm * d.channels;
        for (int64_t k = 0; k < d.channels; ++k) go[k] = static_cast<acc_t>(g[k]);
        for (int64_t l = 0; l < d.levels; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const int64_t level = base + starts[l] * row;
          for (int64_t p = 0; p < d.points; ++p) {
            const int64_t s = (nqm * d.levels + l) * d.points + p;
            const auto f = bilinear_footprint<acc_t>(locs[2 * s], locs[2 * s + 1], height, width);
            acc_t g_attn = 0, g_w = 0, g_h = 0;
            if (f.any) {
              const acc_t a = attn[s];
              for (int c = 0; c < 4; ++c) {
                if (f.offset[c] < 0) continue;
                const scalar_t* v = value + level + f.offset[c] * row;
                acc_t* gv = grad_value_acc + level + f.offset[c] * row;
                const acc_t w = a * f.weight[c];
                acc_t dot = 0;
                for (int64_t k = 0; k < d.channels; ++k) {
                  dot += go[k] * static_cast<acc_t>(v[k]);
                  gv[k] += w * go[k];
                }
                g_attn += f.weight[c] * dot;
                g_w += f.dw[c] * dot;
                g_h += f.dh[c] * dot;
              }
              g_w *= a * static_cast<acc_t>(width);
              g_h *= a * static_cast<acc_t>(height);
            }
            grad_attn[s] = static_cast<scalar_t>(g_attn);
            grad_locs[2 * s] = static_cast<scalar_t>(g_w);
            grad_locs[2 * s + 1] = static_cast<scalar_t>(g_h);
          }
        }
      }
    }
  });
}

}  // namespace

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
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share a "
              "dtype, got ",
              value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ",
              attention_weights.scalar_type());
  TORCH_CHECK(sampling_locations.device() == value.device() &&
                  attention_weights.device() == value.device() &&
                  spatial_shapes.device() == value.device() &&
                  level_start_index.device() == value.device(),
              "ms_deform_attn: all inputs must be on the device of value (", value.device(), ")");
  if (spatial_shapes.device().is_cpu()) {
    const auto shapes = spatial_shapes.contiguous();
    const auto starts = level_start_index.contiguous();
    const int64_t* sh = shapes.data_ptr<int64_t>();
    const int64_t* st = starts.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t l = 0; l < L; ++l) {
      TORCH_CHECK(sh[2 * l] > 0 && sh[2 * l + 1] > 0, "ms_deform_attn: spatial_shapes[", l,
                  "] = (", sh[2 * l], ", ", sh[2 * l + 1], ") must be positive");
      TORCH_CHECK(st[l] == total, "ms_deform_attn: level_start_index[", l, "] = ", st[l],
                  " is inconsistent with spatial_shapes (expected ", total, ")");
      total += sh[2 * l] * sh[2 * l + 1];
    }
    TORCH_CHECK(total == value.size(1), "ms_deform_attn: value has S = ", value.size(1),
                " tokens but spatial_shapes sum to ", total);
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
        forward_kernel<scalar_t>(value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                                 starts.data_ptr<int64_t>(), locs.data_ptr<scalar_t>(),
                                 attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), d);
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
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(
                                                     reduced ? at::kFloat : value.scalar_type()));
  if (grad_output.numel() > 0 && value.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t>(
              value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
              locs.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
              grad_output.data_ptr<scalar_t>(), grad_value_acc.data_ptr<acc_t>(),
              grad_locs.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), d);
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
