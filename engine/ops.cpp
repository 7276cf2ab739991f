// Implementation of engine/ops.h: checks, kernel calls, and one Node per differentiable op.
//
// Pattern of every op:
//   1. validate inputs (errors name the op, the shapes and, for mixed devices, the devices),
//   2. allocate the output on the inputs' device and run the forward kernel for float or
//      double: the CPU kernel here, or — one branch on the device at that point — the
//      function of the same name in engine/ops_cuda.h for a tensor on cuda:N,
//   3. if needs_grad(inputs): make a <Op>Backward node whose fields are the saved tensors
//      and sizes, and attach it to the output. Nodes are the same on both devices; their
//      backward branches on the device of the saved tensors the same way.
// Backward functions return fresh tensors and never modify saved ones.
//
// Gradients of scalars may arrive on the host: backward() seeds a loss with a host 1.0, and
// the scalar head of a loss (the add / scale of per-head losses) is then differentiated on
// the host at no cost; a cross-entropy node reads such a gradient as a host number, so a
// training step needs no host<->device round trip. A node that reads its gradient as an
// array on its own device moves it there first (on_device: a 0-d upload, only for scalar
// graphs); pass-through nodes (add, scale, reshape) keep it where it is, except towards a
// leaf, whose accumulated gradient must live on the leaf's device.
#include "engine/ops.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops_cuda.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/bfloat16.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/reduce.h"
#include "kernels/cpu/softmax.h"

namespace sela {
namespace {

// In a build without the CUDA backend no CUDA tensor exists; `if constexpr (kCuda)` removes
// the calls into engine/ops_cuda.cpp there (whose functions are then not defined).
constexpr bool kCuda = cuda_ops::kAvailable;

bool on_cuda(const Tensor& t) { return t.device().is_cuda(); }

// Calls fn(T{}) with T = float or double according to dtype.
template <typename Fn>
void dispatch_floating(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::f32) {
    fn(float{});
  } else if (dtype == DType::f64) {
    fn(double{});
  } else {
    SELA_FAIL(op, "needs float32 or float64 tensors, got " << dtype_name(dtype));
  }
}

Tensor empty_like(const Tensor& t, const char* op = "tensor") {
  return Tensor::empty(t.shape(), t.dtype(), t.device(), op);
}

// `grad` on `device` (a copy when it is elsewhere; see the note at the top).
Tensor on_device(const Tensor& grad, Device device) {
  return grad.device() == device ? grad : grad.to(device);
}

// The gradient a pass-through node hands to input `index`: moved to a leaf's device.
Tensor for_input(const Node& node, std::size_t index, const Tensor& grad) {
  const auto& input = node.inputs[index];
  if (input && !input->grad_fn && input->storage->device() != grad.device()) {
    return grad.to(input->storage->device());
  }
  return grad;
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  SELA_CHECK(a.shape() == b.shape(), op,
             "shapes differ: " << shape_str(a.shape()) << " vs " << shape_str(b.shape()));
}

// A floating tensor of any device; with `like`, also on its device and of its dtype.
void check_operand(const char* op, const Tensor& t, const char* role) {
  check_floating(op, t, role);
}
void check_operand(const char* op, const Tensor& t, const char* role, const Tensor& like,
                   const char* like_role) {
  check_floating(op, t, role);
  check_same_device(op, like, like_role, t, role);
  check_same_dtype(op, like, t);
}

void check_binary(const char* op, const Tensor& a, const Tensor& b) {
  check_operand(op, a, "first operand");
  check_operand(op, b, "second operand", a, "first operand");
  check_same_shape(op, a, b);
}

// --- elementwise ---------------------------------------------------------------------------

struct AddBackward : Node {
  const char* name() const override { return "add"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    return {for_input(*this, 0, grad), for_input(*this, 1, grad)};
  }
};

struct MulBackward : Node {
  Tensor a, b;  // both operands
  const char* name() const override { return "mul"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    Tensor g = on_device(grad, a.device());
    return {inputs[0] ? mul(g, b) : Tensor(), inputs[1] ? mul(g, a) : Tensor()};
  }
};

struct ScaleBackward : Node {
  double factor = 1;
  const char* name() const override { return "scale"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    return {for_input(*this, 0, scale(grad, factor))};
  }
};

struct ReluBackward : Node {
  Tensor output;  // relu(x): the mask is output > 0
  const char* name() const override { return "relu"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, output.device());
    Tensor grad_x = empty_like(grad, "relu_backward");
    if (on_cuda(grad)) {
      if constexpr (kCuda) cuda_ops::relu_backward(output, grad, grad_x);
      return {grad_x};
    }
    dispatch_floating(grad.dtype(), "relu_backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::relu_backward<T>(grad.numel(), output.data<T>(), grad.data<T>(), grad_x.data<T>());
    });
    return {grad_x};
  }
};

// --- shape ---------------------------------------------------------------------------------

struct ReshapeBackward : Node {
  Shape input_shape;
  const char* name() const override { return "reshape"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    return {for_input(*this, 0, grad.view(input_shape))};
  }
};

struct ConcatRowsBackward : Node {
  std::vector<std::int64_t> rows;  // N_i of each part
  const char* name() const override { return "concat_rows"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    std::vector<Tensor> grads;
    std::int64_t begin = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      // A copy, not a view: a leaf may adopt it as its gradient and add into it later.
      grads.push_back(for_input(*this, i, grad.rows(begin, begin + rows[i]).clone()));
      begin += rows[i];
    }
    return grads;
  }
};

struct SliceRowsBackward : Node {
  Shape input_shape;
  std::int64_t begin = 0;
  const char* name() const override { return "slice_rows"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    Tensor grad_x = Tensor::zeros(input_shape, grad.dtype(), grad.device());
    grad_x.rows(begin, begin + grad.size(0)).copy_from(grad);
    return {for_input(*this, 0, grad_x)};
  }
};

// --- reductions ----------------------------------------------------------------------------

struct SumBackward : Node {
  Shape input_shape;
  Device device;      // of the input
  double factor = 1;  // 1 for sum, 1/numel for mean
  const char* name() const override { return "sum"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    if (on_cuda(grad)) {  // a device scalar: broadcast on the device, no host read
      Tensor grad_x = Tensor::empty(input_shape, grad.dtype(), grad.device(), "sum_backward");
      if constexpr (kCuda) cuda_ops::broadcast_scalar(grad, factor, grad_x);
      return {on_device(grad_x, device)};
    }
    return {Tensor::full(input_shape, grad.item() * factor, grad.dtype(), device)};
  }
};

// --- linear algebra ------------------------------------------------------------------------

// C (m, n) = op(A) op(B) for contiguous row-major operands.
template <typename T>
void matmul_kernel(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                   std::int64_t k, const T* a, const T* b, T* c) {
  cpu::gemm<T>(transpose_a, transpose_b, m, n, k, T(1), a, transpose_a ? m : k, b,
               transpose_b ? k : n, T(0), c, n);
}

struct MatmulBackward : Node {
  Tensor a, b;  // a (m, k), b (k, n)
  const char* name() const override { return "matmul"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, a.device());
    std::int64_t m = a.size(0), k = a.size(1), n = b.size(1);
    Tensor grad_a, grad_b;
    if (inputs[0]) grad_a = empty_like(a, "matmul_backward");
    if (inputs[1]) grad_b = empty_like(b, "matmul_backward");
    if (on_cuda(grad)) {
      if constexpr (kCuda) {
        if (inputs[0]) cuda_ops::matmul(false, true, m, k, n, grad, b, grad_a);
        if (inputs[1]) cuda_ops::matmul(true, false, k, n, m, a, grad, grad_b);
      }
      return {grad_a, grad_b};
    }
    dispatch_floating(grad.dtype(), "matmul_backward", [&](auto tag) {
      using T = decltype(tag);
      if (inputs[0]) {  // dA (m, k) = dC (m, n) B^T
        matmul_kernel<T>(false, true, m, k, n, grad.data<T>(), b.data<T>(), grad_a.data<T>());
      }
      if (inputs[1]) {  // dB (k, n) = A^T dC
        matmul_kernel<T>(true, false, k, n, m, a.data<T>(), grad.data<T>(), grad_b.data<T>());
      }
    });
    return {grad_a, grad_b};
  }
};

// The CPU emulation of the bf16 mode (engine/ops.h, set_autocast_bfloat16): a new host tensor
// of t's dtype holding t's values rounded to bfloat16.
Tensor bfloat16_values(const Tensor& t) {
  Tensor out = empty_like(t, "bfloat16 emulation");
  dispatch_floating(t.dtype(), "bfloat16 emulation", [&](auto tag) {
    using T = decltype(tag);
    const T* in = t.data<T>();
    T* values = out.data<T>();
    for (std::int64_t i = 0; i < t.numel(); ++i) values[i] = cpu::round_to_bfloat16(in[i]);
  });
  return out;
}

// Rounds a fresh host tensor's values to bfloat16 in place (what the GPU's bfloat16
// convolution results go through).
void round_to_bfloat16_in_place(const Tensor& t) {
  dispatch_floating(t.dtype(), "bfloat16 emulation", [&](auto tag) {
    using T = decltype(tag);
    T* values = t.data<T>();
    for (std::int64_t i = 0; i < t.numel(); ++i) values[i] = cpu::round_to_bfloat16(values[i]);
  });
}

// Whether conv2d / linear on x run as the bf16 mode: on the GPU in bfloat16, on the CPU as
// its emulation in x's own dtype (engine/ops.h). A float64 CUDA tensor is never affected.
bool gpu_bfloat16(const Tensor& x) {
  return on_cuda(x) && x.dtype() == DType::f32 && autocast_bfloat16();
}
bool cpu_bfloat16(const Tensor& x) { return !on_cuda(x) && autocast_bfloat16(); }

// Float32 gradient buffers for the backward of linear or conv2d whose forward ran in
// bfloat16 (x and weight are the saved bfloat16 copies): each only where `node` has an input
// that wants it; the bias's has `bias_size` values.
struct ParameterGradients {
  Tensor x, weight, bias;
};
ParameterGradients float_gradients_for_bfloat16(const Node& node, const Tensor& x,
                                                const Tensor& weight, bool has_bias,
                                                std::int64_t bias_size, const Tensor& grad,
                                                const char* what) {
  ParameterGradients out;
  const DType dtype = grad.dtype();
  const Device device = grad.device();
  if (node.inputs[0]) out.x = Tensor::empty(x.shape(), dtype, device, what);
  if (node.inputs[1]) out.weight = Tensor::empty(weight.shape(), dtype, device, what);
  if (has_bias && node.inputs[2]) out.bias = Tensor::empty({bias_size}, dtype, device, what);
  return out;
}

struct LinearBackward : Node {
  Tensor x, weight;  // x (N, in), weight (out, in); bfloat16 copies under autocast_bfloat16
  bool has_bias = false;
  bool emulated_bfloat16 = false;  // the forward emulated the bf16 mode on the CPU
  const char* name() const override { return "linear"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {  // grad (N, out)
    Tensor grad = on_device(grad_in, x.device());
    std::int64_t batch = x.size(0), in = x.size(1), out = weight.size(0);
    if (x.dtype() == DType::bf16) {  // the forward ran in bfloat16: float32 gradients
      ParameterGradients g =
          float_gradients_for_bfloat16(*this, x, weight, has_bias, out, grad, "linear_backward");
      if constexpr (kCuda) {
        cuda_ops::linear_backward_bfloat16(x, weight, grad, g.x, g.weight, g.bias);
      }
      return {g.x, g.weight, g.bias};
    }
    Tensor grad_x, grad_w, grad_b;
    if (inputs[0]) grad_x = empty_like(x, "linear_backward");
    if (inputs[1]) grad_w = empty_like(weight, "linear_backward");
    if (has_bias && inputs[2]) {
      grad_b = Tensor::empty({out}, grad.dtype(), grad.device(), "linear_backward");
    }
    if (on_cuda(grad)) {
      if constexpr (kCuda) {
        if (grad_x.defined()) cuda_ops::matmul(false, false, batch, in, out, grad, weight, grad_x);
        if (grad_w.defined()) cuda_ops::matmul(true, false, out, in, batch, grad, x, grad_w);
        if (grad_b.defined()) cuda_ops::sum_rows(grad, grad_b);
      }
      return {grad_x, grad_w, grad_b};
    }
    // As on the GPU: the products take dy rounded to bfloat16, the bias its exact values.
    const Tensor product_grad = emulated_bfloat16 ? bfloat16_values(grad) : grad;
    dispatch_floating(grad.dtype(), "linear_backward", [&](auto tag) {
      using T = decltype(tag);
      if (grad_x.defined()) {  // dx (N, in) = dy (N, out) W (out, in)
        matmul_kernel<T>(false, false, batch, in, out, product_grad.data<T>(), weight.data<T>(),
                         grad_x.data<T>());
      }
      if (grad_w.defined()) {  // dW (out, in) = dy^T x
        matmul_kernel<T>(true, false, out, in, batch, product_grad.data<T>(), x.data<T>(),
                         grad_w.data<T>());
      }
      if (grad_b.defined()) {  // db (out) = column sums of dy
        cpu::sum_rows<T>(batch, out, grad.data<T>(), grad_b.data<T>());
      }
    });
    return {grad_x, grad_w, grad_b};
  }
};

// --- convolution, pooling, normalisation, dropout ------------------------------------------

cpu::Conv2dShape conv_shape(const Tensor& x, const Tensor& weight, std::int64_t stride,
                            std::int64_t padding) {
  cpu::Conv2dShape s;
  s.batch = x.size(0);
  s.in_channels = x.size(1);
  s.in_height = x.size(2);
  s.in_width = x.size(3);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.stride_h = s.stride_w = stride;
  s.pad_h = s.pad_w = padding;
  return s;
}

struct Conv2dBackward : Node {
  Tensor x, weight;  // x (N, C, H, W), weight (O, C, kh, kw); bfloat16 under autocast_bfloat16
  cpu::Conv2dShape shape;
  bool has_bias = false;
  bool emulated_bfloat16 = false;  // the forward emulated the bf16 mode on the CPU
  const char* name() const override { return "conv2d"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {  // grad (N, O, OH, OW)
    Tensor grad = on_device(grad_in, x.device());
    if (x.dtype() == DType::bf16) {  // the forward ran in bfloat16: float32 gradients
      ParameterGradients g = float_gradients_for_bfloat16(
          *this, x, weight, has_bias, shape.out_channels, grad, "conv2d_backward");
      if constexpr (kCuda) {
        cuda_ops::conv2d_backward_bfloat16(shape, x, weight, grad, g.x, g.weight, g.bias);
      }
      return {g.x, g.weight, g.bias};
    }
    Tensor grad_x, grad_w, grad_b;
    bool want_w = inputs[1] != nullptr, want_b = has_bias && inputs[2] != nullptr;
    if (inputs[0]) grad_x = empty_like(x, "conv2d_backward");
    Tensor w_buffer;  // the kernel computes the weight and bias gradients together
    if (want_w || want_b) w_buffer = empty_like(weight, "conv2d_backward");
    if (want_b) {
      grad_b = Tensor::empty({shape.out_channels}, grad.dtype(), grad.device(), "conv2d_backward");
    }
    if (want_w) grad_w = w_buffer;
    if (on_cuda(grad)) {
      if constexpr (kCuda) {
        if (grad_x.defined()) cuda_ops::conv2d_backward_input(shape, grad, weight, grad_x);
        if (w_buffer.defined()) cuda_ops::conv2d_backward_weight(shape, x, grad, w_buffer, grad_b);
      }
      return {grad_x, grad_w, grad_b};
    }
    // The bf16 emulation, as on the GPU: the convolutions take dy rounded to bfloat16 and
    // their results are rounded to bfloat16; the bias takes dy's exact values.
    const Tensor product_grad = emulated_bfloat16 ? bfloat16_values(grad) : grad;
    dispatch_floating(grad.dtype(), "conv2d_backward", [&](auto tag) {
      using T = decltype(tag);
      if (grad_x.defined()) {
        cpu::conv2d_backward_input<T>(shape, product_grad.data<T>(), weight.data<T>(),
                                      grad_x.data<T>());
      }
      if (w_buffer.defined()) {
        const bool bias_here = want_b && !emulated_bfloat16;
        cpu::conv2d_backward_weight<T>(shape, x.data<T>(), product_grad.data<T>(),
                                       w_buffer.data<T>(), bias_here ? grad_b.data<T>() : nullptr);
      }
      if (want_b && emulated_bfloat16) {  // db (O) = sums of dy over N, OH, OW
        const std::int64_t planes = shape.batch, channels = shape.out_channels;
        const std::int64_t spatial = shape.out_height() * shape.out_width();
        const T* dy = grad.data<T>();
        T* db = grad_b.data<T>();
        for (std::int64_t o = 0; o < channels; ++o) {
          T total = 0;
          for (std::int64_t n = 0; n < planes; ++n) {
            const T* plane = dy + (n * channels + o) * spatial;
            for (std::int64_t i = 0; i < spatial; ++i) total += plane[i];
          }
          db[o] = total;
        }
      }
    });
    if (emulated_bfloat16) {
      if (grad_x.defined()) round_to_bfloat16_in_place(grad_x);
      if (w_buffer.defined()) round_to_bfloat16_in_place(w_buffer);
    }
    return {grad_x, grad_w, grad_b};
  }
};

cpu::Pool2dShape pool_shape(const Tensor& x, std::int64_t kernel, std::int64_t stride,
                            std::int64_t padding) {
  cpu::Pool2dShape s;
  s.batch = x.size(0);
  s.channels = x.size(1);
  s.in_height = x.size(2);
  s.in_width = x.size(3);
  s.kernel_h = s.kernel_w = kernel;
  s.stride_h = s.stride_w = stride;
  s.pad_h = s.pad_w = padding;
  return s;
}

struct MaxPool2dBackward : Node {
  Tensor argmax;  // (N, C, OH, OW) int32 position inside the input plane
  cpu::Pool2dShape shape;
  Shape input_shape;
  const char* name() const override { return "max_pool2d"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, argmax.device());
    Tensor grad_x = Tensor::empty(input_shape, grad.dtype(), grad.device(), "max_pool2d_backward");
    if (on_cuda(grad)) {
      if constexpr (kCuda) cuda_ops::max_pool2d_backward(shape, grad, argmax, grad_x);
      return {grad_x};
    }
    dispatch_floating(grad.dtype(), "max_pool2d_backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::max_pool2d_backward<T>(shape, grad.data<T>(), argmax.data<std::int32_t>(),
                                  grad_x.data<T>());
    });
    return {grad_x};
  }
};

// A (C) tensor of x's dtype on x's device, for x (N, C, ...).
Tensor channel_vector(const Tensor& x, const char* op) {
  return Tensor::empty({x.size(1)}, x.dtype(), x.device(), op);
}

// The row ranges [begin, end) that training-mode batch norm takes its statistics over: all N
// rows, or [0, first_rows) and [first_rows, N) (batch_norm2d_grouped).
std::vector<std::pair<std::int64_t, std::int64_t>> batch_norm_groups(std::int64_t batch,
                                                                     std::int64_t first_rows) {
  if (first_rows == 0) return {{0, batch}};
  return {{0, first_rows}, {first_rows, batch}};
}

struct BatchNormTrainBackward : Node {
  Tensor x, gamma, save_mean, save_invstd;  // x (N, C, H, W); the statistics (G, C), G groups
  Tensor relu_output;  // batch_norm_relu2d: its output (the ReLU's mask); else undefined
  std::int64_t first_rows = 0;  // batch_norm_groups
  const char* name() const override {
    return relu_output.defined() ? "batch_norm_relu2d" : "batch_norm2d";
  }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, x.device());
    const std::int64_t channels = x.size(1);
    Tensor grad_x = empty_like(x, "batch_norm2d_backward");
    Tensor grad_gamma, grad_beta;
    if (inputs[1]) grad_gamma = channel_vector(x, "batch_norm2d_backward");
    if (inputs[2]) grad_beta = channel_vector(x, "batch_norm2d_backward");
    if (!on_cuda(grad) && relu_output.defined()) {  // the ReLU's backward first, as the composition does
      Tensor masked = empty_like(grad, "relu_backward");
      dispatch_floating(grad.dtype(), "relu_backward", [&](auto tag) {
        using T = decltype(tag);
        cpu::relu_backward<T>(grad.numel(), relu_output.data<T>(), grad.data<T>(), masked.data<T>());
      });
      grad = masked;
    }
    // Each group's backward through its own statistics; the parameter gradients add up.
    const auto groups = batch_norm_groups(x.size(0), first_rows);
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const auto [begin, end] = groups[g];
      const std::int64_t group = static_cast<std::int64_t>(g);
      Tensor x_g = x.rows(begin, end), grad_g = grad.rows(begin, end), grad_x_g = grad_x.rows(begin, end);
      Tensor mean_g = save_mean.rows(group, group + 1).view({channels});
      Tensor invstd_g = save_invstd.rows(group, group + 1).view({channels});
      Tensor gamma_part = g == 0 || !grad_gamma.defined() ? grad_gamma : channel_vector(x, "batch_norm2d_backward");
      Tensor beta_part = g == 0 || !grad_beta.defined() ? grad_beta : channel_vector(x, "batch_norm2d_backward");
      if (on_cuda(grad)) {
        if constexpr (kCuda) {
          cuda_ops::batch_norm_backward_train(
              x_g, grad_g, gamma, mean_g, invstd_g, grad_x_g, gamma_part, beta_part,
              relu_output.defined() ? relu_output.rows(begin, end) : Tensor());
        }
      } else {
        const std::int64_t spatial = x.numel() / (x.size(0) * channels);
        dispatch_floating(grad.dtype(), "batch_norm2d_backward", [&](auto tag) {
          using T = decltype(tag);
          cpu::batch_norm_backward_train<T>(
              end - begin, channels, spatial, x_g.data<T>(), grad_g.data<T>(),
              gamma.defined() ? gamma.data<T>() : nullptr, mean_g.data<T>(), invstd_g.data<T>(),
              grad_x_g.data<T>(), gamma_part.defined() ? gamma_part.data<T>() : nullptr,
              beta_part.defined() ? beta_part.data<T>() : nullptr);
        });
      }
      if (g > 0 && grad_gamma.defined()) add_into(grad_gamma, gamma_part);
      if (g > 0 && grad_beta.defined()) add_into(grad_beta, beta_part);
    }
    return {grad_x, grad_gamma, grad_beta};
  }
};

struct BatchNormEvalBackward : Node {
  Tensor x, gamma, running_mean, running_var;
  double eps = 1e-5;
  const char* name() const override { return "batch_norm2d(eval)"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, x.device());
    std::int64_t batch = x.size(0), channels = x.size(1), spatial = x.numel() / (batch * channels);
    Tensor grad_x, grad_gamma, grad_beta;
    if (on_cuda(grad)) {
      if (inputs[0]) grad_x = empty_like(x, "batch_norm2d_backward");
      if (inputs[1]) grad_gamma = channel_vector(x, "batch_norm2d_backward");
      if (inputs[2]) grad_beta = channel_vector(x, "batch_norm2d_backward");
      if constexpr (kCuda) {
        if (grad_x.defined()) {
          cuda_ops::batch_norm_backward_eval(grad, gamma, running_var, eps, grad_x);
        }
        if (grad_gamma.defined() || grad_beta.defined()) {
          cuda_ops::batch_norm_eval_parameter_grads(x, grad, running_mean, running_var, eps,
                                                    grad_gamma, grad_beta);
        }
      }
      return {grad_x, grad_gamma, grad_beta};
    }
    dispatch_floating(grad.dtype(), "batch_norm2d_backward", [&](auto tag) {
      using T = decltype(tag);
      if (inputs[0]) {
        grad_x = empty_like(x);
        cpu::batch_norm_backward_eval<T>(batch, channels, spatial, grad.data<T>(),
                                         gamma.defined() ? gamma.data<T>() : nullptr,
                                         running_var.data<T>(), static_cast<T>(eps),
                                         grad_x.data<T>());
      }
      if (inputs[1] || inputs[2]) {  // dgamma = Σ dy x̂, dbeta = Σ dy over (N, H, W)
        std::vector<double> dg(channels, 0.0), db(channels, 0.0);
        const T* gy = grad.data<T>();
        const T* xs = x.data<T>();
        const T* mu = running_mean.data<T>();
        const T* var = running_var.data<T>();
        for (std::int64_t n = 0; n < batch; ++n) {
          for (std::int64_t c = 0; c < channels; ++c) {
            double invstd = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
            const T* g = gy + (n * channels + c) * spatial;
            const T* v = xs + (n * channels + c) * spatial;
            for (std::int64_t i = 0; i < spatial; ++i) {
              db[c] += g[i];
              dg[c] += g[i] * (v[i] - mu[c]) * invstd;
            }
          }
        }
        if (inputs[1]) grad_gamma = Tensor::from_vector(std::vector<T>(dg.begin(), dg.end()), {channels});
        if (inputs[2]) grad_beta = Tensor::from_vector(std::vector<T>(db.begin(), db.end()), {channels});
      }
    });
    return {grad_x, grad_gamma, grad_beta};
  }
};

struct DropoutBackward : Node {
  Tensor mask;  // uint8, 1 where kept
  double p = 0;
  const char* name() const override { return "dropout"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, mask.device());
    Tensor grad_x = empty_like(grad, "dropout_backward");
    if (on_cuda(grad)) {
      if constexpr (kCuda) cuda_ops::dropout_backward(grad, mask, p, grad_x);
      return {grad_x};
    }
    dispatch_floating(grad.dtype(), "dropout_backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::dropout_backward<T>(grad.numel(), grad.data<T>(), mask.data<std::uint8_t>(),
                               static_cast<T>(p), grad_x.data<T>());
    });
    return {grad_x};
  }
};

// --- losses --------------------------------------------------------------------------------

struct LogSoftmaxBackward : Node {
  Tensor output;  // log-probabilities (N, K)
  const char* name() const override { return "log_softmax"; }
  std::vector<Tensor> backward(const Tensor& grad_in) override {
    Tensor grad = on_device(grad_in, output.device());
    Tensor grad_x = empty_like(grad, "log_softmax_backward");
    if (on_cuda(grad)) {
      if constexpr (kCuda) cuda_ops::log_softmax_backward(output, grad, grad_x);
      return {grad_x};
    }
    dispatch_floating(grad.dtype(), "log_softmax_backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::log_softmax_backward<T>(output.size(0), output.size(1), output.data<T>(),
                                   grad.data<T>(), grad_x.data<T>());
    });
    return {grad_x};
  }
};

struct CrossEntropyBackward : Node {
  Tensor log_probs, targets;  // (N, K) float, (N) int64
  const char* name() const override { return "cross_entropy"; }
  std::vector<Tensor> backward(const Tensor& grad) override {
    Tensor grad_logits = empty_like(log_probs, "cross_entropy_backward");
    if (on_cuda(log_probs)) {
      if constexpr (kCuda) {
        if (on_cuda(grad)) {  // a device scalar: multiplied on the device
          cuda_ops::cross_entropy_backward(log_probs, targets, on_device(grad, log_probs.device()),
                                           grad_logits);
        } else {  // a host scalar (the usual case, see the top of the file): no round trip
          cuda_ops::cross_entropy_backward(log_probs, targets, grad.item(), grad_logits);
        }
      }
      return {grad_logits, Tensor()};
    }
    dispatch_floating(grad.dtype(), "cross_entropy_backward", [&](auto tag) {
      using T = decltype(tag);
      cpu::cross_entropy_backward<T>(log_probs.size(0), log_probs.size(1), log_probs.data<T>(),
                                     targets.data<std::int64_t>(),
                                     static_cast<T>(grad.item()), grad_logits.data<T>());
    });
    return {grad_logits, Tensor()};
  }
};

}  // namespace

// ================================ precision ===============================================

namespace {
std::atomic<bool> g_autocast_bfloat16{false};
}  // namespace

void set_autocast_bfloat16(bool enabled) { g_autocast_bfloat16 = enabled; }
bool autocast_bfloat16() { return g_autocast_bfloat16; }

// ================================ elementwise =============================================

Tensor add(const Tensor& a, const Tensor& b) {
  check_binary("add", a, b);
  Tensor out = empty_like(a, "add");
  if (on_cuda(a)) {
    if constexpr (kCuda) cuda_ops::add(a, b, out);
  } else {
    dispatch_floating(a.dtype(), "add", [&](auto tag) {
      using T = decltype(tag);
      cpu::add<T>(a.numel(), a.data<T>(), b.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&a, &b})) attach_node(out, std::make_shared<AddBackward>(), {&a, &b});
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_binary("mul", a, b);
  Tensor out = empty_like(a, "mul");
  if (on_cuda(a)) {
    if constexpr (kCuda) cuda_ops::mul(a, b, out);
  } else {
    dispatch_floating(a.dtype(), "mul", [&](auto tag) {
      using T = decltype(tag);
      cpu::mul<T>(a.numel(), a.data<T>(), b.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&a, &b})) {
    auto node = std::make_shared<MulBackward>();
    node->a = a.detach();
    node->b = b.detach();
    attach_node(out, node, {&a, &b});
  }
  return out;
}

Tensor scale(const Tensor& a, double factor) {
  check_operand("scale", a, "input");
  Tensor out = empty_like(a, "scale");
  if (on_cuda(a)) {
    if constexpr (kCuda) cuda_ops::scale(a, factor, out);
  } else {
    dispatch_floating(a.dtype(), "scale", [&](auto tag) {
      using T = decltype(tag);
      cpu::scale<T>(a.numel(), static_cast<T>(factor), a.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&a})) {
    auto node = std::make_shared<ScaleBackward>();
    node->factor = factor;
    attach_node(out, node, {&a});
  }
  return out;
}

void add_into(Tensor& destination, const Tensor& source) {
  check_binary("add_into", destination, source);
  if (on_cuda(destination)) {
    if constexpr (kCuda) cuda_ops::add_into(destination, source);
    return;
  }
  dispatch_floating(destination.dtype(), "add_into", [&](auto tag) {
    using T = decltype(tag);
    cpu::axpy<T>(destination.numel(), T(1), source.data<T>(), destination.data<T>());
  });
}

Tensor relu(const Tensor& x) {
  check_operand("relu", x, "input");
  Tensor out = empty_like(x, "relu");
  if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::relu_forward(x, out);
  } else {
    dispatch_floating(x.dtype(), "relu", [&](auto tag) {
      using T = decltype(tag);
      cpu::relu_forward<T>(x.numel(), x.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&x})) {
    auto node = std::make_shared<ReluBackward>();
    node->output = out.detach();
    attach_node(out, node, {&x});
  }
  return out;
}

// ================================ shape ===================================================

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor out = x.view(shape);
  if (needs_grad({&x})) {
    auto node = std::make_shared<ReshapeBackward>();
    node->input_shape = x.shape();
    attach_node(out, node, {&x});
  }
  return out;
}

Tensor flatten(const Tensor& x) {
  SELA_CHECK(x.dim() >= 1, "flatten", "needs at least one dimension, got " << x.describe());
  return reshape(x, {x.size(0), -1});
}

Tensor concat_rows(const std::vector<Tensor>& parts) {
  SELA_CHECK(!parts.empty(), "concat_rows", "needs at least one tensor");
  const Tensor& first = parts[0];
  SELA_CHECK(first.dim() >= 1, "concat_rows", "needs tensors with a dim 0, got " << first.describe());
  Shape shape = first.shape();
  shape[0] = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const Tensor& part = parts[i];
    check_same_device("concat_rows", first, "tensor 0", part, "another tensor");
    check_same_dtype("concat_rows", first, part);
    const Shape& shape_i = part.shape();
    SELA_CHECK(part.dim() == first.dim() &&
                   std::equal(shape_i.begin() + 1, shape_i.end(), first.shape().begin() + 1),
               "concat_rows", "tensor " << i << " " << part.describe()
                                        << " differs from tensor 0 " << first.describe()
                                        << " beyond dim 0");
    shape[0] += part.size(0);
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device(), "concat_rows");
  std::int64_t begin = 0;
  for (const Tensor& part : parts) {
    out.rows(begin, begin + part.size(0)).copy_from(part);
    begin += part.size(0);
  }
  std::vector<const Tensor*> inputs;
  for (const Tensor& part : parts) inputs.push_back(&part);
  if (needs_grad(inputs)) {
    auto node = std::make_shared<ConcatRowsBackward>();
    for (const Tensor& part : parts) node->rows.push_back(part.size(0));
    attach_node(out, node, inputs);
  }
  return out;
}

Tensor slice_rows(const Tensor& x, std::int64_t begin, std::int64_t end) {
  SELA_CHECK(x.dim() >= 1 && 0 <= begin && begin <= end && end <= x.size(0), "slice_rows",
             "rows [" << begin << ", " << end << ") of " << x.describe());
  Tensor out = x.rows(begin, end).clone();
  if (needs_grad({&x})) {
    auto node = std::make_shared<SliceRowsBackward>();
    node->input_shape = x.shape();
    node->begin = begin;
    attach_node(out, node, {&x});
  }
  return out;
}

// ================================ reductions ==============================================

namespace {
Tensor sum_impl(const Tensor& x, double factor, const char* op) {
  check_operand(op, x, "input");
  Tensor out = Tensor::empty({}, x.dtype(), x.device(), op);
  if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::sum(x, factor, out);
  } else {
    dispatch_floating(x.dtype(), op, [&](auto tag) {
      using T = decltype(tag);
      *out.data<T>() = static_cast<T>(cpu::sum<T>(x.numel(), x.data<T>()) * factor);
    });
  }
  if (needs_grad({&x})) {
    auto node = std::make_shared<SumBackward>();
    node->input_shape = x.shape();
    node->device = x.device();
    node->factor = factor;
    attach_node(out, node, {&x});
  }
  return out;
}
}  // namespace

Tensor sum(const Tensor& x) { return sum_impl(x, 1.0, "sum"); }

Tensor mean(const Tensor& x) {
  SELA_CHECK(x.numel() > 0, "mean", "mean of an empty tensor " << x.describe());
  return sum_impl(x, 1.0 / static_cast<double>(x.numel()), "mean");
}

Tensor argmax(const Tensor& x) {
  check_operand("argmax", x, "input");
  SELA_CHECK(x.dim() == 2 && x.size(1) > 0, "argmax",
             "expects a (N, K) tensor with K > 0, got " << x.describe());
  Tensor out = Tensor::empty({x.size(0)}, DType::i64, x.device(), "argmax");
  if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::argmax_rows(x, out);
    return out;
  }
  dispatch_floating(x.dtype(), "argmax", [&](auto tag) {
    using T = decltype(tag);
    cpu::argmax_rows<T>(x.size(0), x.size(1), x.data<T>(), out.data<std::int64_t>());
  });
  return out;
}

// ================================ linear algebra ==========================================

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_operand("matmul", a, "first operand");
  check_operand("matmul", b, "second operand", a, "first operand");
  SELA_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "matmul",
             "cannot multiply " << shape_str(a.shape()) << " by " << shape_str(b.shape()));
  std::int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  Tensor out = Tensor::empty({m, n}, a.dtype(), a.device(), "matmul");
  if (on_cuda(a)) {
    if constexpr (kCuda) cuda_ops::matmul(false, false, m, n, k, a, b, out);
  } else {
    dispatch_floating(a.dtype(), "matmul", [&](auto tag) {
      using T = decltype(tag);
      matmul_kernel<T>(false, false, m, n, k, a.data<T>(), b.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&a, &b})) {
    auto node = std::make_shared<MatmulBackward>();
    node->a = a.detach();
    node->b = b.detach();
    attach_node(out, node, {&a, &b});
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_operand("linear", x, "input");
  check_operand("linear", weight, "weight", x, "input");
  SELA_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "linear",
             "input " << shape_str(x.shape()) << " does not match weight "
                      << shape_str(weight.shape()) << " (expected input (N, "
                      << (weight.dim() == 2 ? weight.size(1) : -1) << "))");
  std::int64_t batch = x.size(0), in = x.size(1), out_features = weight.size(0);
  if (bias.defined()) {
    check_operand("linear", bias, "bias", x, "input");
    check_shape("linear", bias, {out_features}, "bias");
  }
  Tensor out = Tensor::empty({batch, out_features}, x.dtype(), x.device(), "linear");
  Tensor saved_x = x, saved_weight = weight;  // what the backward multiplies with
  if (gpu_bfloat16(x)) {
    if constexpr (kCuda) {
      saved_x = cuda_ops::to_bfloat16(x);
      saved_weight = cuda_ops::to_bfloat16(weight);
      cuda_ops::linear_forward_bfloat16(saved_x, saved_weight, bias, out);
    }
  } else if (on_cuda(x)) {
    if constexpr (kCuda) {
      cuda_ops::matmul(false, true, batch, out_features, in, x, weight, out);
      if (bias.defined()) cuda_ops::add_row_bias(bias, out);
    }
  } else {
    if (cpu_bfloat16(x)) {
      saved_x = bfloat16_values(x);
      saved_weight = bfloat16_values(weight);
    }
    dispatch_floating(x.dtype(), "linear", [&](auto tag) {
      using T = decltype(tag);
      matmul_kernel<T>(false, true, batch, out_features, in, saved_x.data<T>(),
                       saved_weight.data<T>(), out.data<T>());
      if (bias.defined()) cpu::add_row_bias<T>(batch, out_features, bias.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&x, &weight, &bias})) {
    auto node = std::make_shared<LinearBackward>();
    node->x = saved_x.detach();
    node->weight = saved_weight.detach();
    node->has_bias = bias.defined();
    node->emulated_bfloat16 = cpu_bfloat16(x);
    attach_node(out, node, {&x, &weight, &bias});
  }
  return out;
}

// ================================ layers ==================================================

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, std::int64_t stride,
              std::int64_t padding) {
  check_operand("conv2d", x, "input");
  check_operand("conv2d", weight, "weight", x, "input");
  SELA_CHECK(x.dim() == 4 && weight.dim() == 4 && x.size(1) == weight.size(1), "conv2d",
             "input " << shape_str(x.shape()) << " (N, C, H, W) does not match weight "
                      << shape_str(weight.shape()) << " (O, C, kh, kw)");
  SELA_CHECK(stride >= 1 && padding >= 0, "conv2d",
             "stride must be >= 1 and padding >= 0, got " << stride << ", " << padding);
  cpu::Conv2dShape s = conv_shape(x, weight, stride, padding);
  SELA_CHECK(x.size(2) + 2 * padding >= s.kernel_h && x.size(3) + 2 * padding >= s.kernel_w,
             "conv2d",
             "kernel " << s.kernel_h << "x" << s.kernel_w << " larger than the padded input "
                       << shape_str(x.shape()));
  if (bias.defined()) {
    check_operand("conv2d", bias, "bias", x, "input");
    check_shape("conv2d", bias, {s.out_channels}, "bias");
  }
  Tensor out = Tensor::empty({s.batch, s.out_channels, s.out_height(), s.out_width()}, x.dtype(),
                             x.device(), "conv2d");
  Tensor saved_x = x, saved_weight = weight;  // what the backward convolves with
  if (gpu_bfloat16(x)) {
    if constexpr (kCuda) {
      saved_x = cuda_ops::to_bfloat16(x);
      saved_weight = cuda_ops::to_bfloat16(weight);
      cuda_ops::conv2d_forward_bfloat16(s, saved_x, saved_weight, bias, out);
    }
  } else if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::conv2d_forward(s, x, weight, bias, out);
  } else if (cpu_bfloat16(x)) {  // as on the GPU: the convolution rounded, then + bias
    saved_x = bfloat16_values(x);
    saved_weight = bfloat16_values(weight);
    dispatch_floating(x.dtype(), "conv2d", [&](auto tag) {
      using T = decltype(tag);
      cpu::conv2d_forward<T>(s, saved_x.data<T>(), saved_weight.data<T>(), nullptr,
                             out.data<T>());
    });
    round_to_bfloat16_in_place(out);
    if (bias.defined()) {
      dispatch_floating(x.dtype(), "conv2d", [&](auto tag) {
        using T = decltype(tag);
        const std::int64_t spatial = s.out_height() * s.out_width();
        T* values = out.data<T>();
        const T* b = bias.data<T>();
        for (std::int64_t i = 0; i < out.numel(); ++i) {
          values[i] += b[(i / spatial) % s.out_channels];
        }
      });
    }
  } else {
    dispatch_floating(x.dtype(), "conv2d", [&](auto tag) {
      using T = decltype(tag);
      cpu::conv2d_forward<T>(s, x.data<T>(), weight.data<T>(),
                             bias.defined() ? bias.data<T>() : nullptr, out.data<T>());
    });
  }
  if (needs_grad({&x, &weight, &bias})) {
    auto node = std::make_shared<Conv2dBackward>();
    node->x = saved_x.detach();
    node->weight = saved_weight.detach();
    node->shape = s;
    node->has_bias = bias.defined();
    node->emulated_bfloat16 = cpu_bfloat16(x);
    attach_node(out, node, {&x, &weight, &bias});
  }
  return out;
}

Tensor max_pool2d(const Tensor& x, std::int64_t kernel, std::int64_t stride,
                  std::int64_t padding) {
  check_operand("max_pool2d", x, "input");
  SELA_CHECK(x.dim() == 4, "max_pool2d", "expects (N, C, H, W), got " << x.describe());
  SELA_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel, "max_pool2d",
             "invalid kernel " << kernel << ", stride " << stride << ", padding " << padding
                               << " (padding must be at most half the kernel)");
  SELA_CHECK(x.size(2) + 2 * padding >= kernel && x.size(3) + 2 * padding >= kernel,
             "max_pool2d", "kernel " << kernel << " larger than the input " << x.describe());
  cpu::Pool2dShape s = pool_shape(x, kernel, stride, padding);
  Shape out_shape{s.batch, s.channels, s.out_height(), s.out_width()};
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device(), "max_pool2d");
  Tensor indices = Tensor::empty(out_shape, DType::i32, x.device(), "max_pool2d");
  if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::max_pool2d_forward(s, x, out, indices);
  } else {
    dispatch_floating(x.dtype(), "max_pool2d", [&](auto tag) {
      using T = decltype(tag);
      cpu::max_pool2d_forward<T>(s, x.data<T>(), out.data<T>(), indices.data<std::int32_t>());
    });
  }
  if (needs_grad({&x})) {
    auto node = std::make_shared<MaxPool2dBackward>();
    node->argmax = indices;
    node->shape = s;
    node->input_shape = x.shape();
    attach_node(out, node, {&x});
  }
  return out;
}

namespace {

// The checks both batch-norm ops make.
void check_batch_norm_arguments(const char* op, const Tensor& x, const Tensor& gamma,
                                const Tensor& beta, const Tensor& running_mean,
                                const Tensor& running_var) {
  check_operand(op, x, "input");
  SELA_CHECK(x.dim() == 4 || x.dim() == 2, op,
             "expects (N, C, H, W) or (N, C), got " << x.describe());
  const std::int64_t channels = x.size(1);
  for (const Tensor* t : {&gamma, &beta, &running_mean, &running_var}) {
    if (!t->defined()) continue;
    check_same_device(op, x, "input", *t, "parameter or running statistic");
    check_same_dtype(op, x, *t);
    check_shape(op, *t, {channels}, "parameter or running statistic");
  }
  SELA_CHECK(gamma.defined() == beta.defined(), op,
             "weight and bias must both be given or both be absent");
}

// Training mode of batch_norm2d (relu false) and batch_norm_relu2d (relu true), with the
// statistics of all rows (first_rows 0) or per group (batch_norm_groups): each group's
// kernels run on row views of x and out, so no group is copied.
Tensor batch_norm_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                        const Tensor& running_mean, const Tensor& running_var, double momentum,
                        double eps, bool relu, std::int64_t first_rows) {
  const char* op = relu ? "batch_norm_relu2d" : "batch_norm2d";
  std::int64_t batch = x.size(0), channels = x.size(1);
  std::int64_t spatial = batch * channels == 0 ? 0 : x.numel() / (batch * channels);
  const auto groups = batch_norm_groups(batch, first_rows);
  for (const auto& [begin, end] : groups) {
    SELA_CHECK((end - begin) * spatial > 1, op,
               "training needs more than one value per channel, got input "
                   << x.describe()
                   << (groups.size() > 1 ? " in a group of " + std::to_string(end - begin) + " rows" : "")
                   << " (use a batch > 1)");
  }
  const std::int64_t group_count = static_cast<std::int64_t>(groups.size());
  Tensor out = empty_like(x, op);
  Tensor save_mean = Tensor::empty({group_count, channels}, x.dtype(), x.device(), op);
  Tensor save_invstd = Tensor::empty({group_count, channels}, x.dtype(), x.device(), op);
  for (std::int64_t g = 0; g < group_count; ++g) {
    const auto [begin, end] = groups[static_cast<std::size_t>(g)];
    Tensor x_g = x.rows(begin, end), out_g = out.rows(begin, end);
    Tensor mean_g = save_mean.rows(g, g + 1).view({channels});
    Tensor invstd_g = save_invstd.rows(g, g + 1).view({channels});
    if (on_cuda(x)) {
      if constexpr (kCuda) {
        cuda_ops::batch_norm_forward_train(x_g, gamma, beta, eps, momentum, running_mean,
                                           running_var, out_g, mean_g, invstd_g, relu);
      }
    } else {
      dispatch_floating(x.dtype(), op, [&](auto tag) {
        using T = decltype(tag);
        cpu::batch_norm_forward_train<T>(
            end - begin, channels, spatial, x_g.data<T>(), gamma.defined() ? gamma.data<T>() : nullptr,
            beta.defined() ? beta.data<T>() : nullptr, static_cast<T>(eps),
            static_cast<T>(momentum), running_mean.defined() ? running_mean.data<T>() : nullptr,
            running_var.defined() ? running_var.data<T>() : nullptr, out_g.data<T>(),
            mean_g.data<T>(), invstd_g.data<T>());
        if (relu) cpu::relu_forward<T>(out_g.numel(), out_g.data<T>(), out_g.data<T>());  // in place
      });
    }
  }
  if (needs_grad({&x, &gamma, &beta})) {
    auto node = std::make_shared<BatchNormTrainBackward>();
    node->x = x.detach();
    node->gamma = gamma.defined() ? gamma.detach() : Tensor();
    node->save_mean = save_mean;
    node->save_invstd = save_invstd;
    node->first_rows = first_rows;
    if (relu) node->relu_output = out.detach();
    attach_node(out, node, {&x, &gamma, &beta});
  }
  return out;
}

}  // namespace

Tensor batch_norm_relu2d(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         const Tensor& running_mean, const Tensor& running_var, bool training,
                         double momentum, double eps) {
  if (!training) return relu(batch_norm2d(x, gamma, beta, running_mean, running_var, false,
                                          momentum, eps));
  check_batch_norm_arguments("batch_norm_relu2d", x, gamma, beta, running_mean, running_var);
  return batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps, true, 0);
}

Tensor batch_norm2d_grouped(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                            const Tensor& running_mean, const Tensor& running_var,
                            std::int64_t first_rows, bool relu, double momentum, double eps) {
  const char* op = relu ? "batch_norm_relu2d" : "batch_norm2d";
  check_batch_norm_arguments(op, x, gamma, beta, running_mean, running_var);
  SELA_CHECK(1 <= first_rows && first_rows < x.size(0), op,
             "row groups need 1 <= first_rows < N, got first_rows " << first_rows << " for "
                                                                    << x.describe());
  return batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps, relu, first_rows);
}

Tensor batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                    const Tensor& running_mean, const Tensor& running_var, bool training,
                    double momentum, double eps) {
  check_batch_norm_arguments("batch_norm2d", x, gamma, beta, running_mean, running_var);
  if (training) {
    return batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps, false, 0);
  }
  std::int64_t batch = x.size(0), channels = x.size(1);
  std::int64_t spatial = batch * channels == 0 ? 0 : x.numel() / (batch * channels);
  Tensor out = empty_like(x, "batch_norm2d");
  SELA_CHECK(running_mean.defined() && running_var.defined(), "batch_norm2d",
             "eval mode needs running statistics");
  if (on_cuda(x)) {
    if constexpr (kCuda) {
      cuda_ops::batch_norm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out);
    }
  } else {
    dispatch_floating(x.dtype(), "batch_norm2d", [&](auto tag) {
      using T = decltype(tag);
      cpu::batch_norm_forward_eval<T>(batch, channels, spatial, x.data<T>(),
                                      gamma.defined() ? gamma.data<T>() : nullptr,
                                      beta.defined() ? beta.data<T>() : nullptr,
                                      running_mean.data<T>(), running_var.data<T>(),
                                      static_cast<T>(eps), out.data<T>());
    });
  }
  if (needs_grad({&x, &gamma, &beta})) {
    auto node = std::make_shared<BatchNormEvalBackward>();
    node->x = x.detach();
    node->gamma = gamma.defined() ? gamma.detach() : Tensor();
    node->running_mean = running_mean.clone();
    node->running_var = running_var.clone();
    node->eps = eps;
    attach_node(out, node, {&x, &gamma, &beta});
  }
  return out;
}

Tensor dropout(const Tensor& x, double p, bool training, std::uint64_t seed,
               std::uint64_t offset, const std::int64_t* device_offset) {
  check_operand("dropout", x, "input");
  SELA_CHECK(p >= 0.0 && p < 1.0, "dropout", "probability must be in [0, 1), got " << p);
  SELA_CHECK(device_offset == nullptr || on_cuda(x), "dropout",
             "a device offset needs a GPU tensor, got " << x.describe());
  if (!training || p == 0.0) return x;
  Tensor out = empty_like(x, "dropout");
  Tensor mask = Tensor::empty(x.shape(), DType::u8, x.device(), "dropout");
  if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::dropout_forward(x, p, seed, offset, device_offset, out, mask);
  } else {
    dispatch_floating(x.dtype(), "dropout", [&](auto tag) {
      using T = decltype(tag);
      cpu::dropout_forward<T>(x.numel(), x.data<T>(), static_cast<T>(p), seed, offset,
                              out.data<T>(), mask.data<std::uint8_t>());
    });
  }
  if (needs_grad({&x})) {
    auto node = std::make_shared<DropoutBackward>();
    node->mask = mask;
    node->p = p;
    attach_node(out, node, {&x});
  }
  return out;
}

// ================================ losses ==================================================

Tensor log_softmax(const Tensor& x) {
  check_operand("log_softmax", x, "input");
  SELA_CHECK(x.dim() == 2 && x.size(1) > 0, "log_softmax",
             "expects (N, K) with K > 0, got " << x.describe());
  Tensor out = empty_like(x, "log_softmax");
  if (on_cuda(x)) {
    if constexpr (kCuda) cuda_ops::log_softmax_forward(x, out);
  } else {
    dispatch_floating(x.dtype(), "log_softmax", [&](auto tag) {
      using T = decltype(tag);
      cpu::log_softmax_forward<T>(x.size(0), x.size(1), x.data<T>(), out.data<T>());
    });
  }
  if (needs_grad({&x})) {
    auto node = std::make_shared<LogSoftmaxBackward>();
    node->output = out.detach();
    attach_node(out, node, {&x});
  }
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets) {
  check_operand("cross_entropy", logits, "logits");
  SELA_CHECK(logits.dim() == 2 && logits.size(0) > 0 && logits.size(1) > 0, "cross_entropy",
             "logits must be (N, K) with N, K > 0, got " << logits.describe());
  SELA_CHECK(targets.defined() && targets.dtype() == DType::i64 && targets.dim() == 1 &&
                 targets.size(0) == logits.size(0),
             "cross_entropy",
             "targets must be int64 of shape (" << logits.size(0) << ",), got "
                                                << targets.describe());
  check_same_device("cross_entropy", logits, "logits", targets, "targets");
  Tensor log_probs = empty_like(logits, "cross_entropy");
  Tensor loss = Tensor::empty({}, logits.dtype(), logits.device(), "cross_entropy");
  if (on_cuda(logits)) {
    if constexpr (kCuda) cuda_ops::cross_entropy_forward(logits, targets, log_probs, loss);
  } else {
    dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
      using T = decltype(tag);
      *loss.data<T>() = cpu::cross_entropy_forward<T>(logits.size(0), logits.size(1),
                                                      logits.data<T>(),
                                                      targets.data<std::int64_t>(),
                                                      log_probs.data<T>());
    });
  }
  if (needs_grad({&logits})) {
    auto node = std::make_shared<CrossEntropyBackward>();
    node->log_probs = log_probs;
    node->targets = targets.detach();
    attach_node(loss, node, {&logits, &targets});
  }
  return loss;
}

}  // namespace sela
