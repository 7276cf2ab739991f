// 2-D max pooling on CPU (see pool.h).
//
// One task per (n, c) plane. For each output element the window is clipped to the input
// plane first, which is the same as treating padding as -inf: a padded position can never
// be strictly larger than the running maximum, which starts at -inf and whose index starts
// at the first in-plane position of the window (as in PyTorch). The forward pass treats the
// few edge columns of an output row (clipped windows) one by one and the interior columns
// together, output column innermost: a branch on random data costs a misprediction per
// comparison, the select does not (measured 446 ms -> 58 ms on (128, 96, 55, 55), k3 s2).
// The compiler vectorises that select only for stride 1; every pool of the AlexNets has
// stride 2, where it stayed a scalar loop with branches (18% of an alexnet-32 training
// step at width 0.25). So float32 with stride 2 has its own AVX-512 form: 16 output
// columns at a time, their candidates gathered from two loads by one lane permutation,
// the running maxima kept in registers over the window; the same comparisons in the same
// order, hence the same outputs and argmax bit for bit.
#include "kernels/cpu/pool.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

// Input elements per thread below which pooling is not split.
constexpr std::int64_t kPoolGrain = 1 << 15;

std::int64_t pooled_size(std::int64_t in, std::int64_t kernel, std::int64_t stride,
                         std::int64_t pad) {
  return (in + 2 * pad - kernel) / stride + 1;
}

#if defined(__AVX512F__)
// The interior of one output row for stride 2 (see the top), 16 output columns per step,
// the last step masked to the columns left (AlexNet-32's rows have 15, 7 and 3): rows
// [h0, h1) of the plane `in` (width `width`), window columns first_w + kw + 2 j for output
// column j of `interior`. Loads are masked to the values the windows need, so nothing past
// the plane is read.
void pool_row_stride2(const float* in, std::int64_t width, std::int64_t h0, std::int64_t h1,
                      std::int64_t kernel_w, std::int64_t first_w, std::int64_t interior,
                      float* best_out, std::int32_t* best_at_out) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (std::int64_t j = 0; j < interior; j += 16) {
    // Columns j .. j + lanes - 1 read candidates 0 .. 2 (lanes - 1) of each window offset:
    // the first load's values 0..15 and the second's 16..30, as far as needed.
    const std::int64_t lanes = std::min<std::int64_t>(16, interior - j);
    const std::int64_t last = 2 * (lanes - 1);
    const __mmask16 columns = static_cast<__mmask16>((1u << lanes) - 1u);
    const __mmask16 first_half =
        static_cast<__mmask16>((1u << std::min<std::int64_t>(16, last + 1)) - 1u);
    const __mmask16 second_half =
        static_cast<__mmask16>((1u << std::max<std::int64_t>(0, last - 15)) - 1u);
    __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512i best_at = _mm512_add_epi32(
        _mm512_set1_epi32(static_cast<std::int32_t>(h0 * width + first_w + 2 * j)), even);
    for (std::int64_t h = h0; h < h1; ++h) {
      for (std::int64_t kw = 0; kw < kernel_w; ++kw) {
        const std::int64_t position0 = h * width + first_w + kw + 2 * j;
        const float* candidates = in + position0;
        const __m512 low = _mm512_maskz_loadu_ps(first_half, candidates);
        const __m512 high = _mm512_maskz_loadu_ps(second_half, candidates + 16);
        const __m512 v = _mm512_permutex2var_ps(low, even, high);
        const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) |
                               _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);  // NaN wins
        best = _mm512_mask_mov_ps(best, take, v);
        best_at = _mm512_mask_mov_epi32(
            best_at, take,
            _mm512_add_epi32(_mm512_set1_epi32(static_cast<std::int32_t>(position0)), even));
      }
    }
    _mm512_mask_storeu_ps(best_out + j, columns, best);
    _mm512_mask_storeu_epi32(best_at_out + j, columns, best_at);
  }
}
#endif

}  // namespace

std::int64_t Pool2dShape::out_height() const {
  return pooled_size(in_height, kernel_h, stride_h, pad_h);
}

std::int64_t Pool2dShape::out_width() const {
  return pooled_size(in_width, kernel_w, stride_w, pad_w);
}

void check_pool2d_shape(const Pool2dShape& s) {
  SELA_CHECK(s.batch >= 0 && s.channels >= 0 && s.in_height > 0 && s.in_width > 0, "max_pool2d",
             "input must be (N, C, H, W) with N, C >= 0 and H, W > 0, got ("
                 << s.batch << ", " << s.channels << ", " << s.in_height << ", " << s.in_width
                 << ")");
  SELA_CHECK(s.kernel_h > 0 && s.kernel_w > 0 && s.stride_h > 0 && s.stride_w > 0, "max_pool2d",
             "kernel and stride must be positive, got kernel " << s.kernel_h << "x" << s.kernel_w
                                                               << ", stride " << s.stride_h << "x"
                                                               << s.stride_w);
  if (!(s.pad_h >= 0 && s.pad_w >= 0 && s.pad_h <= s.kernel_h / 2 && s.pad_w <= s.kernel_w / 2)) {
    SELA_FAIL_HINT("max_pool2d",
                   "padding " << s.pad_h << "x" << s.pad_w
                              << " must be >= 0 and at most half the kernel " << s.kernel_h << "x"
                              << s.kernel_w,
                   "PyTorch rejects the same shape");
  }
  if (!(s.out_height() >= 1 && s.out_width() >= 1 && s.in_height + 2 * s.pad_h >= s.kernel_h &&
        s.in_width + 2 * s.pad_w >= s.kernel_w)) {
    SELA_FAIL_HINT("max_pool2d",
                   "kernel " << s.kernel_h << "x" << s.kernel_w << " does not fit the padded input "
                             << s.in_height + 2 * s.pad_h << "x" << s.in_width + 2 * s.pad_w,
                   "use a smaller kernel or more padding");
  }
  SELA_CHECK(s.in_height * s.in_width <= std::numeric_limits<std::int32_t>::max(), "max_pool2d",
             "an input plane of " << s.in_height << "x" << s.in_width
                                  << " elements does not fit the int32 argmax");
}

template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* input, T* output, std::int32_t* argmax) {
  check_pool2d_shape(s);
  const std::int64_t height = s.in_height, width = s.in_width;
  const std::int64_t out_h = s.out_height(), out_w = s.out_width();
  const std::int64_t planes = s.batch * s.channels;
  const std::int64_t plane_grain = kPoolGrain / (height * width) + 1;

  // Output columns whose window lies wholly inside the plane's width: [interior_begin,
  // interior_end). Only the few edge columns need clipping.
  std::int64_t interior_begin = (s.pad_w + s.stride_w - 1) / s.stride_w;
  std::int64_t interior_end =
      width + s.pad_w >= s.kernel_w ? (width + s.pad_w - s.kernel_w) / s.stride_w + 1 : 0;
  interior_end = std::min(std::max(interior_end, interior_begin), out_w);
  interior_begin = std::min(interior_begin, interior_end);

  parallel_for(0, planes, plane_grain, [&](std::int64_t plane_begin, std::int64_t plane_end) {
    for (std::int64_t plane = plane_begin; plane < plane_end; ++plane) {
      const T* in = input + plane * height * width;        // (H, W)
      T* out = output + plane * out_h * out_w;             // (OH, OW)
      std::int32_t* arg = argmax + plane * out_h * out_w;  // (OH, OW)
      for (std::int64_t oh = 0; oh < out_h; ++oh) {
        // Window rows clipped to the plane.
        const std::int64_t h0 = std::max<std::int64_t>(oh * s.stride_h - s.pad_h, 0);
        const std::int64_t h1 = std::min(oh * s.stride_h - s.pad_h + s.kernel_h, height);
        T* out_row = out + oh * out_w;             // (OW)
        std::int32_t* arg_row = arg + oh * out_w;  // (OW)

        // Edge columns: clipped window, scanned row by row.
        auto edge_column = [&](std::int64_t ow) {
          const std::int64_t w0 = std::max<std::int64_t>(ow * s.stride_w - s.pad_w, 0);
          const std::int64_t w1 = std::min(ow * s.stride_w - s.pad_w + s.kernel_w, width);
          T best = -std::numeric_limits<T>::infinity();
          std::int64_t best_index = h0 * width + w0;
          for (std::int64_t h = h0; h < h1; ++h) {
            for (std::int64_t w = w0; w < w1; ++w) {
              const T v = in[h * width + w];
              if (v > best || std::isnan(v)) {
                best = v;
                best_index = h * width + w;
              }
            }
          }
          out_row[ow] = best;
          arg_row[ow] = static_cast<std::int32_t>(best_index);
        };
        for (std::int64_t ow = 0; ow < interior_begin; ++ow) edge_column(ow);
        for (std::int64_t ow = interior_end; ow < out_w; ++ow) edge_column(ow);

        // Interior columns: the same scan order (window row, then window column) with the
        // output columns innermost, so that a whole output row's running maxima are updated
        // together by a branch-free select (vectorised when the stride is 1).
        const std::int64_t interior = interior_end - interior_begin;
        const std::int64_t stride = s.stride_w;
        const std::int64_t first_w =
            interior_begin * stride - s.pad_w;             // its window's first column
        T* best = out_row + interior_begin;                // (interior) running maxima
        std::int32_t* best_at = arg_row + interior_begin;  // (interior) their positions
        std::int64_t done = 0;  // columns finished by the vector form
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float>) {
          if (stride == 2) {
            pool_row_stride2(in, width, h0, h1, s.kernel_w, first_w, interior, best, best_at);
            done = interior;
          }
        }
#endif
        for (std::int64_t j = done; j < interior; ++j) {
          best[j] = -std::numeric_limits<T>::infinity();
          best_at[j] = static_cast<std::int32_t>(h0 * width + first_w + j * stride);
        }
        for (std::int64_t h = h0; h < h1; ++h) {
          for (std::int64_t kw = 0; kw < s.kernel_w; ++kw) {
            // Output column interior_begin + j reads input column first_w + kw + j * stride.
            const std::int64_t position0 = h * width + first_w + kw;
            const T* candidates = in + position0;
            for (std::int64_t j = done; j < interior; ++j) {
              const T v = candidates[j * stride];
              const bool take = v > best[j] || v != v;  // NaN wins, as in the edge columns
              best[j] = take ? v : best[j];
              best_at[j] = take ? static_cast<std::int32_t>(position0 + j * stride) : best_at[j];
            }
          }
        }
      }
    }
  });
}

template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* grad_output, const std::int32_t* argmax,
                         T* grad_input) {
  check_pool2d_shape(s);
  const std::int64_t plane_size = s.in_height * s.in_width;
  const std::int64_t out_plane_size = s.out_height() * s.out_width();
  const std::int64_t planes = s.batch * s.channels;
  const std::int64_t plane_grain = kPoolGrain / plane_size + 1;

  // A bad argmax is remembered per chunk (nothing may throw inside the parallel body) and
  // reported after the loop.
  const std::int64_t chunks = parallel_chunk_count(0, planes, plane_grain);
  std::vector<std::int64_t> bad_position(static_cast<std::size_t>(chunks), -1);  // (chunks)
  parallel_chunks(0, planes, plane_grain,
                  [&](std::int64_t chunk, std::int64_t plane_begin, std::int64_t plane_end) {
                    for (std::int64_t plane = plane_begin; plane < plane_end; ++plane) {
                      T* grad_in = grad_input + plane * plane_size;               // (H, W)
                      const T* grad_out = grad_output + plane * out_plane_size;   // (OH, OW)
                      const std::int32_t* arg = argmax + plane * out_plane_size;  // (OH, OW)
                      std::fill(grad_in, grad_in + plane_size, T(0));
                      for (std::int64_t o = 0; o < out_plane_size; ++o) {
                        const std::int64_t target = arg[o];
                        if (target < 0 || target >= plane_size) {
                          if (bad_position[static_cast<std::size_t>(chunk)] < 0)
                            bad_position[static_cast<std::size_t>(chunk)] =
                                plane * out_plane_size + o;
                          continue;
                        }
                        grad_in[target] += grad_out[o];
                      }
                    }
                  });
  for (std::int64_t position : bad_position) {
    if (position >= 0) {
      SELA_FAIL_HINT("max_pool2d_backward",
                     "argmax[" << position << "] = " << argmax[position]
                               << " is outside the input plane of " << plane_size << " elements",
                     "pass the argmax written by max_pool2d_forward for the same shape");
    }
  }
}

template void max_pool2d_forward<float>(const Pool2dShape&, const float*, float*, std::int32_t*);
template void max_pool2d_forward<double>(const Pool2dShape&, const double*, double*, std::int32_t*);
template void max_pool2d_backward<float>(const Pool2dShape&, const float*, const std::int32_t*,
                                         float*);
template void max_pool2d_backward<double>(const Pool2dShape&, const double*, const std::int32_t*,
                                          double*);

}  // namespace sela::cpu
