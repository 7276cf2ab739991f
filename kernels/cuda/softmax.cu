// Log-softmax and cross-entropy on CUDA (see softmax.cuh).
//
// Row kernels: block b takes rows b, b + gridDim.x, ...; thread t visits columns t, t + B,
// ... in each pass (coalesced). The row is read three times (max, sum, write); for K up to
// a few thousand it stays in L1/L2 between passes. The loss kernel is a single block: with
// one value per row it is tiny next to the row kernels.
#include "kernels/cuda/softmax.cuh"

#include <cuda/std/limits>

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kSoftmaxBlock = 256;

__device__ inline float exp_of(float v) { return expf(v); }
__device__ inline double exp_of(double v) { return exp(v); }

struct MinOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return b < a ? b : a;
  }
};

// y = log_softmax of one row; all threads of the block take part.
template <typename T>
__device__ void log_softmax_row(std::int64_t cols, const T* x, T* y) {
  T local_max = -::cuda::std::numeric_limits<T>::infinity();
  for (std::int64_t c = threadIdx.x; c < cols; c += kSoftmaxBlock) {
    const T v = x[c];
    local_max = v > local_max ? v : local_max;  // skips NaN, as the CPU's scan
  }
  const T row_max = detail::block_reduce<kSoftmaxBlock>(
      local_max, detail::MaxOp{}, -::cuda::std::numeric_limits<T>::infinity());
  double exp_sum = 0.0;
  for (std::int64_t c = threadIdx.x; c < cols; c += kSoftmaxBlock)
    exp_sum += static_cast<double>(exp_of(x[c] - row_max));
  // A NaN in the row makes the sum NaN, hence the whole row NaN (as on the CPU).
  const T log_sum = static_cast<T>(log(detail::block_sum<kSoftmaxBlock>(exp_sum)));
  for (std::int64_t c = threadIdx.x; c < cols; c += kSoftmaxBlock)
    y[c] = (x[c] - row_max) - log_sum;
}

template <typename T>
__global__ void log_softmax_forward_kernel(std::int64_t rows, std::int64_t cols, const T* x, T* y) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    log_softmax_row(cols, x + r * cols, y + r * cols);
}

template <typename T>
__global__ void log_softmax_backward_kernel(std::int64_t rows, std::int64_t cols, const T* y,
                                            const T* grad_y, T* grad_x) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* y_row = y + r * cols;        // (cols)
    const T* gy_row = grad_y + r * cols;  // (cols)
    T* gx_row = grad_x + r * cols;        // (cols)
    double acc = 0.0;
    for (std::int64_t c = threadIdx.x; c < cols; c += kSoftmaxBlock)
      acc += static_cast<double>(gy_row[c]);
    const T grad_sum = static_cast<T>(detail::block_sum<kSoftmaxBlock>(acc));
    for (std::int64_t c = threadIdx.x; c < cols; c += kSoftmaxBlock)
      gx_row[c] = gy_row[c] - exp_of(y_row[c]) * grad_sum;
  }
}

// One block: *loss = -mean_r log_probs[r, targets[r]], *bad_row = first invalid row or -1.
template <typename T>
__global__ void cross_entropy_loss_kernel(std::int64_t rows, std::int64_t cols, const T* log_probs,
                                          const std::int64_t* targets, T* loss,
                                          std::int64_t* bad_row) {
  constexpr std::int64_t kNone = ::cuda::std::numeric_limits<std::int64_t>::max();
  double acc = 0.0;
  std::int64_t first_bad = kNone;
  for (std::int64_t r = threadIdx.x; r < rows; r += kSoftmaxBlock) {
    const std::int64_t t = targets[r];
    if (t < 0 || t >= cols) {
      first_bad = r < first_bad ? r : first_bad;
    } else {
      acc += static_cast<double>(log_probs[r * cols + t]);
    }
  }
  const double total = detail::block_sum<kSoftmaxBlock>(acc);
  first_bad = detail::block_reduce<kSoftmaxBlock>(first_bad, MinOp{}, kNone);
  if (threadIdx.x == 0) {
    const bool valid = first_bad == kNone;
    *loss = valid ? static_cast<T>(-total / static_cast<double>(rows))
                  : ::cuda::std::numeric_limits<T>::quiet_NaN();
    *bad_row = valid ? -1 : first_bad;
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(std::int64_t rows, std::int64_t cols,
                                              const T* log_probs, const std::int64_t* targets,
                                              T row_scale, T* grad_logits) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* lp_row = log_probs + r * cols;  // (cols)
    T* g_row = grad_logits + r * cols;       // (cols)
    const std::int64_t target = targets[r];
    const bool valid = target >= 0 && target < cols;
    for (std::int64_t c = threadIdx.x; c < cols; c += kSoftmaxBlock) {
      T g = row_scale * exp_of(lp_row[c]);
      if (c == target) g -= row_scale;
      g_row[c] = valid ? g : ::cuda::std::numeric_limits<T>::quiet_NaN();
    }
  }
}

void check_matrix(const char* op, std::int64_t rows, std::int64_t cols) {
  SELA_CHECK(rows >= 0 && cols >= 0, op,
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
}

void check_cross_entropy(const char* op, std::int64_t rows, std::int64_t cols) {
  check_matrix(op, rows, cols);
  SELA_CHECK(rows > 0 && cols > 0, op,
             "needs at least one row and one class, got (" << rows << ", " << cols << ")");
}

unsigned row_grid(std::int64_t rows) {
  return static_cast<unsigned>(rows < detail::kMaxGridBlocks ? rows : detail::kMaxGridBlocks);
}

}  // namespace

template <typename T>
void log_softmax_forward(std::int64_t rows, std::int64_t cols, const T* x, T* y,
                         cudaStream_t stream) {
  check_matrix("log_softmax_forward", rows, cols);
  if (rows == 0 || cols == 0) return;
  detail::check_pointers("log_softmax_forward", true, {x, y});
  log_softmax_forward_kernel<<<row_grid(rows), kSoftmaxBlock, 0, stream>>>(rows, cols, x, y);
  SELA_CUDA_CHECK_LAUNCH("log_softmax_forward");
}

template <typename T>
void log_softmax_backward(std::int64_t rows, std::int64_t cols, const T* y, const T* grad_y,
                          T* grad_x, cudaStream_t stream) {
  check_matrix("log_softmax_backward", rows, cols);
  if (rows == 0 || cols == 0) return;
  detail::check_pointers("log_softmax_backward", true, {y, grad_y, grad_x});
  log_softmax_backward_kernel<<<row_grid(rows), kSoftmaxBlock, 0, stream>>>(rows, cols, y, grad_y,
                                                                            grad_x);
  SELA_CUDA_CHECK_LAUNCH("log_softmax_backward");
}

template <typename T>
void cross_entropy_forward_into(std::int64_t rows, std::int64_t cols, const T* logits,
                                const std::int64_t* targets, T* log_probs, T* loss,
                                std::int64_t* bad_row, cudaStream_t stream) {
  check_cross_entropy("cross_entropy", rows, cols);
  detail::check_pointers("cross_entropy", true, {logits, targets, log_probs, loss, bad_row});
  log_softmax_forward_kernel<<<row_grid(rows), kSoftmaxBlock, 0, stream>>>(rows, cols, logits,
                                                                           log_probs);
  SELA_CUDA_CHECK_LAUNCH("cross_entropy");
  cross_entropy_loss_kernel<<<1, kSoftmaxBlock, 0, stream>>>(rows, cols, log_probs, targets, loss,
                                                             bad_row);
  SELA_CUDA_CHECK_LAUNCH("cross_entropy");
}

template <typename T>
T cross_entropy_forward(std::int64_t rows, std::int64_t cols, const T* logits,
                        const std::int64_t* targets, T* log_probs, cudaStream_t stream) {
  check_cross_entropy("cross_entropy", rows, cols);
  detail::check_pointers("cross_entropy", true, {logits, targets, log_probs});
  struct Result {
    std::int64_t bad_row;
    T loss;
  };
  detail::StreamScratch scratch(sizeof(Result), stream);
  Result* device_result = static_cast<Result*>(scratch.get());
  cross_entropy_forward_into(rows, cols, logits, targets, log_probs, &device_result->loss,
                             &device_result->bad_row, stream);
  Result result{};
  SELA_CUDA_CHECK(
      cudaMemcpyAsync(&result, device_result, sizeof(Result), cudaMemcpyDeviceToHost, stream));
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (result.bad_row >= 0) {
    std::int64_t target = 0;
    SELA_CUDA_CHECK(
        cudaMemcpy(&target, targets + result.bad_row, sizeof(target), cudaMemcpyDeviceToHost));
    SELA_FAIL_HINT(
        "cross_entropy",
        "target of row " << result.bad_row << " is " << target << ", outside [0, " << cols << ")",
        "targets are class indices 0..classes-1");
  }
  return result.loss;
}

template <typename T>
void cross_entropy_backward(std::int64_t rows, std::int64_t cols, const T* log_probs,
                            const std::int64_t* targets, T grad_loss, T* grad_logits,
                            cudaStream_t stream) {
  check_cross_entropy("cross_entropy_backward", rows, cols);
  detail::check_pointers("cross_entropy_backward", true, {log_probs, targets, grad_logits});
  const T row_scale = static_cast<T>(static_cast<double>(grad_loss) / static_cast<double>(rows));
  cross_entropy_backward_kernel<<<row_grid(rows), kSoftmaxBlock, 0, stream>>>(
      rows, cols, log_probs, targets, row_scale, grad_logits);
  SELA_CUDA_CHECK_LAUNCH("cross_entropy_backward");
}

#define SELA_INSTANTIATE_SOFTMAX(T)                                                              \
  template void log_softmax_forward<T>(std::int64_t, std::int64_t, const T*, T*, cudaStream_t);  \
  template void log_softmax_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*,      \
                                        cudaStream_t);                                           \
  template T cross_entropy_forward<T>(std::int64_t, std::int64_t, const T*, const std::int64_t*, \
                                      T*, cudaStream_t);                                         \
  template void cross_entropy_forward_into<T>(std::int64_t, std::int64_t, const T*,              \
                                              const std::int64_t*, T*, T*, std::int64_t*,        \
                                              cudaStream_t);                                     \
  template void cross_entropy_backward<T>(std::int64_t, std::int64_t, const T*,                  \
                                          const std::int64_t*, T, T*, cudaStream_t);

SELA_INSTANTIATE_SOFTMAX(float)
SELA_INSTANTIATE_SOFTMAX(double)
#undef SELA_INSTANTIATE_SOFTMAX

}  // namespace sela::cuda
