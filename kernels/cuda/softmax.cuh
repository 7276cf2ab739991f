// Log-softmax over rows and the fused mean cross-entropy on CUDA — the twins of
// kernels/cpu/softmax.h (same names and arguments, plus the stream), with PyTorch's
// log_softmax(dim=1) and CrossEntropyLoss(reduction='mean') semantics.
//
// One block per row (rows beyond the grid are taken in turn): the row's max, its sum of
// exp(x - max) in double and the write of (x - max) - log(sum), each reduced in a fixed tree
// (deterministic). The cross-entropy forward writes the log-probabilities and then one block
// adds -log_probs[r, target_r] over the rows (again a fixed tree) into the mean; its backward
// is one fused pass, grad_loss / rows * (exp(log_probs) - onehot(target)).
//
// Targets live on the device, so the host cannot check them before launching: the forward
// kernels find the first row whose target is outside [0, cols). cross_entropy_forward (CPU
// signature, returns the loss on the host, synchronises) then throws the CPU kernel's
// sela::Error naming the row and the value. cross_entropy_forward_into (asynchronous) writes
// loss = NaN and *bad_row = that row (-1 when all targets are valid) for the caller to check
// when it next synchronises; cross_entropy_backward fills a row with a bad target with NaN.
// expf on the GPU may differ from the host's by an ulp or two, so results agree with the CPU
// kernel to a few ulps, not bitwise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sela::cuda {

// y[r, :] = x[r, :] - max_c x[r, c] - log(sum_c exp(x[r, c] - max)).
template <typename T>
void log_softmax_forward(std::int64_t rows, std::int64_t cols, const T* x, T* y,
                         cudaStream_t stream);

// grad_x = grad_y - exp(y) * sum_c grad_y, overwrites grad_x.
template <typename T>
void log_softmax_backward(std::int64_t rows, std::int64_t cols, const T* y, const T* grad_y,
                          T* grad_x, cudaStream_t stream);

// Mean cross-entropy; writes log_probs (rows, cols); waits for the stream and returns the
// loss. Throws sela::Error ("cross_entropy") for a target outside [0, cols). rows, cols > 0.
template <typename T>
T cross_entropy_forward(std::int64_t rows, std::int64_t cols, const T* logits,
                        const std::int64_t* targets, T* log_probs, cudaStream_t stream);

// The same without synchronising: *loss (device) = the mean loss, *bad_row (device) = -1, or
// the first row with an invalid target (then *loss is NaN).
template <typename T>
void cross_entropy_forward_into(std::int64_t rows, std::int64_t cols, const T* logits,
                                const std::int64_t* targets, T* log_probs, T* loss,
                                std::int64_t* bad_row, cudaStream_t stream);

// grad_logits = grad_loss / rows * (softmax - onehot(target)), overwrites grad_logits; a row
// with an invalid target is filled with NaN.
template <typename T>
void cross_entropy_backward(std::int64_t rows, std::int64_t cols, const T* log_probs,
                            const std::int64_t* targets, T grad_loss, T* grad_logits,
                            cudaStream_t stream);

}  // namespace sela::cuda
