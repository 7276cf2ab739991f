// Elementwise CUDA kernels: fill, add, mul, scale, axpy, ReLU forward/backward, row bias,
// cast — the twins of kernels/cpu/elementwise.h (same names and arguments, plus the stream).
//
// Pointers are device pointers; work is queued on `stream` and the call returns without
// waiting. Sizes are checked on the host before anything is launched (sela::Error), and the
// launch error is checked after the launch. Output may alias an input, as on the CPU.
// float and double are instantiated (fill also for int32, int64, uint8; cast for the same
// type pairs as the CPU kernel). Results equal the CPU kernels bit for bit except axpy,
// where nvcc contracts y + alpha * x into one fused multiply-add (one rounding, not two).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sela::cuda {

// out[i] = value
template <typename T>
void fill(std::int64_t n, T value, T* out, cudaStream_t stream);

// out = a + b
template <typename T>
void add(std::int64_t n, const T* a, const T* b, T* out, cudaStream_t stream);

// out = a * b
template <typename T>
void mul(std::int64_t n, const T* a, const T* b, T* out, cudaStream_t stream);

// out = alpha * x
template <typename T>
void scale(std::int64_t n, T alpha, const T* x, T* out, cudaStream_t stream);

// y += alpha * x
template <typename T>
void axpy(std::int64_t n, T alpha, const T* x, T* y, cudaStream_t stream);

// y = max(x, 0); NaN stays NaN. y may be x.
template <typename T>
void relu_forward(std::int64_t n, const T* x, T* y, cudaStream_t stream);

// grad_x = (y > 0) ? grad_y : 0 (from the output y, so in-place ReLU can be differentiated).
template <typename T>
void relu_backward(std::int64_t n, const T* y, const T* grad_y, T* grad_x, cudaStream_t stream);

// out[r, c] += bias[c] for a (rows, cols) row-major matrix.
template <typename T>
void add_row_bias(std::int64_t rows, std::int64_t cols, const T* bias, T* out, cudaStream_t stream);

// out[i] = static_cast<To>(in[i]), for the type pairs the CPU kernel offers.
template <typename From, typename To>
void cast(std::int64_t n, const From* in, To* out, cudaStream_t stream);

// float32 <-> bfloat16 (stored as its 16 bits, std::uint16_t): to bfloat16 rounds to nearest,
// ties to even (__float2bfloat16_rn), bit for bit as kernels/cpu/bfloat16.h except for the
// bits of a NaN (CUDA's canonical NaN); back is exact.
// For the bf16 mixed-precision mode (tests/cuda/test_bfloat16.cpp).
void cast_float_to_bfloat16(std::int64_t n, const float* in, std::uint16_t* out,
                            cudaStream_t stream);
void cast_bfloat16_to_float(std::int64_t n, const std::uint16_t* in, float* out,
                            cudaStream_t stream);
// out (N, C, spatial) float32 = in (bfloat16) + bias[c] (bias may be nullptr): a bfloat16
// convolution's output widened, with the convolution's bias added in float32.
void bfloat16_to_float_add_channel_bias(std::int64_t batch, std::int64_t channels,
                                        std::int64_t spatial, const std::uint16_t* in,
                                        const float* bias, float* out, cudaStream_t stream);

}  // namespace sela::cuda
