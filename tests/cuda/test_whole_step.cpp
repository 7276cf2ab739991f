// One whole SeLa training step on the CPU and on CUDA from the same weights and batch:
// alexnet-32 at width 0.125 (conv widths 8-24-48-32-32, fc 512) with 10 heads of 13
// clusters, batch 6, dropout 0.5 with equal seeds (the Philox masks are the same on both
// devices), SGD with momentum 0.9, weight decay 5e-4, lr 0.05. Compared: every head's logits,
// the loss, the gradient of every parameter, every parameter after the update, and the
// BatchNorm running statistics; again with BatchNorm1d after both fc layers
// (ModelConfig::fc_batch_norm: the BatchNorm kernels on (N, C, 1, 1) views; the fc biases
// before them have zero gradients, as the conv biases). Then the steady state of the
// caching allocator: three steps on the GPU, and no cudaMalloc after the first. Skipped, loudly and by name, without a GPU.
//
// TF32 is off for convolutions and matmuls in this test: TF32 rounds every product's inputs
// to a 10-bit mantissa (~5e-4 relative), which after eight layers would force tolerances too
// loose to tell a correct step from a subtly wrong one. With it off both devices compute in
// IEEE fp32 (or fp64) and differ only in summation order.
//
// Tolerances, per tensor, |gpu - cpu| <= atol + rtol * |cpu| with atol = a * max|cpu|:
//   float64: a = 1e-10, rtol = 1e-9. Summation-order differences are ~1e-16 per operation;
//     the margin covers the depth of the network and the conditioning of BatchNorm.
//   A convolution bias directly followed by BatchNorm is an exception: BatchNorm subtracts
//   the batch mean, so its gradient is zero in exact arithmetic, and both devices return
//   rounding noise (float64 ~1e-19, float32 ~1e-10, seen on an H100) that no relative
//   tolerance can compare. It is checked with atol = a * max|gradient of that layer's
//   weight| (rtol 0), both the gradient and the updated value (zero-initialised, moved by
//   lr times the gradient): a real bias gradient would be of that weight gradient's order.
//   float32: a = 5e-4, rtol = 5e-3. Summation-order differences of ~1e-7 per operation grow
//     through eight layers and BatchNorm's division by the batch deviation, and a max-pool
//     or ReLU whose two candidates are within float rounding may route one gradient element
//     differently (it moves a weight gradient by one term of a sum over N * OH * OW). Any
//     wrong kernel, mask or update is off by O(1) relative, far outside this.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/device_allocator.h"
#include "models/alexnet.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/models/small_model.h"

namespace {

using sela::Device;
using sela::DType;
using sela::Tensor;
using sela::test::check_close;
using sela::test::Tolerance;

const Device kGpu = Device::cuda(0);
constexpr std::int64_t kBatch = 6, kHeads = sela::test::kSmallHeads,
                       kClusters = sela::test::kSmallClusters;

sela::ModelConfig small_config(bool fc_batch_norm = false) {
  sela::ModelConfig config = sela::test::small_alexnet32(5, 0.5);
  config.fc_batch_norm = fc_batch_norm;
  return config;
}

sela::SgdOptions sgd_options() {
  sela::SgdOptions options;  // the reference's: lr 0.05, momentum 0.9, weight decay 5e-4
  options.lr = 0.05;
  options.momentum = 0.9;
  options.weight_decay = 5e-4;
  return options;
}

double max_abs(const std::vector<double>& values) {
  double m = 0;
  for (double v : values) m = std::max(m, std::fabs(v));
  return m;
}

// gpu against cpu with atol = scale * max|cpu| and the given rtol.
void expect_close(const Tensor& gpu, const Tensor& cpu, double scale, double rtol,
                  const std::string& what) {
  INFO(what);
  REQUIRE(gpu.defined());
  REQUIRE(cpu.defined());
  CHECK(gpu.device() == kGpu);
  REQUIRE(gpu.shape() == cpu.shape());
  std::vector<double> want = cpu.to_vector<double>();
  std::vector<double> got = gpu.to_vector<double>();
  check_close(got, want, Tolerance{scale * max_abs(want), rtol}, what);
}

// gpu against cpu with an absolute tolerance only.
void expect_close_absolute(const Tensor& gpu, const Tensor& cpu, double atol,
                           const std::string& what) {
  INFO(what);
  REQUIRE(gpu.shape() == cpu.shape());
  check_close(gpu.to_vector<double>(), cpu.to_vector<double>(), Tolerance{atol, 0.0}, what);
}

// "features.K.bias" -> "features.K.weight" when features.(K+1) is a BatchNorm (it has
// running statistics); "" otherwise. Such a bias has a zero gradient in exact arithmetic.
std::string weight_of_bias_before_batchnorm(const std::string& name,
                                            const sela::NamedTensors& buffers) {
  const std::string suffix = ".bias";
  if (name.size() <= suffix.size() ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  const std::string layer = name.substr(0, name.size() - suffix.size());  // "features.K"
  const std::size_t dot = layer.rfind('.');
  if (dot == std::string::npos) return "";
  const std::string index = layer.substr(dot + 1);
  const auto is_digit = [](unsigned char c) { return std::isdigit(c) != 0; };
  if (index.empty() || !std::all_of(index.begin(), index.end(), is_digit)) return "";
  const std::string next = layer.substr(0, dot + 1) + std::to_string(std::stoi(index) + 1);
  for (const auto& buffer : buffers)
    if (buffer.first == next + ".running_mean") return layer + ".weight";
  return "";
}

double max_abs_grad_of(const sela::NamedTensors& parameters, const std::string& name) {
  for (const auto& parameter : parameters)
    if (parameter.first == name) return max_abs(parameter.second.grad().to_vector<double>());
  FAIL("no parameter named " << name);
  return 0;
}

std::vector<Tensor> make_targets(sela::Rng& rng) {
  std::vector<Tensor> targets;
  for (std::int64_t t = 0; t < kHeads; ++t) {
    std::vector<std::int64_t> labels(kBatch);
    for (auto& label : labels) label = static_cast<std::int64_t>(rng.below(kClusters));
    targets.push_back(Tensor::from_vector(labels, {kBatch}));
  }
  return targets;
}

template <typename T>
void whole_step(double scale, double rtol, bool fc_batch_norm = false) {
  sela::cuda::set_conv_tf32(false);
  sela::cuda::set_matmul_tf32(false);
  const DType dtype = sizeof(T) == 4 ? DType::f32 : DType::f64;
  const std::string tag = std::string(sizeof(T) == 4 ? " (float32" : " (float64") +
                          (fc_batch_norm ? ", fc BatchNorm)" : ")");

  auto cpu_model = sela::make_model(small_config(fc_batch_norm));
  auto gpu_model = sela::make_model(small_config(fc_batch_norm));  // same seed: same weights
  cpu_model->to(dtype);
  gpu_model->to(dtype);
  gpu_model->to(kGpu);
  cpu_model->train();
  gpu_model->train();
  sela::Sgd cpu_sgd(cpu_model->parameters(), sgd_options());
  sela::Sgd gpu_sgd(gpu_model->parameters(), sgd_options());

  sela::Rng rng(2024);
  Tensor images = sela::randn({kBatch, 3, 32, 32}, rng, dtype);
  std::vector<Tensor> targets = make_targets(rng);
  Tensor images_gpu = images.to(kGpu);
  std::vector<Tensor> targets_gpu;
  for (const Tensor& t : targets) targets_gpu.push_back(t.to(kGpu));

  // Forward: logits of every head, then the loss.
  std::vector<Tensor> logits = cpu_model->forward_heads(images);
  std::vector<Tensor> logits_gpu = gpu_model->forward_heads(images_gpu);
  REQUIRE(logits.size() == logits_gpu.size());
  for (std::size_t t = 0; t < logits.size(); ++t) {
    expect_close(logits_gpu[t], logits[t], scale, rtol,
                 "logits of head " + std::to_string(t) + tag);
  }
  Tensor loss = sela::sela_loss(logits, targets);
  Tensor loss_gpu = sela::sela_loss(logits_gpu, targets_gpu);
  expect_close(loss_gpu, loss, scale, rtol, "loss" + tag);

  // Backward: the gradient of every parameter.
  loss.backward();
  loss_gpu.backward();
  const sela::NamedTensors cpu_parameters = cpu_model->named_parameters();
  const sela::NamedTensors gpu_parameters = gpu_model->named_parameters();
  REQUIRE(cpu_parameters.size() == gpu_parameters.size());
  const sela::NamedTensors cpu_buffers = cpu_model->named_buffers();
  // atol of each convolution bias followed by BatchNorm (zero in exact arithmetic).
  std::vector<double> zero_gradient_atol(cpu_parameters.size(), -1.0);
  int zero_gradient_biases = 0;
  for (std::size_t i = 0; i < cpu_parameters.size(); ++i) {
    const std::string weight =
        weight_of_bias_before_batchnorm(cpu_parameters[i].first, cpu_buffers);
    if (weight.empty()) continue;
    zero_gradient_atol[i] = scale * max_abs_grad_of(cpu_parameters, weight);
    ++zero_gradient_biases;
  }
  CHECK(zero_gradient_biases == (fc_batch_norm ? 7 : 5));  // conv1..conv5 of alexnet-32 (fc6, fc7)
  for (std::size_t i = 0; i < cpu_parameters.size(); ++i) {
    REQUIRE(cpu_parameters[i].first == gpu_parameters[i].first);
    const std::string what = "gradient of " + cpu_parameters[i].first + tag;
    if (zero_gradient_atol[i] >= 0) {
      expect_close_absolute(gpu_parameters[i].second.grad(), cpu_parameters[i].second.grad(),
                            zero_gradient_atol[i], what + " (zero in exact arithmetic)");
    } else {
      expect_close(gpu_parameters[i].second.grad(), cpu_parameters[i].second.grad(), scale, rtol,
                   what);
    }
  }

  // The update, and the BatchNorm statistics the forward updated.
  cpu_sgd.step();
  gpu_sgd.step();
  for (std::size_t i = 0; i < cpu_parameters.size(); ++i) {
    const std::string what = "updated " + cpu_parameters[i].first + tag;
    if (zero_gradient_atol[i] >= 0) {
      expect_close_absolute(gpu_parameters[i].second, cpu_parameters[i].second,
                            zero_gradient_atol[i], what + " (zero in exact arithmetic)");
    } else {
      expect_close(gpu_parameters[i].second, cpu_parameters[i].second, scale, rtol, what);
    }
  }
  const sela::NamedTensors gpu_buffers = gpu_model->named_buffers();
  REQUIRE(cpu_buffers.size() == gpu_buffers.size());
  for (std::size_t i = 0; i < cpu_buffers.size(); ++i) {
    const std::string& name = cpu_buffers[i].first;
    if (!sela::is_floating(cpu_buffers[i].second.dtype())) {  // num_batches_tracked (host)
      CHECK(gpu_buffers[i].second.item() == cpu_buffers[i].second.item());
      continue;
    }
    expect_close(gpu_buffers[i].second, cpu_buffers[i].second, scale, rtol, name + tag);
  }
}

}  // namespace

SELA_CUDA_TEST("whole training step: alexnet-32 x 10 heads, CPU vs CUDA (float64)",
               whole_step_double) {
  whole_step<double>(1e-10, 1e-9);
}

SELA_CUDA_TEST("whole training step: alexnet-32 x 10 heads, CPU vs CUDA (float32, TF32 off)",
               whole_step_float) {
  whole_step<float>(5e-4, 5e-3);
}

SELA_CUDA_TEST("whole training step with BatchNorm in the fc layers, CPU vs CUDA (float64)",
               whole_step_fc_batch_norm_double) {
  whole_step<double>(1e-10, 1e-9, true);
}

SELA_CUDA_TEST("whole training step with BatchNorm in the fc layers, CPU vs CUDA (float32)",
               whole_step_fc_batch_norm_float) {
  whole_step<float>(5e-4, 5e-3, true);
}

SELA_CUDA_TEST("caching allocator steady state: no cudaMalloc after the first training step",
               steady_state) {
  auto model = sela::make_model(small_config());
  model->to(kGpu);
  model->train();
  sela::Sgd sgd(model->parameters(), sgd_options());
  sela::Rng rng(7);
  Tensor images = sela::randn({kBatch, 3, 32, 32}, rng).to(kGpu);
  std::vector<Tensor> targets = make_targets(rng);
  for (Tensor& t : targets) t = t.to(kGpu);
  std::vector<std::uint64_t> mallocs;
  for (int step = 0; step < 3; ++step) {
    sgd.zero_grad();
    Tensor loss = sela::sela_loss(model->forward_heads(images), targets);
    loss.backward();
    sgd.step();
    CHECK(std::isfinite(loss.item()));  // waits for the device
    mallocs.push_back(sela::cuda::device_memory_stats(kGpu.index).device_mallocs);
  }
  INFO("device_mallocs after steps 1, 2, 3: " << mallocs[0] << ", " << mallocs[1] << ", "
                                              << mallocs[2]);
  CHECK(mallocs[1] == mallocs[0]);
  CHECK(mallocs[2] == mallocs[0]);
}
