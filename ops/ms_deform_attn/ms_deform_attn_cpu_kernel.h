// CPU kernel bodies of multi-scale deformable attention.
//
// This file is included twice by ms_deform_attn_cpu.cpp, inside two different
// namespaces: once for the baseline instruction set and once under
// `#pragma GCC target("avx2,fma")`, and the caller picks one at run time. It
// therefore has no include guard and includes nothing; it relies on Dims,
// <cmath>, <limits>, <vector>, ATen/Parallel.h and ATen/OpMathType.h being
// included first.
//
// Forward: parallel over (batch, head, query block) items, head-major, so a
// thread reads one head's value rows at a time; each (n, q, m) accumulates its
// D channels in registers (D fixed at compile time for common head sizes).
// Backward: parallel over (batch, head) pairs. A pair owns its slice of
// grad_value, so the scatter of value gradients needs no atomics and runs in a
// fixed order: results are bitwise identical from run to run whatever the
// number of threads. For each (query, head) the corner addresses and weights of
// all its samples are computed first, then the samples are processed with the
// rows of the sample two ahead prefetched. grad_sampling_locations and
// grad_attention_weights are written once per sample by the pair that owns it.
// Dot products over channels use 8 independent partial sums in a fixed order,
// so they vectorize without -ffast-math and stay deterministic.
//
// Both directions are bound by memory access, not arithmetic, and three
// things about access decide their speed on a small CPU:
// - the per-query arrays of one head (locations, weights, output gradient and
//   the location/weight gradients) are walked at a stride of all heads' data,
//   about 1 KiB, which the hardware prefetchers do not follow across pages:
//   the kernels prefetch them two queries ahead;
// - when a head's rows fit in L2 and its queries touch most of them, one sweep
//   of independent prefetches loads them before the scattered accesses start
//   (worth_sweeping / sweep_rows);
// - the scattered corner rows of the next samples are prefetched.
// Tried and measured slower on the project's 2-core VM: splitting the backward
// by level (more passes over the per-query arrays), separate read and scatter
// sweeps, clearing grad_value inside the kernel instead of one parallel fill,
// work stealing between threads (neighbouring heads share cache lines and
// pages), a longer prefetch distance, and prefetching in batches in the
// forward.

// Bilinear footprint of one sampling location on one level: four corners, each
// a token offset inside the level (-1 when outside) and a weight. dw / dh are
// the derivatives of the corner weights with respect to the pixel coordinates.
// `any` is false when no corner lies inside the level, which includes every
// non-finite location; `nonfinite` marks those (they sample NaN, as
// F.grid_sample does, instead of zeros).
template <typename acc_t>
struct Footprint {
  int64_t offset[4];
  acc_t weight[4];
  acc_t dw[4];
  acc_t dh[4];
  bool any;
  bool nonfinite;
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
  if (!f.any) {  // the rare branch: the finiteness test costs inside samples nothing
    f.nonfinite = !(std::isfinite(loc_x) && std::isfinite(loc_y));
    return f;
  }
  f.nonfinite = false;
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

// Prefetches the cache lines of count elements from p. The kernels walk the
// per-query arrays (locations, weights, gradients) of one head at a stride of
// all heads' data, about 1 KiB: four queries per page, too few for the
// hardware prefetchers, which stop at page boundaries, to catch on.
template <int kWrite, typename T>
inline void prefetch_span(const T* p, int64_t count) {
  const char* begin = reinterpret_cast<const char*>(p);
  const char* end = reinterpret_cast<const char*>(p + count);
  for (const char* line = begin; line < end; line += 64) __builtin_prefetch(line, kWrite);
  __builtin_prefetch(end - 1, kWrite);
}

// Whether to pull a head's value rows (and, in the backward, its gradient
// rows) into the cache in one sweep before its queries sample them: when the
// rows fit in a core's L2 cache and the queries touch most of them (each
// sample reads four), a run of independent prefetches loads them far faster
// than the samples' scattered misses would.
template <typename scalar_t>
inline bool worth_sweeping(const Dims& d, int64_t channels) {
  const int64_t bytes = d.num_value * channels * static_cast<int64_t>(sizeof(scalar_t));
  return bytes <= 768 * 1024 && 4 * d.num_query * d.levels * d.points >= d.num_value;
}

template <int kWrite, typename T>
inline void sweep_rows(const T* first, int64_t count, int64_t row, int64_t channels) {
  for (int64_t r = 0; r < count; ++r) {
    __builtin_prefetch(first + r * row, kWrite, 2);
    __builtin_prefetch(first + r * row + channels - 1, kWrite, 2);
  }
}

// A channel buffer: registers/stack for a compile-time size, heap otherwise.
template <typename T, int kChannels>
struct ChannelBuffer {
  T fixed[kChannels > 0 ? kChannels : 1];
  std::vector<T> dynamic;
  T* data;
  explicit ChannelBuffer(int64_t channels) : dynamic(kChannels > 0 ? 0 : channels) {
    data = kChannels > 0 ? fixed : dynamic.data();
  }
};

// Rows of the four corners of a footprint. Corners outside the level point at
// a row of zeros (reads) and at private scratch rows (gradient writes), so the
// channel loops have no branches.
template <typename scalar_t, typename acc_t, int kChannels>
struct CornerRows {
  ChannelBuffer<scalar_t, kChannels> zeros;
  ChannelBuffer<acc_t, kChannels> scratch[4];
  explicit CornerRows(int64_t channels)
      : zeros(channels), scratch{ChannelBuffer<acc_t, kChannels>(channels),
                                 ChannelBuffer<acc_t, kChannels>(channels),
                                 ChannelBuffer<acc_t, kChannels>(channels),
                                 ChannelBuffer<acc_t, kChannels>(channels)} {
    for (int64_t k = 0; k < channels; ++k) zeros.data[k] = scalar_t(0);
  }
  const scalar_t* value(const scalar_t* level, const Footprint<acc_t>& f, int c,
                        int64_t row) const {
    return f.offset[c] >= 0 ? level + f.offset[c] * row : zeros.data;
  }
  acc_t* grad(acc_t* level, const Footprint<acc_t>& f, int c, int64_t row) {
    return f.offset[c] >= 0 ? level + f.offset[c] * row : scratch[c].data;
  }
};

// kChannels > 0 fixes the channel count at compile time (the loops over
// channels unroll, the accumulators live in registers); 0 means d.channels.
// coord_t is the type of locations and weights: scalar_t, or float when
// scalar_t is a 16-bit type (autocast).
// A sample with a non-finite weight a adds a * (bilinearly interpolated
// value), in the reference's order, so that it gives the reference's inf /
// NaN pattern; a finite one is folded into the corner weights (one FMA per
// corner and channel, as fast as before). A row whose samples include a
// non-finite location, or a non-finite weight on a sample that reads zeros
// (0 * inf), is NaN.
template <typename scalar_t, typename coord_t, int kChannels>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const coord_t* locs, const coord_t* attn, scalar_t* out, const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : d.channels;
  const int64_t row = d.heads * channels;  // stride between value tokens
  const int64_t samples = d.levels * d.points;  // per (query, head)
  // Items are (batch, head, block of queries), head-major: consecutive items
  // of a thread read the same head's rows (a few hundred KiB, which stay in
  // the core's L2 cache) instead of every head of the map.
  const int64_t block = 32;
  const int64_t blocks = (d.num_query + block - 1) / block;
  const bool sweep = worth_sweeping<scalar_t>(d, channels);
  at::parallel_for(0, d.batch * d.heads * blocks, 1, [&](int64_t begin, int64_t end) {
    ChannelBuffer<acc_t, kChannels> buffer(channels);
    CornerRows<scalar_t, acc_t, kChannels> rows(channels);
    acc_t* __restrict__ acc = buffer.data;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (d.heads * blocks);
      const int64_t m = (item / blocks) % d.heads;
      const int64_t q_end = std::min(d.num_query, (item % blocks + 1) * block);
      const scalar_t* value_head = value + n * d.num_value * row + m * channels;
      if (sweep && (item == begin || item % blocks == 0)) {
        sweep_rows<0>(value_head, d.num_value, row, channels);
      }
      for (int64_t q = (item % blocks) * block; q < q_end; ++q) {
        const int64_t nqm = (n * d.num_query + q) * d.heads + m;
        for (int64_t k = 0; k < channels; ++k) acc[k] = acc_t(0);
        bool nan_row = false;
        const int64_t sample0 = nqm * samples;
        if (q + 2 < q_end) {  // this head's locations and weights two queries ahead
          const int64_t ahead = sample0 + 2 * d.heads * samples;
          prefetch_span<0>(locs + 2 * ahead, 2 * samples);
          prefetch_span<0>(attn + ahead, samples);
        }
        for (int64_t l = 0; l < d.levels; ++l) {
          const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
          const scalar_t* level = value_head + starts[l] * row;
          for (int64_t p = 0; p < d.points; ++p) {
            const int64_t s = sample0 + l * d.points + p;
            const auto f = bilinear_footprint<acc_t>(static_cast<acc_t>(locs[2 * s]),
                                                     static_cast<acc_t>(locs[2 * s + 1]), height,
                                                     width);
            const acc_t a = static_cast<acc_t>(attn[s]);
            if (!f.any) {
              nan_row = nan_row || f.nonfinite || !std::isfinite(a);
              continue;
            }
            const scalar_t* __restrict__ v0 = rows.value(level, f, 0, row);
            const scalar_t* __restrict__ v1 = rows.value(level, f, 1, row);
            const scalar_t* __restrict__ v2 = rows.value(level, f, 2, row);
            const scalar_t* __restrict__ v3 = rows.value(level, f, 3, row);
            if (!std::isfinite(a)) {  // rare: a * (sampled value), the reference's order
              for (int64_t k = 0; k < channels; ++k) {
                acc[k] += a * (f.weight[0] * static_cast<acc_t>(v0[k]) +
                               f.weight[1] * static_cast<acc_t>(v1[k]) +
                               f.weight[2] * static_cast<acc_t>(v2[k]) +
                               f.weight[3] * static_cast<acc_t>(v3[k]));
              }
              continue;
            }
            // a finite weight folded into the corner weights: one FMA per corner
            const acc_t w0 = a * f.weight[0], w1 = a * f.weight[1], w2 = a * f.weight[2],
                        w3 = a * f.weight[3];
            for (int64_t k = 0; k < channels; ++k) {
              acc[k] += w0 * static_cast<acc_t>(v0[k]) + w1 * static_cast<acc_t>(v1[k]) +
                        w2 * static_cast<acc_t>(v2[k]) + w3 * static_cast<acc_t>(v3[k]);
            }
          }
        }
        scalar_t* o = out + nqm * channels;
        if (nan_row) {
          for (int64_t k = 0; k < channels; ++k) acc[k] = std::numeric_limits<acc_t>::quiet_NaN();
        }
        for (int64_t k = 0; k < channels; ++k) o[k] = static_cast<scalar_t>(acc[k]);
      }
    }
  });
}

// Gradients of one sample: scatters a * w_c * go into the four corner rows of
// grad_value and returns (d out / d attn, d / d w_im, d / d h_im) dotted with
// go. Those three come from the four corner dot products go . v_c, each kept
// in 8 partial sums combined in a fixed order, so the loop vectorizes without
// -ffast-math and stays deterministic.
template <typename scalar_t, typename acc_t, int kChannels>
inline void sample_backward(const scalar_t* __restrict__ v0, const scalar_t* __restrict__ v1,
                            const scalar_t* __restrict__ v2, const scalar_t* __restrict__ v3,
                            acc_t* __restrict__ g0, acc_t* __restrict__ g1,
                            acc_t* __restrict__ g2, acc_t* __restrict__ g3,
                            const acc_t* __restrict__ go, const Footprint<acc_t>& f, acc_t a,
                            int64_t channels, acc_t* result) {
  acc_t lane0[8] = {0}, lane1[8] = {0}, lane2[8] = {0}, lane3[8] = {0};
  const acc_t aw0 = a * f.weight[0], aw1 = a * f.weight[1], aw2 = a * f.weight[2],
              aw3 = a * f.weight[3];
  // One channel k accumulated into lane j (a macro keeps the restrict
  // qualifiers visible to the vectorizer, which a lambda capture would hide).
#define MMDEFORM_SAMPLE_BACKWARD_STEP(k, j)             \
  {                                                  \
    const acc_t gk = go[k];                          \
    lane0[j] += gk * static_cast<acc_t>(v0[k]);      \
    lane1[j] += gk * static_cast<acc_t>(v1[k]);      \
    lane2[j] += gk * static_cast<acc_t>(v2[k]);      \
    lane3[j] += gk * static_cast<acc_t>(v3[k]);      \
    g0[k] += aw0 * gk;                               \
    g1[k] += aw1 * gk;                               \
    g2[k] += aw2 * gk;                               \
    g3[k] += aw3 * gk;                               \
  }
  int64_t k0 = 0;
  for (; k0 + 8 <= channels; k0 += 8) {
    for (int j = 0; j < 8; ++j) MMDEFORM_SAMPLE_BACKWARD_STEP(k0 + j, j)
  }
  for (int j = 0; k0 + j < channels; ++j) MMDEFORM_SAMPLE_BACKWARD_STEP(k0 + j, j)
#undef MMDEFORM_SAMPLE_BACKWARD_STEP
  const acc_t* lanes[4] = {lane0, lane1, lane2, lane3};
  acc_t dot[4];
  for (int c = 0; c < 4; ++c) {
    const acc_t* x = lanes[c];
    dot[c] = ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
  }
  result[0] = (f.weight[0] * dot[0] + f.weight[1] * dot[1]) +
              (f.weight[2] * dot[2] + f.weight[3] * dot[3]);
  result[1] = (f.dw[0] * dot[0] + f.dw[1] * dot[1]) + (f.dw[2] * dot[2] + f.dw[3] * dot[3]);
  result[2] = (f.dh[0] * dot[0] + f.dh[1] * dot[1]) + (f.dh[2] * dot[2] + f.dh[3] * dot[3]);
}

// Footprints and corner rows of the L * P samples of one (query, head). The
// backward computes them all before using any: the address arithmetic of a
// sample then no longer waits behind the memory accesses of the previous one,
// and the rows of the next samples can be prefetched.
template <typename scalar_t, typename acc_t>
struct SampleBatch {
  std::vector<Footprint<acc_t>> footprints;  // (L * P,)
  std::vector<const scalar_t*> value_rows;   // (L * P * 4,) corner rows of value
  std::vector<acc_t*> grad_rows;             // (L * P * 4,) corner rows of grad_value
  explicit SampleBatch(int64_t samples)
      : footprints(samples), value_rows(4 * samples), grad_rows(4 * samples) {}
};

// Fills `batch` for one (query, head). value_head / grad_head point at this
// head's channels of token 0; locs_query at the query-head's (L, P, 2) locations.
template <typename scalar_t, typename coord_t, typename acc_t, int kChannels>
void collect_footprints(const scalar_t* value_head, acc_t* grad_head, const coord_t* locs_query,
                        const int64_t* shapes, const int64_t* starts, int64_t row,
                        const Dims& d, CornerRows<scalar_t, acc_t, kChannels>& rows,
                        SampleBatch<scalar_t, acc_t>& batch) {
  for (int64_t l = 0; l < d.levels; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
    const scalar_t* level = value_head + starts[l] * row;
    acc_t* grad_level = grad_head + starts[l] * row;
    for (int64_t p = 0; p < d.points; ++p) {
      const int64_t i = l * d.points + p;
      const auto& f = batch.footprints[i] =
          bilinear_footprint<acc_t>(static_cast<acc_t>(locs_query[2 * i]),
                                    static_cast<acc_t>(locs_query[2 * i + 1]), height, width);
      for (int c = 0; c < 4; ++c) {
        batch.value_rows[4 * i + c] = rows.value(level, f, c, row);
        batch.grad_rows[4 * i + c] = rows.grad(grad_level, f, c, row);
      }
    }
  }
}

// grad_value_acc has the layout of value, in the accumulation type, and
// arrives zeroed. A sample at a non-finite location gets NaN location and
// weight gradients and adds nothing to grad_value (as in the reference).
template <typename scalar_t, typename coord_t, int kChannels,
          typename acc_t = at::opmath_type<scalar_t>>
void backward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const coord_t* locs, const coord_t* attn, const scalar_t* grad_out,
                     acc_t* grad_value_acc, coord_t* grad_locs, coord_t* grad_attn,
                     const Dims& d) {
  const int64_t channels = kChannels > 0 ? kChannels : d.channels;
  const int64_t row = d.heads * channels;
  const int64_t samples = d.levels * d.points;  // per (query, head)
  constexpr int64_t kAhead = 2;
  const bool sweep = worth_sweeping<scalar_t>(d, channels);
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t begin, int64_t end) {
    ChannelBuffer<acc_t, kChannels> go_buffer(channels);
    CornerRows<scalar_t, acc_t, kChannels> rows(channels);
    acc_t* __restrict__ go = go_buffer.data;
    SampleBatch<scalar_t, acc_t> batch(samples);
    // Level size of each of a query's samples, as factors of the location gradient.
    std::vector<acc_t> level_width(samples), level_height(samples);
    for (int64_t i = 0; i < samples; ++i) {
      level_height[i] = static_cast<acc_t>(shapes[2 * (i / d.points)]);
      level_width[i] = static_cast<acc_t>(shapes[2 * (i / d.points) + 1]);
    }
    for (int64_t nm = begin; nm < end; ++nm) {
      const int64_t n = nm / d.heads, m = nm % d.heads;
      const int64_t base = n * d.num_value * row + m * channels;
      if (sweep) {
        // Value and gradient rows together are up to twice what
        // worth_sweeping allows for, more than L2 holds; sweeping both was
        // still measured faster than sweeping either alone or neither.
        sweep_rows<0>(value + base, d.num_value, row, channels);
        sweep_rows<1>(grad_value_acc + base, d.num_value, row, channels);
      }
      for (int64_t q = 0; q < d.num_query; ++q) {
        const int64_t nqm = (n * d.num_query + q) * d.heads + m;
        if (q + 2 < d.num_query) {  // this head's per-query arrays two queries ahead
          const int64_t ahead = nqm + 2 * d.heads;
          prefetch_span<0>(grad_out + ahead * channels, channels);
          prefetch_span<0>(locs + 2 * ahead * samples, 2 * samples);
          prefetch_span<0>(attn + ahead * samples, samples);
          prefetch_span<1>(grad_locs + 2 * ahead * samples, 2 * samples);
          prefetch_span<1>(grad_attn + ahead * samples, samples);
        }
        const scalar_t* g = grad_out + nqm * channels;
        for (int64_t k = 0; k < channels; ++k) go[k] = static_cast<acc_t>(g[k]);
        const int64_t s0 = nqm * samples;
        collect_footprints<scalar_t, coord_t, acc_t, kChannels>(value + base, grad_value_acc + base,
                                                       locs + 2 * s0, shapes, starts, row, d,
                                                       rows, batch);
        for (int64_t i = 0; i < samples; ++i) {
          if (i + kAhead < samples) {
            for (int c = 0; c < 4; ++c) {
              const scalar_t* v = batch.value_rows[4 * (i + kAhead) + c];
              acc_t* g = batch.grad_rows[4 * (i + kAhead) + c];
              __builtin_prefetch(v);
              __builtin_prefetch(v + channels - 1);
              __builtin_prefetch(g, 1);
              __builtin_prefetch(g + channels - 1, 1);
            }
          }
          const Footprint<acc_t>& f = batch.footprints[i];
          const int64_t s = s0 + i;
          const acc_t a = static_cast<acc_t>(attn[s]);
          acc_t result[3] = {0, 0, 0};
          if (f.nonfinite) {
            for (acc_t& r : result) r = std::numeric_limits<acc_t>::quiet_NaN();
          } else if (f.any) {
            const scalar_t* const* v = batch.value_rows.data() + 4 * i;
            acc_t* const* gr = batch.grad_rows.data() + 4 * i;
            sample_backward<scalar_t, acc_t, kChannels>(v[0], v[1], v[2], v[3], gr[0], gr[1],
                                                        gr[2], gr[3], go, f, a, channels,
                                                        result);
          }
          grad_attn[s] = static_cast<coord_t>(result[0]);
          grad_locs[2 * s] = static_cast<coord_t>(result[1] * a * level_width[i]);
          grad_locs[2 * s + 1] = static_cast<coord_t>(result[2] * a * level_height[i]);
        }
      }
    }
  });
}

// Calls fn(std::integral_constant<int, C>) with C = channels for the common
// head sizes and C = 0 (run-time channel count) otherwise.
template <typename Fn>
void dispatch_channels(int64_t channels, Fn&& fn) {
  switch (channels) {
    case 8: return fn(std::integral_constant<int, 8>());
    case 16: return fn(std::integral_constant<int, 16>());
    case 32: return fn(std::integral_constant<int, 32>());
    case 64: return fn(std::integral_constant<int, 64>());
    default: return fn(std::integral_constant<int, 0>());
  }
}

template <typename scalar_t, typename coord_t>
void forward(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
             const coord_t* locs, const coord_t* attn, scalar_t* out, const Dims& d) {
  dispatch_channels(d.channels, [&](auto fixed) {
    forward_kernel<scalar_t, coord_t, decltype(fixed)::value>(value, shapes, starts, locs, attn,
                                                              out, d);
  });
}

template <typename scalar_t, typename coord_t, typename acc_t>
void backward(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
              const coord_t* locs, const coord_t* attn, const scalar_t* grad_out,
              acc_t* grad_value_acc, coord_t* grad_locs, coord_t* grad_attn, const Dims& d) {
  dispatch_channels(d.channels, [&](auto fixed) {
    backward_kernel<scalar_t, coord_t, decltype(fixed)::value>(
        value, shapes, starts, locs, attn, grad_out, grad_value_acc, grad_locs, grad_attn, d);
  });
}
