// Batch normalisation on CUDA (see batchnorm.cuh).
//
// Training forward and backward are three launches each, so that every multiprocessor has
// work even when C is small and N * spatial large (AlexNet's conv1 at batch 256: 96 channels
// of 774,400 values; one block per channel used 96 of 132 SMs with one load in flight per
// thread):
//   1. partial sums: block (chunk, c) sums its chunk of channel c's values (a fixed range of
//      j = n * spatial + s, kChunkValues long) in double and writes one pair per (c, chunk);
//   2. finish: one warp per channel adds the chunks' pairs in a fixed order (lane i takes
//      chunks i, i + 32, ...; then a fixed shuffle tree), computes the statistics and the
//      per-channel constants of the elementwise pass, exactly as the CPU kernel computes
//      them in double;
//   3. elementwise: a grid-stride pass over all N * C * spatial values, with the CPU's
//      expression.
// Deterministic: the chunking depends only on the shape, and every sum has a fixed order.
// The forward statistics are one pass of shifted sums: S1 = Σ (x - K) and S2 = Σ (x - K)^2
// with K the channel's first value, mean = K + S1 / m, var = S2 / m - (S1 / m)^2, all in
// double. With K a sample of the channel, (mean - K)^2 is of the order of the variance, so
// the cancellation costs a few double ulps — inputs with |mean| >> std lose nothing (the
// CPU kernel's two passes buy the same), and x is read twice, not three times.
// Eval mode keeps one block per channel (eval_affine_kernel): it has no reduction.
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kBatchNormBlock = 512;         // eval: threads per channel
constexpr int kPartialBlock = 256;           // training, step 1
constexpr int kElementwiseBlock = 256;       // training, step 3
constexpr std::int64_t kChunkValues = 8192;  // values of one channel per step-1 block
constexpr std::int64_t kMaxChunks = 1024;    // per channel (longer chunks beyond that)

// Maps a channel-local index j to the flat element index.
template <typename Index>
struct ChannelWalker {
  Index spatial;
  std::int64_t channel_stride;  // C * spatial: from one n to the next
  __device__ std::int64_t element(std::int64_t channel_base, Index j) const {
    const Index n = j / spatial;
    const Index s = j - n * spatial;
    return channel_base + static_cast<std::int64_t>(n) * channel_stride + s;
  }
};

// How a channel's `count` values are cut into chunks (one step-1 block each). No chunk is
// empty (the partial kernels rely on begin < count; their `end` would wrap otherwise): with
// chunks = ceil(count / kChunkValues) > 1, length = ceil(count / chunks) > kChunkValues / 2
// >= kMaxChunks >= chunks, so (chunks - 1) * length < count.
struct Chunking {
  std::int64_t chunks, length;  // chunks * length >= count
};
Chunking chunking(std::int64_t count) {
  std::int64_t chunks = (count + kChunkValues - 1) / kChunkValues;
  chunks = chunks < 1 ? 1 : (chunks > kMaxChunks ? kMaxChunks : chunks);
  static_assert(kChunkValues / 2 >= kMaxChunks, "a chunk could be empty (see above)");
  return {chunks, (count + chunks - 1) / chunks};
}

// Workspace layout (doubles): partials [C][chunks][2], then constants [C][3].
struct WorkspaceLayout {
  std::int64_t partials, constants, total;
};
WorkspaceLayout workspace_layout(std::int64_t channels, std::int64_t count) {
  const Chunking chunk = chunking(count);
  const std::int64_t partials = channels * chunk.chunks * 2;
  return {0, partials, partials + channels * 3};
}

// The block's two chunk sums, reduced over its threads and stored as partials[c][chunk].
__device__ inline void store_chunk_sums(double first, double second, std::int64_t c,
                                        double* partials) {
  first = detail::block_sum<kPartialBlock>(first);
  second = detail::block_sum<kPartialBlock>(second);
  if (threadIdx.x == 0) {
    double* out = partials + (c * gridDim.x + blockIdx.x) * 2;
    out[0] = first;
    out[1] = second;
  }
}

// Step 1 of the forward: shifted sums S1, S2 of chunk blockIdx.x of channel blockIdx.y.
template <typename T, typename Index>
__global__ void forward_partial_kernel(std::int64_t channels, Index count, Index chunk_length,
                                       ChannelWalker<Index> walk, const T* x, double* partials) {
  for (std::int64_t c = blockIdx.y; c < channels; c += gridDim.y) {
    const std::int64_t base = c * static_cast<std::int64_t>(walk.spatial);
    const double pivot = static_cast<double>(x[base]);  // (n, s) = (0, 0) of channel c
    const Index begin = static_cast<Index>(blockIdx.x) * chunk_length;
    const Index end = count - begin < chunk_length ? count : begin + chunk_length;
    double s1 = 0.0, s2 = 0.0;
#pragma unroll 4
    for (Index j = begin + threadIdx.x; j < end; j += kPartialBlock) {
      const double d = static_cast<double>(x[walk.element(base, j)]) - pivot;
      s1 += d;
      s2 += d * d;
    }
    store_chunk_sums(s1, s2, c, partials);
  }
}

// The two sums of channel c over its chunks, in a fixed order; lane 0 gets the totals.
__device__ inline void sum_chunks(const double* partials, std::int64_t c, std::int64_t chunks,
                                  double* first, double* second) {
  double a = 0.0, b = 0.0;
  for (std::int64_t i = threadIdx.x; i < chunks; i += 32) {
    a += partials[(c * chunks + i) * 2];
    b += partials[(c * chunks + i) * 2 + 1];
  }
  *first = detail::warp_reduce(a, detail::SumOp{});
  *second = detail::warp_reduce(b, detail::SumOp{});
}

// Step 2 of the forward (one warp per channel): statistics, running statistics, and the
// constants of y = (x - center) * scale + shift.
template <typename T>
__global__ void forward_finish_kernel(std::int64_t count, std::int64_t chunks, const T* x,
                                      std::int64_t spatial, const T* gamma, const T* beta, T eps,
                                      T momentum, T* running_mean, T* running_var, T* save_mean,
                                      T* save_invstd, const double* partials, double* constants) {
  const std::int64_t c = blockIdx.x;
  double s1, s2;
  sum_chunks(partials, c, chunks, &s1, &s2);
  if (threadIdx.x != 0) return;
  const double m = static_cast<double>(count);
  const double pivot = static_cast<double>(x[c * spatial]);
  const double shifted_mean = s1 / m;
  double squared_deviation = s2 - s1 * shifted_mean;     // Σ (x - mean)^2
  if (squared_deviation < 0.0) squared_deviation = 0.0;  // rounding of a constant channel
  const double mean = pivot + shifted_mean;
  const double var_biased = squared_deviation / m;
  const double var_unbiased = squared_deviation / (m - 1.0);
  const double invstd = 1.0 / sqrt(var_biased + static_cast<double>(eps));
  save_mean[c] = static_cast<T>(mean);
  save_invstd[c] = static_cast<T>(invstd);
  if (running_mean != nullptr) {
    running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * static_cast<T>(mean);
    running_var[c] = (T(1) - momentum) * running_var[c] + momentum * static_cast<T>(var_unbiased);
  }
  const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
  const double b = beta != nullptr ? static_cast<double>(beta[c]) : 0.0;
  constants[c * 3] = static_cast<double>(static_cast<T>(mean));  // center, as the CPU's T
  constants[c * 3 + 1] = g * invstd;                             // scale
  constants[c * 3 + 2] = b;                                      // shift
}

// Step 3 of the forward: y = (x - center) * scale + shift, constants rounded to T as on
// the CPU; with kRelu, then y = y < 0 ? 0 : y (the ReLU kernel's expression: NaN passes).
template <bool kRelu, typename T, typename Index>
__global__ void forward_apply_kernel(Index total, Index spatial, Index channels, const T* x,
                                     const double* constants, T* y) {
  for (Index e = static_cast<Index>(blockIdx.x) * kElementwiseBlock + threadIdx.x; e < total;
       e += static_cast<Index>(gridDim.x) * kElementwiseBlock) {
    const std::int64_t c = (e / spatial) % channels;  // 64-bit: c * 3 may pass 2^32
    const T center = static_cast<T>(constants[c * 3]), scale = static_cast<T>(constants[c * 3 + 1]),
            shift = static_cast<T>(constants[c * 3 + 2]);
    const T value = (x[e] - center) * scale + shift;
    y[e] = kRelu && value < T(0) ? T(0) : value;
  }
}

// The gradient reaching the batch norm's output: grad_y, or with a fused ReLU grad_y where
// the ReLU's output is > 0 and 0 elsewhere (the ReLU backward kernel's expression).
template <bool kRelu, typename T>
__device__ inline T output_grad(const T* grad_y, const T* relu_output, std::int64_t e) {
  if (kRelu) return relu_output[e] > T(0) ? grad_y[e] : T(0);
  return grad_y[e];
}

// Step 1 of the backward: Σ dy and Σ dy (x - mean) of one chunk of one channel.
template <bool kRelu, typename T, typename Index>
__global__ void backward_partial_kernel(std::int64_t channels, Index count, Index chunk_length,
                                        ChannelWalker<Index> walk, const T* x, const T* grad_y,
                                        const T* relu_output, const T* save_mean,
                                        double* partials) {
  for (std::int64_t c = blockIdx.y; c < channels; c += gridDim.y) {
    const std::int64_t base = c * static_cast<std::int64_t>(walk.spatial);
    const double mean = static_cast<double>(save_mean[c]);
    const Index begin = static_cast<Index>(blockIdx.x) * chunk_length;
    const Index end = count - begin < chunk_length ? count : begin + chunk_length;
    double dy_acc = 0.0, dy_x_acc = 0.0;
#pragma unroll 4
    for (Index j = begin + threadIdx.x; j < end; j += kPartialBlock) {
      const std::int64_t e = walk.element(base, j);
      const double dy = static_cast<double>(output_grad<kRelu>(grad_y, relu_output, e));
      dy_acc += dy;
      dy_x_acc += dy * (static_cast<double>(x[e]) - mean);
    }
    store_chunk_sums(dy_acc, dy_x_acc, c, partials);
  }
}

// Step 2 of the backward: grad_gamma, grad_beta and the constants of
// grad_x = dy * k + (x - mean) * a + b (the CPU kernel's).
template <typename T>
__global__ void backward_finish_kernel(std::int64_t count, std::int64_t chunks, const T* gamma,
                                       const T* save_invstd, T* grad_gamma, T* grad_beta,
                                       const double* partials, double* constants) {
  const std::int64_t c = blockIdx.x;
  double sum_dy, sum_dy_x;
  sum_chunks(partials, c, chunks, &sum_dy, &sum_dy_x);
  if (threadIdx.x != 0) return;
  const double invstd = static_cast<double>(save_invstd[c]);
  const double sum_dy_xhat = sum_dy_x * invstd;
  if (grad_gamma != nullptr) grad_gamma[c] = static_cast<T>(sum_dy_xhat);
  if (grad_beta != nullptr) grad_beta[c] = static_cast<T>(sum_dy);
  const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
  const double k = g * invstd;
  const double mean_dy = sum_dy / static_cast<double>(count);
  const double mean_dy_xhat = sum_dy_xhat / static_cast<double>(count);
  constants[c * 3] = k;
  constants[c * 3 + 1] = -k * invstd * mean_dy_xhat;  // a
  constants[c * 3 + 2] = -k * mean_dy;                // b
}

// Step 3 of the backward.
template <bool kRelu, typename T, typename Index>
__global__ void backward_apply_kernel(Index total, Index spatial, Index channels, const T* x,
                                      const T* grad_y, const T* relu_output, const T* save_mean,
                                      const double* constants, T* grad_x) {
  for (Index e = static_cast<Index>(blockIdx.x) * kElementwiseBlock + threadIdx.x; e < total;
       e += static_cast<Index>(gridDim.x) * kElementwiseBlock) {
    const std::int64_t c = (e / spatial) % channels;  // 64-bit: c * 3 may pass 2^32
    const T k = static_cast<T>(constants[c * 3]), a = static_cast<T>(constants[c * 3 + 1]),
            b = static_cast<T>(constants[c * 3 + 2]), mean = save_mean[c];
    grad_x[e] = output_grad<kRelu>(grad_y, relu_output, e) * k + (x[e] - mean) * a + b;
  }
}

// y = (x - center) * (gamma * invstd) + shift per channel, with eval statistics: used for
// the eval forward (center = running_mean, shift = beta) and the eval backward (center 0,
// shift 0, input grad_y).
template <typename T, typename Index>
__global__ void eval_affine_kernel(std::int64_t channels, Index count, ChannelWalker<Index> walk,
                                   const T* in, const T* gamma, const T* beta, const T* center,
                                   const T* running_var, T eps, T* out) {
  for (std::int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const std::int64_t base = c * static_cast<std::int64_t>(walk.spatial);
    const double invstd =
        1.0 / sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
    const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
    const T scale = static_cast<T>(g * invstd);
    const T shift = beta != nullptr ? beta[c] : T(0);
    const T offset = center != nullptr ? center[c] : T(0);
    for (Index j = threadIdx.x; j < count; j += kBatchNormBlock) {
      const std::int64_t e = walk.element(base, j);
      out[e] = (in[e] - offset) * scale + shift;
    }
  }
}

void check_sizes(const char* op, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  SELA_CHECK(batch >= 0 && channels >= 0 && spatial >= 0, op,
             "sizes must be >= 0, got (N, C, spatial) = (" << batch << ", " << channels << ", "
                                                           << spatial << ")");
}

template <typename T>
void check_eps(const char* op, T eps) {
  SELA_CHECK(eps >= T(0), op, "eps must be >= 0, got " << eps);
}

unsigned channel_grid(std::int64_t channels) {
  return static_cast<unsigned>(channels < detail::kMaxGridBlocks ? channels
                                                                 : detail::kMaxGridBlocks);
}

// Calls launch(count, walker) with 32-bit channel indices when they fit, else 64-bit.
template <typename Launch>
void with_walker(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                 const Launch& launch) {
  const std::int64_t count = batch * spatial;
  if (count <= static_cast<std::int64_t>(UINT32_MAX) - kBatchNormBlock) {
    launch(static_cast<std::uint32_t>(count),
           ChannelWalker<std::uint32_t>{static_cast<std::uint32_t>(spatial), channels * spatial});
  } else {
    launch(count, ChannelWalker<std::int64_t>{spatial, channels * spatial});
  }
}

// Step-1 grid: x = the chunks of a channel, y = channels (at most 65535; the kernels loop).
dim3 partial_grid(const Chunking& chunk, std::int64_t channels) {
  return dim3(static_cast<unsigned>(chunk.chunks),
              static_cast<unsigned>(channels < 65535 ? channels : 65535));
}

// Calls launch(total) with a 32-bit index when the elementwise pass's grid-stride loop
// cannot overflow it, else 64-bit.
template <typename Launch>
void with_flat_index(std::int64_t total, const Launch& launch) {
  const std::int64_t largest_stride = detail::kMaxGridBlocks * kElementwiseBlock;
  if (total <= static_cast<std::int64_t>(UINT32_MAX) - largest_stride) {
    launch(static_cast<std::uint32_t>(total));
  } else {
    launch(total);
  }
}

template <bool kRelu, typename T>
void forward_train(const char* op, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                   const T* x, const T* gamma, const T* beta, T eps, T momentum, T* running_mean,
                   T* running_var, T* y, T* save_mean, T* save_invstd, double* workspace,
                   cudaStream_t stream) {
  check_sizes(op, batch, channels, spatial);
  const std::int64_t count = batch * spatial;
  if (channels == 0) return;
  SELA_CHECK(count > 1, op,
             "expected more than 1 value per channel when training, got input (N, C, spatial) = ("
                 << batch << ", " << channels << ", " << spatial << ")");
  check_eps(op, eps);
  SELA_CHECK((running_mean == nullptr) == (running_var == nullptr), op,
             "running_mean and running_var must both be given or both be nullptr");
  detail::check_pointers(op, true, {x, y, save_mean, save_invstd, workspace});
  const Chunking chunk = chunking(count);
  const WorkspaceLayout layout = workspace_layout(channels, count);
  double* partials = workspace + layout.partials;
  double* constants = workspace + layout.constants;
  with_walker(batch, channels, spatial, [&](auto n, auto walk) {
    using Index = decltype(n);
    forward_partial_kernel<<<partial_grid(chunk, channels), kPartialBlock, 0, stream>>>(
        channels, n, static_cast<Index>(chunk.length), walk, x, partials);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
  forward_finish_kernel<<<static_cast<unsigned>(channels), 32, 0, stream>>>(
      count, chunk.chunks, x, spatial, gamma, beta, eps, momentum, running_mean, running_var,
      save_mean, save_invstd, partials, constants);
  SELA_CUDA_CHECK_LAUNCH(op);
  with_flat_index(batch * channels * spatial, [&](auto total) {
    using Index = decltype(total);
    forward_apply_kernel<kRelu>
        <<<detail::grid_for(total, kElementwiseBlock), kElementwiseBlock, 0, stream>>>(
            total, static_cast<Index>(spatial), static_cast<Index>(channels), x, constants, y);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
}

template <bool kRelu, typename T>
void backward_train(const char* op, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                    const T* x, const T* grad_y, const T* relu_output, const T* gamma,
                    const T* save_mean, const T* save_invstd, T* grad_x, T* grad_gamma,
                    T* grad_beta, double* workspace, cudaStream_t stream) {
  check_sizes(op, batch, channels, spatial);
  const std::int64_t count = batch * spatial;
  if (channels == 0) return;
  SELA_CHECK(count > 0, op,
             "no values per channel: (N, C, spatial) = (" << batch << ", " << channels << ", "
                                                          << spatial << ")");
  detail::check_pointers(op, true, {x, grad_y, save_mean, save_invstd, grad_x, workspace});
  if (kRelu) detail::check_pointers(op, true, {relu_output});
  const Chunking chunk = chunking(count);
  const WorkspaceLayout layout = workspace_layout(channels, count);
  double* partials = workspace + layout.partials;
  double* constants = workspace + layout.constants;
  with_walker(batch, channels, spatial, [&](auto n, auto walk) {
    using Index = decltype(n);
    backward_partial_kernel<kRelu><<<partial_grid(chunk, channels), kPartialBlock, 0, stream>>>(
        channels, n, static_cast<Index>(chunk.length), walk, x, grad_y, relu_output, save_mean,
        partials);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
  backward_finish_kernel<<<static_cast<unsigned>(channels), 32, 0, stream>>>(
      count, chunk.chunks, gamma, save_invstd, grad_gamma, grad_beta, partials, constants);
  SELA_CUDA_CHECK_LAUNCH(op);
  with_flat_index(batch * channels * spatial, [&](auto total) {
    using Index = decltype(total);
    backward_apply_kernel<kRelu>
        <<<detail::grid_for(total, kElementwiseBlock), kElementwiseBlock, 0, stream>>>(
            total, static_cast<Index>(spatial), static_cast<Index>(channels), x, grad_y,
            relu_output, save_mean, constants, grad_x);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

std::int64_t batch_norm_workspace_size(std::int64_t batch, std::int64_t channels,
                                       std::int64_t spatial) {
  check_sizes("batch_norm_workspace_size", batch, channels, spatial);
  return workspace_layout(channels, batch * spatial).total;
}

template <typename T>
void batch_norm_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* x, const T* gamma, const T* beta, T eps, T momentum,
                              T* running_mean, T* running_var, T* y, T* save_mean, T* save_invstd,
                              double* workspace, cudaStream_t stream) {
  forward_train<false>("batch_norm_forward_train", batch, channels, spatial, x, gamma, beta, eps,
                       momentum, running_mean, running_var, y, save_mean, save_invstd, workspace,
                       stream);
}

template <typename T>
void batch_norm_relu_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                                   const T* x, const T* gamma, const T* beta, T eps, T momentum,
                                   T* running_mean, T* running_var, T* y, T* save_mean,
                                   T* save_invstd, double* workspace, cudaStream_t stream) {
  forward_train<true>("batch_norm_relu_forward_train", batch, channels, spatial, x, gamma, beta,
                      eps, momentum, running_mean, running_var, y, save_mean, save_invstd,
                      workspace, stream);
}

template <typename T>
void batch_norm_forward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             const T* x, const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, T eps, T* y, cudaStream_t stream) {
  const char* op = "batch_norm_forward_eval";
  check_sizes(op, batch, channels, spatial);
  check_eps(op, eps);
  if (channels == 0 || batch * spatial == 0) return;
  detail::check_pointers(op, true, {x, running_mean, running_var, y});
  with_walker(batch, channels, spatial, [&](auto n, auto walk) {
    eval_affine_kernel<<<channel_grid(channels), kBatchNormBlock, 0, stream>>>(
        channels, n, walk, x, gamma, beta, running_mean, running_var, eps, y);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
}

template <typename T>
void batch_norm_backward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                               const T* x, const T* grad_y, const T* gamma, const T* save_mean,
                               const T* save_invstd, T* grad_x, T* grad_gamma, T* grad_beta,
                               double* workspace, cudaStream_t stream) {
  backward_train<false>("batch_norm_backward_train", batch, channels, spatial, x, grad_y,
                        static_cast<const T*>(nullptr), gamma, save_mean, save_invstd, grad_x,
                        grad_gamma, grad_beta, workspace, stream);
}

template <typename T>
void batch_norm_relu_backward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                                    const T* x, const T* grad_y, const T* relu_output,
                                    const T* gamma, const T* save_mean, const T* save_invstd,
                                    T* grad_x, T* grad_gamma, T* grad_beta, double* workspace,
                                    cudaStream_t stream) {
  backward_train<true>("batch_norm_relu_backward_train", batch, channels, spatial, x, grad_y,
                       relu_output, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta,
                       workspace, stream);
}

template <typename T>
void batch_norm_backward_eval(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* grad_y, const T* gamma, const T* running_var, T eps,
                              T* grad_x, cudaStream_t stream) {
  const char* op = "batch_norm_backward_eval";
  check_sizes(op, batch, channels, spatial);
  check_eps(op, eps);
  if (channels == 0 || batch * spatial == 0) return;
  detail::check_pointers(op, true, {grad_y, running_var, grad_x});
  with_walker(batch, channels, spatial, [&](auto n, auto walk) {
    eval_affine_kernel<<<channel_grid(channels), kBatchNormBlock, 0, stream>>>(
        channels, n, walk, grad_y, gamma, static_cast<const T*>(nullptr),
        static_cast<const T*>(nullptr), running_var, eps, grad_x);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
}

#define SELA_INSTANTIATE_BATCHNORM(T)                                                              \
  template void batch_norm_forward_train<T>(std::int64_t, std::int64_t, std::int64_t, const T*,    \
                                            const T*, const T*, T, T, T*, T*, T*, T*, T*, double*, \
                                            cudaStream_t);                                         \
  template void batch_norm_forward_eval<T>(std::int64_t, std::int64_t, std::int64_t, const T*,     \
                                           const T*, const T*, const T*, const T*, T, T*,          \
                                           cudaStream_t);                                          \
  template void batch_norm_backward_train<T>(std::int64_t, std::int64_t, std::int64_t, const T*,   \
                                             const T*, const T*, const T*, const T*, T*, T*, T*,   \
                                             double*, cudaStream_t);                               \
  template void batch_norm_relu_forward_train<T>(std::int64_t, std::int64_t, std::int64_t,         \
                                                 const T*, const T*, const T*, T, T, T*, T*, T*,   \
                                                 T*, T*, double*, cudaStream_t);                   \
  template void batch_norm_relu_backward_train<T>(                                                 \
      std::int64_t, std::int64_t, std::int64_t, const T*, const T*, const T*, const T*, const T*,  \
      const T*, T*, T*, T*, double*, cudaStream_t);                                                \
  template void batch_norm_backward_eval<T>(std::int64_t, std::int64_t, std::int64_t, const T*,    \
                                            const T*, const T*, T, T*, cudaStream_t);

SELA_INSTANTIATE_BATCHNORM(float)
SELA_INSTANTIATE_BATCHNORM(double)
#undef SELA_INSTANTIATE_BATCHNORM

}  // namespace sela::cuda
