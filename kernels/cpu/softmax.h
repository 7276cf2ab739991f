// Log-softmax over the rows of a (rows, cols) row-major matrix, and the fused mean
// cross-entropy loss built on it (PyTorch's log_softmax(dim=1) and CrossEntropyLoss with
// reduction = 'mean', no weights, no ignore_index, no label smoothing).
//
// CPU reference of the ops (a CUDA twin gets the same signatures). Each row is handled by
// one thread and rows are split over threads, so results do not depend on the thread count;
// row sums accumulate in double. Cross-entropy writes the log-probabilities it computes, so
// that its backward pass needs neither the logits nor a second max/sum pass. Instantiated
// for float and double.
#pragma once

#include <cstdint>

namespace sela::cpu {

// y[r, :] = x[r, :] - max_c x[r, c] - log(sum_c exp(x[r, c] - max)).
template <typename T>
void log_softmax_forward(std::int64_t rows, std::int64_t cols, const T* x, T* y);

// grad_x = grad_y - exp(y) * sum_c grad_y (y = log-probabilities from the forward pass),
// overwrites grad_x.
template <typename T>
void log_softmax_backward(std::int64_t rows, std::int64_t cols, const T* y, const T* grad_y,
                          T* grad_x);

// Mean cross-entropy over rows: -mean_r log_softmax(logits)[r, targets[r]]. Writes the
// log-probabilities (rows, cols) for the backward pass. A target outside [0, cols) is a
// sela::Error naming "cross_entropy", the row and the value (checked before any parallel
// work); rows and cols must be > 0.
template <typename T>
T cross_entropy_forward(std::int64_t rows, std::int64_t cols, const T* logits,
                        const std::int64_t* targets, T* log_probs);

// grad_logits = grad_loss / rows * (softmax - onehot(target)), overwrites grad_logits.
// Targets are checked as in the forward pass.
template <typename T>
void cross_entropy_backward(std::int64_t rows, std::int64_t cols, const T* log_probs,
                            const std::int64_t* targets, T grad_loss, T* grad_logits);

}  // namespace sela::cpu
