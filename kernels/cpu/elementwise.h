// Elementwise CPU kernels: fill, add, mul, scale, axpy, ReLU forward/backward, row bias, cast.
//
// These are the CPU reference of each elementwise op; a CUDA twin gets the same signatures.
// They take raw pointers and an element count, know nothing about Tensor or autograd, and
// are templated on the element type (float and double are instantiated; cast also covers
// the integer types listed below). Output may alias an input (in-place use) in every
// function: each output element depends only on the input elements at the same index.
// Large calls are split over threads with sela::cpu::parallel_for; small ones run inline.
#pragma once

#include <cstdint>

namespace sela::cpu {

// out[i] = value
template <typename T>
void fill(std::int64_t n, T value, T* out);

// out = a + b
template <typename T>
void add(std::int64_t n, const T* a, const T* b, T* out);

// out = a * b
template <typename T>
void mul(std::int64_t n, const T* a, const T* b, T* out);

// out = alpha * x
template <typename T>
void scale(std::int64_t n, T alpha, const T* x, T* out);

// y += alpha * x
template <typename T>
void axpy(std::int64_t n, T alpha, const T* x, T* y);

// y = max(x, 0); NaN stays NaN (as torch.relu). y may be x (in-place ReLU).
template <typename T>
void relu_forward(std::int64_t n, const T* x, T* y);

// grad_x = (y > 0) ? grad_y : 0, overwrites grad_x. Uses the output y, not the input, so
// that an in-place ReLU (whose input was overwritten) can still be differentiated.
template <typename T>
void relu_backward(std::int64_t n, const T* y, const T* grad_y, T* grad_x);

// out[r, c] += bias[c] for a (rows, cols) row-major matrix (the bias of a linear layer).
template <typename T>
void add_row_bias(std::int64_t rows, std::int64_t cols, const T* bias, T* out);

// out[i] = static_cast<To>(in[i]). Instantiated for float<->double, int32<->int64,
// float/double <- int64, float/double <- int32 and float <- uint8. int64 -> int32 keeps the
// low 32 bits (callers narrow only values known to fit, such as indices). Float to integer
// casts are not offered (their out-of-range behaviour would need a policy).
template <typename From, typename To>
void cast(std::int64_t n, const From* in, To* out);

}  // namespace sela::cpu
