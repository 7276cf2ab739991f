// SGD on CUDA (see sgd.cuh).
//
// The update rule is chosen once on the host (SgdMode) and is uniform across the grid, so
// the switch in the element update costs no divergence. The multi-tensor kernel runs a
// fixed grid of kMultiTensorBlocks blocks that walks the tensors in order, each tensor with
// a grid-stride loop: the big tensors (the 9216 x 4096 linear weight) keep every block busy,
// a small one (a bias) costs each block one loop test. Elementwise: the result does not
// depend on the grid.
#include "kernels/cuda/sgd.cuh"

#include <algorithm>

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kSgdBlock = 256;
constexpr unsigned kMultiTensorBlocks = 1024;  // 262k threads: fills an H100/H200

enum class SgdMode { plain, momentum_first, nesterov_first, momentum, nesterov };

template <typename T>
struct SgdParams {
  SgdMode mode;
  T lr, momentum, keep, decay;  // keep = 1 - dampening
};

template <typename T>
__device__ inline void update_element(const SgdParams<T>& h, T* param, const T* grad, T* buffer,
                                      std::int64_t i) {
  const T g = grad[i] + h.decay * param[i];
  switch (h.mode) {
    case SgdMode::plain:
      param[i] -= h.lr * g;
      break;
    case SgdMode::momentum_first:
      buffer[i] = g;
      param[i] -= h.lr * g;
      break;
    case SgdMode::nesterov_first:
      buffer[i] = g;
      param[i] -= h.lr * (g + h.momentum * g);
      break;
    case SgdMode::momentum: {
      const T buf = h.momentum * buffer[i] + h.keep * g;
      buffer[i] = buf;
      param[i] -= h.lr * buf;
      break;
    }
    case SgdMode::nesterov: {
      const T buf = h.momentum * buffer[i] + h.keep * g;
      buffer[i] = buf;
      param[i] -= h.lr * (g + h.momentum * buf);
      break;
    }
  }
}

template <typename T>
__global__ void sgd_kernel(std::int64_t n, SgdParams<T> h, T* param, const T* grad, T* buffer) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    update_element(h, param, grad, buffer, i);
}

template <typename T>
__global__ void sgd_multi_kernel(std::int64_t tensors, SgdParams<T> h, T* const* params,
                                 const T* const* grads, T* const* buffers,
                                 const std::int64_t* sizes) {
  for (std::int64_t t = 0; t < tensors; ++t) {
    const std::int64_t n = sizes[t];
    T* param = params[t];
    const T* grad = grads[t];
    T* buffer = buffers != nullptr ? buffers[t] : nullptr;
    for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
      update_element(h, param, grad, buffer, i);
  }
}

template <typename T>
SgdParams<T> params_of(const SgdConfig& config, bool first_step) {
  SgdMode mode = SgdMode::plain;
  if (config.momentum != 0) {
    if (first_step)
      mode = config.nesterov ? SgdMode::nesterov_first : SgdMode::momentum_first;
    else
      mode = config.nesterov ? SgdMode::nesterov : SgdMode::momentum;
  }
  return {mode, static_cast<T>(config.lr), static_cast<T>(config.momentum),
          static_cast<T>(1.0 - config.dampening), static_cast<T>(config.weight_decay)};
}

}  // namespace

template <typename T>
void sgd_update(std::int64_t n, T* param, const T* grad, T* momentum_buffer,
                const SgdConfig& config, bool first_step, cudaStream_t stream) {
  SELA_CHECK(n >= 0, "sgd", "element count must be >= 0, got " << n);
  cpu::check_sgd_config(config);
  const bool use_momentum = config.momentum != 0;
  SELA_CHECK(!use_momentum || momentum_buffer != nullptr || n == 0, "sgd",
             "momentum " << config.momentum << " needs a momentum buffer, got nullptr");
  detail::check_pointers("sgd", n > 0, {param, grad});
  if (n == 0) return;
  sgd_kernel<<<detail::grid_for(n, kSgdBlock), kSgdBlock, 0, stream>>>(
      n, params_of<T>(config, first_step), param, grad, momentum_buffer);
  SELA_CUDA_CHECK_LAUNCH("sgd");
}

template <typename T>
void sgd_update_multi(std::int64_t tensors, T* const* params, const T* const* grads,
                      T* const* momentum_buffers, const std::int64_t* sizes,
                      const SgdConfig& config, bool first_step, cudaStream_t stream) {
  SELA_CHECK(tensors >= 0, "sgd", "tensor count must be >= 0, got " << tensors);
  cpu::check_sgd_config(config);
  const bool use_momentum = config.momentum != 0;
  SELA_CHECK(!use_momentum || momentum_buffers != nullptr || tensors == 0, "sgd",
             "momentum " << config.momentum << " needs momentum buffers, got nullptr");
  detail::check_pointers("sgd", tensors > 0, {params, grads, sizes});
  if (tensors == 0) return;
  sgd_multi_kernel<<<kMultiTensorBlocks, kSgdBlock, 0, stream>>>(
      tensors, params_of<T>(config, first_step), params, grads,
      use_momentum ? momentum_buffers : nullptr, sizes);
  SELA_CUDA_CHECK_LAUNCH("sgd");
}

namespace {

constexpr int kValuesPerLaunch = 64;
struct Int64Values {
  std::int64_t value[kValuesPerLaunch];
};

__global__ void write_int64_values_kernel(Int64Values values, int count,
                                          std::int64_t* destination) {
  const int i = static_cast<int>(threadIdx.x);
  if (i < count) destination[i] = values.value[i];
}

}  // namespace

void write_int64_values(const std::int64_t* values, std::int64_t count, std::int64_t* destination,
                        cudaStream_t stream) {
  SELA_CHECK(count >= 0, "write_int64_values", "count must be >= 0, got " << count);
  if (count == 0) return;
  detail::check_pointers("write_int64_values", true, {values, destination});
  for (std::int64_t first = 0; first < count; first += kValuesPerLaunch) {
    const int chunk = static_cast<int>(std::min<std::int64_t>(kValuesPerLaunch, count - first));
    Int64Values chunk_values{};
    for (int i = 0; i < chunk; ++i) chunk_values.value[i] = values[first + i];
    write_int64_values_kernel<<<1, kValuesPerLaunch, 0, stream>>>(chunk_values, chunk,
                                                                  destination + first);
    SELA_CUDA_CHECK_LAUNCH("write_int64_values");
  }
}

template void sgd_update<float>(std::int64_t, float*, const float*, float*, const SgdConfig&, bool,
                                cudaStream_t);
template void sgd_update<double>(std::int64_t, double*, const double*, double*, const SgdConfig&,
                                 bool, cudaStream_t);
template void sgd_update_multi<float>(std::int64_t, float* const*, const float* const*,
                                      float* const*, const std::int64_t*, const SgdConfig&, bool,
                                      cudaStream_t);
template void sgd_update_multi<double>(std::int64_t, double* const*, const double* const*,
                                       double* const*, const std::int64_t*, const SgdConfig&, bool,
                                       cudaStream_t);

}  // namespace sela::cuda
