// kernels/cpu/conv2d.h: shape checks, the dispatch, and the im2col + gemm implementation.
//
// im2col view of one group of G images (K = C*kh*kw, P = OH*OW):
//   columns (K, G*P): columns[(c*kh + i)*kw + j][g*P + oh*OW + ow]
//                      = input[n0+g][c][oh*sh - ph + i][ow*sw - pw + j]   (0 outside)
//   forward          out (O, G*P)        = weight (O, K) . columns
//   backward input   d_columns (K, G*P)  = weight^T . d_out (O, G*P), then scattered back
//                    (col2im: every column entry adds into the input pixel it came from)
//   backward weight  d_weight (O, K)    += d_out (O, G*P) . columns^T, groups in order
// With G == 1 the GEMM reads and writes the NCHW planes of image n in place (O, P) row
// stride P; with G > 1 the (O, G*P) operand is gathered into / scattered from scratch.
// G is chosen so that the columns fill about kColumnsBudgetBytes: large enough that the
// 7x7 layers still make wide GEMMs, small enough to stay in the last-level cache.
// Threads: one parallel region per call; each thread takes a contiguous range of images and
// runs its groups with our own GEMM (gemm_builtin) serially, in its own scratch. The weight
// gradient sums one (O, K) part per thread, added in thread order afterwards. With a single
// range (batch 1 or one thread) the GEMM, im2col and copies are threaded instead.
// Why gemm_builtin and not the configured gemm: it is safe and single-threaded inside a
// parallel region whatever library is configured (a pthread OpenBLAS would start its own
// threads from each of ours), and on this machine it runs these shapes about as fast as
// dnnl_sgemm single-threaded (tools/bench/gemm_lab.cpp, docs/perf.md). Measured reason for
// the single region: with the GEMM threaded inside, three regions per image group, and a
// busy machine, 2 threads ran the 7x7 layers 2-3x slower than 1 thread.
#include "kernels/cpu/conv2d.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <type_traits>

#include "engine/error.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {

std::int64_t Conv2dShape::out_height() const {
  return (in_height + 2 * pad_h - kernel_h) / stride_h + 1;
}
std::int64_t Conv2dShape::out_width() const {
  return (in_width + 2 * pad_w - kernel_w) / stride_w + 1;
}

std::string conv2d_shape_text(const Conv2dShape& s) {
  std::ostringstream out;
  out << "N=" << s.batch << " C=" << s.in_channels << " H=" << s.in_height << " W=" << s.in_width
      << " -> O=" << s.out_channels << " k=" << s.kernel_h << "x" << s.kernel_w
      << " stride=" << s.stride_h << "x" << s.stride_w << " pad=" << s.pad_h << "x" << s.pad_w;
  if (s.in_height + 2 * s.pad_h >= s.kernel_h && s.in_width + 2 * s.pad_w >= s.kernel_w &&
      s.stride_h > 0 && s.stride_w > 0)
    out << " -> " << s.out_height() << "x" << s.out_width();
  return out.str();
}

void check_conv2d_shape(const Conv2dShape& s) {
  SELA_CHECK(s.batch > 0 && s.in_channels > 0 && s.in_height > 0 && s.in_width > 0 &&
                 s.out_channels > 0 && s.kernel_h > 0 && s.kernel_w > 0,
             "conv2d", "sizes must be positive, got " << conv2d_shape_text(s));
  SELA_CHECK(s.stride_h > 0 && s.stride_w > 0 && s.pad_h >= 0 && s.pad_w >= 0, "conv2d",
             "stride must be positive and padding non-negative, got " << conv2d_shape_text(s));
  SELA_CHECK(s.in_height + 2 * s.pad_h >= s.kernel_h && s.in_width + 2 * s.pad_w >= s.kernel_w,
             "conv2d", "the kernel does not fit the padded input, got " << conv2d_shape_text(s));
}

namespace {

constexpr std::size_t kColumnsBudgetBytes = std::size_t(8) << 20;

void check_pointers(const Conv2dShape& s, const void* a, const void* b, const void* out,
                    const char* what) {
  SELA_CHECK(a != nullptr && b != nullptr && out != nullptr, "conv2d",
             what << ": a buffer is null for " << conv2d_shape_text(s));
}

// Grow-only scratch per calling thread and element type; `which` picks one of three buffers
// (0: columns, 1: (O, G*P) operands, 2: partial weight gradients).
template <typename T>
T* scratch(int which, std::int64_t count) {
  struct Buffer {
    struct Free {
      void operator()(void* p) const { std::free(p); }
    };
    std::unique_ptr<void, Free> data;
    std::int64_t capacity = 0;
  };
  thread_local Buffer buffers[3];
  Buffer& buffer = buffers[which];
  if (buffer.capacity < count) {
    std::size_t bytes = (static_cast<std::size_t>(count) * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    SELA_CHECK(p != nullptr, "conv2d", "cannot allocate " << bytes << " bytes of scratch");
    buffer.data.reset(p);
    buffer.capacity = count;
  }
  return static_cast<T*>(buffer.data.get());
}

// Sizes derived once per call.
struct Geometry {
  std::int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow;
  std::int64_t k;      // C*kh*kw: rows of the columns
  std::int64_t p;      // OH*OW: output pixels per image
  std::int64_t group;  // images per GEMM
  bool direct;         // 1x1, stride 1, no padding: columns of one image are the input
};

template <typename T>
Geometry geometry(const Conv2dShape& s) {
  Geometry g{};
  g.n = s.batch, g.c = s.in_channels, g.h = s.in_height, g.w = s.in_width;
  g.o = s.out_channels, g.kh = s.kernel_h, g.kw = s.kernel_w;
  g.sh = s.stride_h, g.sw = s.stride_w, g.ph = s.pad_h, g.pw = s.pad_w;
  g.oh = s.out_height(), g.ow = s.out_width();
  g.k = g.c * g.kh * g.kw;
  g.p = g.oh * g.ow;
  std::int64_t per_image = g.k * g.p * static_cast<std::int64_t>(sizeof(T));
  g.group = std::clamp<std::int64_t>(
      static_cast<std::int64_t>(kColumnsBudgetBytes) / std::max<std::int64_t>(per_image, 1), 1,
      g.n);
  g.direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  return g;
}

// Items per parallel chunk so that a thread gets at least ~32K elements to move: below
// that, waking a second thread costs more than it saves.
std::int64_t grain_for(std::int64_t elements_per_item) {
  constexpr std::int64_t kMinElementsPerChunk = std::int64_t(1) << 15;
  return std::max<std::int64_t>(
      1, kMinElementsPerChunk / std::max<std::int64_t>(1, elements_per_item));
}

// The outputs x in [0, count) whose input index x*stride + offset lies in [0, size) form
// the range [*lo, *hi) (empty when *lo == *hi).
void inside_range(std::int64_t offset, std::int64_t stride, std::int64_t size, std::int64_t count,
                  std::int64_t* lo, std::int64_t* hi) {
  std::int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  std::int64_t last_input = size - 1 - offset;  // x*stride <= last_input
  std::int64_t end = last_input < 0 ? 0 : last_input / stride + 1;
  *lo = std::min(first, count);
  *hi = std::max(*lo, std::min(end, count));
}

// columns (K, G*P) of images [n0, n0+G) of input (N, C, H, W).
template <typename T>
void im2col(const Geometry& g, const T* input, std::int64_t n0, std::int64_t images, T* columns) {
  std::int64_t width = images * g.p;
  parallel_for(0, g.k, grain_for(width), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      std::int64_t c = r / (g.kh * g.kw), i = (r / g.kw) % g.kh, j = r % g.kw;
      std::int64_t ow_lo = 0, ow_hi = 0;
      inside_range(j - g.pw, g.sw, g.w, g.ow, &ow_lo, &ow_hi);
      for (std::int64_t im = 0; im < images; ++im) {
        const T* plane = input + ((n0 + im) * g.c + c) * g.h * g.w;  // (H, W)
        T* row = columns + r * width + im * g.p;
        for (std::int64_t y = 0; y < g.oh; ++y) {
          T* dst = row + y * g.ow;
          std::int64_t ih = y * g.sh - g.ph + i;
          if (ih < 0 || ih >= g.h) {
            std::fill(dst, dst + g.ow, T(0));
            continue;
          }
          const T* src = plane + ih * g.w - g.pw + j;
          std::fill(dst, dst + ow_lo, T(0));
          if (g.sw == 1) {
            std::copy(src + ow_lo, src + ow_hi, dst + ow_lo);
          } else {
            for (std::int64_t x = ow_lo; x < ow_hi; ++x) dst[x] = src[x * g.sw];
          }
          std::fill(dst + ow_hi, dst + g.ow, T(0));
        }
      }
    }
  });
}

// grad_input[n0+im] (C, H, W) = sum of the d_columns entries that came from each pixel.
template <typename T>
void col2im(const Geometry& g, const T* d_columns, std::int64_t n0, std::int64_t images,
            T* grad_input) {
  std::int64_t width = images * g.p;
  parallel_for(0, images * g.c, grain_for(g.kh * g.kw * g.p),
               [&](std::int64_t u0, std::int64_t u1) {
                 for (std::int64_t u = u0; u < u1; ++u) {
                   std::int64_t im = u / g.c, c = u % g.c;
                   T* plane = grad_input + ((n0 + im) * g.c + c) * g.h * g.w;  // (H, W)
                   std::fill(plane, plane + g.h * g.w, T(0));
                   for (std::int64_t i = 0; i < g.kh; ++i) {
                     for (std::int64_t j = 0; j < g.kw; ++j) {
                       std::int64_t r = (c * g.kh + i) * g.kw + j;
                       const T* row = d_columns + r * width + im * g.p;
                       std::int64_t ow_lo = 0, ow_hi = 0;
                       inside_range(j - g.pw, g.sw, g.w, g.ow, &ow_lo, &ow_hi);
                       for (std::int64_t y = 0; y < g.oh; ++y) {
                         std::int64_t ih = y * g.sh - g.ph + i;
                         if (ih < 0 || ih >= g.h) continue;
                         T* dst = plane + ih * g.w - g.pw + j;
                         const T* src = row + y * g.ow;
                         for (std::int64_t x = ow_lo; x < ow_hi; ++x) dst[x * g.sw] += src[x];
                       }
                     }
                   }
                 }
               });
}

// packed (O, G*P) <-> planes (G, O, P) of images [n0, n0+G) of an (N, O, P) tensor.
template <typename T>
void gather_planes(const Geometry& g, const T* tensor, std::int64_t n0, std::int64_t images,
                   T* packed) {
  parallel_for(0, images * g.o, grain_for(g.p), [&](std::int64_t u0, std::int64_t u1) {
    for (std::int64_t u = u0; u < u1; ++u) {
      std::int64_t o = u / images, im = u % images;
      const T* src = tensor + ((n0 + im) * g.o + o) * g.p;
      std::copy(src, src + g.p, packed + o * images * g.p + im * g.p);
    }
  });
}

// Calls body(chunk, image_begin, image_end) on contiguous ranges of images, one per thread
// (one parallel region for the whole convolution: on a busy machine every extra region
// costs a wait for a descheduled thread). Inside, GEMMs run serially on their thread; with
// a single chunk (batch 1, or one thread) the GEMMs and copies are threaded instead.
// Images per chunk: a whole group when the batch allows (so that GEMMs stay wide), and
// enough work that a second thread pays for waking it (small convolutions, e.g. in
// gradient checks, stay on one thread).
std::int64_t image_grain(const Geometry& g) {
  constexpr double kMinFlopsPerChunk = 4.0e6;
  double flops_per_image = 2.0 * double(g.o) * double(g.k) * double(g.p);
  auto by_work = static_cast<std::int64_t>(std::ceil(kMinFlopsPerChunk / flops_per_image));
  std::int64_t by_group = std::min(g.group, std::max<std::int64_t>(1, g.n / num_threads()));
  return std::max(by_group, by_work);
}

template <typename Body>
void for_image_ranges(const Geometry& g, Body body) {
  parallel_chunks(0, g.n, image_grain(g), body);
}

template <typename T>
void forward_images(const Geometry& g, const T* input, const T* weight, const T* bias, T* output,
                    std::int64_t image_begin, std::int64_t image_end) {
  for (std::int64_t n0 = image_begin; n0 < image_end; n0 += g.group) {
    std::int64_t images = std::min(g.group, image_end - n0);
    const T* columns = nullptr;
    if (g.direct && images == 1) {
      columns = input + n0 * g.c * g.h * g.w;  // (C, H*W) is already (K, P)
    } else {
      T* buffer = scratch<T>(0, g.k * images * g.p);
      im2col(g, input, n0, images, buffer);
      columns = buffer;
    }
    if (images == 1) {
      T* out = output + n0 * g.o * g.p;  // (O, P)
      gemm_builtin<T>(false, false, g.o, g.p, g.k, T(1), weight, g.k, columns, g.p, T(0), out, g.p);
      if (bias) {
        parallel_for(0, g.o, grain_for(g.p), [&](std::int64_t o0, std::int64_t o1) {
          for (std::int64_t o = o0; o < o1; ++o)
            for (std::int64_t q = 0; q < g.p; ++q) out[o * g.p + q] += bias[o];
        });
      }
    } else {
      T* packed = scratch<T>(1, g.o * images * g.p);  // (O, G*P)
      gemm_builtin<T>(false, false, g.o, images * g.p, g.k, T(1), weight, g.k, columns,
                      images * g.p, T(0), packed, images * g.p);
      parallel_for(0, images * g.o, grain_for(g.p), [&](std::int64_t u0, std::int64_t u1) {
        for (std::int64_t u = u0; u < u1; ++u) {
          std::int64_t o = u / images, im = u % images;
          const T* src = packed + o * images * g.p + im * g.p;
          T* dst = output + ((n0 + im) * g.o + o) * g.p;
          T b = bias ? bias[o] : T(0);
          for (std::int64_t q = 0; q < g.p; ++q) dst[q] = src[q] + b;
        }
      });
    }
  }
}

template <typename T>
void backward_input_images(const Geometry& g, const T* grad_output, const T* weight, T* grad_input,
                           std::int64_t image_begin, std::int64_t image_end) {
  for (std::int64_t n0 = image_begin; n0 < image_end; n0 += g.group) {
    std::int64_t images = std::min(g.group, image_end - n0);
    std::int64_t width = images * g.p;
    const T* d_out = grad_output + n0 * g.o * g.p;  // (O, P) when images == 1
    if (images > 1) {
      T* packed = scratch<T>(1, g.o * width);
      gather_planes(g, grad_output, n0, images, packed);
      d_out = packed;
    }
    if (g.direct && images == 1) {  // d_columns (C, H*W) are the input gradient itself
      gemm_builtin<T>(true, false, g.k, width, g.o, T(1), weight, g.k, d_out, width, T(0),
                      grad_input + n0 * g.c * g.h * g.w, width);
      continue;
    }
    T* d_columns = scratch<T>(0, g.k * width);  // (K, G*P)
    gemm_builtin<T>(true, false, g.k, width, g.o, T(1), weight, g.k, d_out, width, T(0), d_columns,
                    width);
    col2im(g, d_columns, n0, images, grad_input);
  }
}

// grad_weight_part (O, K) = sum over images [image_begin, image_end) of d_out . columns^T.
template <typename T>
void backward_weight_images(const Geometry& g, const T* input, const T* grad_output,
                            T* grad_weight_part, std::int64_t image_begin, std::int64_t image_end) {
  for (std::int64_t n0 = image_begin; n0 < image_end; n0 += g.group) {
    std::int64_t images = std::min(g.group, image_end - n0);
    std::int64_t width = images * g.p;
    const T* columns = nullptr;
    if (g.direct && images == 1) {
      columns = input + n0 * g.c * g.h * g.w;
    } else {
      T* buffer = scratch<T>(0, g.k * width);
      im2col(g, input, n0, images, buffer);
      columns = buffer;
    }
    const T* d_out = grad_output + n0 * g.o * g.p;
    if (images > 1) {
      T* packed = scratch<T>(1, g.o * width);
      gather_planes(g, grad_output, n0, images, packed);
      d_out = packed;
    }
    gemm_builtin<T>(false, true, g.o, g.k, width, T(1), d_out, width, columns, width,
                    n0 == image_begin ? T(0) : T(1), grad_weight_part, g.k);
  }
}

}  // namespace

template <typename T>
void conv2d_forward_im2col(const Conv2dShape& s, const T* input, const T* weight, const T* bias,
                           T* output) {
  check_conv2d_shape(s);
  check_pointers(s, input, weight, output, "forward");
  const Geometry g = geometry<T>(s);
  for_image_ranges(g, [&](std::int64_t, std::int64_t b, std::int64_t e) {
    forward_images(g, input, weight, bias, output, b, e);
  });
}

template <typename T>
void conv2d_backward_input_im2col(const Conv2dShape& s, const T* grad_output, const T* weight,
                                  T* grad_input) {
  check_conv2d_shape(s);
  check_pointers(s, grad_output, weight, grad_input, "backward_input");
  const Geometry g = geometry<T>(s);
  for_image_ranges(g, [&](std::int64_t, std::int64_t b, std::int64_t e) {
    backward_input_images(g, grad_output, weight, grad_input, b, e);
  });
}

template <typename T>
void conv2d_backward_weight_im2col(const Conv2dShape& s, const T* input, const T* grad_output,
                                   T* grad_weight, T* grad_bias) {
  check_conv2d_shape(s);
  check_pointers(s, input, grad_output, grad_weight, "backward_weight");
  const Geometry g = geometry<T>(s);
  // Chunk 0 sums into grad_weight, every other chunk into its own (O, K) part; the parts
  // are then added in chunk order: deterministic for a given thread count.
  const std::int64_t chunks = parallel_chunk_count(0, g.n, image_grain(g));
  const std::int64_t weight_size = g.o * g.k;
  T* parts = chunks > 1 ? scratch<T>(2, (chunks - 1) * weight_size) : nullptr;
  for_image_ranges(g, [&](std::int64_t chunk, std::int64_t b, std::int64_t e) {
    T* part = chunk == 0 ? grad_weight : parts + (chunk - 1) * weight_size;
    backward_weight_images(g, input, grad_output, part, b, e);
  });
  if (chunks > 1) {
    parallel_for(0, weight_size, grain_for(chunks), [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t c = 1; c < chunks; ++c) {
        const T* part = parts + (c - 1) * weight_size;
        for (std::int64_t i = i0; i < i1; ++i) grad_weight[i] += part[i];
      }
    });
  }
  if (grad_bias) {  // summed in double, images in order: deterministic and accurate
    parallel_for(0, g.o, grain_for(g.n * g.p), [&](std::int64_t o0, std::int64_t o1) {
      for (std::int64_t o = o0; o < o1; ++o) {
        double total = 0;
        for (std::int64_t n = 0; n < g.n; ++n) {
          const T* plane = grad_output + (n * g.o + o) * g.p;
          double image_total = 0;
          for (std::int64_t q = 0; q < g.p; ++q) image_total += static_cast<double>(plane[q]);
          total += image_total;
        }
        grad_bias[o] = static_cast<T>(total);
      }
    });
  }
}

// --- dispatch ---------------------------------------------------------------------------

const char* conv2d_backend_name() {
#if defined(SELA_CPU_CONV_DNNL)
  return "dnnl";
#else
  return "im2col";
#endif
}

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* input, const T* weight, const T* bias,
                    T* output) {
  check_conv2d_shape(s);
  check_pointers(s, input, weight, output, "forward");
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_forward_dnnl(s, input, weight, bias, output)) return;
  }
  conv2d_forward_im2col<T>(s, input, weight, bias, output);
}

template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* grad_output, const T* weight,
                           T* grad_input) {
  check_conv2d_shape(s);
  check_pointers(s, grad_output, weight, grad_input, "backward_input");
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_backward_input_dnnl(s, grad_output, weight, grad_input)) return;
  }
  conv2d_backward_input_im2col<T>(s, grad_output, weight, grad_input);
}

template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* input, const T* grad_output,
                            T* grad_weight, T* grad_bias) {
  check_conv2d_shape(s);
  check_pointers(s, input, grad_output, grad_weight, "backward_weight");
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_backward_weight_dnnl(s, input, grad_output, grad_weight, grad_bias)) return;
  }
  conv2d_backward_weight_im2col<T>(s, input, grad_output, grad_weight, grad_bias);
}

#define SELA_INSTANTIATE_CONV2D(T)                                                              \
  template void conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*);        \
  template void conv2d_backward_input<T>(const Conv2dShape&, const T*, const T*, T*);           \
  template void conv2d_backward_weight<T>(const Conv2dShape&, const T*, const T*, T*, T*);      \
  template void conv2d_forward_im2col<T>(const Conv2dShape&, const T*, const T*, const T*, T*); \
  template void conv2d_backward_input_im2col<T>(const Conv2dShape&, const T*, const T*, T*);    \
  template void conv2d_backward_weight_im2col<T>(const Conv2dShape&, const T*, const T*, T*, T*);
SELA_INSTANTIATE_CONV2D(float)
SELA_INSTANTIATE_CONV2D(double)
#undef SELA_INSTANTIATE_CONV2D

}  // namespace sela::cpu
