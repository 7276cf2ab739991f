// CUDA reductions (see reduce.cuh).
//
// sum: stage 1 launches partial_count(n) blocks of kReduceBlock threads; thread t of the
// grid adds x[t], x[t + G], ... (G = grid threads) in double, each block reduces its threads
// with the fixed tree of detail::block_sum and writes one partial; stage 2 is one block that
// sums the partials the same way. The block count depends only on n (kItemsPerThread
// elements per thread, capped at kMaxPartials), so the bits do not depend on the GPU.
//
// sum_rows: a block is kColumnTile columns x kRowGroups row groups; thread (c, g) adds rows
// g, g + kRowGroups, ... of its column in double (a warp reads 32 consecutive columns of a
// row: coalesced), then the row groups are added in a fixed tree in shared memory.
//
// argmax_rows: one warp per row, each lane scans its columns in increasing order, then the
// lanes' (value, index) candidates are combined with an order that is total (first NaN,
// else largest value, else lowest index), so any combination tree gives the same answer.
#include "kernels/cuda/reduce.cuh"

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kReduceBlock = 256;
constexpr std::int64_t kItemsPerThread = 16;  // stage-1 work per thread before adding blocks
constexpr std::int64_t kMaxPartials = 2048;   // stage-1 blocks at most

constexpr int kColumnTile = 32;  // sum_rows: columns per block (one warp wide)
constexpr int kRowGroups = kReduceBlock / kColumnTile;

constexpr int kArgmaxRowsPerBlock = kReduceBlock / 32;  // one warp per row

std::int64_t partial_count(std::int64_t n) {
  std::int64_t blocks = (n + kReduceBlock * kItemsPerThread - 1) / (kReduceBlock * kItemsPerThread);
  if (blocks < 1) blocks = 1;
  return blocks < kMaxPartials ? blocks : kMaxPartials;
}

__global__ void sum_channels_kernel(std::int64_t batch, std::int64_t channels,
                                    std::int64_t spatial, const float* x, float* out) {
  const std::int64_t c = blockIdx.x;
  const std::int64_t count = batch * spatial;
  double acc = 0.0;
  for (std::int64_t i = threadIdx.x; i < count; i += kReduceBlock) {
    const std::int64_t n = i / spatial, s = i - n * spatial;
    acc += static_cast<double>(x[(n * channels + c) * spatial + s]);
  }
  const double total = detail::block_sum<kReduceBlock>(acc);
  if (threadIdx.x == 0) out[c] = static_cast<float>(total);
}

template <typename T>
__global__ void sum_partials_kernel(std::int64_t n, const T* x, double* partials) {
  double acc = 0.0;
  const std::int64_t stride = detail::grid_thread_count();
#pragma unroll 4
  for (std::int64_t i = detail::grid_thread_index(); i < n; i += stride)
    acc += static_cast<double>(x[i]);
  const double block_total = detail::block_sum<kReduceBlock>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

template <typename T>
__global__ void sum_finish_kernel(std::int64_t count, const double* partials, T* out) {
  double acc = 0.0;
  for (std::int64_t i = threadIdx.x; i < count; i += kReduceBlock) acc += partials[i];
  const double total = detail::block_sum<kReduceBlock>(acc);
  if (threadIdx.x == 0) *out = static_cast<T>(total);
}

template <typename T>
__global__ void sum_rows_kernel(std::int64_t rows, std::int64_t cols, const T* x, T* out) {
  __shared__ double partial[kRowGroups][kColumnTile + 1];  // (groups, columns), padded
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kColumnTile + threadIdx.x;
  double acc = 0.0;
  if (c < cols) {
    for (std::int64_t r = threadIdx.y; r < rows; r += kRowGroups)
      acc += static_cast<double>(x[r * cols + c]);
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  for (int width = kRowGroups / 2; width >= 1; width /= 2) {
    if (static_cast<int>(threadIdx.y) < width)
      partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + width][threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < cols) out[c] = static_cast<T>(partial[0][threadIdx.x]);
}

// A lane's argmax candidate; index -1 = none.
template <typename T>
struct Candidate {
  T value;
  std::int64_t index;
};

// The better of two candidates with different indices: the first NaN, else the larger
// value, else the lower index. A total order, so the combination order does not matter.
template <typename T>
__device__ inline Candidate<T> better(Candidate<T> a, Candidate<T> b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
  if (a_nan || b_nan) {
    if (a_nan && b_nan) return a.index < b.index ? a : b;
    return a_nan ? a : b;
  }
  if (a.value > b.value) return a;
  if (b.value > a.value) return b;
  return a.index < b.index ? a : b;
}

template <typename T>
__global__ void argmax_rows_kernel(std::int64_t rows, std::int64_t cols, const T* x,
                                   std::int64_t* out) {
  const int lane = threadIdx.x % 32;
  const std::int64_t warp =
      static_cast<std::int64_t>(blockIdx.x) * kArgmaxRowsPerBlock + threadIdx.x / 32;
  const std::int64_t warps = static_cast<std::int64_t>(gridDim.x) * kArgmaxRowsPerBlock;
  for (std::int64_t r = warp; r < rows; r += warps) {  // uniform across the warp
    const T* row = x + r * cols;                       // (cols)
    Candidate<T> best{T(0), -1};
    for (std::int64_t c = lane; c < cols; c += 32) {
      const T v = row[c];
      if (best.index < 0) {
        best = {v, c};
      } else if (best.value == best.value && (v != v || v > best.value)) {
        best = {v, c};  // later columns win only when strictly better (or the first NaN)
      }
    }
    for (int offset = 16; offset >= 1; offset /= 2) {
      Candidate<T> other;
      other.value = __shfl_xor_sync(0xffffffffu, best.value, offset);
      other.index = __shfl_xor_sync(0xffffffffu, best.index, offset);
      best = better(best, other);
    }
    if (lane == 0) out[r] = best.index;
  }
}

}  // namespace

std::int64_t sum_workspace_size(std::int64_t n) { return partial_count(n); }

template <typename T>
void sum_into(std::int64_t n, const T* x, double* workspace, T* out, cudaStream_t stream) {
  detail::check_count("sum", n);
  detail::check_pointers("sum", true, {workspace, out});
  detail::check_pointers("sum", n > 0, {x});
  const std::int64_t partials = partial_count(n);
  sum_partials_kernel<<<static_cast<unsigned>(partials), kReduceBlock, 0, stream>>>(n, x,
                                                                                    workspace);
  SELA_CUDA_CHECK_LAUNCH("sum");
  sum_finish_kernel<<<1, kReduceBlock, 0, stream>>>(partials, workspace, out);
  SELA_CUDA_CHECK_LAUNCH("sum");
}

template <typename T>
T sum(std::int64_t n, const T* x, cudaStream_t stream) {
  detail::check_count("sum", n);
  detail::check_pointers("sum", n > 0, {x});
  const std::int64_t partials = partial_count(n);
  // (partials) doubles, then the T result
  detail::StreamScratch scratch(
      static_cast<std::size_t>(partials) * sizeof(double) + sizeof(double), stream);
  double* workspace = static_cast<double*>(scratch.get());
  T* result = reinterpret_cast<T*>(workspace + partials);
  sum_into(n, x, workspace, result, stream);
  T host_result{};
  SELA_CUDA_CHECK(cudaMemcpyAsync(&host_result, result, sizeof(T), cudaMemcpyDeviceToHost, stream));
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host_result;
}

template <typename T>
void sum_rows(std::int64_t rows, std::int64_t cols, const T* x, T* out, cudaStream_t stream) {
  SELA_CHECK(rows >= 0 && cols >= 0, "sum_rows",
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
  detail::check_pointers("sum_rows", cols > 0, {out});
  detail::check_pointers("sum_rows", rows > 0 && cols > 0, {x});
  if (cols == 0) return;
  const std::int64_t tiles = (cols + kColumnTile - 1) / kColumnTile;
  SELA_CHECK(tiles <= INT32_MAX, "sum_rows", "too many columns: " << cols);
  sum_rows_kernel<<<static_cast<unsigned>(tiles), dim3(kColumnTile, kRowGroups), 0, stream>>>(
      rows, cols, x, out);
  SELA_CUDA_CHECK_LAUNCH("sum_rows");
}

template <typename T>
void argmax_rows(std::int64_t rows, std::int64_t cols, const T* x, std::int64_t* out,
                 cudaStream_t stream) {
  SELA_CHECK(rows >= 0 && cols >= 0, "argmax_rows",
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
  SELA_CHECK(rows == 0 || cols > 0, "argmax_rows",
             "a row of " << rows << " x 0 has no largest element");
  detail::check_pointers("argmax_rows", rows > 0, {x, out});
  if (rows == 0) return;
  const unsigned blocks = detail::grid_for(rows, kArgmaxRowsPerBlock);
  argmax_rows_kernel<<<blocks, kReduceBlock, 0, stream>>>(rows, cols, x, out);
  SELA_CUDA_CHECK_LAUNCH("argmax_rows");
}

template float sum<float>(std::int64_t, const float*, cudaStream_t);
template double sum<double>(std::int64_t, const double*, cudaStream_t);
template void sum_into<float>(std::int64_t, const float*, double*, float*, cudaStream_t);
template void sum_into<double>(std::int64_t, const double*, double*, double*, cudaStream_t);
template void sum_rows<float>(std::int64_t, std::int64_t, const float*, float*, cudaStream_t);
template void sum_rows<double>(std::int64_t, std::int64_t, const double*, double*, cudaStream_t);
template void argmax_rows<float>(std::int64_t, std::int64_t, const float*, std::int64_t*,
                                 cudaStream_t);
template void argmax_rows<double>(std::int64_t, std::int64_t, const double*, std::int64_t*,
                                  cudaStream_t);

void sum_channels(std::int64_t batch, std::int64_t channels, std::int64_t spatial, const float* x,
                  float* out, cudaStream_t stream) {
  SELA_CHECK(batch >= 0 && channels >= 0 && spatial >= 0, "sum_channels",
             "sizes must be >= 0, got (" << batch << ", " << channels << ", " << spatial << ")");
  detail::check_pointers("sum_channels", channels > 0, {out});
  detail::check_pointers("sum_channels", batch * channels * spatial > 0, {x});
  if (channels == 0) return;
  SELA_CHECK(channels <= 2147483647, "sum_channels", "too many channels: " << channels);
  sum_channels_kernel<<<static_cast<unsigned>(channels), kReduceBlock, 0, stream>>>(
      batch, channels, spatial, x, out);
  SELA_CUDA_CHECK_LAUNCH("sum_channels");
}

}  // namespace sela::cuda
