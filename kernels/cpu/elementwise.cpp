// Elementwise CPU kernels (see elementwise.h).
//
// Every kernel is one flat loop that the compiler vectorises (-O3 -march=native), wrapped
// in parallel_for with a grain large enough that small tensors stay on one thread: an
// elementwise op is memory-bound, so splitting below ~32k elements costs more in thread
// wake-up than it saves. Size checks run before any parallel work.
#include "kernels/cpu/elementwise.h"

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

// Items per thread below which an elementwise loop is not split.
constexpr std::int64_t kElementwiseGrain = 1 << 15;

void check_count(const char* op, std::int64_t n) {
  SELA_CHECK(n >= 0, op, "element count must be >= 0, got " << n);
}

// Runs body(begin, end) over [0, n) split into thread chunks. Kernel bodies capture by
// value ([=]): a store through an output pointer then cannot alias a captured variable,
// which would otherwise stop the compiler from vectorising the loop.
template <typename Body>
void for_range(std::int64_t n, const Body& body) {
  parallel_for(0, n, kElementwiseGrain,
               [&](std::int64_t begin, std::int64_t end) { body(begin, end); });
}

}  // namespace

template <typename T>
void fill(std::int64_t n, T value, T* out) {
  check_count("fill", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = value;
  });
}

template <typename T>
void add(std::int64_t n, const T* a, const T* b, T* out) {
  check_count("add", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = a[i] + b[i];
  });
}

template <typename T>
void mul(std::int64_t n, const T* a, const T* b, T* out) {
  check_count("mul", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = a[i] * b[i];
  });
}

template <typename T>
void scale(std::int64_t n, T alpha, const T* x, T* out) {
  check_count("scale", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = alpha * x[i];
  });
}

template <typename T>
void axpy(std::int64_t n, T alpha, const T* x, T* y) {
  check_count("axpy", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) y[i] += alpha * x[i];
  });
}

template <typename T>
void relu_forward(std::int64_t n, const T* x, T* y) {
  check_count("relu_forward", n);
  for_range(n, [&](std::int64_t begin, std::int64_t end) {
    // Written as "x < 0 ? 0 : x" so that NaN passes through, as in torch.relu.
    for (std::int64_t i = begin; i < end; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
  });
}

template <typename T>
void relu_backward(std::int64_t n, const T* y, const T* grad_y, T* grad_x) {
  check_count("relu_backward", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T g = grad_y[i];  // read unconditionally: a select, not a branch
      grad_x[i] = y[i] > T(0) ? g : T(0);
    }
  });
}

template <typename T>
void add_row_bias(std::int64_t rows, std::int64_t cols, const T* bias, T* out) {
  SELA_CHECK(rows >= 0 && cols >= 0, "add_row_bias",
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
  if (rows == 0 || cols == 0) return;
  std::int64_t row_grain = kElementwiseGrain / cols + 1;
  parallel_for(0, rows, row_grain, [&](std::int64_t row_begin, std::int64_t row_end) {
    for (std::int64_t r = row_begin; r < row_end; ++r) {
      T* row = out + r * cols;  // (cols)
      for (std::int64_t c = 0; c < cols; ++c) row[c] += bias[c];
    }
  });
}

template <typename From, typename To>
void cast(std::int64_t n, const From* in, To* out) {
  check_count("cast", n);
  for_range(n, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = static_cast<To>(in[i]);
  });
}

#define SELA_INSTANTIATE_ELEMENTWISE(T)                                 \
  template void fill<T>(std::int64_t, T, T*);                           \
  template void add<T>(std::int64_t, const T*, const T*, T*);           \
  template void mul<T>(std::int64_t, const T*, const T*, T*);           \
  template void scale<T>(std::int64_t, T, const T*, T*);                \
  template void axpy<T>(std::int64_t, T, const T*, T*);                 \
  template void relu_forward<T>(std::int64_t, const T*, T*);            \
  template void relu_backward<T>(std::int64_t, const T*, const T*, T*); \
  template void add_row_bias<T>(std::int64_t, std::int64_t, const T*, T*);

SELA_INSTANTIATE_ELEMENTWISE(float)
SELA_INSTANTIATE_ELEMENTWISE(double)
#undef SELA_INSTANTIATE_ELEMENTWISE

// fill is also useful on integer buffers (labels, argmax, masks).
template void fill<std::int32_t>(std::int64_t, std::int32_t, std::int32_t*);
template void fill<std::int64_t>(std::int64_t, std::int64_t, std::int64_t*);
template void fill<std::uint8_t>(std::int64_t, std::uint8_t, std::uint8_t*);

template void cast<float, double>(std::int64_t, const float*, double*);
template void cast<double, float>(std::int64_t, const double*, float*);
template void cast<std::int32_t, std::int64_t>(std::int64_t, const std::int32_t*, std::int64_t*);
template void cast<std::int64_t, std::int32_t>(std::int64_t, const std::int64_t*, std::int32_t*);
template void cast<std::int64_t, float>(std::int64_t, const std::int64_t*, float*);
template void cast<std::int64_t, double>(std::int64_t, const std::int64_t*, double*);
template void cast<std::int32_t, float>(std::int64_t, const std::int32_t*, float*);
template void cast<std::int32_t, double>(std::int64_t, const std::int32_t*, double*);
template void cast<std::uint8_t, float>(std::int64_t, const std::uint8_t*, float*);

}  // namespace sela::cpu
