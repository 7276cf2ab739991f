// Implementation of engine/ops_cuda.h: each function picks the element type, takes the
// device pointers of its tensors and queues the kernel of kernels/cuda/ on the device's one
// stream (the device made current for the calling thread first). Temporary buffers (sum
// workspace, broadcast factors) are tensors from the caching device allocator, freed in
// stream order, so a steady-state training step makes no cudaMalloc.
//
// Deferred errors: the cross-entropy kernel reports the first row whose target is outside
// [0, K) in a device slot instead of stopping the host. Each call takes one slot of a
// per-device array (kSlots int64, allocated once); raise_deferred_errors() — called by
// engine/tensor.cpp after every host wait on the device — reads the used slots back (one
// small copy) and throws for the first bad one. When all slots are in use the host waits
// and checks before handing out the next one.
//
// Compiled to nothing without the CUDA backend (see engine/ops_cuda.h).
#include "engine/ops_cuda.h"

#if defined(SELA_HAVE_CUDA)

#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "engine/cuda_graph.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/pool.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/softmax.cuh"
#include "kernels/cuda/stream.h"

namespace sela::cuda_ops {
namespace {

// The stream of the device `t` lives on (device_stream makes that device current).
cudaStream_t stream_of(const Tensor& t) { return cuda::device_stream(t.device().index); }

// Calls fn(T{}) with T = float or double according to t's dtype.
template <typename Fn>
void floating(const Tensor& t, const char* op, Fn&& fn) {
  if (t.dtype() == DType::f32) {
    fn(float{});
  } else if (t.dtype() == DType::f64) {
    fn(double{});
  } else {
    SELA_FAIL(op, "needs float32 or float64 tensors on the GPU, got " << t.describe());
  }
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.device_data<T>();
}

// nullptr for an undefined (optional) tensor.
template <typename T>
T* optional(const Tensor& t) {
  return t.defined() ? t.device_data<T>() : nullptr;
}

// (N, C, spatial) of a batch-norm input (N, C, H, W) or (N, C).
struct ChannelSizes {
  std::int64_t batch, channels, spatial;
};
ChannelSizes channel_sizes(const Tensor& x) {
  const std::int64_t batch = x.size(0), channels = x.size(1);
  return {batch, channels, batch * channels == 0 ? 0 : x.numel() / (batch * channels)};
}

// --- deferred errors -------------------------------------------------------------------------

constexpr std::int64_t kSlots = 1024;

struct PendingCheck {
  std::string logits;  // description of the logits checked
  std::int64_t classes = 0;
};

struct DeviceChecks {
  Tensor slots;  // (kSlots) int64 on the device: -1 or the first row with a bad target
  std::vector<PendingCheck> pending;  // one per used slot, in slot order
};

struct CheckRegistry {
  std::mutex mutex;
  std::map<int, DeviceChecks> devices;
};

CheckRegistry& registry() {
  static CheckRegistry* instance = new CheckRegistry();  // never destroyed (outlives tensors)
  return *instance;
}

// Reads the used slots of `device` (the caller holds the lock), forgets them, and returns
// the error to raise, if any ("" when all targets were valid).
std::string collect_locked(int device, DeviceChecks& checks) {
  if (checks.pending.empty()) return "";
  std::vector<std::int64_t> rows(checks.pending.size());
  cudaStream_t stream = cuda::device_stream(device);
  SELA_CUDA_CHECK(cudaMemcpyAsync(rows.data(), checks.slots.device_data<std::int64_t>(),
                                  rows.size() * sizeof(std::int64_t), cudaMemcpyDeviceToHost,
                                  stream));
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<PendingCheck> pending;
  pending.swap(checks.pending);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0) continue;
    std::ostringstream message;
    message << "the target of row " << rows[i] << " is outside [0, " << pending[i].classes
            << ") for logits " << pending[i].logits
            << " (found on the GPU, reported at the next host read; the loss was NaN)";
    return message.str();
  }
  return "";
}

// A device slot for one cross-entropy call on `device` (the capturing graph's own slot
// while a CUDA graph is being captured: see engine/cuda_graph.h).
std::int64_t* reserve_slot(int device, const Tensor& logits) {
  if (graph::capturing(logits.device())) {
    return graph::error_slot(logits.device(), logits.describe(), logits.size(1));
  }
  CheckRegistry& r = registry();
  std::string error;
  std::int64_t* slot = nullptr;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    DeviceChecks& checks = r.devices[device];
    if (!checks.slots.defined()) {
      checks.slots = Tensor::empty({kSlots}, DType::i64, Device::cuda(device), "cross_entropy");
    }
    if (static_cast<std::int64_t>(checks.pending.size()) == kSlots) {
      error = collect_locked(device, checks);  // waits for the device
    }
    if (error.empty()) {
      slot = checks.slots.device_data<std::int64_t>() +
             static_cast<std::int64_t>(checks.pending.size());
      checks.pending.push_back({logits.describe(), logits.size(1)});
    }
  }
  if (!error.empty()) SELA_FAIL_HINT("cross_entropy", error, "labels must be in [0, K)");
  return slot;
}

}  // namespace

void raise_deferred_errors(int device) {
  CheckRegistry& r = registry();
  std::string error;
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    auto found = r.devices.find(device);
    if (found != r.devices.end()) error = collect_locked(device, found->second);
  }
  if (error.empty()) error = graph::collect_replay_errors(device);
  if (!error.empty()) SELA_FAIL_HINT("cross_entropy", error, "labels must be in [0, K)");
}

// --- elementwise -------------------------------------------------------------------------------

void add(const Tensor& a, const Tensor& b, const Tensor& out) {
  floating(a, "add", [&](auto tag) {
    using T = decltype(tag);
    cuda::add<T>(a.numel(), ptr<T>(a), ptr<T>(b), ptr<T>(out), stream_of(a));
  });
}

void mul(const Tensor& a, const Tensor& b, const Tensor& out) {
  floating(a, "mul", [&](auto tag) {
    using T = decltype(tag);
    cuda::mul<T>(a.numel(), ptr<T>(a), ptr<T>(b), ptr<T>(out), stream_of(a));
  });
}

void scale(const Tensor& a, double factor, const Tensor& out) {
  floating(a, "scale", [&](auto tag) {
    using T = decltype(tag);
    cuda::scale<T>(a.numel(), static_cast<T>(factor), ptr<T>(a), ptr<T>(out), stream_of(a));
  });
}

void add_into(const Tensor& destination, const Tensor& source) {
  floating(destination, "add_into", [&](auto tag) {
    using T = decltype(tag);
    cuda::axpy<T>(destination.numel(), T(1), ptr<T>(source), ptr<T>(destination),
                  stream_of(destination));
  });
}

void relu_forward(const Tensor& x, const Tensor& out) {
  floating(x, "relu", [&](auto tag) {
    using T = decltype(tag);
    cuda::relu_forward<T>(x.numel(), ptr<T>(x), ptr<T>(out), stream_of(x));
  });
}

void relu_backward(const Tensor& output, const Tensor& grad, const Tensor& grad_x) {
  floating(grad, "relu_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::relu_backward<T>(grad.numel(), ptr<T>(output), ptr<T>(grad), ptr<T>(grad_x),
                           stream_of(grad));
  });
}

// --- reductions ----------------------------------------------------------------------------------

void sum(const Tensor& x, double factor, const Tensor& out) {
  floating(x, "sum", [&](auto tag) {
    using T = decltype(tag);
    cudaStream_t stream = stream_of(x);
    const std::int64_t n = x.numel();
    if (n == 0) {
      cuda::fill<T>(1, T(0), ptr<T>(out), stream);
      return;
    }
    Tensor workspace = Tensor::empty({cuda::sum_workspace_size(n)}, DType::f64, x.device(), "sum");
    cuda::sum_into<T>(n, ptr<T>(x), ptr<double>(workspace), ptr<T>(out), stream);
    if (factor != 1.0) cuda::scale<T>(1, static_cast<T>(factor), ptr<T>(out), ptr<T>(out), stream);
  });
}

void broadcast_scalar(const Tensor& value, double factor, const Tensor& out) {
  floating(out, "broadcast", [&](auto tag) {
    using T = decltype(tag);
    cudaStream_t stream = stream_of(out);
    const std::int64_t n = out.numel();
    if (n == 0) return;
    // out = 0, then out[i] += value[0] (a (n, 1) matrix plus a one-element row bias)
    cuda::fill<T>(n, T(0), ptr<T>(out), stream);
    cuda::add_row_bias<T>(n, 1, ptr<T>(value), ptr<T>(out), stream);
    if (factor != 1.0) cuda::scale<T>(n, static_cast<T>(factor), ptr<T>(out), ptr<T>(out), stream);
  });
}

void argmax_rows(const Tensor& x, const Tensor& out) {
  floating(x, "argmax", [&](auto tag) {
    using T = decltype(tag);
    cuda::argmax_rows<T>(x.size(0), x.size(1), ptr<T>(x), ptr<std::int64_t>(out), stream_of(x));
  });
}

// --- linear algebra ------------------------------------------------------------------------------

void matmul(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
            const Tensor& a, const Tensor& b, const Tensor& c) {
  floating(a, "matmul", [&](auto tag) {
    using T = decltype(tag);
    cuda::gemm<T>(transpose_a, transpose_b, m, n, k, T(1), ptr<T>(a), transpose_a ? m : k,
                  ptr<T>(b), transpose_b ? k : n, T(0), ptr<T>(c), n, stream_of(a));
  });
}

void add_row_bias(const Tensor& bias, const Tensor& out) {
  floating(out, "linear", [&](auto tag) {
    using T = decltype(tag);
    cuda::add_row_bias<T>(out.size(0), out.size(1), ptr<T>(bias), ptr<T>(out), stream_of(out));
  });
}

void sum_rows(const Tensor& x, const Tensor& out) {
  floating(x, "sum_rows", [&](auto tag) {
    using T = decltype(tag);
    cuda::sum_rows<T>(x.size(0), x.size(1), ptr<T>(x), ptr<T>(out), stream_of(x));
  });
}

// --- convolution and pooling ---------------------------------------------------------------------

void conv2d_forward(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& weight,
                    const Tensor& bias, const Tensor& out) {
  floating(x, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    cuda::conv2d_forward<T>(s, ptr<T>(x), ptr<T>(weight), optional<T>(bias), ptr<T>(out),
                            stream_of(x));
  });
}

void conv2d_backward_input(const cpu::Conv2dShape& s, const Tensor& grad, const Tensor& weight,
                           const Tensor& grad_x) {
  floating(grad, "conv2d_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::conv2d_backward_input<T>(s, ptr<T>(grad), ptr<T>(weight), ptr<T>(grad_x),
                                   stream_of(grad));
  });
}

void conv2d_backward_weight(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& grad,
                            const Tensor& grad_weight, const Tensor& grad_bias) {
  floating(grad, "conv2d_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::conv2d_backward_weight<T>(s, ptr<T>(x), ptr<T>(grad), ptr<T>(grad_weight),
                                    optional<T>(grad_bias), stream_of(grad));
  });
}

void max_pool2d_forward(const cpu::Pool2dShape& s, const Tensor& x, const Tensor& out,
                        const Tensor& argmax) {
  floating(x, "max_pool2d", [&](auto tag) {
    using T = decltype(tag);
    cuda::max_pool2d_forward<T>(s, ptr<T>(x), ptr<T>(out), ptr<std::int32_t>(argmax), stream_of(x));
  });
}

void max_pool2d_backward(const cpu::Pool2dShape& s, const Tensor& grad, const Tensor& argmax,
                         const Tensor& grad_x) {
  floating(grad, "max_pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::max_pool2d_backward<T>(s, ptr<T>(grad), ptr<std::int32_t>(argmax), ptr<T>(grad_x),
                                 stream_of(grad));
  });
}

// --- batch normalisation -------------------------------------------------------------------------

// The chunk sums of the training kernels (kernels/cuda/batchnorm.cuh), from the caching
// allocator: returned to it when the op returns, reused by the next op on the stream.
Tensor batch_norm_workspace(const ChannelSizes& n, Device device) {
  return Tensor::empty({cuda::batch_norm_workspace_size(n.batch, n.channels, n.spatial)},
                       DType::f64, device, "batch_norm2d workspace");
}

void batch_norm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                              double momentum, const Tensor& running_mean,
                              const Tensor& running_var, const Tensor& out, const Tensor& save_mean,
                              const Tensor& save_invstd, bool relu) {
  const ChannelSizes n = channel_sizes(x);
  const Tensor workspace = batch_norm_workspace(n, x.device());
  floating(x, "batch_norm2d", [&](auto tag) {
    using T = decltype(tag);
    const auto forward = relu ? cuda::batch_norm_relu_forward_train<T>
                              : cuda::batch_norm_forward_train<T>;
    forward(n.batch, n.channels, n.spatial, ptr<T>(x), optional<T>(gamma), optional<T>(beta),
            static_cast<T>(eps), static_cast<T>(momentum), optional<T>(running_mean),
            optional<T>(running_var), ptr<T>(out), ptr<T>(save_mean), ptr<T>(save_invstd),
            ptr<double>(workspace), stream_of(x));
  });
}

void batch_norm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             const Tensor& running_mean, const Tensor& running_var, double eps,
                             const Tensor& out) {
  const ChannelSizes n = channel_sizes(x);
  floating(x, "batch_norm2d", [&](auto tag) {
    using T = decltype(tag);
    cuda::batch_norm_forward_eval<T>(n.batch, n.channels, n.spatial, ptr<T>(x), optional<T>(gamma),
                                     optional<T>(beta), ptr<T>(running_mean), ptr<T>(running_var),
                                     static_cast<T>(eps), ptr<T>(out), stream_of(x));
  });
}

void batch_norm_backward_train(const Tensor& x, const Tensor& grad, const Tensor& gamma,
                               const Tensor& save_mean, const Tensor& save_invstd,
                               const Tensor& grad_x, const Tensor& grad_gamma,
                               const Tensor& grad_beta, const Tensor& relu_output) {
  const ChannelSizes n = channel_sizes(x);
  const Tensor workspace = batch_norm_workspace(n, x.device());
  floating(x, "batch_norm2d_backward", [&](auto tag) {
    using T = decltype(tag);
    if (relu_output.defined()) {
      cuda::batch_norm_relu_backward_train<T>(
          n.batch, n.channels, n.spatial, ptr<T>(x), ptr<T>(grad), ptr<T>(relu_output),
          optional<T>(gamma), ptr<T>(save_mean), ptr<T>(save_invstd), ptr<T>(grad_x),
          optional<T>(grad_gamma), optional<T>(grad_beta), ptr<double>(workspace), stream_of(x));
      return;
    }
    cuda::batch_norm_backward_train<T>(n.batch, n.channels, n.spatial, ptr<T>(x), ptr<T>(grad),
                                       optional<T>(gamma), ptr<T>(save_mean), ptr<T>(save_invstd),
                                       ptr<T>(grad_x), optional<T>(grad_gamma),
                                       optional<T>(grad_beta), ptr<double>(workspace),
                                       stream_of(x));
  });
}

void batch_norm_backward_eval(const Tensor& grad, const Tensor& gamma, const Tensor& running_var,
                              double eps, const Tensor& grad_x) {
  const ChannelSizes n = channel_sizes(grad);
  floating(grad, "batch_norm2d_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::batch_norm_backward_eval<T>(n.batch, n.channels, n.spatial, ptr<T>(grad),
                                      optional<T>(gamma), ptr<T>(running_var), static_cast<T>(eps),
                                      ptr<T>(grad_x), stream_of(grad));
  });
}

void batch_norm_eval_parameter_grads(const Tensor& x, const Tensor& grad,
                                     const Tensor& running_mean, const Tensor& running_var,
                                     double eps, const Tensor& grad_gamma,
                                     const Tensor& grad_beta) {
  // The training backward's parameter gradients are exactly these sums when it is given
  // mean = running_mean and invstd = 1 / sqrt(running_var + eps). invstd comes from the eval
  // forward of ones with mean 0 and no affine part: (1 - 0) * invstd. The training
  // backward's grad_x goes to a scratch buffer.
  const ChannelSizes n = channel_sizes(x);
  floating(x, "batch_norm2d_backward", [&](auto tag) {
    using T = decltype(tag);
    cudaStream_t stream = stream_of(x);
    const Device device = x.device();
    Tensor ones = Tensor::empty({n.channels}, x.dtype(), device, "batch_norm2d_backward");
    Tensor zeros = Tensor::empty({n.channels}, x.dtype(), device, "batch_norm2d_backward");
    Tensor invstd = Tensor::empty({n.channels}, x.dtype(), device, "batch_norm2d_backward");
    Tensor scratch = Tensor::empty(x.shape(), x.dtype(), device, "batch_norm2d_backward");
    const Tensor workspace = batch_norm_workspace(n, device);
    cuda::fill<T>(n.channels, T(1), ptr<T>(ones), stream);
    cuda::fill<T>(n.channels, T(0), ptr<T>(zeros), stream);
    cuda::batch_norm_forward_eval<T>(1, n.channels, 1, ptr<T>(ones), nullptr, nullptr,
                                     ptr<T>(zeros), ptr<T>(running_var), static_cast<T>(eps),
                                     ptr<T>(invstd), stream);
    cuda::batch_norm_backward_train<T>(
        n.batch, n.channels, n.spatial, ptr<T>(x), ptr<T>(grad), nullptr, ptr<T>(running_mean),
        ptr<T>(invstd), ptr<T>(scratch), optional<T>(grad_gamma), optional<T>(grad_beta),
        ptr<double>(workspace), stream);
  });
}

// --- dropout -------------------------------------------------------------------------------------

// --- bf16 mixed precision ---------------------------------------------------------------------

namespace {
std::uint16_t* bits(const Tensor& t) {  // a bfloat16 tensor's storage
  SELA_CHECK(t.dtype() == DType::bf16, "bfloat16", "expected a bfloat16 tensor, got " << t.describe());
  return static_cast<std::uint16_t*>(t.raw_device_data());
}
std::int64_t spatial_of(const Tensor& t) { return t.size(2) * t.size(3); }
}  // namespace

Tensor to_bfloat16(const Tensor& x) {
  SELA_CHECK(x.dtype() == DType::f32, "to_bfloat16", "expected float32, got " << x.describe());
  Tensor out = Tensor::empty(x.shape(), DType::bf16, x.device(), "to_bfloat16");
  cuda::cast_float_to_bfloat16(x.numel(), ptr<float>(x), bits(out), stream_of(x));
  return out;
}

void conv2d_forward_bfloat16(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& weight,
                             const Tensor& bias, const Tensor& out) {
  cudaStream_t stream = stream_of(x);
  Tensor y = Tensor::empty(out.shape(), DType::bf16, out.device(), "conv2d (bf16)");
  cuda::conv2d_forward_bfloat16(s, bits(x), bits(weight), bits(y), stream);
  cuda::bfloat16_to_float_add_channel_bias(out.size(0), out.size(1), spatial_of(out), bits(y),
                                           optional<float>(bias), ptr<float>(out), stream);
}

void conv2d_backward_bfloat16(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& weight,
                              const Tensor& grad, const Tensor& grad_x, const Tensor& grad_w,
                              const Tensor& grad_b) {
  cudaStream_t stream = stream_of(grad);
  Tensor grad16 = to_bfloat16(grad);
  if (grad_x.defined()) {
    Tensor g = Tensor::empty(grad_x.shape(), DType::bf16, grad_x.device(), "conv2d_backward (bf16)");
    cuda::conv2d_backward_input_bfloat16(s, bits(grad16), bits(weight), bits(g), stream);
    cuda::cast_bfloat16_to_float(g.numel(), bits(g), ptr<float>(grad_x), stream);
  }
  if (grad_w.defined()) {
    Tensor g = Tensor::empty(grad_w.shape(), DType::bf16, grad_w.device(), "conv2d_backward (bf16)");
    cuda::conv2d_backward_weight_bfloat16(s, bits(x), bits(grad16), bits(g), stream);
    cuda::cast_bfloat16_to_float(g.numel(), bits(g), ptr<float>(grad_w), stream);
  }
  if (grad_b.defined()) {
    cuda::sum_channels(grad.size(0), grad.size(1), spatial_of(grad), ptr<float>(grad),
                       ptr<float>(grad_b), stream);
  }
}

void linear_forward_bfloat16(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& out) {
  const std::int64_t batch = x.size(0), in = x.size(1), features = weight.size(0);
  cuda::gemm_bfloat16(false, true, batch, features, in, 1.0f, bits(x), in, bits(weight), in, 0.0f,
                      ptr<float>(out), features, stream_of(x));
  if (bias.defined()) add_row_bias(bias, out);
}

void linear_backward_bfloat16(const Tensor& x, const Tensor& weight, const Tensor& grad,
                              const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b) {
  const std::int64_t batch = x.size(0), in = x.size(1), features = weight.size(0);
  cudaStream_t stream = stream_of(grad);
  Tensor grad16 = to_bfloat16(grad);
  if (grad_x.defined()) {  // dx (N, in) = dy (N, out) W (out, in)
    cuda::gemm_bfloat16(false, false, batch, in, features, 1.0f, bits(grad16), features,
                        bits(weight), in, 0.0f, ptr<float>(grad_x), in, stream);
  }
  if (grad_w.defined()) {  // dW (out, in) = dy^T x
    cuda::gemm_bfloat16(true, false, features, in, batch, 1.0f, bits(grad16), features, bits(x),
                        in, 0.0f, ptr<float>(grad_w), in, stream);
  }
  if (grad_b.defined()) sum_rows(grad, grad_b);
}

void dropout_forward(const Tensor& x, double p, std::uint64_t seed, std::uint64_t offset,
                     const std::int64_t* device_offset, const Tensor& out, const Tensor& mask) {
  floating(x, "dropout", [&](auto tag) {
    using T = decltype(tag);
    cuda::dropout_forward<T>(x.numel(), ptr<T>(x), static_cast<T>(p), seed, offset, device_offset,
                             ptr<T>(out), ptr<std::uint8_t>(mask), stream_of(x));
  });
}

void dropout_backward(const Tensor& grad, const Tensor& mask, double p, const Tensor& grad_x) {
  floating(grad, "dropout_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::dropout_backward<T>(grad.numel(), ptr<T>(grad), ptr<std::uint8_t>(mask),
                              static_cast<T>(p), ptr<T>(grad_x), stream_of(grad));
  });
}

// --- losses --------------------------------------------------------------------------------------

void log_softmax_forward(const Tensor& x, const Tensor& out) {
  floating(x, "log_softmax", [&](auto tag) {
    using T = decltype(tag);
    cuda::log_softmax_forward<T>(x.size(0), x.size(1), ptr<T>(x), ptr<T>(out), stream_of(x));
  });
}

void log_softmax_backward(const Tensor& output, const Tensor& grad, const Tensor& grad_x) {
  floating(grad, "log_softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::log_softmax_backward<T>(output.size(0), output.size(1), ptr<T>(output), ptr<T>(grad),
                                  ptr<T>(grad_x), stream_of(grad));
  });
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& log_probs,
                           const Tensor& loss) {
  floating(logits, "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    std::int64_t* bad_row = reserve_slot(logits.device().index, logits);
    cuda::cross_entropy_forward_into<T>(logits.size(0), logits.size(1), ptr<T>(logits),
                                        ptr<std::int64_t>(targets), ptr<T>(log_probs), ptr<T>(loss),
                                        bad_row, stream_of(logits));
  });
}

void cross_entropy_backward(const Tensor& log_probs, const Tensor& targets, double grad_loss,
                            const Tensor& grad_logits) {
  floating(log_probs, "cross_entropy_backward", [&](auto tag) {
    using T = decltype(tag);
    cuda::cross_entropy_backward<T>(log_probs.size(0), log_probs.size(1), ptr<T>(log_probs),
                                    ptr<std::int64_t>(targets), static_cast<T>(grad_loss),
                                    ptr<T>(grad_logits), stream_of(log_probs));
  });
}

void cross_entropy_backward(const Tensor& log_probs, const Tensor& targets, const Tensor& grad_loss,
                            const Tensor& grad_logits) {
  // The gradient for grad_loss = 1, times grad_loss broadcast on the device.
  cross_entropy_backward(log_probs, targets, 1.0, grad_logits);
  Tensor factor = Tensor::empty(grad_logits.shape(), grad_logits.dtype(), grad_logits.device(),
                                "cross_entropy_backward");
  broadcast_scalar(grad_loss, 1.0, factor);
  mul(grad_logits, factor, grad_logits);
}

}  // namespace sela::cuda_ops

#endif  // SELA_HAVE_CUDA
