// The CUDA built-ins that mmdeform's kernels use, for the host: enough to
// compile ms_deform_attn_cuda.cuh and ms_deform_attn_cuda_deterministic.cuh
// unmodified with g++ and run them on a CPU.
//
// Execution model. launch() runs the blocks of a grid one after the other;
// a block is blockDim.x real std::threads (the lanes), so the sanitizers see
// real concurrency. Lanes 32 * w .. 32 * w + 31 form warp w.
//   __syncthreads      a barrier of the block's lanes;
//   __shfl_xor_sync    the warp's 32 lanes publish their value in a slot, pass
//                      a warp barrier and read their partner's slot (two slot
//                      sets used in turn, so one barrier per shuffle);
//   atomicAdd          std::atomic_ref, per element for float2 / float4 (which
//                      must be 8- / 16-byte aligned, as on the GPU);
//   extern __shared__  one buffer per emulated module; launch() checks the
//                      requested size, fills it with 0xFF bytes (NaN floats,
//                      token -1) before each block and, under AddressSanitizer,
//                      poisons the bytes past the requested size.
// Every barrier wait has a deadline: a lane that waits longer (a lane that
// skipped a barrier, a divergent shuffle) makes launch() throw instead of
// hanging; the other lanes are released and the launch is abandoned.
#pragma once

#include <math.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct alignas(8) float2 {
  float x, y;
};

struct alignas(16) float4 {
  float x, y, z, w;
};

inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_emu {

// A lane found the launch broken (stuck barrier, bad atomic): the message
// says which lane and where.
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Another lane faulted; this one leaves quietly.
struct Abandoned {};

inline std::atomic<double>& barrier_timeout_s() {
  static std::atomic<double> seconds{60.0};
  return seconds;
}

struct LaunchState;

// A reusable barrier of `count` lanes with a deadline per wait and an optional
// action run by the last lane to arrive, before the others are released.
class Barrier {
 public:
  Barrier(int count, LaunchState* state) : count_(count), state_(state) {}
  void wait(const char* where, std::function<void()> on_complete = nullptr);
  void wake() {
    std::lock_guard<std::mutex> lock(mutex_);
    released_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int count_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  LaunchState* state_;
};

struct Warp {
  explicit Warp(LaunchState* state) : barrier(32, state) {}
  Barrier barrier;
  alignas(8) unsigned char slots[2][32][8];
};

struct LaunchState {
  std::atomic<bool> aborted{false};
  std::mutex error_mutex;
  std::string error;
  std::unique_ptr<Barrier> block_barrier, end_barrier;
  std::vector<std::unique_ptr<Warp>> warps;

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (error.empty()) error = message;
    }
    aborted = true;
    block_barrier->wake();
    end_barrier->wake();
    for (auto& w : warps) w->barrier.wake();
  }
};

struct LaneState {
  LaunchState* launch = nullptr;
  Warp* warp = nullptr;
  int lane = 0;
  int parity = 0;
};

inline thread_local LaneState this_lane;

inline std::string lane_name() {
  return "lane " + std::to_string(threadIdx.x) + " of block " + std::to_string(blockIdx.x);
}

inline void Barrier::wait(const char* where, std::function<void()> on_complete) {
  std::unique_lock<std::mutex> lock(mutex_);
  const uint64_t generation = generation_;
  if (++arrived_ == count_) {
    arrived_ = 0;
    ++generation_;
    if (on_complete) on_complete();
    released_.notify_all();
    return;
  }
  const auto timeout = std::chrono::duration<double>(barrier_timeout_s().load());
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
  while (generation_ == generation) {
    if (state_->aborted) throw Abandoned{};
    if (released_.wait_until(lock, deadline) == std::cv_status::timeout &&
        generation_ == generation) {
      throw Fault(lane_name() + " waited more than " + std::to_string(timeout.count()) +
                  " s at " + where + " (" + std::to_string(arrived_) + " of " +
                  std::to_string(count_) + " lanes arrived)");
    }
  }
}

// Runs kernel(args...) on a grid of `blocks` blocks of `threads` lanes with
// `smem_bytes` of the module's shared buffer `smem` (capacity `smem_capacity`).
// Throws std::runtime_error naming the first lane that faulted.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned blocks, int threads, size_t smem_bytes, unsigned char* smem,
            size_t smem_capacity, const Args&... args) {
  if (threads <= 0 || threads > 1024 || threads % 32 != 0)
    throw std::runtime_error("cuda_emu: blockDim.x = " + std::to_string(threads) +
                             " is not a positive multiple of 32 up to 1024");
  if (smem_bytes > smem_capacity)
    throw std::runtime_error("cuda_emu: the launch asks for " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory, above the " +
                             std::to_string(smem_capacity) + " a block gets by default");
  if (blocks == 0) return;
  LaunchState state;
  state.block_barrier = std::make_unique<Barrier>(threads, &state);
  state.end_barrier = std::make_unique<Barrier>(threads, &state);
  for (int w = 0; w < threads / 32; ++w) state.warps.push_back(std::make_unique<Warp>(&state));
#if defined(__SANITIZE_ADDRESS__)
  ASAN_POISON_MEMORY_REGION(smem + smem_bytes, smem_capacity - smem_bytes);
#endif
  std::memset(smem, 0xFF, smem_bytes);
  auto refill = [&] { std::memset(smem, 0xFF, smem_bytes); };
  auto lane_body = [&](int t) {
    threadIdx = dim3{static_cast<unsigned>(t), 1, 1};
    blockDim = dim3{static_cast<unsigned>(threads), 1, 1};
    gridDim = dim3{blocks, 1, 1};
    this_lane = LaneState{&state, state.warps[t / 32].get(), t % 32, 0};
    try {
      for (unsigned b = 0; b < blocks && !state.aborted; ++b) {
        blockIdx = dim3{b, 1, 1};
        this_lane.parity = 0;
        kernel(args...);
        state.end_barrier->wait("the end of the block", refill);
      }
    } catch (const Fault& f) {
      state.fail(f.what());
    } catch (const Abandoned&) {
    } catch (const std::exception& e) {
      state.fail(lane_name() + ": " + e.what());
    }
  };
  std::vector<std::thread> lanes;
  lanes.reserve(threads);
  for (int t = 0; t < threads; ++t) lanes.emplace_back(lane_body, t);
  for (auto& lane : lanes) lane.join();
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(smem + smem_bytes, smem_capacity - smem_bytes);
#endif
  if (state.aborted) throw std::runtime_error("cuda_emu: " + state.error);
}

}  // namespace cuda_emu

inline void __syncthreads() { cuda_emu::this_lane.launch->block_barrier->wait("__syncthreads"); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  auto& lane = cuda_emu::this_lane;
  if (mask != 0xffffffffu || width != 32 || lane_mask < 0 || lane_mask >= 32)
    throw cuda_emu::Fault(cuda_emu::lane_name() +
                          ": the emulation supports full-warp __shfl_xor_sync only");
  std::memcpy(lane.warp->slots[lane.parity][lane.lane], &var, sizeof(T));
  lane.warp->barrier.wait("__shfl_xor_sync");
  T out;
  std::memcpy(&out, lane.warp->slots[lane.parity][lane.lane ^ lane_mask], sizeof(T));
  lane.parity ^= 1;
  return out;
}

inline float atomicAdd(float* address, float val) {
  return std::atomic_ref<float>(*address).fetch_add(val, std::memory_order_relaxed);
}

inline double atomicAdd(double* address, double val) {
  return std::atomic_ref<double>(*address).fetch_add(val, std::memory_order_relaxed);
}

namespace cuda_emu {
inline void check_vector_atomic(const void* address, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(address) % bytes != 0)
    throw Fault(lane_name() + ": " + std::to_string(bytes) + "-byte vector atomicAdd on a " +
                "misaligned address");
}
}  // namespace cuda_emu

// sm_90 vector atomics: atomic per element, the address aligned to the vector.
inline float2 atomicAdd(float2* address, float2 val) {
  cuda_emu::check_vector_atomic(address, sizeof(float2));
  return {atomicAdd(&address->x, val.x), atomicAdd(&address->y, val.y)};
}

inline float4 atomicAdd(float4* address, float4 val) {
  cuda_emu::check_vector_atomic(address, sizeof(float4));
  return {atomicAdd(&address->x, val.x), atomicAdd(&address->y, val.y),
          atomicAdd(&address->z, val.z), atomicAdd(&address->w, val.w)};
}
