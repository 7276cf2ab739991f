// CPU 2-D convolution (cross-correlation, as in PyTorch): forward, backward to the input,
// backward to the weight and bias. NCHW activations, OIHW weights, no groups, no dilation.
//
// Two implementations sit behind the three entry points:
//   dnnl    oneDNN's convolution primitives (the library PyTorch 1.13 uses for its CPU
//           convs), float only, with algorithm::convolution_auto: oneDNN takes Winograd
//           F(4x4,3x3) for 3x3 stride-1 layers with enough images (alexnet-32's conv3-5 at
//           batch >= 32), direct convolution otherwise. NCHW/OIHW buffers are reordered to
//           the blocked layouts the primitive picks and back; primitives are created once
//           per shape and direction and cached (process-wide, guarded by a mutex). Chosen by
//           cmake/SelaCpuGemm.cmake (SELA_CPU_CONV) where oneDNN 2.x is installed, after
//           measurement with tools/bench/conv_lab.cpp (docs/perf.md). A shape oneDNN
//           declines falls back to im2col.
//   im2col  im2col + our gemm_builtin (kernels/cpu/gemm.h) on groups of images whose
//           columns fill ~8 MiB, so that the small late layers (7x7 maps) still give one
//           GEMM wide enough to run near peak; one parallel region per call, each thread on
//           its own range of images. Used for double everywhere and for float without
//           oneDNN; it is also the readable specification of the arithmetic.
// Scratch (columns, blocked copies, library scratchpads) is kept per thread and
// only grows: no allocation per call once warm, at the price of holding the largest size
// seen (tens of MiB for alexnet-32 at batch 128).
// The results are deterministic for a given thread count (no atomics; the weight gradient
// sums image groups and thread parts in a fixed order). oneDNN's Winograd and direct
// kernels round differently, and it picks between them by shape (batch included).
#pragma once

#include <cstdint>
#include <string>

namespace sela::cpu {

struct Conv2dShape {
  std::int64_t batch, in_channels, in_height, in_width;
  std::int64_t out_channels, kernel_h, kernel_w;
  std::int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  std::int64_t out_height() const;  // (in + 2*pad - kernel) / stride + 1
  std::int64_t out_width() const;
};

// input (N,C,H,W), weight (O,C,kh,kw), bias (O) or nullptr, output (N,O,OH,OW): overwritten.
template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* input, const T* weight, const T* bias,
                    T* output);
// grad_input (N,C,H,W) is overwritten (not accumulated).
template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* grad_output, const T* weight,
                           T* grad_input);
// grad_weight (O,C,kh,kw) and grad_bias (O, may be nullptr) are overwritten.
template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* input, const T* grad_output,
                            T* grad_weight, T* grad_bias);

// "dnnl" or "im2col": what the float entry points use in this build (double: im2col).
const char* conv2d_backend_name();

enum class Conv2dDirection { forward, backward_input, backward_weight };
// What the float entry point runs for this shape and direction: "im2col", or "dnnl " and
// oneDNN's implementation name (e.g. "dnnl jit_wino_4x3:avx512_core"), for labs and logs.
std::string conv2d_implementation(const Conv2dShape& s, Conv2dDirection direction);

// Throws sela::Error (op "conv2d", the shape in the message) unless every size is positive,
// padding is non-negative and the kernel fits the padded input.
void check_conv2d_shape(const Conv2dShape& s);
// "N=2 C=3 H=32 W=32 -> O=64 k=5x5 stride=1x1 pad=2x2 -> 32x32", for messages and labs.
std::string conv2d_shape_text(const Conv2dShape& s);

// The im2col + gemm implementation, same contracts, whatever the build chose.
template <typename T>
void conv2d_forward_im2col(const Conv2dShape& s, const T* input, const T* weight, const T* bias,
                           T* output);
template <typename T>
void conv2d_backward_input_im2col(const Conv2dShape& s, const T* grad_output, const T* weight,
                                  T* grad_input);
template <typename T>
void conv2d_backward_weight_im2col(const Conv2dShape& s, const T* input, const T* grad_output,
                                   T* grad_weight, T* grad_bias);

// The oneDNN implementation (float only), same contracts. Each returns false, having
// written nothing, when oneDNN is not in this build or has no implementation for the shape.
// (The backward-weight one computes no bias gradient when grad_bias is null.)
bool conv2d_forward_dnnl(const Conv2dShape& s, const float* input, const float* weight,
                         const float* bias, float* output);
bool conv2d_backward_input_dnnl(const Conv2dShape& s, const float* grad_output, const float* weight,
                                float* grad_input);
bool conv2d_backward_weight_dnnl(const Conv2dShape& s, const float* input, const float* grad_output,
                                 float* grad_weight, float* grad_bias);

}  // namespace sela::cpu
