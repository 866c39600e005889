// The CUDA kernels of ms_deform_attn run on the CPU: a small torch extension
// (built by emu_build.py) that compiles ms_deform_attn_cuda.cuh and
// ms_deform_attn_cuda_deterministic.cuh unmodified against cuda_builtins.h and
// launches them with the geometry of ms_deform_attn_cuda_plan.h, the header
// ms_deform_attn_cuda.cu plans its launches with. The host code below follows
// ms_deform_attn_cuda.cu step for step; where that file launches a kernel with
// <<<blocks, threads, smem>>>, this one calls cuda_emu::launch.
//
// Built with -DMMDEFORM_EMU_ARCH=<__CUDA_ARCH__ to emulate> (900: float4 /
// float2 vector atomics; 800: scalar ones) and -DMMDEFORM_EMU_NS=<namespace of
// the operators>, so that several variants load into one process. Operators
// (torch.ops.<ns>.*), on CPU tensors:
//   forward(value, spatial_shapes, level_start_index, sampling_locations,
//           attention_weights, sms, vec, check_levels) -> (output, launch)
//   backward(..., grad_output, deterministic, sms, vec, check_levels)
//           -> (grad_value, grad_sampling_locations, grad_attention_weights, launch)
//   stuck(threads) -> ()            a kernel whose lane 0 skips __syncthreads
//   set_barrier_timeout(seconds) -> previous seconds
// sms is the GPU's multiprocessor count; vec = 0 lets the host code pick the
// vector width, 1 or 16 / sizeof(value) forces it (alignment unchecked);
// check_levels = false skips the host-side level checks, as during CUDA graph
// capture. launch = [VEC, threads, blocks, shared bytes, tile, group, rounds]
// of the forward / backward kernel, plus for the deterministic backward
// [gather threads, gather blocks, corner-key blocks].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "cuda_runtime.h"  // the emulation's (include/), which is cuda_builtins.h
#include "ms_deform_attn/ms_deform_attn.h"

#if !defined(MMDEFORM_EMU_ARCH) || !defined(MMDEFORM_EMU_NS)
#error "build with -DMMDEFORM_EMU_ARCH=<arch> -DMMDEFORM_EMU_NS=<namespace> (see emu_build.py)"
#endif

// The device code is read with the architecture macro set, every torch header
// before it without (c10 reads __CUDA_ARCH__ too).
#define __CUDA_ARCH__ MMDEFORM_EMU_ARCH
#include "ms_deform_attn/ms_deform_attn_cuda.cuh"
#include "ms_deform_attn/ms_deform_attn_cuda_deterministic.cuh"
#include "ms_deform_attn/ms_deform_attn_cuda_plan.h"
#undef __CUDA_ARCH__

namespace mmdeform {
namespace ms_deform_attn_cuda {
// The kernels' `extern __shared__ unsigned char smem[]`: one block runs at a time.
alignas(16) unsigned char smem[kMaxSharedBytes];
}  // namespace ms_deform_attn_cuda

namespace {

namespace k = ms_deform_attn_cuda;

template <typename Kernel, typename... Args>
void run(Kernel kernel, const k::Launch& launch, const Args&... args) {
  try {
    cuda_emu::launch(kernel, launch.blocks, launch.threads, launch.smem, k::smem, sizeof(k::smem),
                     args...);
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, "ms_deform_attn CUDA emulation: ", e.what());
  }
}

std::vector<int64_t> describe(int vec, const k::Launch& launch, const k::Geometry& g) {
  return {vec, launch.threads, launch.blocks, static_cast<int64_t>(launch.smem), g.tile, g.group,
          g.rounds};
}

// with_vec of the .cu (forced = 0) or a forced width.
template <typename scalar_t, typename Body>
void choose_vec(int64_t forced, int64_t channels, std::initializer_list<const void*> ptrs,
                Body&& body) {
  constexpr int kVec = k::max_vec<scalar_t>();
  TORCH_CHECK(forced == 0 || forced == 1 || forced == kVec, "vec must be 0, 1 or ", kVec);
  if (forced == 0) return k::with_vec<scalar_t>(channels, ptrs, body);
  if (forced == 1) return body.template operator()<1>();
  body.template operator()<kVec>();
}

template <typename scalar_t, typename coord_t, int VEC>
std::vector<int64_t> launch_forward(const at::Tensor& value, const at::Tensor& shapes,
                                    const at::Tensor& starts, const at::Tensor& locs,
                                    const at::Tensor& attn, at::Tensor& out, int sms) {
  k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), VEC);
  const k::Launch launch = k::plan_forward<scalar_t>(g, sms);
  run(k::forward_kernel<scalar_t, coord_t, VEC>, launch, value.data_ptr<scalar_t>(),
      shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), locs.data_ptr<coord_t>(),
      attn.data_ptr<coord_t>(), out.data_ptr<scalar_t>(), g);
  return describe(VEC, launch, g);
}

template <typename scalar_t, typename coord_t, int VEC>
std::vector<int64_t> launch_backward(const at::Tensor& value, const at::Tensor& shapes,
                                     const at::Tensor& starts, const at::Tensor& locs,
                                     const at::Tensor& attn, const at::Tensor& grad_out,
                                     at::Tensor& grad_value_acc, at::Tensor& grad_locs,
                                     at::Tensor& grad_attn, int sms) {
  using acc_t = at::opmath_type<scalar_t>;
  k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), VEC);
  const k::Launch launch = k::plan_backward<scalar_t>(g, sms);
  acc_t* acc_ptr = grad_value_acc.defined() ? grad_value_acc.data_ptr<acc_t>() : nullptr;
  run(k::backward_kernel<scalar_t, coord_t, VEC>, launch, value.data_ptr<scalar_t>(),
      shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), locs.data_ptr<coord_t>(),
      attn.data_ptr<coord_t>(), grad_out.data_ptr<scalar_t>(), acc_ptr,
      grad_locs.data_ptr<coord_t>(), grad_attn.data_ptr<coord_t>(), g);
  return describe(VEC, launch, g);
}

// sort_corner_entries of the .cu: (order, row_start, weights, key blocks).
template <typename scalar_t, typename coord_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, int64_t> sort_corner_entries(
    const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
    const at::Tensor& locs, const at::Tensor& attn, int64_t num_rows, int sms) {
  using acc_t = at::opmath_type<scalar_t>;
  const k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), 1);
  const int64_t entries = k::deterministic_entries(value.sizes(), g);
  const at::Tensor keys = at::empty({entries}, value.options().dtype(at::kInt));
  const at::Tensor weights =
      at::empty({entries}, value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const k::Launch launch = k::plan_corner_keys(entries / 4, sms);
  run(k::corner_keys_kernel<scalar_t, coord_t>, launch, locs.data_ptr<coord_t>(),
      attn.data_ptr<coord_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
      keys.data_ptr<int>(), weights.data_ptr<acc_t>(), num_rows, g);
  auto [order, row_start] = k::sort_corner_keys(keys, num_rows);
  return {order, row_start, weights, launch.blocks};
}

template <typename scalar_t, int VEC>
std::vector<int64_t> launch_gather(const at::Tensor& value, const at::Tensor& locs,
                                   const at::Tensor& order, const at::Tensor& row_start,
                                   const at::Tensor& weights, const at::Tensor& grad_out,
                                   at::Tensor& grad_value, int sms) {
  using acc_t = at::opmath_type<scalar_t>;
  k::Geometry g = k::make_geometry(value.sizes(), locs.sizes(), VEC);
  const int64_t num_rows = value.size(0) * value.size(1) * value.size(2);
  const k::Launch launch = k::plan_gather(g, num_rows, sms);
  run(k::gather_grad_value_kernel<scalar_t, VEC>, launch, order.data_ptr<int64_t>(),
      row_start.data_ptr<int64_t>(), weights.data_ptr<acc_t>(), grad_out.data_ptr<scalar_t>(),
      grad_value.data_ptr<scalar_t>(), num_rows, g);
  return {launch.threads, launch.blocks};
}

// The .cu's checks; check_levels = false stands for CUDA graph capture, where
// the .cu skips the host copy of the level sizes (and the emulation the input
// checks of the CPU path, which read them too).
void check_inputs(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                  const at::Tensor& locs, const at::Tensor& attn, bool check_levels) {
  TORCH_CHECK(value.device().is_cpu(), "the CUDA emulation runs on CPU tensors, got ",
              value.device());
  if (check_levels) check_ms_deform_attn_inputs(value, shapes, starts, locs, attn);
  k::check_launch_sizes(value.sizes(), locs.sizes());
}

at::Tensor nan_like(const at::Tensor& t) {  // unwritten outputs show up as NaN
  return at::full_like(t, std::numeric_limits<double>::quiet_NaN());
}

std::tuple<at::Tensor, std::vector<int64_t>> forward(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& locs_in, const at::Tensor& attn_in,
    int64_t sms, int64_t vec, bool check_levels) {
  check_inputs(value_in, spatial_shapes, level_start_index, locs_in, attn_in, check_levels);
  const auto value = value_in.contiguous();
  const auto locs = locs_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  auto out = nan_like(at::empty({value.size(0), locs.size(1), value.size(2) * value.size(3)},
                                value.options()));
  std::vector<int64_t> info;
  if (out.numel() == 0) return {out, info};
  if (attn.numel() == 0 || value.numel() == 0) return {out.zero_(), info};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "emu_fwd", [&] {
    with_coord_type<scalar_t>(locs.scalar_type(), [&]<typename coord_t>() {
      choose_vec<scalar_t>(vec, value.size(3), {value.data_ptr(), out.data_ptr()}, [&]<int VEC>() {
        info = launch_forward<scalar_t, coord_t, VEC>(value, shapes, starts, locs, attn, out,
                                                      static_cast<int>(sms));
      });
    });
  });
  return {out, info};
}

}  // namespace
}  // namespace mmdeform

namespace mmdeform {
namespace {

// backward_atomic of the .cu: grad_value by atomics into a float32 (16-bit
// values) or own-type buffer.
template <typename scalar_t, typename coord_t>
at::Tensor backward_atomic(const at::Tensor& value, const at::Tensor& shapes,
                           const at::Tensor& starts, const at::Tensor& locs,
                           const at::Tensor& attn, const at::Tensor& grad_out,
                           at::Tensor& grad_locs, at::Tensor& grad_attn, int64_t vec, int sms,
                           std::vector<int64_t>& info) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor acc =
      at::zeros(value.sizes(), value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  choose_vec<scalar_t>(
      vec, value.size(3), {value.data_ptr(), grad_out.data_ptr(), acc.data_ptr()}, [&]<int VEC>() {
        info = launch_backward<scalar_t, coord_t, VEC>(value, shapes, starts, locs, attn,
                                                       grad_out, acc, grad_locs, grad_attn, sms);
      });
  return acc.scalar_type() == value.scalar_type() ? acc : acc.to(value.scalar_type());
}

// backward_deterministic of the .cu: the sample gradients without atomics,
// then grad_value gathered row by row in the sorted entry order.
template <typename scalar_t, typename coord_t>
at::Tensor backward_deterministic(const at::Tensor& value, const at::Tensor& shapes,
                                  const at::Tensor& starts, const at::Tensor& locs,
                                  const at::Tensor& attn, const at::Tensor& grad_out,
                                  at::Tensor& grad_locs, at::Tensor& grad_attn, int64_t vec,
                                  int sms, std::vector<int64_t>& info) {
  at::Tensor no_atomics;
  auto grad_value = nan_like(value);
  choose_vec<scalar_t>(vec, value.size(3), {value.data_ptr(), grad_out.data_ptr()},
                       [&]<int VEC>() {
                         info = launch_backward<scalar_t, coord_t, VEC>(
                             value, shapes, starts, locs, attn, grad_out, no_atomics, grad_locs,
                             grad_attn, sms);
                       });
  const int64_t num_rows = value.size(0) * value.size(1) * value.size(2);
  auto [order, row_start, weights, key_blocks] = sort_corner_entries<scalar_t, coord_t>(
      value, shapes, starts, locs, attn, num_rows, sms);
  choose_vec<scalar_t>(vec, value.size(3), {grad_out.data_ptr(), grad_value.data_ptr()},
                       [&]<int VEC>() {
                         const auto gather = launch_gather<scalar_t, VEC>(
                             value, locs, order, row_start, weights, grad_out, grad_value, sms);
                         info.insert(info.end(), gather.begin(), gather.end());
                       });
  info.push_back(key_blocks);
  return grad_value;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>> backward(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& locs_in, const at::Tensor& attn_in,
    const at::Tensor& grad_output_in, bool deterministic, int64_t sms, int64_t vec,
    bool check_levels) {
  check_inputs(value_in, spatial_shapes, level_start_index, locs_in, attn_in, check_levels);
  const int64_t N = value_in.size(0), M = value_in.size(2), D = value_in.size(3);
  TORCH_CHECK(grad_output_in.dim() == 3 && grad_output_in.size(0) == N &&
                  grad_output_in.size(1) == locs_in.size(1) && grad_output_in.size(2) == M * D,
              "grad_output must be (N, Lq, M*D), got shape ", grad_output_in.sizes());
  const auto value = value_in.contiguous();
  const auto locs = locs_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto grad_out = grad_output_in.to(value.scalar_type()).contiguous();
  auto grad_locs = nan_like(locs);
  auto grad_attn = nan_like(attn);
  std::vector<int64_t> info;
  if (grad_out.numel() == 0 || value.numel() == 0 || attn.numel() == 0)
    return {at::zeros_like(value), grad_locs.zero_(), grad_attn.zero_(), info};
  at::Tensor grad_value;
  const int sm = static_cast<int>(sms);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "emu_bwd", [&] {
    with_coord_type<scalar_t>(locs.scalar_type(), [&]<typename coord_t>() {
      grad_value = deterministic
                       ? backward_deterministic<scalar_t, coord_t>(
                             value, shapes, starts, locs, attn, grad_out, grad_locs, grad_attn,
                             vec, sm, info)
                       : backward_atomic<scalar_t, coord_t>(value, shapes, starts, locs, attn,
                                                            grad_out, grad_locs, grad_attn, vec,
                                                            sm, info);
    });
  });
  return {grad_value, grad_locs, grad_attn, info};
}

// A kernel with a bug the emulation must turn into an error, not a hang:
// lane 0 leaves before the block's barrier.
__global__ void stuck_kernel(int* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

void stuck(int64_t threads) {
  std::vector<int> out(threads);
  run(stuck_kernel, k::Launch{static_cast<int>(threads), 1, 0}, out.data());
}

double set_barrier_timeout(double seconds) {
  TORCH_CHECK(seconds > 0, "the barrier timeout must be positive, got ", seconds);
  return cuda_emu::barrier_timeout_s().exchange(seconds);
}

}  // namespace
}  // namespace mmdeform

#define MMDEFORM_EMU_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

MMDEFORM_EMU_LIBRARY(MMDEFORM_EMU_NS, m) {
  m.def("forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights, int sms, int vec, "
        "bool check_levels) -> (Tensor, int[])",
        &mmdeform::forward);
  m.def("backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
        "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output, "
        "bool deterministic, int sms, int vec, bool check_levels) "
        "-> (Tensor, Tensor, Tensor, int[])",
        &mmdeform::backward);
  m.def("stuck(int threads) -> ()", &mmdeform::stuck);
  m.def("set_barrier_timeout(float seconds) -> float", &mmdeform::set_barrier_timeout);
}
