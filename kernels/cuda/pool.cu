// 2-D max pooling on CUDA (see pool.cuh).
//
// Both kernels are grid-stride loops over a flat index (outputs for the forward pass,
// inputs for the backward pass) decomposed into (plane, row, column); the geometry travels
// in one small struct of 32-bit sizes (an input plane has fewer than 2^31 elements, which
// check_pool2d_shape guarantees). Which output windows cover input row h: those oh with
// oh * stride - pad <= h < oh * stride - pad + kernel, i.e.
//   oh in [ceil((h + pad - kernel + 1) / stride), floor((h + pad) / stride)] ∩ [0, OH).
#include "kernels/cuda/pool.cuh"

#include <cuda/std/limits>

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kPoolBlock = 256;

struct PoolGeometry {
  int height, width, out_height, out_width;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
};

PoolGeometry geometry_of(const Pool2dShape& s) {
  return {static_cast<int>(s.in_height),    static_cast<int>(s.in_width),
          static_cast<int>(s.out_height()), static_cast<int>(s.out_width()),
          static_cast<int>(s.kernel_h),     static_cast<int>(s.kernel_w),
          static_cast<int>(s.stride_h),     static_cast<int>(s.stride_w),
          static_cast<int>(s.pad_h),        static_cast<int>(s.pad_w)};
}

template <typename T>
__global__ void max_pool2d_forward_kernel(std::int64_t outputs, PoolGeometry g, const T* input,
                                          T* output, std::int32_t* argmax) {
  const std::int64_t out_plane = static_cast<std::int64_t>(g.out_height) * g.out_width;
  const std::int64_t in_plane = static_cast<std::int64_t>(g.height) * g.width;
  for (std::int64_t i = detail::grid_thread_index(); i < outputs;
       i += detail::grid_thread_count()) {
    const std::int64_t plane = i / out_plane;
    const int o = static_cast<int>(i - plane * out_plane);
    const int oh = o / g.out_width, ow = o - (o / g.out_width) * g.out_width;
    const int h_start = oh * g.stride_h - g.pad_h, w_start = ow * g.stride_w - g.pad_w;
    const int h0 = max(h_start, 0), h1 = min(h_start + g.kernel_h, g.height);
    const int w0 = max(w_start, 0), w1 = min(w_start + g.kernel_w, g.width);
    const T* in = input + plane * in_plane;  // (H, W)
    T best = -::cuda::std::numeric_limits<T>::infinity();
    int best_index = h0 * g.width + w0;
    for (int h = h0; h < h1; ++h) {
      for (int w = w0; w < w1; ++w) {
        const T v = in[h * g.width + w];
        if (v > best || v != v) {  // a NaN wins (and the last one is kept), as on the CPU
          best = v;
          best_index = h * g.width + w;
        }
      }
    }
    output[i] = best;
    argmax[i] = best_index;
  }
}

// First output index (along one axis) whose window covers input position `pos`.
__device__ inline int first_covering(int pos, int kernel, int stride, int pad) {
  const int reach = pos + pad - kernel + 1;  // windows starting at or after this cover pos
  return reach <= 0 ? 0 : (reach + stride - 1) / stride;
}

template <typename T>
__global__ void max_pool2d_backward_kernel(std::int64_t inputs, PoolGeometry g,
                                           const T* grad_output, const std::int32_t* argmax,
                                           T* grad_input) {
  const std::int64_t out_plane = static_cast<std::int64_t>(g.out_height) * g.out_width;
  const std::int64_t in_plane = static_cast<std::int64_t>(g.height) * g.width;
  for (std::int64_t i = detail::grid_thread_index(); i < inputs; i += detail::grid_thread_count()) {
    const std::int64_t plane = i / in_plane;
    const int position = static_cast<int>(i - plane * in_plane);
    const int h = position / g.width, w = position - (position / g.width) * g.width;
    const int oh0 = first_covering(h, g.kernel_h, g.stride_h, g.pad_h);
    const int oh1 = min((h + g.pad_h) / g.stride_h + 1, g.out_height);
    const int ow0 = first_covering(w, g.kernel_w, g.stride_w, g.pad_w);
    const int ow1 = min((w + g.pad_w) / g.stride_w + 1, g.out_width);
    const T* grad_out = grad_output + plane * out_plane;   // (OH, OW)
    const std::int32_t* arg = argmax + plane * out_plane;  // (OH, OW)
    T acc = T(0);
    for (int oh = oh0; oh < oh1; ++oh) {
      for (int ow = ow0; ow < ow1; ++ow) {
        const int o = oh * g.out_width + ow;
        if (arg[o] == position) acc += grad_out[o];
      }
    }
    grad_input[i] = acc;
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward(const Pool2dShape& s, const T* input, T* output, std::int32_t* argmax,
                        cudaStream_t stream) {
  cpu::check_pool2d_shape(s);
  const std::int64_t outputs = s.batch * s.channels * s.out_height() * s.out_width();
  detail::check_pointers("max_pool2d", outputs > 0, {input, output, argmax});
  if (outputs == 0) return;
  max_pool2d_forward_kernel<<<detail::grid_for(outputs, kPoolBlock), kPoolBlock, 0, stream>>>(
      outputs, geometry_of(s), input, output, argmax);
  SELA_CUDA_CHECK_LAUNCH("max_pool2d");
}

template <typename T>
void max_pool2d_backward(const Pool2dShape& s, const T* grad_output, const std::int32_t* argmax,
                         T* grad_input, cudaStream_t stream) {
  cpu::check_pool2d_shape(s);
  const std::int64_t inputs = s.batch * s.channels * s.in_height * s.in_width;
  detail::check_pointers("max_pool2d_backward", inputs > 0, {grad_output, argmax, grad_input});
  if (inputs == 0) return;
  max_pool2d_backward_kernel<<<detail::grid_for(inputs, kPoolBlock), kPoolBlock, 0, stream>>>(
      inputs, geometry_of(s), grad_output, argmax, grad_input);
  SELA_CUDA_CHECK_LAUNCH("max_pool2d_backward");
}

template void max_pool2d_forward<float>(const Pool2dShape&, const float*, float*, std::int32_t*,
                                        cudaStream_t);
template void max_pool2d_forward<double>(const Pool2dShape&, const double*, double*, std::int32_t*,
                                         cudaStream_t);
template void max_pool2d_backward<float>(const Pool2dShape&, const float*, const std::int32_t*,
                                         float*, cudaStream_t);
template void max_pool2d_backward<double>(const Pool2dShape&, const double*, const std::int32_t*,
                                          double*, cudaStream_t);

}  // namespace sela::cuda
