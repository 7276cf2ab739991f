// CUDA reductions: the sum of a buffer, column sums of a matrix (the bias gradient) and
// row-wise argmax — the twins of kernels/cpu/reduce.h (same names and arguments, plus the
// stream), with the same semantics: sums accumulate in double, argmax takes the first
// maximum and the first NaN of a row.
//
// Deterministic: no atomics. A sum is two-stage: a fixed number of blocks (a function of n
// only, never of the GPU) each reduce their grid-stride share in a fixed tree into one
// partial, then one block adds the partials in a fixed tree. Two runs give the same bits,
// on any GPU. The summation order differs from the CPU's, so float results may differ from
// the CPU kernel in the last bit (both are the rounding of a double sum).
//
// sum() has the CPU signature and returns the value to the host: it synchronises the
// stream and takes a small stream-ordered scratch allocation (cudaMallocAsync), so it is
// not for a hot path. sum_into() is the asynchronous form: the result stays on the device
// and the caller provides the workspace (sum_workspace_size(n) doubles).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sela::cuda {

// Sum of x[0..n), accumulated in double; waits for the stream and returns the value.
template <typename T>
T sum(std::int64_t n, const T* x, cudaStream_t stream);

// Doubles of workspace sum_into needs for n elements (at most a few thousand).
std::int64_t sum_workspace_size(std::int64_t n);

// *out = sum of x[0..n), all on the device (out and workspace are device pointers);
// returns without waiting. Same bits as sum().
template <typename T>
void sum_into(std::int64_t n, const T* x, double* workspace, T* out, cudaStream_t stream);

// out[c] = sum over r of x[r, c] for a (rows, cols) row-major x; overwrites out (cols).
// One block per 32 columns, whose threads split the rows; no workspace. A very tall and
// narrow matrix (cols far below the GPU's thread count) gets little parallelism.
template <typename T>
void sum_rows(std::int64_t rows, std::int64_t cols, const T* x, T* out, cudaStream_t stream);

// out[c] = sum over n and s of x[n, c, s] for x (N, C, spatial) float32, one block per
// channel summing in double in a fixed order (deterministic): the bias gradient of a
// convolution whose weight gradient is computed elsewhere (the bf16 mode).
void sum_channels(std::int64_t batch, std::int64_t channels, std::int64_t spatial, const float* x,
                  float* out, cudaStream_t stream);

// out[r] = index of the largest x[r, :] (rows); first maximum wins on ties, the first NaN of
// a row wins. cols must be > 0 when rows > 0. One warp per row.
template <typename T>
void argmax_rows(std::int64_t rows, std::int64_t cols, const T* x, std::int64_t* out,
                 cudaStream_t stream);

}  // namespace sela::cuda
