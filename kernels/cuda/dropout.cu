// Dropout on CUDA (see dropout.cuh; the generator is defined in kernels/cpu/dropout.h).
//
// The forward kernel works per Philox block: thread b computes the four words of block
// (offset / 4) + b once — one generator call per four elements — and applies them to the
// elements whose counters fall in that block and inside [offset, offset + n). The 32x32
// multiplies use __umulhi for the high word. The keep threshold is the CPU kernel's:
// ceil(p * 2^24) compared with the top 24 bits of the word.
#include "kernels/cuda/dropout.cuh"

#include <cmath>

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kDropoutBlock = 256;

// Philox-4x32 constants (Salmon et al. 2011), as in kernels/cpu/dropout.cpp.
constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr std::uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr std::uint32_t kPhiloxW1 = 0xBB67AE85u;

// Philox4x32-10 of counter (block lo, block hi, 0, 0) under key (seed lo, seed hi).
__device__ inline uint4 philox_block(std::uint64_t block, std::uint64_t seed) {
  std::uint32_t c0 = static_cast<std::uint32_t>(block),
                c1 = static_cast<std::uint32_t>(block >> 32);
  std::uint32_t c2 = 0u, c3 = 0u;
  std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const std::uint32_t hi0 = __umulhi(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const std::uint32_t hi1 = __umulhi(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
    const std::uint32_t next0 = hi1 ^ c1 ^ k0;
    const std::uint32_t next2 = hi0 ^ c3 ^ k1;
    c0 = next0;
    c1 = lo1;
    c2 = next2;
    c3 = lo0;
  }
  return make_uint4(c0, c1, c2, c3);
}

template <typename T>
__global__ void dropout_forward_kernel(std::int64_t n, const T* x, std::uint32_t threshold,
                                       T keep_scale, std::uint64_t seed, std::uint64_t offset,
                                       const std::int64_t* device_offset, std::uint64_t blocks,
                                       T* y, std::uint8_t* mask) {
  if (device_offset != nullptr) offset = static_cast<std::uint64_t>(*device_offset);
  const std::uint64_t first_block = offset >> 2;
  const std::uint64_t stride = static_cast<std::uint64_t>(detail::grid_thread_count());
  for (std::uint64_t b = static_cast<std::uint64_t>(detail::grid_thread_index()); b < blocks;
       b += stride) {
    const std::uint64_t block = first_block + b;
    const uint4 words = philox_block(block, seed);
    const std::uint32_t lane_words[4] = {words.x, words.y, words.z, words.w};
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const std::uint64_t counter = block * 4 + lane;
      if (counter < offset) continue;
      const std::uint64_t i = counter - offset;
      if (i >= static_cast<std::uint64_t>(n)) continue;
      const bool keep = (lane_words[lane] >> 8) >= threshold;
      const T scaled = x[i] * keep_scale;
      mask[i] = keep ? 1 : 0;
      y[i] = keep ? scaled : T(0);
    }
  }
}

template <typename T>
__global__ void dropout_backward_kernel(std::int64_t n, const T* grad_y, const std::uint8_t* mask,
                                        T keep_scale, T* grad_x) {
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count()) {
    const T scaled = grad_y[i] * keep_scale;
    grad_x[i] = mask[i] != 0 ? scaled : T(0);
  }
}

template <typename T>
void check_probability(const char* op, T p) {
  SELA_CHECK(p >= T(0) && p < T(1), op, "probability p must be in [0, 1), got " << p);
}

}  // namespace

template <typename T>
void dropout_forward(std::int64_t n, const T* x, T p, std::uint64_t seed, std::uint64_t offset,
                     T* y, std::uint8_t* mask, cudaStream_t stream) {
  dropout_forward(n, x, p, seed, offset, nullptr, y, mask, stream);
}

template <typename T>
void dropout_forward(std::int64_t n, const T* x, T p, std::uint64_t seed, std::uint64_t offset,
                     const std::int64_t* device_offset, T* y, std::uint8_t* mask,
                     cudaStream_t stream) {
  const char* op = "dropout_forward";
  detail::check_count(op, n);
  check_probability(op, p);
  SELA_CHECK(n == 0 || offset <= UINT64_MAX - static_cast<std::uint64_t>(n - 1), op,
             "counter range offset " << offset << " + " << n << " elements passes 2^64");
  detail::check_pointers(op, n > 0, {x, y, mask});
  if (n == 0) return;
  const std::uint32_t threshold =
      static_cast<std::uint32_t>(std::ceil(static_cast<double>(p) * 16777216.0));
  const T keep_scale = T(1) / (T(1) - p);
  const std::uint64_t first_block = offset >> 2;
  const std::uint64_t last_block = (offset + static_cast<std::uint64_t>(n - 1)) >> 2;
  const std::uint64_t blocks = last_block - first_block + 1;
  dropout_forward_kernel<<<detail::grid_for(static_cast<std::int64_t>(blocks), kDropoutBlock),
                           kDropoutBlock, 0, stream>>>(n, x, threshold, keep_scale, seed, offset,
                                                       device_offset, blocks, y, mask);
  SELA_CUDA_CHECK_LAUNCH(op);
}

template <typename T>
void dropout_backward(std::int64_t n, const T* grad_y, const std::uint8_t* mask, T p, T* grad_x,
                      cudaStream_t stream) {
  const char* op = "dropout_backward";
  detail::check_count(op, n);
  check_probability(op, p);
  detail::check_pointers(op, n > 0, {grad_y, mask, grad_x});
  if (n == 0) return;
  const T keep_scale = T(1) / (T(1) - p);
  dropout_backward_kernel<<<detail::grid_for(n, kDropoutBlock), kDropoutBlock, 0, stream>>>(
      n, grad_y, mask, keep_scale, grad_x);
  SELA_CUDA_CHECK_LAUNCH(op);
}

template void dropout_forward<float>(std::int64_t, const float*, float, std::uint64_t,
                                     std::uint64_t, float*, std::uint8_t*, cudaStream_t);
template void dropout_forward<double>(std::int64_t, const double*, double, std::uint64_t,
                                      std::uint64_t, double*, std::uint8_t*, cudaStream_t);
template void dropout_forward<float>(std::int64_t, const float*, float, std::uint64_t,
                                     std::uint64_t, const std::int64_t*, float*, std::uint8_t*,
                                     cudaStream_t);
template void dropout_forward<double>(std::int64_t, const double*, double, std::uint64_t,
                                      std::uint64_t, const std::int64_t*, double*, std::uint8_t*,
                                      cudaStream_t);
template void dropout_backward<float>(std::int64_t, const float*, const std::uint8_t*, float,
                                      float*, cudaStream_t);
template void dropout_backward<double>(std::int64_t, const double*, const std::uint8_t*, double,
                                       double*, cudaStream_t);

}  // namespace sela::cuda
