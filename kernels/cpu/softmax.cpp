// Log-softmax and cross-entropy on CPU (see softmax.h).
//
// A row is three passes: its max, the sum of exp(x - max) in double, and the write of
// (x - max) - log(sum). Subtracting the max first keeps float results exact-ish for logits
// with a large common offset (x - max is exact for nearby values). Rows are split over threads with
// a grain measured in elements so that small batches stay on one thread.
#include "kernels/cpu/softmax.h"

#include <cmath>
#include <limits>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

constexpr std::int64_t kSoftmaxGrain = 1 << 14;  // elements per thread below which not split

void check_matrix(const char* op, std::int64_t rows, std::int64_t cols) {
  SELA_CHECK(rows >= 0 && cols >= 0, op,
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
}

// Runs body(r) for every row, rows split over threads.
template <typename Body>
void for_each_row(std::int64_t rows, std::int64_t cols, const Body& body) {
  parallel_for(0, rows, kSoftmaxGrain / (cols + 1) + 1,
               [&](std::int64_t row_begin, std::int64_t row_end) {
                 for (std::int64_t r = row_begin; r < row_end; ++r) body(r);
               });
}

// log_softmax of one row of `cols` values.
template <typename T>
void log_softmax_row(std::int64_t cols, const T* x, T* y) {
  T row_max = -std::numeric_limits<T>::infinity();
  for (std::int64_t c = 0; c < cols; ++c) row_max = x[c] > row_max ? x[c] : row_max;
  double exp_sum = 0.0;
  for (std::int64_t c = 0; c < cols; ++c) exp_sum += static_cast<double>(std::exp(x[c] - row_max));
  // NaN in the row: the max skips it but exp(NaN) makes exp_sum NaN, so the row is NaN.
  const T log_sum = static_cast<T>(std::log(exp_sum));
  for (std::int64_t c = 0; c < cols; ++c) y[c] = (x[c] - row_max) - log_sum;
}

void check_targets(std::int64_t rows, std::int64_t cols, const std::int64_t* targets) {
  for (std::int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0 || targets[r] >= cols) {
      SELA_FAIL_HINT(
          "cross_entropy",
          "target of row " << r << " is " << targets[r] << ", outside [0, " << cols << ")",
          "targets are class indices 0..classes-1");
    }
  }
}

}  // namespace

template <typename T>
void log_softmax_forward(std::int64_t rows, std::int64_t cols, const T* x, T* y) {
  check_matrix("log_softmax_forward", rows, cols);
  if (cols == 0) return;
  for_each_row(rows, cols,
               [&](std::int64_t r) { log_softmax_row(cols, x + r * cols, y + r * cols); });
}

template <typename T>
void log_softmax_backward(std::int64_t rows, std::int64_t cols, const T* y, const T* grad_y,
                          T* grad_x) {
  check_matrix("log_softmax_backward", rows, cols);
  if (cols == 0) return;
  for_each_row(rows, cols, [&](std::int64_t r) {
    const T* y_row = y + r * cols;        // (cols)
    const T* gy_row = grad_y + r * cols;  // (cols)
    T* gx_row = grad_x + r * cols;        // (cols)
    double grad_sum = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) grad_sum += static_cast<double>(gy_row[c]);
    const T grad_sum_t = static_cast<T>(grad_sum);
    for (std::int64_t c = 0; c < cols; ++c) gx_row[c] = gy_row[c] - std::exp(y_row[c]) * grad_sum_t;
  });
}

template <typename T>
T cross_entropy_forward(std::int64_t rows, std::int64_t cols, const T* logits,
                        const std::int64_t* targets, T* log_probs) {
  check_matrix("cross_entropy", rows, cols);
  SELA_CHECK(rows > 0 && cols > 0, "cross_entropy",
             "needs at least one row and one class, got (" << rows << ", " << cols << ")");
  check_targets(rows, cols, targets);
  log_softmax_forward(rows, cols, logits, log_probs);
  double total = 0.0;  // row order: deterministic
  for (std::int64_t r = 0; r < rows; ++r)
    total += static_cast<double>(log_probs[r * cols + targets[r]]);
  return static_cast<T>(-total / static_cast<double>(rows));
}

template <typename T>
void cross_entropy_backward(std::int64_t rows, std::int64_t cols, const T* log_probs,
                            const std::int64_t* targets, T grad_loss, T* grad_logits) {
  check_matrix("cross_entropy_backward", rows, cols);
  SELA_CHECK(rows > 0 && cols > 0, "cross_entropy_backward",
             "needs at least one row and one class, got (" << rows << ", " << cols << ")");
  check_targets(rows, cols, targets);
  const T row_scale = static_cast<T>(static_cast<double>(grad_loss) / static_cast<double>(rows));
  for_each_row(rows, cols, [&](std::int64_t r) {
    const T* lp_row = log_probs + r * cols;  // (cols)
    T* g_row = grad_logits + r * cols;       // (cols)
    for (std::int64_t c = 0; c < cols; ++c) g_row[c] = row_scale * std::exp(lp_row[c]);
    g_row[targets[r]] -= row_scale;
  });
}

#define SELA_INSTANTIATE_SOFTMAX(T)                                                              \
  template void log_softmax_forward<T>(std::int64_t, std::int64_t, const T*, T*);                \
  template void log_softmax_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*);     \
  template T cross_entropy_forward<T>(std::int64_t, std::int64_t, const T*, const std::int64_t*, \
                                      T*);                                                       \
  template void cross_entropy_backward<T>(std::int64_t, std::int64_t, const T*,                  \
                                          const std::int64_t*, T, T*);

SELA_INSTANTIATE_SOFTMAX(float)
SELA_INSTANTIATE_SOFTMAX(double)
#undef SELA_INSTANTIATE_SOFTMAX

}  // namespace sela::cpu
