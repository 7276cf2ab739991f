// Batch normalisation on CUDA — the twin of kernels/cpu/batchnorm.h (same names and
// arguments, plus a workspace and the stream; the fused batch_norm_relu_* have no CPU twin:
// on the CPU engine/ops.cpp composes them from these kernels and the ReLU's, which measured
// faster there than a fused CPU kernel), with PyTorch's BatchNorm2d semantics
// (BatchNorm1d: spatial = 1). x is (N, C, spatial) row-major; pointers are device pointers,
// gamma / beta / running statistics may be nullptr exactly where the CPU kernel allows it.
//
// Training: each channel's N * spatial values are cut into chunks of a fixed length (from
// the shape only), one block per (chunk, channel) accumulates in double, and the chunks'
// sums are combined in a fixed order, so statistics and the backward reductions are
// deterministic (no atomics) and agree with the CPU's double sums to double rounding. The
// chunk sums go to a caller-provided workspace (batch_norm_workspace_size doubles, on the
// device, used on `stream`). Every per-channel constant is computed in double as on the CPU
// and the elementwise pass uses the CPU's expression, so results match the CPU kernel to
// about an ulp (nvcc fuses multiply-adds). The statistics are shifted sums around the
// channel's first value (batchnorm.cu), so inputs with |mean| >> std lose nothing.
// Eval: one block per channel, no reduction.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sela::cuda {

// Doubles of device workspace the training forward and backward need for this shape (the
// same for both; a few per chunk of 8192 values of a channel, at most C * 2051).
std::int64_t batch_norm_workspace_size(std::int64_t batch, std::int64_t channels,
                                       std::int64_t spatial);

// Training forward: y, save_mean, save_invstd (C); running_mean / running_var updated when
// given (unbiased variance, as PyTorch). batch * spatial must be > 1.
template <typename T>
void batch_norm_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* x, const T* gamma, const T* beta, T eps, T momentum,
                              T* running_mean, T* running_var, T* y, T* save_mean, T* save_invstd,
                              double* workspace, cudaStream_t stream);

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
                               double* workspace, cudaStream_t stream);

// The training forward followed by a ReLU, in one pass: y = max(0, batch_norm(x)) (NaN
// passes, as the ReLU kernel). Statistics and running statistics as batch_norm_forward_train.
template <typename T>
void batch_norm_relu_forward_train(std::int64_t batch, std::int64_t channels,
                                   std::int64_t spatial, const T* x, const T* gamma, const T* beta,
                                   T eps, T momentum, T* running_mean, T* running_var, T* y,
                                   T* save_mean, T* save_invstd, double* workspace,
                                   cudaStream_t stream);

// Its backward: batch_norm_backward_train of grad_y masked where relu_output (the forward's
// y) is not > 0, without materialising the masked gradient.
template <typename T>
void batch_norm_relu_backward_train(std::int64_t batch, std::int64_t channels,
                                    std::int64_t spatial, const T* x, const T* grad_y,
                                    const T* relu_output, const T* gamma, const T* save_mean,
                                    const T* save_invstd, T* grad_x, T* grad_gamma, T* grad_beta,
                                    double* workspace, cudaStream_t stream);

// Backward of the eval forward: grad_x = grad_y * gamma / sqrt(running_var + eps).
template <typename T>
void batch_norm_backward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* grad_y, const T* gamma, const T* running_var, T eps,
                              T* grad_x, cudaStream_t stream);

}  // namespace sela::cuda
