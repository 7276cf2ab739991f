// CUDA kernels of the SeLa label assignment (see sinkhorn_cuda.cuh for what each computes).
//
// Schedules, and why:
//  * Row kernels (pass and labels). A row of A is `vectors` 16-byte vectors (8 values of a
//    16-bit storage, 4 of f32). The fused kernel gives each thread of a block `kSlots` fixed
//    vector slots of every row (slot s of thread t is vector s·T + t: a warp reads 512
//    contiguous bytes), so each thread also keeps its r values and its columns' double
//    accumulators in registers for the whole pass. The block walks over steps of kRows
//    consecutive rows (steps blockIdx.x, + gridDim.x, ...), loading the next step's rows
//    while it reduces the current one. Per step: every thread makes its part of each row's
//    dot (float FMAs in slot/column order), the warps reduce them by a butterfly, warp
//    results go through shared memory, thread j < kRows adds them in warp order and turns
//    row j's dot into c (double) and its weight, and after a barrier every thread adds
//    Σ_j A_ij w_j (float, j in order) into its double column accumulators. The grid is
//    the persistent one (multiprocessors × resident blocks), each block writes one row of
//    column partials and one set of block totals, and finish_kernel adds the partials in
//    block order. Reads of A per pass: exactly one; other traffic: c (16 bytes per row)
//    and blocks × stride doubles of partials (written and read once).
//    Configurations (vectors per row Q): Q ≤ 512 → 1 slot, 8 rows per step, T = Q rounded
//    up to a warp (≤ 512 threads); Q ≤ 768 → 2 slots, 4 rows, T ≤ 384; wider rows → the
//    wide kernel (one row per block step, slots in a loop, no registers held across the
//    barrier): it writes row weights, and column_sums_kernel makes the column sums from
//    them, so such rows are read twice per pass.
//  * Determinism: every sum is made in an order fixed by (n, k, grid); the grid depends on
//    the GPU's multiprocessor count and on the kernels' occupancy, both fixed for a given
//    card and binary. No float atomics (only an integer atomicMin for the first bad row).
//  * Control kernels: one block of kControlThreads, loops over K, block reductions in a
//    fixed tree (kernels/cuda/kernel_common.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/kernel_common.cuh"
#include "sela/assign/sinkhorn_cuda.cuh"

namespace sela::assign::cuda {
namespace {

namespace detail = sela::cuda::detail;

constexpr float kExpUnderflow = -87.33654f;  // log(FLT_MIN), as in sinkhorn_cpu.cpp
constexpr int kStoreThreads = 256;           // store kernels: 8 warps, one row per warp
constexpr int kControlThreads = 512;         // control kernels: one block
constexpr int kMaxRowWarps = 16;             // row kernels: at most 512 threads
constexpr int kSumTileSlots = 32;            // column sums: 32 vector slots x 8 row lanes
constexpr int kSumRowLanes = 8;
constexpr int kElementwiseThreads = 256;

// ---- storage types on the device --------------------------------------------------------

template <typename Store>
struct StoreTraits;

template <>
struct StoreTraits<float> {
  static constexpr int kPerVector = 4;
  __device__ static void unpack(const uint4& raw, float* out) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  }
  __device__ static float convert(float value) { return value; }
};

__device__ __forceinline__ void unpack_bf16_pair(unsigned int word, float* out) {
  out[0] = __uint_as_float(word << 16);          // element 2q: the low half of the word
  out[1] = __uint_as_float(word & 0xFFFF0000u);  // element 2q + 1
}

template <>
struct StoreTraits<BFloat16> {
  static constexpr int kPerVector = 8;
  __device__ static void unpack(const uint4& raw, float* out) {
    unpack_bf16_pair(raw.x, out);
    unpack_bf16_pair(raw.y, out + 2);
    unpack_bf16_pair(raw.z, out + 4);
    unpack_bf16_pair(raw.w, out + 6);
  }
  __device__ static BFloat16 convert(float value) {  // round to nearest even, as the CPU
    return BFloat16{__bfloat16_as_ushort(__float2bfloat16_rn(value))};
  }
};

__device__ __forceinline__ void unpack_half_pair(unsigned int word, float* out) {
  out[0] = __half2float(__ushort_as_half(static_cast<unsigned short>(word & 0xFFFFu)));
  out[1] = __half2float(__ushort_as_half(static_cast<unsigned short>(word >> 16)));
}

template <>
struct StoreTraits<Half> {
  static constexpr int kPerVector = 8;
  __device__ static void unpack(const uint4& raw, float* out) {
    unpack_half_pair(raw.x, out);
    unpack_half_pair(raw.y, out + 2);
    unpack_half_pair(raw.z, out + 4);
    unpack_half_pair(raw.w, out + 6);
  }
  __device__ static Half convert(float value) {  // round to nearest even, subnormals kept
    return Half{__half_as_ushort(__float2half_rn(value))};
  }
};

// ---- small device helpers ----------------------------------------------------------------

// e^v for v <= 0 exactly as sinkhorn_cpu.cpp's exp16_nonpositive: v = n ln2 + f with n the
// nearest integer to v log2(e), ln2 split in two constants, a degree-7 Taylor polynomial
// for e^f, then scaled by 2^n; 0 below float32's normal range.
__device__ __forceinline__ float exp_nonpositive(float v) {
  const float clamped = fmaxf(v, kExpUnderflow - 1.0f);  // keeps n a small integer
  const float n = rintf(clamped * 1.44269504088896341f);
  float f = fmaf(-n, 0.693359375f, clamped);
  f = fmaf(-n, -2.12194440e-4f, f);
  float p = 1.0f / 5040.0f;
  p = fmaf(p, f, 1.0f / 720.0f);
  p = fmaf(p, f, 1.0f / 120.0f);
  p = fmaf(p, f, 1.0f / 24.0f);
  p = fmaf(p, f, 1.0f / 6.0f);
  p = fmaf(p, f, 0.5f);
  p = fmaf(p, f, 1.0f);
  p = fmaf(p, f, 1.0f);
  return v >= kExpUnderflow ? ldexpf(p, static_cast<int>(n)) : 0.0f;
}

template <typename T>
__device__ __forceinline__ T warp_sum_all(T value) {  // every lane gets the sum
  for (int offset = 16; offset >= 1; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ double warp_max_all(double value) {
  for (int offset = 16; offset >= 1; offset /= 2)
    value = fmax(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

__device__ __forceinline__ float warp_max_all(float value) {
  for (int offset = 16; offset >= 1; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// The better of two argmax candidates: larger value, then lower column. Columns differ
// between candidates, so this is a total order and any combination tree gives one answer.
__device__ __forceinline__ void better_candidate(float& value, int& at, float other_value,
                                                 int other_at) {
  if (other_value > value || (other_value == value && other_at < at)) {
    value = other_value;
    at = other_at;
  }
}

__device__ __forceinline__ void warp_best_all(float& value, int& at) {
  for (int offset = 16; offset >= 1; offset /= 2) {
    const float other_value = __shfl_xor_sync(0xffffffffu, value, offset);
    const int other_at = __shfl_xor_sync(0xffffffffu, at, offset);
    better_candidate(value, at, other_value, other_at);
  }
}

// sinkhorn_relaxation_factor (sinkhorn_cpu.cpp) in device code.
__device__ double relaxation_factor(double x, double y, double omega) {
  const double delta = x / y - 1.0;
  if (fabs(delta) < 1e-2) {  // the same fused multiply-adds, in the same Estrin arrangement
    const double d2 = delta * delta, d4 = d2 * d2;
    const double log_poly =
        fma(fma(1.0 / 7, d2, fma(-1.0 / 6, delta, 1.0 / 5)), d4,
            fma(fma(-1.0 / 4, delta, 1.0 / 3), d2, fma(-1.0 / 2, delta, 1.0)));
    const double u = (1.0 - omega) * (delta * log_poly);
    const double u2 = u * u, u4 = u2 * u2;
    return fma(fma(1.0 / 720, u2, fma(1.0 / 120, u, 1.0 / 24)), u4,
               fma(fma(1.0 / 6, u, 1.0 / 2), u2, fma(1.0, u, 1.0)));
  }
  return pow(x / y, 1.0 - omega);
}

__device__ __forceinline__ bool stopped(const int* run_status) {
  return run_status != nullptr && *run_status != kSinkhornRunning;
}

// ---- store -------------------------------------------------------------------------------

template <typename Store>
__global__ void store_rows_kernel(const float* logits, long long rows, long long k, float lambda,
                                  Store* a, long long stride, float* row_log_mass,
                                  long long row_offset, unsigned long long* first_bad, float scale,
                                  float floor_value) {
  using Traits = StoreTraits<Store>;
  const int lane = threadIdx.x % 32;
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < rows;
       row += warps) {
    const float* z = logits + row * k;  // (k)
    float row_max = -INFINITY;
    bool finite = true;
    for (long long j = lane; j < k; j += 32) {
      const float x = z[j];
      finite = finite && isfinite(x);
      row_max = fmaxf(row_max, x);
    }
    finite = __all_sync(0xffffffffu, finite);
    if (!finite) {
      if (lane == 0) atomicMin(first_bad, static_cast<unsigned long long>(row_offset + row));
      continue;
    }
    row_max = warp_max_all(row_max);
    if (row_log_mass != nullptr) {
      float mass = 0.0f;
      for (long long j = lane; j < k; j += 32) mass += exp_nonpositive(z[j] - row_max);
      mass = warp_sum_all(mass);
      if (lane == 0) row_log_mass[row] = logf(mass);
    }
    Store* out = a + row * stride;  // (stride)
    for (long long j = lane; j < stride; j += 32) {
      const float value =
          j < k ? fmaxf(exp_nonpositive((z[j] - row_max) * lambda) * scale, floor_value) : 0.0f;
      out[j] = Traits::convert(value);
    }
  }
}

template <typename Store>
__global__ void store_rows_absorbed_kernel(const float* logits, long long rows, long long k,
                                           float lambda, const float* column_log_scale, Store* a,
                                           long long stride, double* row_shift, float scale,
                                           float floor_value) {
  using Traits = StoreTraits<Store>;
  const int lane = threadIdx.x % 32;
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < rows;
       row += warps) {
    const float* z = logits + row * k;  // (k)
    float row_max = -INFINITY;
    for (long long j = lane; j < k; j += 32) row_max = fmaxf(row_max, z[j]);
    row_max = warp_max_all(row_max);
    float shift = -INFINITY;
    for (long long j = lane; j < k; j += 32)
      shift = fmaxf(shift, fmaf(z[j] - row_max, lambda, column_log_scale[j]));
    shift = warp_max_all(shift);
    Store* out = a + row * stride;  // (stride)
    for (long long j = lane; j < stride; j += 32) {
      float value = 0.0f;
      if (j < k) {
        const float v = fmaf(z[j] - row_max, lambda, column_log_scale[j]);
        value = fmaxf(exp_nonpositive(v - shift) * scale, floor_value);
      }
      out[j] = Traits::convert(value);
    }
    if (lane == 0) row_shift[row] = static_cast<double>(shift);
  }
}

// ---- row kernels ---------------------------------------------------------------------------

template <typename Store>
struct RowArgs {
  const Store* a = nullptr;
  long long n = 0, k = 0, vectors = 0;  // vectors: 16-byte vectors per row
  long long n_total = 1;
  long long steps = 0;              // ceil(n / rows per step)
  const float* r_rel = nullptr;     // (stride)
  const double* r_scale = nullptr;  // device scalar
  const double* omega = nullptr;    // device scalar (pass)
  double* c = nullptr;              // (n)
  bool measure = false;
  const int* run_status = nullptr;
  // pass outputs: per block
  double* column_partials = nullptr;  // (blocks, stride), fused kernel
  double* block_change = nullptr;
  double* block_c_max = nullptr;
  long long* block_bad = nullptr;
  double* row_weights = nullptr;  // (n), wide kernel
  // labels outputs
  long long* labels = nullptr;  // (n)
  double* block_row_error = nullptr;
  double* block_floor = nullptr;
  float floor_value = 0.0f;
};

// What the thread that finishes rows accumulates over the block's rows.
struct RowStats {
  double change = 0.0, c_max = 0.0, row_error = 0.0, floor_share = 0.0;
  long long bad = 0;
};

// The pass's per-row step (sinkhorn_pass's weight_of): the new c of `row` from its dot with
// r_rel, the change, and the weight of the row in the column sums (c_new · N · r_scale, or
// the over-relaxed one).
__device__ __forceinline__ float finish_pass_row(double* c, long long row, double c_old, float dot,
                                                 double inv_n_rscale, double omega, bool measure,
                                                 RowStats& stats) {
  if (!(dot > 0.0f) || !isfinite(dot)) {
    ++stats.bad;
    c[row] = 0.0;
    return 0.0f;
  }
  const double c_new = inv_n_rscale / static_cast<double>(dot);
  if (measure) stats.change += fabs(c_old / c_new - 1.0);
  if (omega == 1.0) {
    c[row] = c_new;
    stats.c_max = fmax(stats.c_max, c_new);
    return 1.0f / dot;
  }
  const double factor = c_old > 0.0 ? relaxation_factor(c_old, c_new, omega) : 1.0;
  const double relaxed = c_new * factor;
  c[row] = relaxed;
  stats.c_max = fmax(stats.c_max, relaxed);
  return static_cast<float>(factor / static_cast<double>(dot));
}

__device__ __forceinline__ void finish_label_row(long long* labels, double c, long long row,
                                                 float dot, float floor_dot, int best_at,
                                                 double row_factor, RowStats& stats) {
  labels[row] = best_at;
  if (floor_dot > 0.0f)
    stats.floor_share = fmax(stats.floor_share, static_cast<double>(floor_dot) / dot);
  stats.row_error = fmax(stats.row_error, fabs(row_factor * c * static_cast<double>(dot) - 1.0));
}

// Block totals: the stats live in the threads that finish rows (all in warp 0).
template <bool kLabels, typename Store>
__device__ void write_block_totals(const RowArgs<Store>& args, RowStats stats) {
  if (threadIdx.x >= 32) return;
  if (kLabels) {
    const double row_error = warp_max_all(stats.row_error);
    const double floor_share = warp_max_all(stats.floor_share);
    if (threadIdx.x == 0) {
      args.block_row_error[blockIdx.x] = row_error;
      args.block_floor[blockIdx.x] = floor_share;
    }
  } else {
    const double change = warp_sum_all(stats.change);
    const double c_max = warp_max_all(stats.c_max);
    const long long bad = warp_sum_all(stats.bad);
    if (threadIdx.x == 0) {
      args.block_change[blockIdx.x] = change;
      args.block_c_max[blockIdx.x] = c_max;
      args.block_bad[blockIdx.x] = bad;
    }
  }
}

template <int kSlots>
struct RowLaunchBound {
  static constexpr int value = kSlots == 1 ? 512 : (kSlots == 2 ? 384 : 256);
};

template <typename Store, int kSlots, int kRows, bool kLabels>
__global__ void __launch_bounds__(RowLaunchBound<kSlots>::value)
    fused_rows_kernel(const RowArgs<Store> args) {
  if (stopped(args.run_status)) return;
  using Traits = StoreTraits<Store>;
  constexpr int E = Traits::kPerVector;
  constexpr int kLabelWarps = kLabels ? kMaxRowWarps : 1;
  __shared__ float warp_dot[2][kMaxRowWarps][kRows];
  __shared__ float warp_floor[2][kLabelWarps][kRows];
  __shared__ float warp_best[2][kLabelWarps][kRows];
  __shared__ int warp_best_at[2][kLabelWarps][kRows];
  __shared__ float row_weight[2][kRows];

  const int threads = blockDim.x, thread = threadIdx.x, lane = thread % 32, warp = thread / 32;
  const int warps = threads / 32;
  const long long vectors = args.vectors;
  const uint4* a_vectors = reinterpret_cast<const uint4*>(args.a);
  const double r_scale = *args.r_scale;
  const double inv_n_rscale = 1.0 / (static_cast<double>(args.n_total) * r_scale);
  const double row_factor = static_cast<double>(args.n_total) * r_scale;
  const double omega = kLabels ? 1.0 : *args.omega;

  float r[kSlots][E];  // this thread's columns of r_rel
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const long long q = static_cast<long long>(s) * threads + thread;
#pragma unroll
    for (int e = 0; e < E; e += 4) {
      float4 four = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (q < vectors) four = *reinterpret_cast<const float4*>(args.r_rel + q * E + e);
      r[s][e] = four.x;
      r[s][e + 1] = four.y;
      r[s][e + 2] = four.z;
      r[s][e + 3] = four.w;
    }
  }
  double column[kLabels ? 1 : kSlots][E];  // this thread's columns of the block's partial
#pragma unroll
  for (int s = 0; s < (kLabels ? 1 : kSlots); ++s)
#pragma unroll
    for (int e = 0; e < E; ++e) column[s][e] = 0.0;
  RowStats stats;

  // The rows of a step (and, in thread j < kRows, c of row j: read between the barriers,
  // it would put a memory latency on every step's critical path).
  uint4 current[kRows][kSlots], upcoming[kRows][kSlots];
  double c_current = 0.0, c_upcoming = 0.0;
  auto load_step = [&](long long step, uint4(&out)[kRows][kSlots], double& c_out) {
    if (thread < kRows && step * kRows + thread < args.n) c_out = args.c[step * kRows + thread];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const long long row = step * kRows + j;
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const long long q = static_cast<long long>(s) * threads + thread;
        out[j][s] = (row < args.n && q < vectors) ? __ldg(a_vectors + row * vectors + q)
                                                  : make_uint4(0u, 0u, 0u, 0u);
      }
    }
  };

  const long long steps = args.steps;
  long long step = blockIdx.x;
  if (step < steps) load_step(step, current, c_current);
  int parity = 0;
  for (; step < steps; step += gridDim.x) {
    const long long next = step + gridDim.x;
    if (next < steps) load_step(next, upcoming, c_upcoming);  // in flight during this step

    // Sweep 1: this thread's part of each row's dot with r (and, for labels, its best
    // column and the part on floored entries), then the warp's.
    float dot[kRows], floor_dot[kRows], best[kRows];
    int best_at[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      dot[j] = 0.0f;
      floor_dot[j] = 0.0f;
      best[j] = -1.0f;
      best_at[j] = INT_MAX;
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        float x[E];
        Traits::unpack(current[j][s], x);
        const long long first_column = (static_cast<long long>(s) * threads + thread) * E;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dot[j] = fmaf(x[e], r[s][e], dot[j]);
          if (kLabels) {
            const float v = x[e] * r[s][e];
            if (x[e] <= args.floor_value) floor_dot[j] += v;
            if (first_column + e < args.k && v > best[j]) {
              best[j] = v;
              best_at[j] = static_cast<int>(first_column + e);
            }
          }
        }
      }
      dot[j] = warp_sum_all(dot[j]);
      if (kLabels) {
        floor_dot[j] = warp_sum_all(floor_dot[j]);
        warp_best_all(best[j], best_at[j]);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        warp_dot[parity][warp][j] = dot[j];
        if (kLabels) {
          warp_floor[parity][warp][j] = floor_dot[j];
          warp_best[parity][warp][j] = best[j];
          warp_best_at[parity][warp][j] = best_at[j];
        }
      }
    }
    __syncthreads();

    // Thread j finishes row j of the step: warps added in warp order.
    if (thread < kRows) {
      const int j = thread;
      const long long row = step * kRows + j;
      float total = 0.0f;
      for (int w = 0; w < warps; ++w) total += warp_dot[parity][w][j];
      if (kLabels) {
        float floor_total = 0.0f, top = -1.0f;
        int top_at = INT_MAX;
        for (int w = 0; w < warps; ++w) {
          floor_total += warp_floor[parity][w][j];
          better_candidate(top, top_at, warp_best[parity][w][j], warp_best_at[parity][w][j]);
        }
        if (row < args.n)
          finish_label_row(args.labels, c_current, row, total, floor_total, top_at, row_factor,
                           stats);
      } else {
        float weight = 0.0f;
        if (row < args.n)
          weight = finish_pass_row(args.c, row, c_current, total, inv_n_rscale, omega, args.measure,
                                   stats);
        row_weight[parity][j] = weight;
      }
    }

    if (!kLabels) {
      __syncthreads();
      float weight[kRows];
#pragma unroll
      for (int j = 0; j < kRows; ++j) weight[j] = row_weight[parity][j];
        // Sweep 2: Σ_j A_ij w_j over the step's rows in float, j in order, into double.
#pragma unroll
      for (int s = 0; s < (kLabels ? 1 : kSlots); ++s) {
        float step_sum[E];
#pragma unroll
        for (int e = 0; e < E; ++e) step_sum[e] = 0.0f;
#pragma unroll
        for (int j = 0; j < kRows; ++j) {
          float x[E];
          Traits::unpack(current[j][s], x);
#pragma unroll
          for (int e = 0; e < E; ++e) step_sum[e] = fmaf(x[e], weight[j], step_sum[e]);
        }
#pragma unroll
        for (int e = 0; e < E; ++e) column[s][e] += static_cast<double>(step_sum[e]);
      }
    }
    parity ^= 1;
#pragma unroll
    for (int j = 0; j < kRows; ++j)
#pragma unroll
      for (int s = 0; s < kSlots; ++s) current[j][s] = upcoming[j][s];
    c_current = c_upcoming;
  }

  if (!kLabels) {
    double* partial = args.column_partials + static_cast<long long>(blockIdx.x) * vectors * E;
#pragma unroll
    for (int s = 0; s < (kLabels ? 1 : kSlots); ++s) {
      const long long q = static_cast<long long>(s) * threads + thread;
      if (q < vectors) {
#pragma unroll
        for (int e = 0; e < E; ++e) partial[q * E + e] = column[s][e];
      }
    }
  }
  write_block_totals<kLabels>(args, stats);
}

// Rows too wide for the fused kernel: one row per block step, the row's vectors in a loop.
// The pass writes each row's weight; the column sums are column_sums_kernel's job.
template <typename Store, bool kLabels>
__global__ void __launch_bounds__(256) wide_rows_kernel(const RowArgs<Store> args) {
  if (stopped(args.run_status)) return;
  using Traits = StoreTraits<Store>;
  constexpr int E = Traits::kPerVector;
  __shared__ float warp_dot[2][8];
  __shared__ float warp_floor[2][8];
  __shared__ float warp_best[2][8];
  __shared__ int warp_best_at[2][8];
  const int threads = blockDim.x, thread = threadIdx.x, lane = thread % 32, warp = thread / 32;
  const int warps = threads / 32;
  const long long vectors = args.vectors;
  const uint4* a_vectors = reinterpret_cast<const uint4*>(args.a);
  const double r_scale = *args.r_scale;
  const double inv_n_rscale = 1.0 / (static_cast<double>(args.n_total) * r_scale);
  const double row_factor = static_cast<double>(args.n_total) * r_scale;
  const double omega = kLabels ? 1.0 : *args.omega;
  RowStats stats;
  int parity = 0;
  for (long long row = blockIdx.x; row < args.n; row += gridDim.x) {
    const double c_row = thread == 0 ? args.c[row] : 0.0;  // arrives during the dot
    float dot = 0.0f, floor_dot = 0.0f, best = -1.0f;
    int best_at = INT_MAX;
    for (long long q = thread; q < vectors; q += threads) {
      float x[E], rv[E];
      Traits::unpack(__ldg(a_vectors + row * vectors + q), x);
#pragma unroll
      for (int e = 0; e < E; e += 4) {
        const float4 four = *reinterpret_cast<const float4*>(args.r_rel + q * E + e);
        rv[e] = four.x;
        rv[e + 1] = four.y;
        rv[e + 2] = four.z;
        rv[e + 3] = four.w;
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        dot = fmaf(x[e], rv[e], dot);
        if (kLabels) {
          const float v = x[e] * rv[e];
          if (x[e] <= args.floor_value) floor_dot += v;
          if (q * E + e < args.k && v > best) {
            best = v;
            best_at = static_cast<int>(q * E + e);
          }
        }
      }
    }
    dot = warp_sum_all(dot);
    if (kLabels) {
      floor_dot = warp_sum_all(floor_dot);
      warp_best_all(best, best_at);
    }
    if (lane == 0) {
      warp_dot[parity][warp] = dot;
      if (kLabels) {
        warp_floor[parity][warp] = floor_dot;
        warp_best[parity][warp] = best;
        warp_best_at[parity][warp] = best_at;
      }
    }
    __syncthreads();
    if (thread == 0) {
      float total = 0.0f;
      for (int w = 0; w < warps; ++w) total += warp_dot[parity][w];
      if (kLabels) {
        float floor_total = 0.0f, top = -1.0f;
        int top_at = INT_MAX;
        for (int w = 0; w < warps; ++w) {
          floor_total += warp_floor[parity][w];
          better_candidate(top, top_at, warp_best[parity][w], warp_best_at[parity][w]);
        }
        finish_label_row(args.labels, c_row, row, total, floor_total, top_at, row_factor, stats);
      } else {
        const float weight =
            finish_pass_row(args.c, row, c_row, total, inv_n_rscale, omega, args.measure, stats);
        args.row_weights[row] = static_cast<double>(weight);
      }
    }
    parity ^= 1;  // the next writes of this buffer come after the next barrier
  }
  write_block_totals<kLabels>(args, stats);
}

// ---- column sums and the finish -------------------------------------------------------------

// Block (32 vector slots, 8 row lanes) over rows [chunk · rows_per_chunk, ...): lane y adds
// rows y, y + 8, ... of its slot's E columns in double, then the 8 lanes are added in a
// fixed tree and the chunk's partial is written.
template <typename Store>
__global__ void __launch_bounds__(kSumTileSlots* kSumRowLanes)
    column_sums_kernel(const Store* a, long long n, long long vectors, const double* row_weights,
                       long long rows_per_chunk, double* partials, const int* run_status) {
  if (stopped(run_status)) return;
  using Traits = StoreTraits<Store>;
  constexpr int E = Traits::kPerVector;
  __shared__ double tile[kSumRowLanes][E][kSumTileSlots];
  const int slot = threadIdx.x, lane = threadIdx.y;
  const long long q = static_cast<long long>(blockIdx.x) * kSumTileSlots + slot;
  const long long begin = static_cast<long long>(blockIdx.y) * rows_per_chunk;
  const long long end = begin + rows_per_chunk < n ? begin + rows_per_chunk : n;
  const uint4* a_vectors = reinterpret_cast<const uint4*>(a);
  double acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.0;
  if (q < vectors) {
    for (long long i = begin + lane; i < end; i += kSumRowLanes) {
      const double weight = row_weights != nullptr ? row_weights[i] : 1.0;
      if (weight == 0.0) continue;
      float x[E];
      Traits::unpack(__ldg(a_vectors + i * vectors + q), x);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = fma(static_cast<double>(x[e]), weight, acc[e]);
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) tile[lane][e][slot] = acc[e];
  __syncthreads();
  for (int width = kSumRowLanes / 2; width >= 1; width /= 2) {
    if (lane < width) {
#pragma unroll
      for (int e = 0; e < E; ++e) tile[lane][e][slot] += tile[lane + width][e][slot];
    }
    __syncthreads();
  }
  if (lane == 0 && q < vectors) {
    double* partial = partials + static_cast<long long>(blockIdx.y) * vectors * E;
#pragma unroll
    for (int e = 0; e < E; ++e) partial[q * E + e] = tile[0][e][slot];
  }
}

// col_sums[k] = scale · Σ_p partials[p][k] (p in a fixed tree of 8 interleaved lanes),
// scale = 1/(n_total r_scale) when r_scale is given, else 1. With totals, one extra block
// adds the pass's block totals.
__global__ void __launch_bounds__(256)
    finish_kernel(const double* partials, long long parts, long long k, long long stride,
                  const double* r_scale, long long n_total, double* col_sums,
                  const double* block_change, const double* block_c_max, const long long* block_bad,
                  long long blocks, SinkhornPassTotals* totals, const int* run_status) {
  if (stopped(run_status)) return;
  const int x = threadIdx.x, y = threadIdx.y;
  const int linear = x + 32 * y;
  if (totals != nullptr && blockIdx.x == gridDim.x - 1) {
    double change = 0.0, c_max = 0.0, bad = 0.0;
    for (long long b = linear; b < blocks; b += 256) {
      change += block_change[b];
      c_max = fmax(c_max, block_c_max[b]);
      bad += static_cast<double>(block_bad[b]);  // exact: counts far below 2^53
    }
    change = detail::block_reduce<256>(change, detail::SumOp{}, 0.0);
    c_max = detail::block_reduce<256>(c_max, detail::MaxOp{}, 0.0);
    bad = detail::block_reduce<256>(bad, detail::SumOp{}, 0.0);
    if (linear == 0) {
      totals->change = change;
      totals->c_max = c_max;
      totals->bad_rows = static_cast<long long>(bad);
    }
    return;
  }
  __shared__ double lanes[8][33];
  const long long column = static_cast<long long>(blockIdx.x) * 32 + x;
  double acc = 0.0;
  if (column < k) {
    for (long long p = y; p < parts; p += 8) acc += partials[p * stride + column];
  }
  lanes[y][x] = acc;
  __syncthreads();
  for (int width = 4; width >= 1; width /= 2) {
    if (y < width) lanes[y][x] += lanes[y + width][x];
    __syncthreads();
  }
  if (y == 0 && column < k) {
    const double scale = r_scale != nullptr ? 1.0 / (static_cast<double>(n_total) * *r_scale) : 1.0;
    col_sums[column] = lanes[0][x] * scale;
  }
}

__global__ void __launch_bounds__(256)
    finish_labels_kernel(const double* block_row_error, const double* block_floor, long long blocks,
                         SinkhornLabelTotals* totals) {
  double row_error = 0.0, floor_share = 0.0;
  for (long long b = threadIdx.x; b < blocks; b += 256) {
    row_error = fmax(row_error, block_row_error[b]);
    floor_share = fmax(floor_share, block_floor[b]);
  }
  row_error = detail::block_reduce<256>(row_error, detail::MaxOp{}, 0.0);
  floor_share = detail::block_reduce<256>(floor_share, detail::MaxOp{}, 0.0);
  if (threadIdx.x == 0) {
    totals->row_error = row_error;
    totals->floor_mass = floor_share;
  }
}

// ---- control (one block) ------------------------------------------------------------------

struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

__device__ double control_sum(double v) {
  return detail::block_reduce<kControlThreads>(v, detail::SumOp{}, 0.0);
}
__device__ double control_max(double v) {
  return detail::block_reduce<kControlThreads>(v, detail::MaxOp{}, -static_cast<double>(INFINITY));
}
__device__ double control_min(double v) {
  return detail::block_reduce<kControlThreads>(v, MinOp{}, static_cast<double>(INFINITY));
}
__device__ long long control_min_index(long long v) {
  return detail::block_reduce<kControlThreads>(v, MinOp{}, LLONG_MAX);
}

__device__ void fail_state(SinkhornDeviceState* state, int kind, long long iteration,
                           long long index, double value) {
  state->status = kSinkhornFailed;
  state->error_kind = kind;
  state->error_iteration = iteration;
  state->error_index = index;
  state->error_value = value;
}

// r_scale = sqrt(max r) sqrt(min r); r_rel = float32(r / r_scale) (as the CPU's set_r_rel).
__device__ void set_relative(const SinkhornControlParams& params, SinkhornDeviceVectors v,
                             SinkhornDeviceState* state) {
  double low = INFINITY, high = -INFINITY;
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
    low = fmin(low, v.r[j]);
    high = fmax(high, v.r[j]);
  }
  low = control_min(low);
  high = control_max(high);
  const double r_scale = sqrt(high) * sqrt(low);
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x)
    v.r_rel[j] = static_cast<float>(v.r[j] / r_scale);
  if (threadIdx.x == 0) state->r_scale = r_scale;
}

// The CPU solver's floored_share_bound (sinkhorn.cpp), with c_max from the last pass.
__device__ double floored_share_bound(const SinkhornControlParams& params, SinkhornDeviceVectors v,
                                      double c_max, long long iteration) {
  double r_sum = 0.0, r_min = INFINITY;
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
    r_sum += v.r[j];
    r_min = fmin(r_min, v.r[j]);
  }
  r_sum = control_sum(r_sum);
  r_min = control_min(r_min);
  const double cheap = params.floor_value * r_sum / (params.scale * r_min);
  if (!(cheap > params.absorb_above) || iteration == 0) return cheap;
  double worst_ratio = 0.0;
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x)
    worst_ratio = fmax(worst_ratio, v.r_prev[j] / v.r[j]);
  worst_ratio = control_max(worst_ratio);
  return fmin(cheap,
              params.floor_value * r_sum * static_cast<double>(params.n) * c_max * worst_ratio);
}

// First column whose sum is not positive and finite, or LLONG_MAX.
__device__ long long first_bad_column(const SinkhornControlParams& params, const double* col_sums) {
  long long first = LLONG_MAX;
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
    const double s = col_sums[j];
    if (!(s > 0.0) || !isfinite(s)) {
      first = j;
      break;  // this thread's columns increase: its first is its smallest
    }
  }
  return control_min_index(first);
}

__global__ void __launch_bounds__(kControlThreads)
    control_start_kernel(SinkhornControlParams params, bool initialise, bool warm,
                         SinkhornDeviceVectors v, SinkhornDeviceState* state) {
  if (!initialise && state->status == kSinkhornFailed) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    if (initialise) {
      *state = SinkhornDeviceState{};
      state->omega = warm ? 1.0 : params.omega;
      state->warm_first = warm ? 1 : 0;
      state->last_check_error = INFINITY;
      if (warm) state->stop_error = NAN;
    } else {
      state->status = kSinkhornRunning;
      state->absorbed_last = 1;
      state->halted_at = -1;
    }
  }
  if (!warm) {
    const long long bad = first_bad_column(params, v.col_sums);
    if (bad != LLONG_MAX) {
      if (threadIdx.x == 0) fail_state(state, kSinkhornBadColumn, 0, bad, v.col_sums[bad]);
      return;
    }
  }
  const double inv_k = 1.0 / static_cast<double>(params.k);
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
    if (!warm) v.r[j] = inv_k / v.col_sums[j];
    v.r_at_check[j] = v.r[j];
    if (params.absorb) v.potential_at_check[j] = v.column_potential[j];
  }
  if (threadIdx.x == 0) state->absorbed_since_check = 0;
  __syncthreads();
  const double bound = floored_share_bound(params, v, 0.0, 0);
  if (threadIdx.x == 0) state->bound = bound;
  set_relative(params, v, state);
}

__global__ void __launch_bounds__(kControlThreads)
    control_step_kernel(SinkhornControlParams params, long long iteration, bool measured,
                        SinkhornDeviceVectors v, SinkhornDeviceState* state) {
  __shared__ int running;
  if (threadIdx.x == 0) running = state->status == kSinkhornRunning;
  __syncthreads();
  if (!running) return;
  // Everything read from the state before thread 0 writes to it.
  double change = state->pass.change;
  long long bad = state->pass.bad_rows;
  double omega = state->omega;
  const double last_check_error = state->last_check_error;
  const int absorbed_last = state->absorbed_last;
  // After a warm start's plain first pass: ω from here on (the CPU relaxes r at iteration 0).
  const int warm_first = state->warm_first;
  if (warm_first) omega = params.omega;
  const double c_max = state->pass.c_max;
  int absorbed_since_check = state->absorbed_since_check;
  __syncthreads();
  const bool lead = threadIdx.x == 0;
  if (warm_first && lead) {
    state->warm_first = 0;
    state->omega = omega;
  }
  // The safeguard: back to the r of the last check, plain steps from now on. After an
  // absorption since that check, G goes back too, and the host stores A from it again
  // (kSinkhornHalted) before the next pass: in the new A's units the checked r would be
  // r_check / r_now, as wide a range as the divergence that set off the absorption
  // (sinkhorn.cpp, where the CPU solver does the same). Returns true when halted for that.
  auto stop_relaxation = [&]() {
    if (lead) {
      state->omega = 1.0;
      state->omega_stopped_at = iteration;
    }
    for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
      v.r[j] = v.r_at_check[j];
      if (absorbed_since_check) v.column_potential[j] = v.potential_at_check[j];
    }
    if (!absorbed_since_check) return false;
    if (lead) {
      state->status = kSinkhornHalted;
      state->halted_at = iteration + 1;
    }
    return true;
  };

  if (omega != 1.0) {
    // A diverging relaxed iteration leaves float32's or float64's range: caught as NaN.
    double diverged = bad > 0 ? 1.0 : 0.0;
    for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
      const double s = v.col_sums[j];
      if (!(s > 0.0) || !isfinite(s)) diverged = 1.0;
    }
    if (control_max(diverged) > 0.0) {
      bad = 0;
      change = NAN;
    }
  }
  if (bad > 0) {
    if (lead) fail_state(state, kSinkhornBadRows, iteration, bad, 0.0);
    return;
  }
  const long long iterations = iteration + 1;
  if (lead) state->iterations = iterations;
  bool update = true;
  if (omega != 1.0 && (measured || !isfinite(change)) && !(change < last_check_error)) {
    if (stop_relaxation()) return;
    if (iterations >= params.max_iters) {
      if (lead) state->status = kSinkhornCapReached;
      return;
    }
    update = false;
  }
  if (update) {
    if (measured) {
      if (lead) {
        state->stop_error = change;
        state->last_check_error = change;
      }
      for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
        v.r_at_check[j] = v.r[j];
        if (params.absorb) v.potential_at_check[j] = v.column_potential[j];
      }
      if (lead) state->absorbed_since_check = 0;
      absorbed_since_check = 0;
      if (change <= params.tol) {
        if (lead) state->status = kSinkhornConverged;
        return;
      }
    }
    if (iterations >= params.max_iters) {
      if (lead) state->status = kSinkhornCapReached;
      return;
    }
    const long long bad_column = first_bad_column(params, v.col_sums);
    if (bad_column != LLONG_MAX) {
      if (lead)
        fail_state(state, kSinkhornBadColumn, iterations, bad_column, v.col_sums[bad_column]);
      return;
    }
    const double inv_k = 1.0 / static_cast<double>(params.k);
    // A diverging relaxed r can also leave float64's range between two checks (the CPU
    // solver's range test): then the safeguard, before r is overwritten.
    double out_of_range = 0.0;
    if (omega != 1.0) {
      for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
        const double plain = inv_k / v.col_sums[j];
        const double r_new = plain * relaxation_factor(v.r[j], plain, omega);
        if (!(r_new > 0.0) || !isfinite(r_new)) out_of_range = 1.0;
      }
      out_of_range = control_max(out_of_range);
    }
    if (out_of_range > 0.0) {
      // The next absorption bound compares r with this pass's r (as the CPU's r_next).
      for (long long j = threadIdx.x; j < params.k; j += blockDim.x) v.r_prev[j] = v.r[j];
      if (stop_relaxation()) return;
    } else {
      for (long long j = threadIdx.x; j < params.k; j += blockDim.x) {
        double r_new = inv_k / v.col_sums[j];
        if (omega != 1.0) r_new *= relaxation_factor(v.r[j], r_new, omega);
        v.r_prev[j] = v.r[j];
        v.r[j] = r_new;
      }
    }
  }
  __syncthreads();
  if (params.absorb) {
    if (!absorbed_last) {
      const double bound = floored_share_bound(params, v, c_max, iterations);
      if (lead) state->bound = bound;
      if (bound > params.absorb_above) {
        if (lead) {
          state->status = kSinkhornHalted;
          state->halted_at = iterations;
        }
        return;
      }
    } else if (lead) {
      state->absorbed_last = 0;
    }
  }
  set_relative(params, v, state);
}

__global__ void __launch_bounds__(kControlThreads)
    control_resume_kernel(SinkhornControlParams params, SinkhornDeviceVectors v,
                          SinkhornDeviceState* state) {
  if (threadIdx.x == 0) {
    state->status = kSinkhornRunning;
    state->absorbed_last = 1;
    state->absorbed_since_check = 1;
    state->halted_at = -1;
  }
  set_relative(params, v, state);
}

__global__ void __launch_bounds__(kControlThreads)
    control_final_kernel(SinkhornControlParams params, SinkhornDeviceVectors v,
                         SinkhornDeviceState* state) {
  double worst = 0.0;
  for (long long j = threadIdx.x; j < params.k; j += blockDim.x)
    worst = fmax(worst, fabs(static_cast<double>(params.k) * v.r[j] * v.col_sums[j] - 1.0));
  worst = control_max(worst);
  if (threadIdx.x == 0) state->col_error = worst;
  set_relative(params, v, state);
}

__global__ void __launch_bounds__(kControlThreads)
    absorb_columns_kernel(long long k, SinkhornDeviceVectors v) {
  double top = -INFINITY;
  for (long long j = threadIdx.x; j < k; j += blockDim.x)
    top = fmax(top, v.column_potential[j] + log(v.r[j]));
  top = control_max(top);
  for (long long j = threadIdx.x; j < k; j += blockDim.x) {
    const float g = static_cast<float>(v.column_potential[j] + log(v.r[j]) - top);
    v.column_potential_f[j] = g;
    const double factor = exp(v.column_potential[j] - static_cast<double>(g));
    v.r[j] *= factor;  // r_at_check stays in the units of potential_at_check
    v.column_potential[j] = static_cast<double>(g);
  }
}

__global__ void absorb_rows_kernel(long long n, const double* new_shift, const double* old_shift,
                                   double* c) {
  for (long long i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    c[i] *= exp(new_shift[i] - (old_shift != nullptr ? old_shift[i] : 0.0));
}

__global__ void start_c_kernel(const float* row_log_mass, long long n, double lambda,
                               double c0_factor, double* c) {
  for (long long i = detail::grid_thread_index(); i < n; i += detail::grid_thread_count())
    c[i] = exp(-lambda * static_cast<double>(row_log_mass[i])) * c0_factor;
}

// ---- random logits --------------------------------------------------------------------------

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {  // splitmix64
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A standard normal from two hashed 24-bit uniforms (Box-Muller, cosine branch).
__device__ __forceinline__ float hashed_normal(unsigned long long key) {
  const unsigned long long bits = mix64(key);
  const float u1 = (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = (static_cast<float>((bits >> 16) & 0xFFFFFFull) + 0.5f) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

__global__ void random_logits_kernel(float* logits, long long n, long long k, long long centres,
                                     float noise, unsigned long long seed) {
  const long long total = n * k;
  const unsigned long long centre_seed = mix64(seed * 0x632BE59BD9B4E019ull + 1);
  const unsigned long long noise_seed = mix64((seed + 1) * 0x9E3779B97F4A7C15ull);
  for (long long index = detail::grid_thread_index(); index < total;
       index += detail::grid_thread_count()) {
    const long long i = index / k, j = index % k;
    const unsigned long long pick =
        mix64(noise_seed ^ (static_cast<unsigned long long>(i) * 0xD1B54A32D192ED03ull));
    const long long m = static_cast<long long>(pick % static_cast<unsigned long long>(centres));
    const float mu = hashed_normal(
        centre_seed ^ (static_cast<unsigned long long>(m * k + j) * 0xA24BAED4963EE407ull));
    const float eps =
        hashed_normal(pick ^ (static_cast<unsigned long long>(j + 1) * 0x9FB21C651E98DF25ull));
    logits[index] = mu + noise * eps;
  }
}

// ---- launch plans ---------------------------------------------------------------------------

struct RowConfig {
  int slots = 0;  // 0: the wide kernel
  int rows = 1;   // rows per block step
  int threads = 256;
};

long long round_up(long long value, long long multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// SELA_SINKHORN_CUDA_CONFIG (read once): "2x4" uses the 2-slot configuration for every row
// of 33 .. 768 vectors (half the threads per block, so more blocks per multiprocessor);
// anything else is the default below. A lab knob for comparing the two on a GPU.
bool prefer_two_slots() {
  static const bool two = [] {
    const char* value = std::getenv("SELA_SINKHORN_CUDA_CONFIG");
    return value != nullptr && std::string(value) == "2x4";
  }();
  return two;
}

RowConfig row_config(long long vectors) {
  const bool two = vectors <= 768 && (vectors > 512 || (vectors > 32 && prefer_two_slots()));
  if (two) return {2, 4, static_cast<int>(round_up((vectors + 1) / 2, 32))};
  if (vectors <= 512) return {1, 8, static_cast<int>(round_up(vectors, 32))};
  return {0, 1, 256};
}

template <typename Store>
const void* row_kernel(const RowConfig& config, bool labels) {
  if (config.slots == 1)
    return labels ? reinterpret_cast<const void*>(&fused_rows_kernel<Store, 1, 8, true>)
                  : reinterpret_cast<const void*>(&fused_rows_kernel<Store, 1, 8, false>);
  if (config.slots == 2)
    return labels ? reinterpret_cast<const void*>(&fused_rows_kernel<Store, 2, 4, true>)
                  : reinterpret_cast<const void*>(&fused_rows_kernel<Store, 2, 4, false>);
  return labels ? reinterpret_cast<const void*>(&wide_rows_kernel<Store, true>)
                : reinterpret_cast<const void*>(&wide_rows_kernel<Store, false>);
}

// Resident blocks per multiprocessor of `kernel` with `threads` threads, asked once.
int resident_blocks(const void* kernel, int threads, int device) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, threads, device);
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  int blocks = 0;
  SELA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, 0));
  SELA_CHECK(blocks >= 1, "sinkhorn_cuda",
             "a row kernel of " << threads << " threads cannot run on cuda:" << device
                                << " (too many registers per thread for this GPU)");
  cache.emplace(key, blocks);
  return blocks;
}

// Where everything lives in the workspace, and the grids, for (n, k) on a device.
struct Plan {
  long long stride = 0, vectors = 0;
  RowConfig config;
  long long steps = 0;
  long long pass_blocks = 1, label_blocks = 1;
  long long sum_tiles = 1, sum_chunks = 1, rows_per_chunk = 1;
  long long column_parts = 1, block_capacity = 1;
  std::size_t partials_offset = 0, change_offset = 0, c_max_offset = 0, bad_offset = 0,
              row_error_offset = 0, floor_offset = 0, weights_offset = 0, bytes = 0;
};

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

template <typename Store>
Plan make_plan(long long n, long long k, int device) {
  Plan plan;
  plan.stride = sinkhorn_row_stride(k);
  plan.vectors = plan.stride * static_cast<long long>(sizeof(Store)) / 16;
  plan.config = row_config(plan.vectors);
  plan.steps = (n + plan.config.rows - 1) / plan.config.rows;
  const long long multiprocessors = sela::cuda::multiprocessor_count(device);
  const long long pass_resident =
      multiprocessors *
      resident_blocks(row_kernel<Store>(plan.config, false), plan.config.threads, device);
  const long long label_resident =
      multiprocessors *
      resident_blocks(row_kernel<Store>(plan.config, true), plan.config.threads, device);
  plan.pass_blocks = std::max(1LL, std::min(plan.steps, pass_resident));
  plan.label_blocks = std::max(1LL, std::min(plan.steps, label_resident));
  plan.sum_tiles = (plan.vectors + kSumTileSlots - 1) / kSumTileSlots;
  const long long wanted_chunks = (multiprocessors * 8 + plan.sum_tiles - 1) / plan.sum_tiles;
  const long long row_groups = std::max(1LL, (n + kSumRowLanes - 1) / kSumRowLanes);
  plan.sum_chunks = std::max(1LL, std::min({wanted_chunks, row_groups, 65535LL}));
  plan.rows_per_chunk = std::max(1LL, (n + plan.sum_chunks - 1) / plan.sum_chunks);
  plan.sum_chunks = std::max(1LL, (n + plan.rows_per_chunk - 1) / plan.rows_per_chunk);
  const bool fused = plan.config.slots > 0;
  plan.column_parts = fused ? std::max(plan.pass_blocks, plan.sum_chunks) : plan.sum_chunks;
  plan.block_capacity = std::max(plan.pass_blocks, plan.label_blocks);
  std::size_t offset = 0;
  plan.partials_offset = offset;
  offset += align256(static_cast<std::size_t>(plan.column_parts * plan.stride) * sizeof(double));
  const std::size_t block_bytes = align256(static_cast<std::size_t>(plan.block_capacity) * 8);
  plan.change_offset = offset;
  offset += block_bytes;
  plan.c_max_offset = offset;
  offset += block_bytes;
  plan.bad_offset = offset;
  offset += block_bytes;
  plan.row_error_offset = offset;
  offset += block_bytes;
  plan.floor_offset = offset;
  offset += block_bytes;
  plan.weights_offset = offset;
  if (!fused) offset += align256(static_cast<std::size_t>(n) * sizeof(double));
  plan.bytes = offset;
  return plan;
}

template <typename T>
T* at(void* workspace, std::size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(workspace) + offset);
}

void check_shape(const char* op, long long n, long long k, long long stride) {
  SELA_CHECK(n >= 0 && k >= 1, op,
             "needs n >= 0 rows and k >= 1 columns, got n=" << n << ", k=" << k);
  SELA_CHECK(stride == sinkhorn_row_stride(k), op,
             "row stride " << stride << " is not sinkhorn_row_stride(" << k
                           << ") = " << sinkhorn_row_stride(k));
  SELA_CHECK(k < INT_MAX, op, "k = " << k << " does not fit the kernels' int column index");
}

void check_workspace(const char* op, const Plan& plan, const void* workspace, std::size_t given) {
  SELA_CHECK(workspace != nullptr, op, "workspace pointer is null");
  SELA_CHECK(given >= plan.bytes, op,
             "workspace holds " << given << " bytes, " << plan.bytes
                                << " needed (sinkhorn_workspace_bytes for this n, k and device)");
}

void check_aligned(const char* op, const void* pointer, const char* what) {
  SELA_CHECK(reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0, op,
             what << " must be 16-byte aligned (a cudaMalloc'd buffer)");
}

int current_device() {
  int device = 0;
  SELA_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

unsigned grid_for_rows(long long rows, int rows_per_block) {
  return detail::grid_for(rows, rows_per_block);
}

template <typename Store>
void launch_column_sums(const Plan& plan, const Store* a, long long n, const double* weights,
                        void* workspace, const int* run_status, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.sum_tiles), static_cast<unsigned>(plan.sum_chunks));
  const dim3 block(kSumTileSlots, kSumRowLanes);
  column_sums_kernel<Store>
      <<<grid, block, 0, stream>>>(a, n, plan.vectors, weights, plan.rows_per_chunk,
                                   at<double>(workspace, plan.partials_offset), run_status);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_column_sums");
}

void launch_finish(const Plan& plan, long long k, long long parts, const double* r_scale,
                   long long n_total, double* col_sums, void* workspace, long long blocks,
                   SinkhornPassTotals* totals, const int* run_status, cudaStream_t stream) {
  const long long column_blocks = (k + 31) / 32;
  const unsigned grid = static_cast<unsigned>(column_blocks + (totals != nullptr ? 1 : 0));
  finish_kernel<<<grid, dim3(32, 8), 0, stream>>>(
      at<double>(workspace, plan.partials_offset), parts, k, plan.stride, r_scale, n_total,
      col_sums, at<double>(workspace, plan.change_offset), at<double>(workspace, plan.c_max_offset),
      at<long long>(workspace, plan.bad_offset), blocks, totals, run_status);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn finish");
}

template <typename Store, bool kLabels>
void launch_rows(const Plan& plan, const RowArgs<Store>& args, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(kLabels ? plan.label_blocks : plan.pass_blocks);
  const int threads = plan.config.threads;
  if (plan.config.slots == 1) {
    fused_rows_kernel<Store, 1, 8, kLabels><<<blocks, threads, 0, stream>>>(args);
  } else if (plan.config.slots == 2) {
    fused_rows_kernel<Store, 2, 4, kLabels><<<blocks, threads, 0, stream>>>(args);
  } else {
    wide_rows_kernel<Store, kLabels><<<blocks, threads, 0, stream>>>(args);
  }
  SELA_CUDA_CHECK_LAUNCH(kLabels ? "sinkhorn_labels" : "sinkhorn_pass");
}

}  // namespace

// ---- public launchers -----------------------------------------------------------------------

template <typename Store>
void sinkhorn_store_rows(const float* logits, std::int64_t rows, std::int64_t k, float lambda,
                         Store* a, std::int64_t stride, float* row_log_mass,
                         std::int64_t row_offset, unsigned long long* first_bad,
                         cudaStream_t stream) {
  const char* op = "sinkhorn_store_rows (cuda)";
  check_shape(op, rows, k, stride);
  SELA_CHECK(std::isfinite(lambda) && lambda > 0.0f, op,
             "lambda must be positive and finite, got " << lambda);
  SELA_CHECK(first_bad != nullptr, op, "first_bad pointer is null");
  if (rows == 0) return;
  SELA_CHECK(logits != nullptr && a != nullptr, op, "null logits or storage pointer");
  store_rows_kernel<Store><<<grid_for_rows(rows, kStoreThreads / 32), kStoreThreads, 0, stream>>>(
      logits, rows, k, lambda, a, stride, row_log_mass, row_offset, first_bad,
      sinkhorn_storage_scale<Store>(), sinkhorn_storage_floor<Store>());
  SELA_CUDA_CHECK_LAUNCH(op);
}

template <typename Store>
void sinkhorn_store_rows_absorbed(const float* logits, std::int64_t rows, std::int64_t k,
                                  float lambda, const float* column_log_scale, Store* a,
                                  std::int64_t stride, double* row_shift, cudaStream_t stream) {
  const char* op = "sinkhorn_store_rows_absorbed (cuda)";
  check_shape(op, rows, k, stride);
  SELA_CHECK(std::isfinite(lambda) && lambda > 0.0f, op,
             "lambda must be positive and finite, got " << lambda);
  if (rows == 0) return;
  SELA_CHECK(
      logits != nullptr && a != nullptr && column_log_scale != nullptr && row_shift != nullptr, op,
      "null pointer argument");
  store_rows_absorbed_kernel<Store>
      <<<grid_for_rows(rows, kStoreThreads / 32), kStoreThreads, 0, stream>>>(
          logits, rows, k, lambda, column_log_scale, a, stride, row_shift,
          sinkhorn_storage_scale<Store>(), sinkhorn_storage_floor<Store>());
  SELA_CUDA_CHECK_LAUNCH(op);
}

template <typename Store>
std::size_t sinkhorn_workspace_bytes(std::int64_t n, std::int64_t k, int device) {
  SELA_CHECK(n >= 0 && k >= 1, "sinkhorn_workspace_bytes (cuda)",
             "needs n >= 0 and k >= 1, got n=" << n << ", k=" << k);
  return make_plan<Store>(n, k, device).bytes;
}

template <typename Store>
std::uint64_t sinkhorn_pass_reads(std::int64_t n, std::int64_t k) {
  const long long stride = sinkhorn_row_stride(k);
  const long long vectors = stride * static_cast<long long>(sizeof(Store)) / 16;
  const std::uint64_t once =
      static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(stride) * sizeof(Store);
  return row_config(vectors).slots > 0 ? once : 2 * once;
}

template <typename Store>
void sinkhorn_column_sums(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                          const double* row_weights, void* workspace, std::size_t workspace_bytes,
                          double* col_sums, cudaStream_t stream) {
  const char* op = "sinkhorn_column_sums (cuda)";
  check_shape(op, n, k, stride);
  SELA_CHECK(col_sums != nullptr && (n == 0 || a != nullptr), op, "null pointer argument");
  check_aligned(op, a, "A");
  const Plan plan = make_plan<Store>(n, k, current_device());
  check_workspace(op, plan, workspace, workspace_bytes);
  launch_column_sums<Store>(plan, a, n, row_weights, workspace, nullptr, stream);
  launch_finish(plan, k, plan.sum_chunks, nullptr, 1, col_sums, workspace, 0, nullptr, nullptr,
                stream);
}

// The fields of RowArgs that the pass and the labels kernels share.
template <typename Store>
RowArgs<Store> common_row_args(const Plan& plan, const Store* a, std::int64_t n, std::int64_t k,
                               std::int64_t n_total, const float* r_rel, const double* r_scale,
                               double* c) {
  RowArgs<Store> args;
  args.a = a;
  args.n = n;
  args.k = k;
  args.vectors = plan.vectors;
  args.n_total = n_total;
  args.steps = plan.steps;
  args.r_rel = r_rel;
  args.r_scale = r_scale;
  args.c = c;
  return args;
}

template <typename Store>
void sinkhorn_pass(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                   std::int64_t n_total, const float* r_rel, const double* r_scale,
                   const double* omega, double* c, double* col_sums, bool measure_change,
                   void* workspace, std::size_t workspace_bytes, SinkhornPassTotals* totals,
                   const int* run_status, cudaStream_t stream) {
  const char* op = "sinkhorn_pass (cuda)";
  check_shape(op, n, k, stride);
  SELA_CHECK(col_sums != nullptr && r_rel != nullptr && r_scale != nullptr && omega != nullptr &&
                 totals != nullptr && (n == 0 || (a != nullptr && c != nullptr)),
             op, "null pointer argument");
  SELA_CHECK(n_total >= n && n_total >= 1, op, "n_total " << n_total << " must be >= n " << n);
  check_aligned(op, a, "A");
  check_aligned(op, r_rel, "r_rel");
  const Plan plan = make_plan<Store>(n, k, current_device());
  check_workspace(op, plan, workspace, workspace_bytes);
  RowArgs<Store> args = common_row_args(plan, a, n, k, n_total, r_rel, r_scale, c);
  args.omega = omega;
  args.measure = measure_change;
  args.run_status = run_status;
  args.column_partials = at<double>(workspace, plan.partials_offset);
  args.block_change = at<double>(workspace, plan.change_offset);
  args.block_c_max = at<double>(workspace, plan.c_max_offset);
  args.block_bad = at<long long>(workspace, plan.bad_offset);
  args.row_weights = at<double>(workspace, plan.weights_offset);
  launch_rows<Store, false>(plan, args, stream);
  long long parts = plan.pass_blocks;
  if (plan.config.slots == 0) {  // wide rows: the column sums from the row weights
    launch_column_sums<Store>(plan, a, n, args.row_weights, workspace, run_status, stream);
    parts = plan.sum_chunks;
  }
  launch_finish(plan, k, parts, r_scale, n_total, col_sums, workspace, plan.pass_blocks, totals,
                run_status, stream);
}

template <typename Store>
void sinkhorn_labels(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                     std::int64_t n_total, const float* r_rel, const double* r_scale,
                     const double* c, std::int64_t* labels, void* workspace,
                     std::size_t workspace_bytes, SinkhornLabelTotals* totals,
                     cudaStream_t stream) {
  const char* op = "sinkhorn_labels (cuda)";
  check_shape(op, n, k, stride);
  SELA_CHECK(r_rel != nullptr && r_scale != nullptr && totals != nullptr &&
                 (n == 0 || (a != nullptr && c != nullptr && labels != nullptr)),
             op, "null pointer argument");
  SELA_CHECK(n_total >= n && n_total >= 1, op, "n_total " << n_total << " must be >= n " << n);
  check_aligned(op, a, "A");
  check_aligned(op, r_rel, "r_rel");
  const Plan plan = make_plan<Store>(n, k, current_device());
  check_workspace(op, plan, workspace, workspace_bytes);
  RowArgs<Store> args = common_row_args(plan, a, n, k, n_total, r_rel, r_scale,
                                        const_cast<double*>(c));  // c: read only here
  args.labels = reinterpret_cast<long long*>(labels);
  args.block_row_error = at<double>(workspace, plan.row_error_offset);
  args.block_floor = at<double>(workspace, plan.floor_offset);
  args.floor_value = sinkhorn_storage_floor<Store>();
  launch_rows<Store, true>(plan, args, stream);
  finish_labels_kernel<<<1, 256, 0, stream>>>(args.block_row_error, args.block_floor,
                                              plan.label_blocks, totals);
  SELA_CUDA_CHECK_LAUNCH(op);
}

void sinkhorn_start_c(const float* row_log_mass, std::int64_t n, double lambda, double c0_factor,
                      double* c, cudaStream_t stream) {
  if (n == 0) return;
  start_c_kernel<<<detail::grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
      row_log_mass, n, lambda, c0_factor, c);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_start_c");
}

void sinkhorn_control_start(const SinkhornControlParams& params, bool initialise, bool warm,
                            SinkhornDeviceVectors vectors, SinkhornDeviceState* state,
                            cudaStream_t stream) {
  control_start_kernel<<<1, kControlThreads, 0, stream>>>(params, initialise, warm, vectors,
                                                          state);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_control_start");
}

void sinkhorn_control_step(const SinkhornControlParams& params, std::int64_t iteration,
                           bool measured, SinkhornDeviceVectors vectors, SinkhornDeviceState* state,
                           cudaStream_t stream) {
  control_step_kernel<<<1, kControlThreads, 0, stream>>>(params, iteration, measured, vectors,
                                                         state);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_control_step");
}

void sinkhorn_absorb_columns(std::int64_t k, SinkhornDeviceVectors vectors, cudaStream_t stream) {
  absorb_columns_kernel<<<1, kControlThreads, 0, stream>>>(k, vectors);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_absorb_columns");
}

void sinkhorn_absorb_rows(std::int64_t n, const double* new_shift, const double* old_shift,
                          double* c, cudaStream_t stream) {
  if (n == 0) return;
  absorb_rows_kernel<<<detail::grid_for(n, kElementwiseThreads), kElementwiseThreads, 0, stream>>>(
      n, new_shift, old_shift, c);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_absorb_rows");
}

void sinkhorn_control_resume(const SinkhornControlParams& params, SinkhornDeviceVectors vectors,
                             SinkhornDeviceState* state, cudaStream_t stream) {
  control_resume_kernel<<<1, kControlThreads, 0, stream>>>(params, vectors, state);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_control_resume");
}

void sinkhorn_control_final(const SinkhornControlParams& params, SinkhornDeviceVectors vectors,
                            SinkhornDeviceState* state, cudaStream_t stream) {
  control_final_kernel<<<1, kControlThreads, 0, stream>>>(params, vectors, state);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_control_final");
}

void sinkhorn_random_logits(float* logits, std::int64_t n, std::int64_t k, std::int64_t centres,
                            double noise, std::uint64_t seed, cudaStream_t stream) {
  SELA_CHECK(n >= 0 && k >= 1 && centres >= 1, "sinkhorn_random_logits",
             "needs n >= 0, k >= 1 and centres >= 1, got " << n << ", " << k << ", " << centres);
  if (n == 0) return;
  SELA_CHECK(logits != nullptr, "sinkhorn_random_logits", "logits pointer is null");
  random_logits_kernel<<<detail::grid_for(n * k, kElementwiseThreads), kElementwiseThreads, 0,
                         stream>>>(logits, n, k, centres, static_cast<float>(noise), seed);
  SELA_CUDA_CHECK_LAUNCH("sinkhorn_random_logits");
}

#define SELA_SINKHORN_CUDA_INSTANTIATE(Store)                                                    \
  template void sinkhorn_store_rows<Store>(const float*, std::int64_t, std::int64_t, float,      \
                                           Store*, std::int64_t, float*, std::int64_t,           \
                                           unsigned long long*, cudaStream_t);                   \
  template void sinkhorn_store_rows_absorbed<Store>(const float*, std::int64_t, std::int64_t,    \
                                                    float, const float*, Store*, std::int64_t,   \
                                                    double*, cudaStream_t);                      \
  template std::size_t sinkhorn_workspace_bytes<Store>(std::int64_t, std::int64_t, int);         \
  template std::uint64_t sinkhorn_pass_reads<Store>(std::int64_t, std::int64_t);                 \
  template void sinkhorn_column_sums<Store>(const Store*, std::int64_t, std::int64_t,            \
                                            std::int64_t, const double*, void*, std::size_t,     \
                                            double*, cudaStream_t);                              \
  template void sinkhorn_pass<Store>(const Store*, std::int64_t, std::int64_t, std::int64_t,     \
                                     std::int64_t, const float*, const double*, const double*,   \
                                     double*, double*, bool, void*, std::size_t,                 \
                                     SinkhornPassTotals*, const int*, cudaStream_t);             \
  template void sinkhorn_labels<Store>(const Store*, std::int64_t, std::int64_t, std::int64_t,   \
                                       std::int64_t, const float*, const double*, const double*, \
                                       std::int64_t*, void*, std::size_t, SinkhornLabelTotals*,  \
                                       cudaStream_t);

SELA_SINKHORN_CUDA_INSTANTIATE(float)
SELA_SINKHORN_CUDA_INSTANTIATE(Half)
SELA_SINKHORN_CUDA_INSTANTIATE(BFloat16)

}  // namespace sela::assign::cuda
