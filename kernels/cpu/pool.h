// 2-D max pooling on CPU, NCHW, with the semantics of PyTorch's max_pool2d
// (dilation 1, ceil_mode = false, padding counts as -inf).
//
// CPU reference of the op (a CUDA twin gets the same signatures). The forward pass records
// for every output element where its maximum came from (the argmax plane), so that the
// backward pass is a scatter that needs neither the input nor a second search. Both passes
// are split over the N*C planes, which are independent, so the results do not depend on the
// thread count. Instantiated for float and double.
#pragma once

#include <cstdint>

namespace sela::cpu {

struct Pool2dShape {
  std::int64_t batch, channels, in_height, in_width, kernel_h, kernel_w;
  std::int64_t stride_h, stride_w, pad_h = 0, pad_w = 0;
  // floor((in + 2 * pad - kernel) / stride) + 1, as PyTorch with ceil_mode = false.
  std::int64_t out_height() const;
  std::int64_t out_width() const;
};

// Throws sela::Error (op "max_pool2d") unless the shape is one PyTorch accepts: positive
// sizes, kernels and strides, 0 <= pad <= kernel / 2, an output of at least 1 x 1, and a
// plane of fewer than 2^31 elements (argmax is int32).
void check_pool2d_shape(const Pool2dShape& s);

// input (N, C, H, W) -> output (N, C, OH, OW) and argmax (N, C, OH, OW): argmax holds
// h * W + w inside the input plane of the chosen element. Within a window the first maximum
// in scan order (row by row) wins; a NaN wins over any number, and the last NaN in scan
// order is the one recorded (PyTorch's rule `v > max || isnan(v)`), so NaN propagates.
template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* input, T* output, std::int32_t* argmax);

// grad_input (N, C, H, W) is overwritten: zero, then each grad_output (N, C, OH, OW) is
// added at its argmax. An argmax outside the input plane is a sela::Error (nothing is
// written out of bounds).
template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* grad_output, const std::int32_t* argmax,
                         T* grad_input);

}  // namespace sela::cpu
