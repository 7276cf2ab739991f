// 2-D max pooling on CUDA, NCHW — the twin of kernels/cpu/pool.h (same names, the same
// Pool2dShape and checks, plus the stream), with PyTorch's max_pool2d semantics (dilation 1,
// ceil_mode = false, padding counts as -inf).
//
// Forward: one thread per output element scans its window in the CPU kernel's order (row
// by row), so outputs and argmax equal the CPU's exactly (first maximum wins; a NaN wins
// and the last NaN in scan order is recorded).
// Backward: a gather, not a scatter, so no atomics: one thread per input element visits the
// output windows that cover it, in increasing output order, and adds the gradient of those
// whose recorded argmax is this element. The additions happen in the same order as the CPU
// scatter, so grad_input equals the CPU's bit for bit. An argmax that points outside its
// window is never matched (nothing is written out of bounds); unlike the CPU kernel it is
// not reported, since that would need a host synchronisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/pool.h"

namespace sela::cuda {

using Pool2dShape = cpu::Pool2dShape;

// input (N, C, H, W) -> output (N, C, OH, OW) and argmax (N, C, OH, OW) (h * W + w inside
// the input plane). Shapes are checked by cpu::check_pool2d_shape.
template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* input, T* output, std::int32_t* argmax,
                        cudaStream_t stream);

// grad_input (N, C, H, W) is overwritten from grad_output (N, C, OH, OW) and argmax.
template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* grad_output, const std::int32_t* argmax,
                         T* grad_input, cudaStream_t stream);

}  // namespace sela::cuda
