// Batch normalisation on CPU with the semantics of PyTorch's BatchNorm2d (and BatchNorm1d:
// spatial = 1). x is (N, C, spatial) row-major, spatial = H * W.
//
// CPU reference of the op (a CUDA twin gets the same signatures). Per-channel statistics
// are accumulated in double, over the (N, spatial) slab of that channel, by one thread: the
// work is split over channels, so results do not depend on the thread count. The training
// forward saves the batch mean and 1/sqrt(var + eps) so that the backward pass needs only
// x, grad_y and those two (C) vectors. Instantiated for float and double.
#pragma once

#include <cstdint>

namespace sela::cpu {

// Training mode: y = (x - mean) * invstd * gamma + beta with the batch mean and biased
// variance of each channel. Writes save_mean and save_invstd (C), invstd = 1/sqrt(var + eps).
// running_mean / running_var (C) are updated as running = (1 - momentum) * running +
// momentum * batch_stat, with the unbiased variance for running_var (as PyTorch); both may
// be nullptr (no tracking). gamma / beta may be nullptr (affine = false: gamma 1, beta 0).
// batch * spatial must be > 1 (PyTorch: "Expected more than 1 value per channel").
template <typename T>
void batch_norm_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* x, const T* gamma, const T* beta, T eps, T momentum,
                              T* running_mean, T* running_var, T* y, T* save_mean, T* save_invstd);

// Eval mode: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
template <typename T>
void batch_norm_forward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             const T* x, const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y);

// Backward of the training forward, through the batch statistics. Overwrites grad_x
// (N, C, spatial), grad_gamma and grad_beta (C; either may be nullptr, gamma may be nullptr).
template <typename T>
void batch_norm_backward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                               const T* x, const T* grad_y, const T* gamma, const T* save_mean,
                               const T* save_invstd, T* grad_x, T* grad_gamma, T* grad_beta);

// Backward of the eval forward (statistics are constants):
// grad_x = grad_y * gamma / sqrt(running_var + eps). Overwrites grad_x (N, C, spatial).
template <typename T>
void batch_norm_backward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* grad_y, const T* gamma, const T* running_var, T eps,
                              T* grad_x);

}  // namespace sela::cpu
