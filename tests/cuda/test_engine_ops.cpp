// Every op of engine/ops.h on CUDA against the same op on the CPU, through Tensor and
// autograd (forward and backward), plus the device plumbing of engine/tensor.h (copies,
// casts, pinned uploads, errors), Module::to(Device) and Sgd on the GPU. Skipped, loudly and
// by name, without a GPU (SELA_CUDA_TEST).
//
// Method: inputs are fresh random values (uniform in [-1, 1) unless said), made on the CPU
// and copied to the GPU, so both devices see the same bits; the op runs on both; the GPU
// result is compared element by element with |gpu - cpu| <= atol + rtol * |cpu| and every
// value must be finite. Backward: both results are differentiated with the same random
// gradient, and every input gradient is compared the same way. Outputs are poisoned: before
// the GPU op runs, the caching allocator's cache is emptied and refilled with NaN blocks of
// the output sizes, so an output element the op forgets to write shows up as NaN.
//
// Tolerances (TF32 off for convolutions and matmuls in this file: TF32 rounds inputs to a
// 10-bit mantissa, ~1e-3 relative, which would hide real errors of order 1e-5):
//   exact (0, 0): add, mul, scale, add_into (axpy with alpha 1 is one rounding, as add),
//     relu, argmax, max-pool forward/backward (same scan order), dropout (same Philox
//     mask and scale), copies and casts — the same IEEE operation on both sides.
//   float sums (sum, mean, BN, softmax, cross-entropy): both accumulate in double in a
//     different order; float results differ by a rounding or two, plus an ulp or two of
//     exp/log: atol 1e-6, rtol 1e-5 (double: 1e-13, 1e-12).
//   matmul, linear (float, TF32 off): fp32 dot products of length k in different orders
//     (cuBLAS vs the CPU GEMM) differ by ~sqrt(k) * 6e-8 * |terms|; with terms in [-1, 1]:
//     atol 2e-6 * sqrt(k), rtol 1e-5 (double: 1e-14 * sqrt(k), 1e-12).
//   conv2d (float, TF32 off): as matmul, but cuDNN may pick a Winograd or FFT algorithm,
//     whose transforms add rounding of ~1e-6 of the output's scale: atol 5e-6 * sqrt(k),
//     rtol 2e-5 (double as matmul).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/tensor.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/device_allocator.h"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::Device;
using sela::DType;
using sela::Shape;
using sela::Tensor;
using sela::test::check_close;
using sela::test::check_identical;
using sela::test::Tolerance;

const Device kGpu = Device::cuda(0);
constexpr Tolerance kExact{0, 0};

// TF32 off for this test (see the top); restored by nothing: every test sets it.
void exact_fp32_math() {
  sela::cuda::set_conv_tf32(false);
  sela::cuda::set_matmul_tf32(false);
}

template <typename T>
Tensor random_tensor(const Shape& shape, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return Tensor::from_vector(sela::test::random_vector<T>(sela::shape_numel(shape), seed, lo, hi),
                             shape);
}

Tensor labels(std::int64_t n, std::int64_t classes, std::uint64_t seed) {
  return Tensor::from_vector(sela::test::random_indices(n, seed, 0, classes - 1), {n});
}

// The GPU twin of a CPU input: same values, same requires_grad, a leaf.
Tensor gpu_twin(const Tensor& cpu) {
  Tensor gpu = cpu.detach().to(kGpu);
  if (cpu.requires_grad()) gpu.set_requires_grad();
  return gpu;
}

// Empties the device cache, then leaves NaN-filled (all bytes 0xFF) blocks of these sizes
// in it, so that the next allocations of these sizes start as NaN.
void poison_cache(const std::vector<Tensor>& like) {
  sela::synchronize(kGpu);
  sela::cuda::release_cached_device_memory(kGpu.index);
  std::vector<Tensor> blocks;
  for (const Tensor& t : like) {
    Tensor block = Tensor::empty({static_cast<std::int64_t>(t.nbytes())}, DType::u8, kGpu);
    block.fill_(255);
    blocks.push_back(block);
  }
  sela::synchronize(kGpu);
}

// gpu (on the GPU) against cpu (on the CPU): same shape and dtype, values within tolerance.
void expect_close(const Tensor& gpu, const Tensor& cpu, Tolerance tol, const std::string& what) {
  INFO(what);
  REQUIRE(gpu.defined());
  REQUIRE(cpu.defined());
  CHECK(gpu.device() == kGpu);
  CHECK(cpu.device() == Device::cpu());
  REQUIRE(gpu.shape() == cpu.shape());
  REQUIRE(gpu.dtype() == cpu.dtype());
  switch (cpu.dtype()) {
    case DType::f32:
      check_close(gpu.to_vector<float>(), cpu.to_vector<float>(), tol, what);
      break;
    case DType::f64:
      check_close(gpu.to_vector<double>(), cpu.to_vector<double>(), tol, what);
      break;
    case DType::i64:
      check_identical(gpu.to_vector<std::int64_t>(), cpu.to_vector<std::int64_t>(), what);
      break;
    case DType::i32:
      check_identical(gpu.to_vector<std::int32_t>(), cpu.to_vector<std::int32_t>(), what);
      break;
    case DType::u8:
      check_identical(gpu.to_vector<std::uint8_t>(), cpu.to_vector<std::uint8_t>(), what);
      break;
    default:
      FAIL("unexpected dtype");
  }
}

using Op = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs `op` on the CPU inputs and on their GPU twins; compares the outputs and, when the
// output requires grad, every input gradient for one random output gradient.
void compare_op(const std::string& name, const Op& op, const std::vector<Tensor>& cpu_inputs,
                Tolerance forward, Tolerance backward, std::uint64_t seed) {
  std::vector<Tensor> gpu_inputs;
  for (const Tensor& x : cpu_inputs) gpu_inputs.push_back(gpu_twin(x));
  Tensor y_cpu = op(cpu_inputs);
  poison_cache({y_cpu});
  Tensor y_gpu = op(gpu_inputs);
  expect_close(y_gpu, y_cpu, forward, name + ": forward");
  if (!y_cpu.requires_grad()) return;
  Tensor grad_output = y_cpu.dtype() == DType::f32 ? random_tensor<float>(y_cpu.shape(), seed)
                                                   : random_tensor<double>(y_cpu.shape(), seed);
  y_cpu.backward(grad_output);
  Tensor grad_output_gpu = grad_output.to(kGpu);
  poison_cache(cpu_inputs);
  y_gpu.backward(grad_output_gpu);
  for (std::size_t i = 0; i < cpu_inputs.size(); ++i) {
    if (!cpu_inputs[i].requires_grad()) continue;
    expect_close(gpu_inputs[i].grad(), cpu_inputs[i].grad(), backward,
                 name + ": gradient of input " + std::to_string(i));
  }
}

template <typename T>
Tolerance sum_tolerance() {
  return sizeof(T) == 4 ? Tolerance{1e-6, 1e-5} : Tolerance{1e-13, 1e-12};
}

template <typename T>
Tolerance dot_tolerance(std::int64_t k) {
  const double root = std::sqrt(static_cast<double>(k));
  return sizeof(T) == 4 ? Tolerance{2e-6 * root, 1e-5} : Tolerance{1e-14 * root, 1e-12};
}

template <typename T>
Tolerance conv_tolerance(std::int64_t k) {
  const double root = std::sqrt(static_cast<double>(k));
  return sizeof(T) == 4 ? Tolerance{5e-6 * root, 2e-5} : Tolerance{1e-14 * root, 1e-12};
}

template <typename T>
const char* type_name() {
  return sizeof(T) == 4 ? " (float32)" : " (float64)";
}

// --- elementwise, shape, reductions ----------------------------------------------------------

template <typename T>
void elementwise_ops() {
  std::uint64_t seed = 100;
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{33, 5}, Shape{3, 1003}}) {
    const std::string tag = sela::shape_str(shape) + type_name<T>();
    auto a = [&] { return random_tensor<T>(shape, ++seed).set_requires_grad(); };
    compare_op(
        "add " + tag, [](const auto& x) { return sela::add(x[0], x[1]); }, {a(), a()}, kExact,
        kExact, ++seed);
    compare_op(
        "mul " + tag, [](const auto& x) { return sela::mul(x[0], x[1]); }, {a(), a()}, kExact,
        kExact, ++seed);
    compare_op(
        "scale " + tag, [](const auto& x) { return sela::scale(x[0], -0.37); }, {a()}, kExact,
        kExact, ++seed);
    compare_op(
        "relu " + tag, [](const auto& x) { return sela::relu(x[0]); }, {a()}, kExact, kExact,
        ++seed);
    compare_op(
        "reshape+flatten " + tag,
        [](const auto& x) {
          return sela::relu(sela::flatten(sela::reshape(x[0], {-1, 1})));
        },
        {a()}, kExact, kExact, ++seed);
    // Rows: one tensor sliced twice (the gradients meet), glued to a second one.
    const std::int64_t rows = shape[0];
    compare_op(
        "concat_rows+slice_rows " + tag,
        [rows](const auto& x) {
          return sela::concat_rows({sela::slice_rows(x[0], rows / 2, rows), x[1],
                                    sela::slice_rows(x[0], 0, (rows + 1) / 2)});
        },
        {a(), a()}, kExact, kExact, ++seed);
    // add_into: in place, no autograd
    Tensor destination = random_tensor<T>(shape, ++seed), source = random_tensor<T>(shape, ++seed);
    Tensor destination_gpu = destination.to(kGpu);
    sela::add_into(destination, source);
    sela::add_into(destination_gpu, source.to(kGpu));
    expect_close(destination_gpu, destination, kExact, "add_into " + tag);
  }
}

template <typename T>
void reduction_ops() {
  std::uint64_t seed = 200;
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{1000, 3}, Shape{5, 4099}}) {
    const std::string tag = sela::shape_str(shape) + type_name<T>();
    compare_op(
        "sum " + tag, [](const auto& x) { return sela::sum(x[0]); },
        {random_tensor<T>(shape, ++seed).set_requires_grad()}, sum_tolerance<T>(), kExact, ++seed);
    compare_op(
        "mean " + tag, [](const auto& x) { return sela::mean(x[0]); },
        {random_tensor<T>(shape, ++seed).set_requires_grad()}, sum_tolerance<T>(),
        sum_tolerance<T>(), ++seed);
  }
  for (const Shape& shape : {Shape{1, 1}, Shape{5, 129}, Shape{64, 3000}}) {
    compare_op(
        "argmax " + sela::shape_str(shape) + type_name<T>(),
        [](const auto& x) { return sela::argmax(x[0]); }, {random_tensor<T>(shape, ++seed)}, kExact,
        kExact, ++seed);
  }
  // The backward of sum with a gradient that lives on the device (no host read).
  Tensor x = random_tensor<T>({17, 3}, ++seed).set_requires_grad();
  Tensor x_gpu = gpu_twin(x);
  sela::mean(x).backward(Tensor::full({}, 0.75, x.dtype()));
  sela::mean(x_gpu).backward(Tensor::full({}, 0.75, x.dtype(), kGpu));
  expect_close(x_gpu.grad(), x.grad(), sum_tolerance<T>(), "mean backward, device gradient");
}

// --- linear algebra, layers -------------------------------------------------------------------

template <typename T>
void linear_algebra_ops() {
  exact_fp32_math();
  std::uint64_t seed = 300;
  struct Sizes {
    std::int64_t m, k, n;
  };
  for (Sizes s : {Sizes{1, 1, 1}, Sizes{7, 33, 12}, Sizes{65, 257, 31}}) {
    const std::string tag = std::to_string(s.m) + "x" + std::to_string(s.k) + "x" +
                            std::to_string(s.n) + type_name<T>();
    compare_op(
        "matmul " + tag, [](const auto& x) { return sela::matmul(x[0], x[1]); },
        {random_tensor<T>({s.m, s.k}, ++seed).set_requires_grad(),
         random_tensor<T>({s.k, s.n}, ++seed).set_requires_grad()},
        dot_tolerance<T>(s.k), dot_tolerance<T>(std::max(s.m, s.n)), ++seed);
    compare_op(
        "linear " + tag, [](const auto& x) { return sela::linear(x[0], x[1], x[2]); },
        {random_tensor<T>({s.m, s.k}, ++seed).set_requires_grad(),
         random_tensor<T>({s.n, s.k}, ++seed).set_requires_grad(),
         random_tensor<T>({s.n}, ++seed).set_requires_grad()},
        dot_tolerance<T>(s.k), dot_tolerance<T>(std::max(s.m, s.n)), ++seed);
    compare_op(
        "linear without bias " + tag,
        [](const auto& x) { return sela::linear(x[0], x[1], Tensor()); },
        {random_tensor<T>({s.m, s.k}, ++seed).set_requires_grad(),
         random_tensor<T>({s.n, s.k}, ++seed).set_requires_grad()},
        dot_tolerance<T>(s.k), dot_tolerance<T>(std::max(s.m, s.n)), ++seed);
  }
}

template <typename T>
void convolution_ops() {
  exact_fp32_math();
  std::uint64_t seed = 400;
  struct Case {
    Shape input;
    std::int64_t out_channels, kernel, stride, padding;
  };
  for (const Case& c : {Case{{3, 5, 11, 11}, 7, 3, 2, 1}, Case{{2, 3, 13, 9}, 4, 5, 1, 2},
                        Case{{1, 1, 6, 6}, 1, 1, 1, 0}, Case{{4, 16, 8, 8}, 9, 3, 1, 1}}) {
    const std::string tag = sela::shape_str(c.input) + " k" + std::to_string(c.kernel) + " s" +
                            std::to_string(c.stride) + " p" + std::to_string(c.padding) +
                            type_name<T>();
    const std::int64_t channels = c.input[1];
    const std::int64_t k = channels * c.kernel * c.kernel;
    Tensor x = random_tensor<T>(c.input, ++seed).set_requires_grad();
    Tensor w = random_tensor<T>({c.out_channels, channels, c.kernel, c.kernel}, ++seed)
                   .set_requires_grad();
    Tensor b = random_tensor<T>({c.out_channels}, ++seed).set_requires_grad();
    auto conv = [c](const auto& v) {
      return sela::conv2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor(), c.stride, c.padding);
    };
    // Weight and bias gradients sum over N * OH * OW positions; the input gradient over
    // O * kh * kw: the larger of the two sets the backward tolerance.
    const std::int64_t out_positions = c.input[0] * c.input[2] * c.input[3];
    compare_op("conv2d " + tag, conv, {x, w, b}, conv_tolerance<T>(k),
               conv_tolerance<T>(std::max(out_positions, c.out_channels * c.kernel * c.kernel)),
               ++seed);
    compare_op(
        "conv2d without bias " + tag, conv,
        {x.detach().set_requires_grad(), w.detach().set_requires_grad()}, conv_tolerance<T>(k),
        conv_tolerance<T>(std::max(out_positions, c.out_channels * c.kernel * c.kernel)), ++seed);
  }
}

template <typename T>
void pooling_and_dropout_ops() {
  std::uint64_t seed = 500;
  struct Case {
    Shape input;
    std::int64_t kernel, stride, padding;
  };
  for (const Case& c :
       {Case{{2, 3, 9, 7}, 3, 2, 1}, Case{{3, 4, 13, 13}, 3, 2, 0}, Case{{1, 2, 2, 2}, 2, 1, 0}}) {
    compare_op(
        "max_pool2d " + sela::shape_str(c.input) + type_name<T>(),
        [c](const auto& x) { return sela::max_pool2d(x[0], c.kernel, c.stride, c.padding); },
        {random_tensor<T>(c.input, ++seed).set_requires_grad()}, kExact, kExact, ++seed);
  }
  for (const Shape& shape : {Shape{5, 333}, Shape{1}, Shape{4, 3, 5, 5}}) {
    for (double p : {0.5, 0.1}) {
      const std::uint64_t mask_seed = ++seed;
      compare_op(
          "dropout p " + std::to_string(p) + " " + sela::shape_str(shape) + type_name<T>(),
          [p, mask_seed](const auto& x) {
            return sela::dropout(x[0], p, true, mask_seed, std::uint64_t{3} << 40);
          },
          {random_tensor<T>(shape, ++seed).set_requires_grad()}, kExact, kExact, ++seed);
    }
  }
}

// batch_norm2d, and with `fused` batch_norm_relu2d (on the CPU the composition relu(batch
// norm), tests/engine/test_batch_norm_relu.cpp; on CUDA the fused kernels). {16, 3, 40, 40}
// has 25,600 values per channel: the training kernels split it into 4 chunks.
template <typename T>
void batch_norm_ops(bool fused) {
  std::uint64_t seed = fused ? 650 : 600;
  const std::string op_name = fused ? "batch_norm_relu2d " : "batch_norm2d ";
  for (const Shape& shape : {Shape{4, 5, 7, 3}, Shape{6, 3}, Shape{2, 8, 1, 1},
                             Shape{3, 2, 17, 17}, Shape{16, 3, 40, 40}}) {
    const std::int64_t channels = shape[1];
    for (bool training : {true, false}) {
      const std::string tag = op_name + std::string(training ? "train " : "eval ") +
                              sela::shape_str(shape) + type_name<T>();
      Tensor running_mean = random_tensor<T>({channels}, ++seed, -0.5, 0.5);
      Tensor running_var = random_tensor<T>({channels}, ++seed, 0.5, 2.0);
      Tensor running_mean_gpu = running_mean.to(kGpu), running_var_gpu = running_var.to(kGpu);
      Tensor x = random_tensor<T>(shape, ++seed, -2.0, 3.0).set_requires_grad();
      Tensor gamma = random_tensor<T>({channels}, ++seed, 0.5, 1.5).set_requires_grad();
      Tensor beta = random_tensor<T>({channels}, ++seed).set_requires_grad();
      auto on = [training, fused](const Tensor& mean, const Tensor& var) {
        return [mean, var, training, fused](const std::vector<Tensor>& v) {
          return fused ? sela::batch_norm_relu2d(v[0], v[1], v[2], mean, var, training, 0.1, 1e-5)
                       : sela::batch_norm2d(v[0], v[1], v[2], mean, var, training, 0.1, 1e-5);
        };
      };
      std::vector<Tensor> cpu_inputs{x, gamma, beta};
      std::vector<Tensor> gpu_inputs;
      for (const Tensor& t : cpu_inputs) gpu_inputs.push_back(gpu_twin(t));
      Tensor y_cpu = on(running_mean, running_var)(cpu_inputs);
      poison_cache({y_cpu});
      Tensor y_gpu = on(running_mean_gpu, running_var_gpu)(gpu_inputs);
      expect_close(y_gpu, y_cpu, sum_tolerance<T>(), tag + ": forward");
      expect_close(running_mean_gpu, running_mean, sum_tolerance<T>(), "running mean " + tag);
      expect_close(running_var_gpu, running_var, sum_tolerance<T>(), "running var " + tag);
      Tensor grad_output = random_tensor<T>(shape, ++seed);
      y_cpu.backward(grad_output);
      Tensor grad_output_gpu = grad_output.to(kGpu);
      poison_cache(cpu_inputs);
      y_gpu.backward(grad_output_gpu);
      const char* names[] = {"x", "gamma", "beta"};
      for (int i = 0; i < 3; ++i) {
        expect_close(gpu_inputs[i].grad(), cpu_inputs[i].grad(), sum_tolerance<T>(),
                     tag + ": gradient of " + names[i]);
      }
    }
  }
  // Two row groups with statistics of their own (batch_norm2d_grouped; the CPU op is checked
  // against the ops on each group in tests/engine/test_batch_norm_relu.cpp).
  for (const Shape& shape : {Shape{10, 5, 7, 3}, Shape{9, 4}, Shape{40, 3, 20, 20}}) {
    const std::int64_t channels = shape[1], first_rows = shape[0] * 3 / 4;
    const std::string tag = op_name + "grouped " + std::to_string(first_rows) + " + " +
                            std::to_string(shape[0] - first_rows) + " " + sela::shape_str(shape) +
                            type_name<T>();
    Tensor running_mean = random_tensor<T>({channels}, ++seed, -0.5, 0.5);
    Tensor running_var = random_tensor<T>({channels}, ++seed, 0.5, 2.0);
    Tensor running_mean_gpu = running_mean.to(kGpu), running_var_gpu = running_var.to(kGpu);
    std::vector<Tensor> cpu_inputs{random_tensor<T>(shape, ++seed, -2.0, 3.0).set_requires_grad(),
                                   random_tensor<T>({channels}, ++seed, 0.5, 1.5).set_requires_grad(),
                                   random_tensor<T>({channels}, ++seed).set_requires_grad()};
    std::vector<Tensor> gpu_inputs;
    for (const Tensor& t : cpu_inputs) gpu_inputs.push_back(gpu_twin(t));
    Tensor y_cpu = sela::batch_norm2d_grouped(cpu_inputs[0], cpu_inputs[1], cpu_inputs[2],
                                              running_mean, running_var, first_rows, fused, 0.1, 1e-5);
    poison_cache({y_cpu});
    Tensor y_gpu = sela::batch_norm2d_grouped(gpu_inputs[0], gpu_inputs[1], gpu_inputs[2],
                                              running_mean_gpu, running_var_gpu, first_rows, fused,
                                              0.1, 1e-5);
    expect_close(y_gpu, y_cpu, sum_tolerance<T>(), tag + ": forward");
    expect_close(running_mean_gpu, running_mean, sum_tolerance<T>(), "running mean " + tag);
    expect_close(running_var_gpu, running_var, sum_tolerance<T>(), "running var " + tag);
    Tensor grad_output = random_tensor<T>(shape, ++seed);
    y_cpu.backward(grad_output);
    poison_cache(cpu_inputs);
    y_gpu.backward(grad_output.to(kGpu));
    const char* names[] = {"x", "gamma", "beta"};
    for (int i = 0; i < 3; ++i) {
      expect_close(gpu_inputs[i].grad(), cpu_inputs[i].grad(), sum_tolerance<T>(),
                   tag + ": gradient of " + names[i]);
    }
  }
  // affine off
  Tensor x = random_tensor<T>({3, 4, 5, 5}, ++seed).set_requires_grad();
  compare_op(
      op_name + "without affine" + std::string(type_name<T>()),
      [fused](const auto& v) {
        return fused ? sela::batch_norm_relu2d(v[0], Tensor(), Tensor(), Tensor(), Tensor(), true,
                                               0.1, 1e-5)
                     : sela::batch_norm2d(v[0], Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1,
                                          1e-5);
      },
      {x}, sum_tolerance<T>(), sum_tolerance<T>(), ++seed);
}

template <typename T>
void loss_ops() {
  std::uint64_t seed = 700;
  for (const Shape& shape : {Shape{1, 1}, Shape{6, 17}, Shape{3, 1000}, Shape{64, 3000}}) {
    const std::string tag = sela::shape_str(shape) + type_name<T>();
    compare_op(
        "log_softmax " + tag, [](const auto& x) { return sela::log_softmax(x[0]); },
        {random_tensor<T>(shape, ++seed, -4.0, 4.0).set_requires_grad()}, sum_tolerance<T>(),
        sum_tolerance<T>(), ++seed);
    Tensor targets = labels(shape[0], shape[1], ++seed);
    Tensor targets_gpu = targets.to(kGpu);
    Tensor logits = random_tensor<T>(shape, ++seed, -4.0, 4.0).set_requires_grad();
    Tensor logits_gpu = gpu_twin(logits);
    Tensor loss = sela::cross_entropy(logits, targets);
    poison_cache({loss});
    Tensor loss_gpu = sela::cross_entropy(logits_gpu, targets_gpu);
    expect_close(loss_gpu, loss, sum_tolerance<T>(), "cross_entropy " + tag + ": loss");
    // Host gradient (the usual case: backward() seeds with a host 1.0) ...
    loss.backward();
    loss_gpu.backward();
    expect_close(logits_gpu.grad(), logits.grad(), sum_tolerance<T>(),
                 "cross_entropy " + tag + ": gradient (host seed)");
    // ... and a gradient that lives on the device (multiplied there).
    logits.zero_grad();
    logits_gpu.zero_grad();
    sela::cross_entropy(logits, targets).backward(Tensor::full({}, -1.7, logits.dtype()));
    sela::cross_entropy(logits_gpu, targets_gpu)
        .backward(Tensor::full({}, -1.7, logits.dtype(), kGpu));
    expect_close(logits_gpu.grad(), logits.grad(), sum_tolerance<T>(),
                 "cross_entropy " + tag + ": gradient (device seed)");
  }
}

}  // namespace

SELA_CUDA_TEST("engine ops on CUDA: elementwise, reshape, rows, add_into (float32, float64)",
               elementwise_test) {
  elementwise_ops<float>();
  elementwise_ops<double>();
}

SELA_CUDA_TEST("engine ops on CUDA: sum, mean, argmax (float32, float64)", reduction_test) {
  reduction_ops<float>();
  reduction_ops<double>();
}

SELA_CUDA_TEST("engine ops on CUDA: matmul, linear (cuBLAS, TF32 off)", linear_algebra_test) {
  linear_algebra_ops<float>();
  linear_algebra_ops<double>();
}

SELA_CUDA_TEST("engine ops on CUDA: conv2d (cuDNN, TF32 off)", convolution_test) {
  convolution_ops<float>();
  convolution_ops<double>();
}

SELA_CUDA_TEST("engine ops on CUDA: max_pool2d, dropout", pooling_dropout_test) {
  pooling_and_dropout_ops<float>();
  pooling_and_dropout_ops<double>();
}

SELA_CUDA_TEST("engine ops on CUDA: batch_norm2d and batch_norm_relu2d, train and eval, grouped",
               batch_norm_test) {
  for (bool fused : {false, true}) {
    batch_norm_ops<float>(fused);
    batch_norm_ops<double>(fused);
  }
}

SELA_CUDA_TEST("engine ops on CUDA: log_softmax, cross_entropy (host and device gradients)",
               loss_test) {
  loss_ops<float>();
  loss_ops<double>();
}

SELA_CUDA_TEST("CUDA tensors: construction, copies, casts, pinned uploads", tensor_plumbing_test) {
  Tensor zeros = Tensor::zeros({3, 5}, DType::f64, kGpu);
  CHECK(zeros.device() == kGpu);
  CHECK(zeros.to_vector<double>() == std::vector<double>(15, 0.0));
  Tensor full = Tensor::full({4}, -2.5, DType::f32, kGpu);
  CHECK(full.to_vector<float>() == std::vector<float>(4, -2.5f));
  full.fill_(7.0);
  CHECK(full.to_vector<float>() == std::vector<float>(4, 7.0f));
  CHECK(full.rows(1, 2).item() == 7.0);

  // Round trip and clone: same bits, own storage.
  Tensor host = random_tensor<double>({4, 9}, 1);
  Tensor device = host.to(kGpu);
  Tensor copy = device.clone();
  CHECK_FALSE(copy.same_storage(device));
  check_identical(copy.to_vector<double>(), host.to_vector<double>(), "clone + download");
  check_identical(device.rows(1, 3).to(Device::cpu()).to_vector<double>(),
                  host.rows(1, 3).to_vector<double>(), "a row view downloads its rows only");

  // Casts on the device equal the host's.
  check_identical(device.to(DType::f32).to_vector<float>(), host.to(DType::f32).to_vector<float>(),
                  "float64 -> float32 on the device");
  Tensor indices = Tensor::from_vector<std::int64_t>({-3, 0, 5, 1 << 20}, {4});
  check_identical(indices.to(kGpu).to(DType::f64).to_vector<double>(),
                  indices.to(DType::f64).to_vector<double>(), "int64 -> float64 on the device");
  // A pair the device kernels do not convert goes through the host.
  check_identical(indices.to(kGpu).to(DType::i32).to(DType::u8).to_vector<std::uint8_t>(),
                  indices.to(DType::i32).to(DType::u8).to_vector<std::uint8_t>(),
                  "int32 -> uint8 through the host");

  // copy_from across devices, with a dtype change on the way.
  Tensor target = Tensor::full({4, 9}, std::nan(""), DType::f32, kGpu);
  target.copy_from(host);
  check_identical(target.to_vector<float>(), host.to(DType::f32).to_vector<float>(),
                  "copy_from host float64 into device float32");
  Tensor back = Tensor::full({4, 9}, std::nan(""), DType::f64);
  back.copy_from(target);
  check_identical(back.to_vector<double>(), host.to(DType::f32).to(DType::f64).to_vector<double>(),
                  "copy_from device float32 into host float64");

  // Uploads from pinned and pageable host memory.
  Tensor pinned = Tensor::pinned({4, 9}, DType::f64);
  CHECK(pinned.is_pinned());
  pinned.copy_from(host);
  Tensor from_pinned = pinned.to(kGpu);
  std::vector<double> pageable = host.to_vector<double>();
  Tensor from_pageable = Tensor::empty({4, 9}, DType::f64, kGpu);
  from_pageable.copy_from_host(pageable.data());
  pageable.assign(pageable.size(), -1.0);  // the source may be reused at once
  Tensor from_raw_pinned = Tensor::empty({4, 9}, DType::f64, kGpu);
  from_raw_pinned.copy_from_host(pinned.raw_data());
  sela::synchronize(kGpu);
  check_identical(from_pinned.to_vector<double>(), host.to_vector<double>(), "pinned upload");
  check_identical(from_pageable.to_vector<double>(), host.to_vector<double>(), "pageable upload");
  check_identical(from_raw_pinned.to_vector<double>(), host.to_vector<double>(),
                  "copy_from_host from a pinned pointer");
}

SELA_CUDA_TEST("CUDA tensors: errors name the op, the devices and what to do", device_error_test) {
  auto error_of = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const sela::Error& e) {
      return e.what();
    }
    return "";
  };
  Tensor device = Tensor::zeros({2, 3}, DType::f32, kGpu);
  Tensor host = Tensor::zeros({2, 3});
  std::string access = error_of([&] { device.data<float>(); });
  CHECK(access.find("GPU") != std::string::npos);
  CHECK(access.find("to(Device::cpu())") != std::string::npos);
  std::string mixed = error_of([&] { sela::add(host, device); });
  CHECK(mixed.find("add") != std::string::npos);
  CHECK(mixed.find("cpu") != std::string::npos);
  CHECK(mixed.find("cuda:0") != std::string::npos);
  std::string mixed_linear = error_of([&] { sela::linear(device, host.view({3, 2}), Tensor()); });
  CHECK(mixed_linear.find("linear") != std::string::npos);
  CHECK(mixed_linear.find("cuda:0") != std::string::npos);
  std::string targets = error_of([&] {
    sela::cross_entropy(device, Tensor::from_vector<std::int64_t>({0, 1}, {2}));
  });
  CHECK(targets.find("targets") != std::string::npos);
  CHECK(error_of([] {
          Tensor::empty({1}, DType::f32, Device::cuda(999));
        }).find("does not exist") != std::string::npos);

  // A target outside [0, K): found on the GPU, raised at the next host read.
  Tensor logits = random_tensor<float>({4, 3}, 9).to(kGpu);
  Tensor bad = Tensor::from_vector<std::int64_t>({0, 2, 3, 1}, {4}).to(kGpu);
  Tensor loss = sela::cross_entropy(logits, bad);
  std::string deferred = error_of([&] { loss.item(); });
  CHECK(deferred.find("cross_entropy") != std::string::npos);
  CHECK(deferred.find("row 2") != std::string::npos);
  // Reported once; the device is usable afterwards.
  Tensor good = Tensor::from_vector<std::int64_t>({0, 2, 1, 1}, {4}).to(kGpu);
  CHECK(std::isfinite(sela::cross_entropy(logits, good).item()));
}

SELA_CUDA_TEST("Module::to(Device) moves parameters and buffers in place", module_to_test) {
  sela::BatchNorm2d norm(3);
  sela::Linear layer(4, 2);
  Tensor weight_handle = layer.weight;
  layer.weight.fill_(0.25);
  layer.to(kGpu);
  norm.to(kGpu);
  CHECK(weight_handle.device() == kGpu);  // the same handle sees the new storage
  CHECK(weight_handle.requires_grad());
  CHECK(weight_handle.to_vector<float>() == std::vector<float>(8, 0.25f));
  for (auto& entry : norm.state_dict()) {
    INFO(entry.first);
    if (entry.first == "num_batches_tracked") {
      CHECK(entry.second.device() == Device::cpu());  // a host counter, by design
    } else {
      CHECK(entry.second.device() == kGpu);
    }
  }
  Tensor x = random_tensor<float>({5, 3, 2, 2}, 3).to(kGpu);
  Tensor y = norm.forward(x);
  CHECK(y.device() == kGpu);
  CHECK(norm.num_batches_tracked.item() == 1.0);
  layer.to(Device::cpu());
  CHECK(weight_handle.device() == Device::cpu());
}

namespace {

// Two SGD steps of the same parameters on both devices; params without a gradient in the
// first step get their first update (and momentum buffer) in the second, so the second step
// has two fused launches (first-step and later parameters).
template <typename T>
void sgd_twins(const sela::SgdOptions& options, const std::string& label) {
  std::vector<Shape> shapes{{7, 5}, {3}, {1}, {2, 3, 4, 5}, {1000}};
  std::vector<Tensor> cpu_params, gpu_params;
  std::uint64_t seed = 800;
  for (const Shape& s : shapes) {
    cpu_params.push_back(random_tensor<T>(s, ++seed).set_requires_grad());
    gpu_params.push_back(gpu_twin(cpu_params.back()));
  }
  sela::Sgd cpu_sgd(cpu_params, options), gpu_sgd(gpu_params, options);
  for (int step = 0; step < 3; ++step) {
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      if (step == 0 && i % 2 == 1) continue;  // no gradient: skipped this step
      Tensor g = random_tensor<T>(shapes[i], ++seed);
      cpu_params[i].set_grad(g);
      gpu_params[i].set_grad(g.to(kGpu));
    }
    cpu_sgd.step();
    gpu_sgd.step();
    cpu_sgd.zero_grad();
    gpu_sgd.zero_grad();
    // One rounding of each multiply-add may differ (nvcc contracts to FMA): a few ulps.
    const Tolerance tol = sizeof(T) == 4 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-15, 1e-14};
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      const std::string what = label + " step " + std::to_string(step) + " parameter " +
                               std::to_string(i) + type_name<T>();
      expect_close(gpu_params[i], cpu_params[i], tol, what);
      const Tensor& cpu_buffer = cpu_sgd.momentum_buffers()[i];
      const Tensor& gpu_buffer = gpu_sgd.momentum_buffers()[i];
      CHECK(cpu_buffer.defined() == gpu_buffer.defined());
      if (cpu_buffer.defined() && gpu_buffer.defined()) {
        expect_close(gpu_buffer, cpu_buffer, tol, what + " momentum buffer");
      }
    }
  }
}

}  // namespace

SELA_CUDA_TEST("Sgd on CUDA equals Sgd on the CPU (momentum, Nesterov, weight decay, skips)",
               sgd_test) {
  sela::SgdOptions plain;
  plain.lr = 0.1;
  plain.momentum = 0.0;
  plain.weight_decay = 0.0;
  sela::SgdOptions momentum;
  momentum.lr = 0.05;
  momentum.momentum = 0.9;
  momentum.weight_decay = 5e-4;
  momentum.dampening = 0.1;
  sela::SgdOptions nesterov;
  nesterov.lr = 0.03;
  nesterov.momentum = 0.8;
  nesterov.weight_decay = 1e-3;
  nesterov.nesterov = true;
  for (const auto& entry : {std::make_pair(plain, "plain"), std::make_pair(momentum, "momentum"),
                            std::make_pair(nesterov, "nesterov")}) {
    sgd_twins<float>(entry.first, entry.second);
    sgd_twins<double>(entry.first, entry.second);
  }
}
