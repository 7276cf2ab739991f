// Dropout on CUDA with the counter-based mask of kernels/cpu/dropout.h (same names and
// arguments, plus the stream).
//
// The mask bit of element i depends only on (seed, offset + i) through Philox-4x32-10,
// exactly as on the CPU (see kernels/cpu/dropout.h for the rule): masks and outputs are
// bit-identical to the CPU kernel's for any launch shape, and a call split with offsets
// equals one call. Dropped outputs are exactly 0 (also for NaN/Inf inputs); kept ones are
// x * (1 / (1 - p)) with the scale computed in T on the host, as on the CPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sela::cuda {

// y = mask ? x / (1 - p) : 0, mask[i] = u(seed, offset + i) >= p; p in [0, 1). y may be x.
// offset + n must not pass 2^64.
template <typename T>
void dropout_forward(std::int64_t n, const T* x, T p, std::uint64_t seed, std::uint64_t offset,
                     T* y, std::uint8_t* mask, cudaStream_t stream);
// The same with the offset read from device memory when the kernel runs (*device_offset;
// nullptr: `offset`), so that a captured CUDA graph can draw new masks at every replay. The
// launch shape is computed from `offset`: *device_offset must equal it modulo 4.
template <typename T>
void dropout_forward(std::int64_t n, const T* x, T p, std::uint64_t seed, std::uint64_t offset,
                     const std::int64_t* device_offset, T* y, std::uint8_t* mask,
                     cudaStream_t stream);

// grad_x = mask ? grad_y / (1 - p) : 0, overwrites grad_x (grad_x may be grad_y).
template <typename T>
void dropout_backward(std::int64_t n, const T* grad_y, const std::uint8_t* mask, T p, T* grad_x,
                      cudaStream_t stream);

}  // namespace sela::cuda
