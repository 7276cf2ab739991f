// Pieces every kernel family shares: grid sizing, grid-stride indices, deterministic
// block-wide reductions, argument checks, and stream-ordered scratch for the few host-facing
// calls that return a value. DEVICE CODE: include only from .cu files.
//
// Determinism: block_reduce combines one value per thread in a fixed tree (shuffles inside a
// warp, then the warps' results in warp order), so a sum depends only on the block size and
// on which values each thread accumulated — never on scheduling. No kernel here uses float
// atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"

namespace sela::cuda::detail {

// Upper bound on the blocks of a grid-stride launch: 2^16 blocks of 256 threads are 16.7M
// threads, more than any current GPU holds at once; results never depend on the grid.
constexpr std::int64_t kMaxGridBlocks = 1 << 16;

// Blocks for a grid-stride loop over `items` with `block` threads (at least 1).
inline unsigned grid_for(std::int64_t items, int block) {
  std::int64_t blocks = (items + block - 1) / block;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxGridBlocks) blocks = kMaxGridBlocks;
  return static_cast<unsigned>(blocks);
}

__device__ inline std::int64_t grid_thread_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_thread_count() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

// --- argument checks (host) ----------------------------------------------------------------
inline void check_count(const char* op, std::int64_t n) {
  SELA_CHECK(n >= 0, op, "element count must be >= 0, got " << n);
}

// Every pointer must be non-null when there is work (a null device pointer would only show
// up later as an asynchronous illegal-address error).
inline void check_pointers(const char* op, bool has_work, std::initializer_list<const void*> ptrs) {
  if (!has_work) return;
  int position = 0;
  for (const void* p : ptrs) {
    SELA_CHECK(p != nullptr, op, "pointer argument " << position << " is null");
    ++position;
  }
}

// --- block reductions (device) --------------------------------------------------------------
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

// The larger of two values; NaN never wins (as the CPU kernels' `x > m ? x : m` scans).
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return b > a ? b : a;
  }
};

template <typename T, typename Op>
__device__ inline T warp_reduce(T value, Op op) {
  for (int offset = 16; offset >= 1; offset /= 2)
    value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  return value;  // meaningful in lane 0
}

// Reduces one value per thread of a block of kBlock threads (1-, 2- or 3-D, linear thread
// id = x + y * dim.x + ...) with `op`; every thread gets the result. `identity` pads the
// second stage. All threads of the block must call it (it synchronises).
template <int kBlock, typename T, typename Op>
__device__ inline T block_reduce(T value, Op op, T identity) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "block size must be a multiple of 32, <= 1024");
  constexpr int kWarps = kBlock / 32;
  __shared__ T warp_results[kWarps];
  __shared__ T result;
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int lane = thread % 32, warp = thread / 32;
  value = warp_reduce(value, op);
  __syncthreads();  // a previous call's readers of `result` are done
  if (lane == 0) warp_results[warp] = value;
  __syncthreads();
  if (warp == 0) {
    T partial = lane < kWarps ? warp_results[lane] : identity;
    partial = warp_reduce(partial, op);
    if (lane == 0) result = partial;
  }
  __syncthreads();
  return result;
}

template <int kBlock>
__device__ inline double block_sum(double value) {
  return block_reduce<kBlock>(value, SumOp{}, 0.0);
}

// --- stream-ordered scratch (host) ----------------------------------------------------------
// A temporary device allocation for a call that has to synchronise anyway (it returns a
// value to the host): cudaMallocAsync on the stream, freed on the stream when destroyed.
// Hot paths take caller-provided buffers instead.
class StreamScratch {
 public:
  StreamScratch(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    SELA_CUDA_CHECK(cudaMallocAsync(&memory_, bytes, stream));
  }
  ~StreamScratch() {
    if (memory_ != nullptr) SELA_CUDA_WARN(cudaFreeAsync(memory_, stream_));
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  void* get() const { return memory_; }

 private:
  void* memory_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace sela::cuda::detail
