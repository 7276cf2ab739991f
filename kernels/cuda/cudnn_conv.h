// cuDNN 2-D convolution: the twin of kernels/cpu/conv2d.h's three entry points (same
// Conv2dShape, NCHW activations, OIHW weights, no groups or dilation, outputs overwritten and
// never accumulated), plus the stream.
//
// cuDNN 9 still ships the v7-style convolution API (cudnnConvolutionForward /
// BackwardData / BackwardFilter / BackwardBias, cudnnGet*_v7, cudnnFind*Ex): deprecated in
// favour of the graph API, but present and warning-free unless CUDNN_WARN_DEPRECATED is
// defined. It is what this file uses; it is also what PyTorch's v7 path calls.
//
// Plans: the descriptors and the chosen algorithm are made once per (device, dtype, math
// mode, search mode, direction, shape) and cached for the process (a map under a mutex;
// descriptors are never destroyed). The algorithm is chosen
//   - by default with cuDNN's heuristics (cudnnGet*Algorithm_v7), PyTorch's default
//     (torch.backends.cudnn.benchmark = False): no trial runs, so the first step of a new
//     shape costs microseconds, not the seconds that trying every algorithm costs;
//   - with set_conv_benchmark(true) by timing the candidates once (cudnnFind*AlgorithmEx on
//     the call's own buffers, with a workspace sized for the heuristics' candidates),
//     PyTorch's benchmark mode: slower first step, sometimes faster steps.
// The first candidate is taken that succeeded, fits the workspace cap (1 GiB), obeys the
// math mode (no tensor-op algorithm when TF32 is off) and, with set_conv_deterministic(true),
// is deterministic. The workspace comes from the caching allocator for each call and is freed
// right after the work is queued: safe on device_stream() by the allocator's contract; on
// any other stream the call waits for its work to finish before freeing it.
//
// Math: float with conv_tf32() (the default, as PyTorch's torch.backends.cudnn.allow_tf32 =
// True) lets cuDNN use TF32 tensor cores (descriptor CUDNN_DEFAULT_MATH, which permits TF32
// on compute capability >= 8.0, then the math type cuDNN reports for the chosen algorithm,
// as PyTorch does); without it, CUDNN_FMA_MATH (true fp32). double uses CUDNN_DEFAULT_MATH
// (double is never computed on tensor cores).
//
// Bias: forward adds it with cudnnAddTensor after the convolution; backward computes it with
// cudnnConvolutionBackwardBias. bias / grad_bias must not alias the other buffers.
//
// Limits: every tensor must have fewer than 2^31 elements and every size must fit an int
// (cuDNN's 4-d descriptors); bigger shapes throw sela::Error naming the shape.
//
// A build without cuDNN (SELA_HAVE_CUDNN undefined) still has these functions: they throw a
// sela::Error that says so and how to point CMake at cuDNN (-DCUDNN_ROOT=...).
//
// Plain host header (no device code, no cuDNN header): usable from any .cpp file.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "kernels/cpu/conv2d.h"

namespace sela::cuda {

using Conv2dShape = cpu::Conv2dShape;

// input (N,C,H,W), weight (O,C,kh,kw), bias (O) or nullptr, output (N,O,OH,OW): overwritten.
// Device pointers on the stream's device (made current during the call); queues the work on
// `stream` and returns without waiting (except as said above for a foreign stream, and the
// first call of a shape in benchmark mode, which times the algorithms).
template <typename T>  // float, double
void conv2d_forward(const Conv2dShape& s, const T* input, const T* weight, const T* bias, T* output,
                    cudaStream_t stream);
// grad_input (N,C,H,W) is overwritten (not accumulated).
template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* grad_output, const T* weight,
                           T* grad_input, cudaStream_t stream);
// grad_weight (O,C,kh,kw) and grad_bias (O, may be nullptr) are overwritten.
template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* input, const T* grad_output,
                            T* grad_weight, T* grad_bias, cudaStream_t stream);

// The same three with bfloat16 tensors (their 16 bits, kernels/cpu/bfloat16.h) and float
// math (cuDNN's CUDNN_DATA_BFLOAT16 with a float compute type, tensor-op math), without bias:
// the bf16 mixed-precision mode adds the bias in float32. Plans are cached apart from the
// float ones.
void conv2d_forward_bfloat16(const Conv2dShape& s, const std::uint16_t* input,
                             const std::uint16_t* weight, std::uint16_t* output,
                             cudaStream_t stream);
void conv2d_backward_input_bfloat16(const Conv2dShape& s, const std::uint16_t* grad_output,
                                    const std::uint16_t* weight, std::uint16_t* grad_input,
                                    cudaStream_t stream);
void conv2d_backward_weight_bfloat16(const Conv2dShape& s, const std::uint16_t* input,
                                     const std::uint16_t* grad_output, std::uint16_t* grad_weight,
                                     cudaStream_t stream);

// TF32 for fp32 convolutions: true by default (PyTorch's torch.backends.cudnn.allow_tf32).
// Process-wide, read on every call (a change selects other cached plans).
void set_conv_tf32(bool allow);
bool conv_tf32();

// Which algorithm the last call for this shape and direction used (any dtype, device or mode),
// e.g. "float tf32 implicit_precomp_gemm, tensor-op math, workspace 0 B, deterministic
// (heuristic)"; "" if no call has used this shape and direction yet. direction: 0 forward,
// 1 backward data, 2 backward filter.
std::string conv2d_algorithm(const Conv2dShape& s, int direction);

// The cuDNN library loaded at run time, e.g. "cuDNN 9.19.0" (cudnnGetVersion: no GPU needed);
// "cuDNN not in this build" without cuDNN.
std::string cudnn_version_text();

// --- additions -------------------------------------------------------------------------

// Algorithm search: false (default) cuDNN's heuristics, true timed trials once per shape
// (PyTorch's torch.backends.cudnn.benchmark). Process-wide.
void set_conv_benchmark(bool benchmark);
bool conv_benchmark();

// Only deterministic algorithms (torch.backends.cudnn.deterministic): false by default.
void set_conv_deterministic(bool deterministic);
bool conv_deterministic();

// True when this build has cuDNN (the functions above work); false: they throw.
bool have_cudnn();

}  // namespace sela::cuda
