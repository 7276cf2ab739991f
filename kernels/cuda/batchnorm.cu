// Batch normalisation on CUDA (see batchnorm.cuh).
//
// Block b handles channels b, b + gridDim.x, ...; inside a channel, thread t visits the
// channel's values j = t, t + kBatchNormBlock, ... (j = n * spatial + s, element
// (n * C + c) * spatial + s): consecutive threads read consecutive addresses within an
// (n, c) run. The split of j into (n, s) is a division, done in 32-bit arithmetic when a
// channel has fewer than 2^32 values (ChannelWalker<std::uint32_t>), 64-bit otherwise.
// The passes are those of the CPU kernel: mean, squared deviations, write (forward); sums
// of dy and dy * (x - mean), write (backward). Each pass re-reads the channel; a split of
// a channel over several blocks (with a workspace) would give more parallelism when C is
// small and N * spatial large — not done yet.
#include "kernels/cuda/batchnorm.cuh"

#include "kernels/cuda/kernel_common.cuh"

namespace sela::cuda {
namespace {

constexpr int kBatchNormBlock = 512;

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

template <typename T, typename Index>
__global__ void forward_train_kernel(std::int64_t channels, Index count, ChannelWalker<Index> walk,
                                     const T* x, const T* gamma, const T* beta, T eps, T momentum,
                                     T* running_mean, T* running_var, T* y, T* save_mean,
                                     T* save_invstd) {
  for (std::int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const std::int64_t base = c * static_cast<std::int64_t>(walk.spatial);
    double acc = 0.0;
    for (Index j = threadIdx.x; j < count; j += kBatchNormBlock)
      acc += static_cast<double>(x[walk.element(base, j)]);
    const double mean = detail::block_sum<kBatchNormBlock>(acc) / static_cast<double>(count);

    double squares = 0.0;
    for (Index j = threadIdx.x; j < count; j += kBatchNormBlock) {
      const double d = static_cast<double>(x[walk.element(base, j)]) - mean;
      squares += d * d;
    }
    const double squared_deviation = detail::block_sum<kBatchNormBlock>(squares);
    const double var_biased = squared_deviation / static_cast<double>(count);
    const double var_unbiased = squared_deviation / static_cast<double>(count - 1);
    const double invstd = 1.0 / sqrt(var_biased + static_cast<double>(eps));

    if (threadIdx.x == 0) {
      save_mean[c] = static_cast<T>(mean);
      save_invstd[c] = static_cast<T>(invstd);
      if (running_mean != nullptr) {
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * static_cast<T>(mean);
        running_var[c] =
            (T(1) - momentum) * running_var[c] + momentum * static_cast<T>(var_unbiased);
      }
    }
    const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
    const double b = beta != nullptr ? static_cast<double>(beta[c]) : 0.0;
    const T center = static_cast<T>(mean), scale = static_cast<T>(g * invstd),
            shift = static_cast<T>(b);
    for (Index j = threadIdx.x; j < count; j += kBatchNormBlock) {
      const std::int64_t e = walk.element(base, j);
      y[e] = (x[e] - center) * scale + shift;
    }
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

template <typename T, typename Index>
__global__ void backward_train_kernel(std::int64_t channels, Index count, ChannelWalker<Index> walk,
                                      const T* x, const T* grad_y, const T* gamma,
                                      const T* save_mean, const T* save_invstd, T* grad_x,
                                      T* grad_gamma, T* grad_beta) {
  for (std::int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const std::int64_t base = c * static_cast<std::int64_t>(walk.spatial);
    const double mean = static_cast<double>(save_mean[c]);
    const double invstd = static_cast<double>(save_invstd[c]);
    double dy_acc = 0.0, dy_x_acc = 0.0;
    for (Index j = threadIdx.x; j < count; j += kBatchNormBlock) {
      const std::int64_t e = walk.element(base, j);
      const double dy = static_cast<double>(grad_y[e]);
      dy_acc += dy;
      dy_x_acc += dy * (static_cast<double>(x[e]) - mean);
    }
    const double sum_dy = detail::block_sum<kBatchNormBlock>(dy_acc);
    const double sum_dy_xhat = detail::block_sum<kBatchNormBlock>(dy_x_acc) * invstd;
    if (threadIdx.x == 0) {
      if (grad_gamma != nullptr) grad_gamma[c] = static_cast<T>(sum_dy_xhat);
      if (grad_beta != nullptr) grad_beta[c] = static_cast<T>(sum_dy);
    }
    // grad_x = dy * k + (x - mean) * a + b, the CPU kernel's per-channel constants.
    const double g = gamma != nullptr ? static_cast<double>(gamma[c]) : 1.0;
    const double k = g * invstd;
    const double mean_dy = sum_dy / static_cast<double>(count);
    const double mean_dy_xhat = sum_dy_xhat / static_cast<double>(count);
    const T k_t = static_cast<T>(k), a_t = static_cast<T>(-k * invstd * mean_dy_xhat),
            b_t = static_cast<T>(-k * mean_dy), mean_t = save_mean[c];
    for (Index j = threadIdx.x; j < count; j += kBatchNormBlock) {
      const std::int64_t e = walk.element(base, j);
      grad_x[e] = grad_y[e] * k_t + (x[e] - mean_t) * a_t + b_t;
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

}  // namespace

template <typename T>
void batch_norm_forward_train(std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                              const T* x, const T* gamma, const T* beta, T eps, T momentum,
                              T* running_mean, T* running_var, T* y, T* save_mean, T* save_invstd,
                              cudaStream_t stream) {
  const char* op = "batch_norm_forward_train";
  check_sizes(op, batch, channels, spatial);
  const std::int64_t count = batch * spatial;
  if (channels == 0) return;
  SELA_CHECK(count > 1, op,
             "expected more than 1 value per channel when training, got input (N, C, spatial) = ("
                 << batch << ", " << channels << ", " << spatial << ")");
  check_eps(op, eps);
  SELA_CHECK((running_mean == nullptr) == (running_var == nullptr), op,
             "running_mean and running_var must both be given or both be nullptr");
  detail::check_pointers(op, true, {x, y, save_mean, save_invstd});
  with_walker(batch, channels, spatial, [&](auto n, auto walk) {
    forward_train_kernel<<<channel_grid(channels), kBatchNormBlock, 0, stream>>>(
        channels, n, walk, x, gamma, beta, eps, momentum, running_mean, running_var, y, save_mean,
        save_invstd);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
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
                               cudaStream_t stream) {
  const char* op = "batch_norm_backward_train";
  check_sizes(op, batch, channels, spatial);
  const std::int64_t count = batch * spatial;
  if (channels == 0) return;
  SELA_CHECK(count > 0, op,
             "no values per channel: (N, C, spatial) = (" << batch << ", " << channels << ", "
                                                          << spatial << ")");
  detail::check_pointers(op, true, {x, grad_y, save_mean, save_invstd, grad_x});
  with_walker(batch, channels, spatial, [&](auto n, auto walk) {
    backward_train_kernel<<<channel_grid(channels), kBatchNormBlock, 0, stream>>>(
        channels, n, walk, x, grad_y, gamma, save_mean, save_invstd, grad_x, grad_gamma, grad_beta);
  });
  SELA_CUDA_CHECK_LAUNCH(op);
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

#define SELA_INSTANTIATE_BATCHNORM(T)                                                            \
  template void batch_norm_forward_train<T>(std::int64_t, std::int64_t, std::int64_t, const T*,  \
                                            const T*, const T*, T, T, T*, T*, T*, T*, T*,        \
                                            cudaStream_t);                                       \
  template void batch_norm_forward_eval<T>(std::int64_t, std::int64_t, std::int64_t, const T*,   \
                                           const T*, const T*, const T*, const T*, T, T*,        \
                                           cudaStream_t);                                        \
  template void batch_norm_backward_train<T>(std::int64_t, std::int64_t, std::int64_t, const T*, \
                                             const T*, const T*, const T*, const T*, T*, T*, T*, \
                                             cudaStream_t);                                      \
  template void batch_norm_backward_eval<T>(std::int64_t, std::int64_t, std::int64_t, const T*,  \
                                            const T*, const T*, T, T*, cudaStream_t);

SELA_INSTANTIATE_BATCHNORM(float)
SELA_INSTANTIATE_BATCHNORM(double)
#undef SELA_INSTANTIATE_BATCHNORM

}  // namespace sela::cuda
