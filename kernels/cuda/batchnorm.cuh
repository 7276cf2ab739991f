// Batch normalisation on CUDA — the twin of kernels/cpu/batchnorm.h (same names and
// arguments, plus the stream), with PyTorch's BatchNorm2d semantics (BatchNorm1d: spatial =
// 1). x is (N, C, spatial) row-major; pointers are device pointers, gamma / beta /
// running statistics may be nullptr exactly where the CPU kernel allows it.
//
// One block per channel: the block's threads split the channel's N * spatial values,
// accumulate in double and combine in a fixed tree, so statistics and the backward
// reductions are deterministic (no atomics) and agree with the CPU's double sums to double
// rounding. Every per-channel constant is computed in double exactly as on the CPU and the
// elementwise pass uses the CPU's expression, so results match the CPU kernel to about an
// ulp (nvcc fuses multiply-adds). The statistics are two-pass (mean, then squared
// deviations), so inputs with |mean| >> std lose nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sela::cuda {

// Training forward: y, save_mean, save_invstd (C); running_mean / running_var updated when
// given (unbiased variance, as PyTorch). batch * spatial must be > 1.
template <typename T>
void batch_norm_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* x, const T* gamma, const T* beta, T eps, T momentum,
                              T* running_mean, T* running_var, T* y, T* save_mean, T* save_invstd,
                              cudaStream_t stream);

// Eval forward: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
template <typename T>
void batch_norm_forward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             const T* x, const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y, cudaStream_t stream);

// Backward of the training forward: overwrites grad_x (N, C, spatial), grad_gamma and
// grad_beta (C; either may be nullptr).
template <typename T>
void batch_norm_backward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                               const T* x, const T* grad_y, const T* gamma, const T* save_mean,
                               const T* save_invstd, T* grad_x, T* grad_gamma, T* grad_beta,
                               cudaStream_t stream);

// Backward of the eval forward: grad_x = grad_y * gamma / sqrt(running_var + eps).
template <typename T>
void batch_norm_backward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* grad_y, const T* gamma, const T* running_var, T eps,
                              T* grad_x, cudaStream_t stream);

}  // namespace sela::cuda
