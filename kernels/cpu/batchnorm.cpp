// Batch normalisation on CPU (see batchnorm.h).
//
// Every kernel is a loop over channels (split over threads); inside a channel it walks the
// N contiguous runs of `spatial` elements. Statistics are exact two-pass sums in double
// (mean, then the sum of squared deviations), so float inputs with a large mean lose no
// precision. Each elementwise pass is y = (x - center) * scale + shift with per-channel
// constants; subtracting the mean first keeps float outputs accurate when |mean| >> std.
//
// The double sums keep kLanes = 8 independent lanes: lane l adds elements l, l + 8, ... of
// each run, and a run's last partial group goes to lanes 0 .. r-1. For float input the
// compiler turned those loops into scalar loads and inserts (about 70% of the backward
// pass; 16% of an alexnet-32 step at width 0.25 was batch norm), so float32 has an
// AVX-512 form: 8 floats widened to one register of 8 doubles per step, the partial group
// loaded under a mask as +0.0. It adds the same values to the same lanes in the same
// order, with the fused multiply-adds the compiler formed for the loops (GCC contracts
// `lane += d * d` by default), so the sums are bit for bit those of the loops. (+0.0
// leaves a lane unchanged: a lane starts at +0.0 and a round-to-nearest sum is never -0.0
// unless both terms are.)
//
// spatial = 1 (BatchNorm1d on (N, C) rows, the fc layers' BatchNorm) has its own loops: a
// channel's N values lie C apart, so walking one channel at a time reads one value per
// cache line and costs about 20x the same number of values in the conv layout. Those loops
// walk the rows instead and keep one double sum per channel of a block of channels (split
// over threads). Each channel's sum still adds its values in row order into a single
// accumulator, which is what the channel walk does at spatial = 1 (every run's single value
// goes to lane 0; the other lanes stay +0.0), with the same fused multiply-adds: the
// results are the channel walk's, bit for bit (checked once: `sela train --quick
// --fc-batch-norm on --threads 1` wrote the same checkpoint tensors and labels with the
// channel walk, commit 82c8b4e, and with these loops; tests/kernels/test_batchnorm.cpp
// holds them to the closed form and to the same bits at 1 and 2 threads). That equality
// needs the hardware FMA of a -march=native build (SELA_NATIVE, the default); without it
// std::fma is a library call and the channel walk's loops are not contracted.
#include "kernels/cpu/batchnorm.h"

#if defined(__AVX512F__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SELA_BATCHNORM_AVX512 1
#endif

#include <algorithm>
#include <cmath>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

// Elements per thread below which the channel loop is not split.
constexpr std::int64_t kBatchNormGrain = 1 << 15;

void check_sizes(const char* op, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  SELA_CHECK(batch >= 0 && channels >= 0 && spatial >= 0, op,
             "sizes must be >= 0, got (N, C, spatial) = (" << batch << ", " << channels << ", "
                                                           << spatial << ")");
}

// Runs body(c) for every channel, channels split over threads.
template <typename Body>
void for_each_channel(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                      const Body& body) {
  const std::int64_t per_channel = batch * spatial;
  const std::int64_t channel_grain = kBatchNormGrain / (per_channel + 1) + 1;
  parallel_for(0, channels, channel_grain, [&](std::int64_t c_begin, std::int64_t c_end) {
    for (std::int64_t c = c_begin; c < c_end; ++c) body(c);
  });
}

// Independent accumulator lanes that let the compiler vectorise a double sum without
// reassociating it; combined in a fixed order.
constexpr int kLanes = 8;
constexpr std::int64_t kPrefetchRuns = 2;  // how many runs ahead prefetch_run asks

double combine_lanes(double* lanes) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

// sum over i of a[i] in double.
template <typename T>
void accumulate(std::int64_t n, const T* a, double* lanes) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(a[i + l]);
  for (int l = 0; i < n; ++i, ++l) lanes[l] += static_cast<double>(a[i]);
}

// sum over i of (a[i] - center)^2 in double.
template <typename T>
void accumulate_squared_deviation(std::int64_t n, const T* a, double center, double* lanes) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(a[i + l]) - center;
      lanes[l] += d * d;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const double d = static_cast<double>(a[i]) - center;
    lanes[l] += d * d;
  }
}

// sum over i of g[i] and of g[i] * (a[i] - center), in double.
template <typename T>
void accumulate_grad(std::int64_t n, const T* g, const T* a, double center, double* g_lanes,
                     double* ga_lanes) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double gi = static_cast<double>(g[i + l]);
      g_lanes[l] += gi;
      ga_lanes[l] += gi * (static_cast<double>(a[i + l]) - center);
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const double gi = static_cast<double>(g[i]);
    g_lanes[l] += gi;
    ga_lanes[l] += gi * (static_cast<double>(a[i]) - center);
  }
}

#if defined(SELA_BATCHNORM_AVX512)
static_assert(kLanes == 8, "one __m512d holds the 8 lanes");

// The lanes a group of `count` values fills: all 8, or the first count when fewer remain.
inline __mmask8 live_lanes(std::int64_t count) {
  return count >= kLanes ? __mmask8(0xFF) : static_cast<__mmask8>((1u << count) - 1);
}

// Floats a[0 .. 7] as doubles; with count < 8 only a[0 .. count-1], the rest +0.0.
// (The maskz conversions: GCC 12 warns that _mm512_cvtps_pd reads an undefined register.)
inline __m512d load_as_double(const float* a, std::int64_t count) {
  if (count >= kLanes) return _mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(a));
  return _mm512_maskz_cvtps_pd(0xFF, _mm256_maskz_loadu_ps(live_lanes(count), a));
}

template <>
void accumulate<float>(std::int64_t n, const float* a, double* lanes) {
  __m512d sum = _mm512_loadu_pd(lanes);
  for (std::int64_t i = 0; i < n; i += kLanes)
    sum = _mm512_add_pd(sum, load_as_double(a + i, n - i));
  _mm512_storeu_pd(lanes, sum);
}

template <>
void accumulate_squared_deviation<float>(std::int64_t n, const float* a, double center,
                                         double* lanes) {
  const __m512d c = _mm512_set1_pd(center);
  __m512d sum = _mm512_loadu_pd(lanes);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const __m512d d = _mm512_sub_pd(load_as_double(a + i, n - i), c);
    // Masked-off lanes: d = -center, so d * d is not +0.0 there; keep those lanes as they are.
    sum = _mm512_mask3_fmadd_pd(d, d, sum, live_lanes(n - i));
  }
  _mm512_storeu_pd(lanes, sum);
}

template <>
void accumulate_grad<float>(std::int64_t n, const float* g, const float* a, double center,
                            double* g_lanes, double* ga_lanes) {
  const __m512d c = _mm512_set1_pd(center);
  __m512d g_sum = _mm512_loadu_pd(g_lanes), ga_sum = _mm512_loadu_pd(ga_lanes);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const __m512d gi = load_as_double(g + i, n - i);  // masked-off lanes: +0.0
    const __m512d d = _mm512_sub_pd(load_as_double(a + i, n - i), c);
    g_sum = _mm512_add_pd(g_sum, gi);
    ga_sum = _mm512_mask3_fmadd_pd(gi, d, ga_sum, live_lanes(n - i));
  }
  _mm512_storeu_pd(g_lanes, g_sum);
  _mm512_storeu_pd(ga_lanes, ga_sum);
}
#endif

// Asks for the start of a run that a channel loop reads soon (the runs of one channel lie
// C * spatial values apart, a stride the hardware prefetcher does not follow).
template <typename T>
inline void prefetch_run(const T* run, std::int64_t spatial) {
  const std::int64_t bytes = spatial * static_cast<std::int64_t>(sizeof(T));
  const std::int64_t lines = std::min<std::int64_t>(4, (bytes + 63) / 64);
  for (std::int64_t l = 0; l < lines; ++l)
    __builtin_prefetch(reinterpret_cast<const char*>(run) + 64 * l);
}

// out[n, c, :] = (in[n, c, :] - center) * scale + shift for every n of channel c.
template <typename T>
void affine_channel(std::int64_t batch, std::int64_t channels, std::int64_t spatial, std::int64_t c,
                    const T* in, T center, T scale, T shift, T* out) {
  for (std::int64_t n = 0; n < batch; ++n) {
    const std::int64_t offset = (n * channels + c) * spatial;
    const T* src = in + offset;  // (spatial)
    T* dst = out + offset;       // (spatial)
    for (std::int64_t i = 0; i < spatial; ++i) dst[i] = (src[i] - center) * scale + shift;
  }
}

// --- spatial = 1: rows of C values -------------------------------------------------------

// Channels per block of the row loops: their double sums stay in L1.
constexpr std::int64_t kRowChannelBlock = 256;

// Runs body(c_begin, c_end) over blocks of at most kRowChannelBlock channels, split over
// threads.
template <typename Body>
void for_each_channel_block(std::int64_t batch, std::int64_t channels, const Body& body) {
  const std::int64_t channel_grain =
      std::max<std::int64_t>(kRowChannelBlock, kBatchNormGrain / (batch + 1) + 1);
  parallel_for(0, channels, channel_grain, [&](std::int64_t c_begin, std::int64_t c_end) {
    for (std::int64_t c0 = c_begin; c0 < c_end; c0 += kRowChannelBlock)
      body(c0, std::min(c_end, c0 + kRowChannelBlock));
  });
}

// d * d + sum (or a * b + sum) with one rounding, as the channel walk's contracted loops and
// its AVX-512 form compute it.
inline double fused(double a, double b, double sum) { return std::fma(a, b, sum); }

template <typename T>
void forward_train_rows(std::int64_t batch, std::int64_t channels, const T* x, const T* gamma,
                        const T* beta, T momentum, T* running_mean, T* running_var, T eps, T* y,
                        T* save_mean, T* save_invstd) {
  const std::int64_t count = batch;
  for_each_channel_block(batch, channels, [&](std::int64_t c0, std::int64_t c1) {
    const std::int64_t width = c1 - c0;
    double sum[kRowChannelBlock] = {}, mean[kRowChannelBlock], squares[kRowChannelBlock] = {};
    for (std::int64_t n = 0; n < batch; ++n) {
      const T* row = x + n * channels + c0;  // (width)
      for (std::int64_t j = 0; j < width; ++j) sum[j] += static_cast<double>(row[j]);
    }
    for (std::int64_t j = 0; j < width; ++j) mean[j] = sum[j] / static_cast<double>(count);
    for (std::int64_t n = 0; n < batch; ++n) {
      const T* row = x + n * channels + c0;
      for (std::int64_t j = 0; j < width; ++j) {
        const double d = static_cast<double>(row[j]) - mean[j];
        squares[j] = fused(d, d, squares[j]);
      }
    }
    T center[kRowChannelBlock], scale[kRowChannelBlock], shift[kRowChannelBlock];
    for (std::int64_t j = 0; j < width; ++j) {
      const std::int64_t c = c0 + j;
      const double var_biased = squares[j] / static_cast<double>(count);
      const double var_unbiased = squares[j] / static_cast<double>(count - 1);
      const double invstd = 1.0 / std::sqrt(var_biased + static_cast<double>(eps));
      save_mean[c] = static_cast<T>(mean[j]);
      save_invstd[c] = static_cast<T>(invstd);
      if (running_mean != nullptr) {
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * static_cast<T>(mean[j]);
        running_var[c] =
            (T(1) - momentum) * running_var[c] + momentum * static_cast<T>(var_unbiased);
      }
      const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
      center[j] = static_cast<T>(mean[j]);
      scale[j] = static_cast<T>(g * invstd);
      shift[j] = static_cast<T>(beta != nullptr ? static_cast<double>(beta[c]) : 0.0);
    }
    for (std::int64_t n = 0; n < batch; ++n) {
      const T* row = x + n * channels + c0;
      T* out = y + n * channels + c0;
      for (std::int64_t j = 0; j < width; ++j) out[j] = (row[j] - center[j]) * scale[j] + shift[j];
    }
  });
}

// out = (in - center) * scale + shift over every value of channel c, for every c, with
// constants(c, &center, &scale, &shift): the channel walk, or rows when spatial = 1.
template <typename T, typename Constants>
void affine_per_channel(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                        const T* in, const Constants& constants, T* out) {
  if (spatial != 1) {
    for_each_channel(batch, channels, spatial, [&](std::int64_t c) {
      T center, scale, shift;
      constants(c, &center, &scale, &shift);
      affine_channel(batch, channels, spatial, c, in, center, scale, shift, out);
    });
    return;
  }
  for_each_channel_block(batch, channels, [&](std::int64_t c0, std::int64_t c1) {
    const std::int64_t width = c1 - c0;
    T center[kRowChannelBlock], scale[kRowChannelBlock], shift[kRowChannelBlock];
    for (std::int64_t j = 0; j < width; ++j) constants(c0 + j, &center[j], &scale[j], &shift[j]);
    for (std::int64_t n = 0; n < batch; ++n) {
      const T* row = in + n * channels + c0;
      T* dst = out + n * channels + c0;
      for (std::int64_t j = 0; j < width; ++j) dst[j] = (row[j] - center[j]) * scale[j] + shift[j];
    }
  });
}

// gamma / sqrt(running_var + eps) of channel c, the eval mode's scale (gamma 1 when absent).
template <typename T>
T eval_scale(const T* gamma, const T* running_var, T eps, std::int64_t c) {
  const double invstd =
      1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
  const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
  return static_cast<T>(g * invstd);
}

template <typename T>
void backward_train_rows(std::int64_t batch, std::int64_t channels, const T* x, const T* grad_y,
                         const T* gamma, const T* save_mean, const T* save_invstd, T* grad_x,
                         T* grad_gamma, T* grad_beta) {
  const std::int64_t count = batch;
  for_each_channel_block(batch, channels, [&](std::int64_t c0, std::int64_t c1) {
    const std::int64_t width = c1 - c0;
    double mean[kRowChannelBlock], sum_dy[kRowChannelBlock] = {}, sum_dy_x[kRowChannelBlock] = {};
    for (std::int64_t j = 0; j < width; ++j) mean[j] = static_cast<double>(save_mean[c0 + j]);
    for (std::int64_t n = 0; n < batch; ++n) {
      const T* dy = grad_y + n * channels + c0;  // (width)
      const T* xs = x + n * channels + c0;       // (width)
      for (std::int64_t j = 0; j < width; ++j) {
        const double gi = static_cast<double>(dy[j]);
        sum_dy[j] += gi;
        sum_dy_x[j] = fused(gi, static_cast<double>(xs[j]) - mean[j], sum_dy_x[j]);
      }
    }
    T k_t[kRowChannelBlock], a_t[kRowChannelBlock], b_t[kRowChannelBlock], mean_t[kRowChannelBlock];
    for (std::int64_t j = 0; j < width; ++j) {
      const std::int64_t c = c0 + j;
      const double invstd = static_cast<double>(save_invstd[c]);
      const double sum_dy_xhat = sum_dy_x[j] * invstd;
      if (grad_gamma != nullptr) grad_gamma[c] = static_cast<T>(sum_dy_xhat);
      if (grad_beta != nullptr) grad_beta[c] = static_cast<T>(sum_dy[j]);
      const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
      const double k = g * invstd;
      const double mean_dy = sum_dy[j] / static_cast<double>(count);
      const double mean_dy_xhat = sum_dy_xhat / static_cast<double>(count);
      k_t[j] = static_cast<T>(k);
      a_t[j] = static_cast<T>(-k * invstd * mean_dy_xhat);
      b_t[j] = static_cast<T>(-k * mean_dy);
      mean_t[j] = save_mean[c];
    }
    for (std::int64_t n = 0; n < batch; ++n) {
      const T* dy = grad_y + n * channels + c0;
      const T* xs = x + n * channels + c0;
      T* dx = grad_x + n * channels + c0;
      for (std::int64_t j = 0; j < width; ++j)
        dx[j] = dy[j] * k_t[j] + (xs[j] - mean_t[j]) * a_t[j] + b_t[j];
    }
  });
}

}  // namespace

template <typename T>
void batch_norm_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* x, const T* gamma, const T* beta, T eps, T momentum,
                              T* running_mean, T* running_var, T* y, T* save_mean, T* save_invstd) {
  const char* op = "batch_norm_forward_train";
  check_sizes(op, batch, channels, spatial);
  const std::int64_t count = batch * spatial;  // values per channel
  if (channels == 0) return;
  SELA_CHECK(count > 1, op,
             "expected more than 1 value per channel when training, got input (N, C, spatial) = ("
                 << batch << ", " << channels << ", " << spatial << ")");
  SELA_CHECK(eps >= T(0), op, "eps must be >= 0, got " << eps);
  SELA_CHECK((running_mean == nullptr) == (running_var == nullptr), op,
             "running_mean and running_var must both be given or both be nullptr");
  if (spatial == 1) {
    forward_train_rows(batch, channels, x, gamma, beta, momentum, running_mean, running_var, eps,
                       y, save_mean, save_invstd);
    return;
  }

  for_each_channel(batch, channels, spatial, [&](std::int64_t c) {
    double lanes[kLanes] = {};
    for (std::int64_t n = 0; n < batch; ++n) {
      if (n + kPrefetchRuns < batch)
        prefetch_run(x + ((n + kPrefetchRuns) * channels + c) * spatial, spatial);
      accumulate(spatial, x + (n * channels + c) * spatial, lanes);
    }
    const double mean = combine_lanes(lanes) / static_cast<double>(count);

    double sq_lanes[kLanes] = {};
    for (std::int64_t n = 0; n < batch; ++n)
      accumulate_squared_deviation(spatial, x + (n * channels + c) * spatial, mean, sq_lanes);
    const double squared_deviation = combine_lanes(sq_lanes);
    const double var_biased = squared_deviation / static_cast<double>(count);
    const double var_unbiased = squared_deviation / static_cast<double>(count - 1);
    const double invstd = 1.0 / std::sqrt(var_biased + static_cast<double>(eps));

    save_mean[c] = static_cast<T>(mean);
    save_invstd[c] = static_cast<T>(invstd);
    if (running_mean != nullptr) {
      running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * static_cast<T>(mean);
      running_var[c] = (T(1) - momentum) * running_var[c] + momentum * static_cast<T>(var_unbiased);
    }
    const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
    const double b = beta != nullptr ? static_cast<double>(beta[c]) : 0.0;
    const double scale = g * invstd;
    affine_channel(batch, channels, spatial, c, x, static_cast<T>(mean), static_cast<T>(scale),
                   static_cast<T>(b), y);
  });
}

template <typename T>
void batch_norm_forward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             const T* x, const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y) {
  const char* op = "batch_norm_forward_eval";
  check_sizes(op, batch, channels, spatial);
  SELA_CHECK(eps >= T(0), op, "eps must be >= 0, got " << eps);
  affine_per_channel(batch, channels, spatial, x, [&](std::int64_t c, T* center, T* scale, T* shift) {
    *center = running_mean[c];
    *scale = eval_scale(gamma, running_var, eps, c);
    *shift = beta != nullptr ? beta[c] : T(0);
  }, y);
}

// With xhat = (x - mean) * invstd, y = gamma * xhat + beta and M = N * spatial values per
// channel, the gradient through the batch statistics is
//   grad_x = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
//   grad_gamma = sum(dy * xhat),  grad_beta = sum(dy).
template <typename T>
void batch_norm_backward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                               const T* x, const T* grad_y, const T* gamma, const T* save_mean,
                               const T* save_invstd, T* grad_x, T* grad_gamma, T* grad_beta) {
  const char* op = "batch_norm_backward_train";
  check_sizes(op, batch, channels, spatial);
  const std::int64_t count = batch * spatial;
  if (channels == 0) return;
  SELA_CHECK(count > 0, op,
             "no values per channel: (N, C, spatial) = (" << batch << ", " << channels << ", "
                                                          << spatial << ")");
  if (spatial == 1) {
    backward_train_rows(batch, channels, x, grad_y, gamma, save_mean, save_invstd, grad_x,
                        grad_gamma, grad_beta);
    return;
  }

  for_each_channel(batch, channels, spatial, [&](std::int64_t c) {
    const double mean = static_cast<double>(save_mean[c]);
    const double invstd = static_cast<double>(save_invstd[c]);
    double g_lanes[kLanes] = {}, gx_lanes[kLanes] = {};
    for (std::int64_t n = 0; n < batch; ++n) {
      const std::int64_t offset = (n * channels + c) * spatial;
      if (n + kPrefetchRuns < batch) {
        const std::int64_t ahead = offset + kPrefetchRuns * channels * spatial;
        prefetch_run(grad_y + ahead, spatial);
        prefetch_run(x + ahead, spatial);
      }
      accumulate_grad(spatial, grad_y + offset, x + offset, mean, g_lanes, gx_lanes);
    }
    const double sum_dy = combine_lanes(g_lanes);
    const double sum_dy_xhat = combine_lanes(gx_lanes) * invstd;
    if (grad_gamma != nullptr) grad_gamma[c] = static_cast<T>(sum_dy_xhat);
    if (grad_beta != nullptr) grad_beta[c] = static_cast<T>(sum_dy);

    // grad_x = dy * k + (x - mean) * a + b, with the per-channel constants below.
    const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
    const double k = g * invstd;
    const double mean_dy = sum_dy / static_cast<double>(count);
    const double mean_dy_xhat = sum_dy_xhat / static_cast<double>(count);
    const double a = -k * invstd * mean_dy_xhat;  // coefficient of (x - mean), via xhat
    const double b = -k * mean_dy;
    const T k_t = static_cast<T>(k), a_t = static_cast<T>(a), b_t = static_cast<T>(b);
    const T mean_t = save_mean[c];
    for (std::int64_t n = 0; n < batch; ++n) {
      const std::int64_t offset = (n * channels + c) * spatial;
      const T* dy = grad_y + offset;  // (spatial)
      const T* xs = x + offset;       // (spatial)
      T* dx = grad_x + offset;        // (spatial)
      for (std::int64_t i = 0; i < spatial; ++i) dx[i] = dy[i] * k_t + (xs[i] - mean_t) * a_t + b_t;
    }
  });
}

template <typename T>
void batch_norm_backward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* grad_y, const T* gamma, const T* running_var, T eps,
                              T* grad_x) {
  const char* op = "batch_norm_backward_eval";
  check_sizes(op, batch, channels, spatial);
  SELA_CHECK(eps >= T(0), op, "eps must be >= 0, got " << eps);
  affine_per_channel(batch, channels, spatial, grad_y,
                     [&](std::int64_t c, T* center, T* scale, T* shift) {
                       *center = T(0);
                       *scale = eval_scale(gamma, running_var, eps, c);
                       *shift = T(0);
                     },
                     grad_x);
}

#define SELA_INSTANTIATE_BATCHNORM(T)                                                             \
  template void batch_norm_forward_train<T>(std::int64_t, std::int64_t, std::int64_t, const T*,   \
                                            const T*, const T*, T, T, T*, T*, T*, T*, T*);        \
  template void batch_norm_forward_eval<T>(std::int64_t, std::int64_t, std::int64_t, const T*,    \
                                           const T*, const T*, const T*, const T*, T, T*);        \
  template void batch_norm_backward_train<T>(std::int64_t, std::int64_t, std::int64_t, const T*,  \
                                             const T*, const T*, const T*, const T*, T*, T*, T*); \
  template void batch_norm_backward_eval<T>(std::int64_t, std::int64_t, std::int64_t, const T*,   \
                                            const T*, const T*, T, T*);

SELA_INSTANTIATE_BATCHNORM(float)
SELA_INSTANTIATE_BATCHNORM(double)
#undef SELA_INSTANTIATE_BATCHNORM

}  // namespace sela::cpu
