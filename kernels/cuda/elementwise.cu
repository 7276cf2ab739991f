// Elementwise CUDA kernels (see elementwise.cuh).
//
// Every kernel is a grid-stride loop (kElementwiseBlock threads per block, grid capped by
// detail::grid_for): consecutive threads touch consecutive elements, so loads and stores are
// coalesced, and one launch covers any n. These ops are memory-bound; the arithmetic is the
// CPU kernel's expression unchanged. add_row_bias needs the column of a flat index: it uses
// 32-bit division when the matrix has fewer than 2^31 elements (the usual case), 64-bit
// otherwise.
#include "kernels/cuda/elementwise.cuh"

#include <cuda_bf16.h>

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kElementwiseBlock = 256;

template <typename T>
__global__ void fill_kernel(std::int64_t n, T value, T* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = value;
}

template <typename T>
__global__ void add_kernel(std::int64_t n, const T* a, const T* b, T* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = a[i] + b[i];
}

template <typename T>
__global__ void mul_kernel(std::int64_t n, const T* a, const T* b, T* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = a[i] * b[i];
}

template <typename T>
__global__ void scale_kernel(std::int64_t n, T alpha, const T* x, T* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = alpha * x[i];
}

template <typename T>
__global__ void axpy_kernel(std::int64_t n, T alpha, const T* x, T* y) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    y[i] += alpha * x[i];
}

template <typename T>
__global__ void relu_forward_kernel(std::int64_t n, const T* x, T* y) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count()) {
    const T v = x[i];
    y[i] = v < T(0) ? T(0) : v;  // NaN passes through, as torch.relu
  }
}

template <typename T>
__global__ void relu_backward_kernel(std::int64_t n, const T* y, const T* grad_y, T* grad_x) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    grad_x[i] = y[i] > T(0) ? grad_y[i] : T(0);
}

template <typename T, typename Index>
__global__ void add_row_bias_kernel(Index n, Index cols, const T* bias, T* out) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] += bias[i % cols];
}

template <typename From, typename To>
__global__ void cast_kernel(std::int64_t n, const From* in, To* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = static_cast<To>(in[i]);
}

unsigned grid(std::int64_t n) { return detail::grid_for(n, kElementwiseBlock); }

}  // namespace

template <typename T>
void fill(std::int64_t n, T value, T* out, cudaStream_t stream) {
  detail::check_count("fill", n);
  detail::check_pointers("fill", n > 0, {out});
  if (n == 0) return;
  fill_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, value, out);
  SELA_CUDA_CHECK_LAUNCH("fill");
}

template <typename T>
void add(std::int64_t n, const T* a, const T* b, T* out, cudaStream_t stream) {
  detail::check_count("add", n);
  detail::check_pointers("add", n > 0, {a, b, out});
  if (n == 0) return;
  add_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, a, b, out);
  SELA_CUDA_CHECK_LAUNCH("add");
}

template <typename T>
void mul(std::int64_t n, const T* a, const T* b, T* out, cudaStream_t stream) {
  detail::check_count("mul", n);
  detail::check_pointers("mul", n > 0, {a, b, out});
  if (n == 0) return;
  mul_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, a, b, out);
  SELA_CUDA_CHECK_LAUNCH("mul");
}

template <typename T>
void scale(std::int64_t n, T alpha, const T* x, T* out, cudaStream_t stream) {
  detail::check_count("scale", n);
  detail::check_pointers("scale", n > 0, {x, out});
  if (n == 0) return;
  scale_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, alpha, x, out);
  SELA_CUDA_CHECK_LAUNCH("scale");
}

template <typename T>
void axpy(std::int64_t n, T alpha, const T* x, T* y, cudaStream_t stream) {
  detail::check_count("axpy", n);
  detail::check_pointers("axpy", n > 0, {x, y});
  if (n == 0) return;
  axpy_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, alpha, x, y);
  SELA_CUDA_CHECK_LAUNCH("axpy");
}

template <typename T>
void relu_forward(std::int64_t n, const T* x, T* y, cudaStream_t stream) {
  detail::check_count("relu_forward", n);
  detail::check_pointers("relu_forward", n > 0, {x, y});
  if (n == 0) return;
  relu_forward_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, x, y);
  SELA_CUDA_CHECK_LAUNCH("relu_forward");
}

template <typename T>
void relu_backward(std::int64_t n, const T* y, const T* grad_y, T* grad_x, cudaStream_t stream) {
  detail::check_count("relu_backward", n);
  detail::check_pointers("relu_backward", n > 0, {y, grad_y, grad_x});
  if (n == 0) return;
  relu_backward_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, y, grad_y, grad_x);
  SELA_CUDA_CHECK_LAUNCH("relu_backward");
}

template <typename T>
void add_row_bias(std::int64_t rows, std::int64_t cols, const T* bias, T* out,
                  cudaStream_t stream) {
  SELA_CHECK(rows >= 0 && cols >= 0, "add_row_bias",
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
  const std::int64_t n = rows * cols;
  detail::check_pointers("add_row_bias", n > 0, {bias, out});
  if (n == 0) return;
  if (n <= INT32_MAX) {
    add_row_bias_kernel<T, std::uint32_t><<<grid(n), kElementwiseBlock, 0, stream>>>(
        static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(cols), bias, out);
  } else {
    add_row_bias_kernel<T, std::int64_t>
        <<<grid(n), kElementwiseBlock, 0, stream>>>(n, cols, bias, out);
  }
  SELA_CUDA_CHECK_LAUNCH("add_row_bias");
}

template <typename From, typename To>
void cast(std::int64_t n, const From* in, To* out, cudaStream_t stream) {
  detail::check_count("cast", n);
  detail::check_pointers("cast", n > 0, {in, out});
  if (n == 0) return;
  cast_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, in, out);
  SELA_CUDA_CHECK_LAUNCH("cast");
}

namespace {

__global__ void float_to_bfloat16_kernel(std::int64_t n, const float* in, std::uint16_t* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}

__global__ void bfloat16_to_float_kernel(std::int64_t n, const std::uint16_t* in, float* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
}

__global__ void bfloat16_to_float_bias_kernel(std::int64_t n, std::int64_t channels,
                                              std::int64_t spatial, const std::uint16_t* in,
                                              const float* bias, float* out) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count()) {
    const float value = __bfloat162float(__ushort_as_bfloat16(in[i]));
    out[i] = bias != nullptr ? value + bias[(i / spatial) % channels] : value;
  }
}

}  // namespace

void bfloat16_to_float_add_channel_bias(std::int64_t batch, std::int64_t channels,
                                        std::int64_t spatial, const std::uint16_t* in,
                                        const float* bias, float* out, cudaStream_t stream) {
  const char* op = "bfloat16_to_float_add_channel_bias";
  SELA_CHECK(batch >= 0 && channels >= 0 && spatial >= 0, op,
             "sizes must be >= 0, got (" << batch << ", " << channels << ", " << spatial << ")");
  const std::int64_t n = batch * channels * spatial;
  detail::check_pointers(op, n > 0, {in, out});
  if (n == 0) return;
  bfloat16_to_float_bias_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, channels, spatial,
                                                                          in, bias, out);
  SELA_CUDA_CHECK_LAUNCH(op);
}

void cast_float_to_bfloat16(std::int64_t n, const float* in, std::uint16_t* out,
                            cudaStream_t stream) {
  detail::check_count("cast_float_to_bfloat16", n);
  detail::check_pointers("cast_float_to_bfloat16", n > 0, {in, out});
  if (n == 0) return;
  float_to_bfloat16_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, in, out);
  SELA_CUDA_CHECK_LAUNCH("cast_float_to_bfloat16");
}

void cast_bfloat16_to_float(std::int64_t n, const std::uint16_t* in, float* out,
                            cudaStream_t stream) {
  detail::check_count("cast_bfloat16_to_float", n);
  detail::check_pointers("cast_bfloat16_to_float", n > 0, {in, out});
  if (n == 0) return;
  bfloat16_to_float_kernel<<<grid(n), kElementwiseBlock, 0, stream>>>(n, in, out);
  SELA_CUDA_CHECK_LAUNCH("cast_bfloat16_to_float");
}

#define SELA_INSTANTIATE_ELEMENTWISE(T)                                               \
  template void fill<T>(std::int64_t, T, T*, cudaStream_t);                           \
  template void add<T>(std::int64_t, const T*, const T*, T*, cudaStream_t);           \
  template void mul<T>(std::int64_t, const T*, const T*, T*, cudaStream_t);           \
  template void scale<T>(std::int64_t, T, const T*, T*, cudaStream_t);                \
  template void axpy<T>(std::int64_t, T, const T*, T*, cudaStream_t);                 \
  template void relu_forward<T>(std::int64_t, const T*, T*, cudaStream_t);            \
  template void relu_backward<T>(std::int64_t, const T*, const T*, T*, cudaStream_t); \
  template void add_row_bias<T>(std::int64_t, std::int64_t, const T*, T*, cudaStream_t);

SELA_INSTANTIATE_ELEMENTWISE(float)
SELA_INSTANTIATE_ELEMENTWISE(double)
#undef SELA_INSTANTIATE_ELEMENTWISE

template void fill<std::int32_t>(std::int64_t, std::int32_t, std::int32_t*, cudaStream_t);
template void fill<std::int64_t>(std::int64_t, std::int64_t, std::int64_t*, cudaStream_t);
template void fill<std::uint8_t>(std::int64_t, std::uint8_t, std::uint8_t*, cudaStream_t);

template void cast<float, double>(std::int64_t, const float*, double*, cudaStream_t);
template void cast<double, float>(std::int64_t, const double*, float*, cudaStream_t);
template void cast<std::int32_t, std::int64_t>(std::int64_t, const std::int32_t*, std::int64_t*,
                                               cudaStream_t);
template void cast<std::int64_t, std::int32_t>(std::int64_t, const std::int64_t*, std::int32_t*,
                                               cudaStream_t);
template void cast<std::int64_t, float>(std::int64_t, const std::int64_t*, float*, cudaStream_t);
template void cast<std::int64_t, double>(std::int64_t, const std::int64_t*, double*, cudaStream_t);
template void cast<std::int32_t, float>(std::int64_t, const std::int32_t*, float*, cudaStream_t);
template void cast<std::int32_t, double>(std::int64_t, const std::int32_t*, double*, cudaStream_t);
template void cast<std::uint8_t, float>(std::int64_t, const std::uint8_t*, float*, cudaStream_t);

}  // namespace sela::cuda
