// `sela bench train-step`: times full SeLa training steps (forward through every head,
// mean cross-entropy over heads, backward, SGD with momentum and weight decay) on random
// data, after warm-up; reports the median step. The PyTorch twin of exactly this step is
// tools/bench/torch_train_step.py; tools/bench/compare_train_step.sh runs both in one
// invocation and prints the ratio.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "engine/allocator.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "models/alexnet.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace sela::tools {

namespace {

// The SeLa representation step: mean over heads of each head's cross-entropy.
double train_step(SelaNet& model, Sgd& optimizer, const Tensor& images,
                  const std::vector<Tensor>& targets) {
  optimizer.zero_grad();
  Tensor loss = sela_loss(model.forward_heads(images), targets);
  loss.backward();
  optimizer.step();
  return loss.item();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  std::size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

int run_bench_train_step(const Args& args) {
  cli::Flags flags("sela bench train-step",
                   "Times full training steps (forward, backward, SGD) of a SeLa model on "
                   "random data and prints images/s (median over the timed steps).");
  flags.add("arch", "alexnet-32", "alexnet | alexnet-small | alexnet-32");
  flags.add("width-mult", "1", "width multiplier of the conv and fc layers");
  flags.add("batch", "128", "images per step");
  flags.add("heads", "10", "number of heads T");
  flags.add("clusters", "128", "clusters per head K (one value for all heads)");
  flags.add("device", "cpu", "cpu (cuda comes with the CUDA backend)");
  flags.add("threads", "0", "CPU threads (0 = all hardware threads)");
  flags.add("warmup", "2", "untimed steps first");
  flags.add("steps", "6", "timed steps");
  flags.add("seed", "0", "seed of weights and data");
  flags.add_switch("json", "print one JSON object on the last line");
  if (!flags.parse(args)) return 0;

  Device device = Device::parse(flags.get("device"));
  SELA_CHECK(device.is_cpu(), "sela bench train-step",
             "--device " << device.str() << " is not available: this build has no CUDA backend");
  std::int64_t batch = flags.get_int("batch"), heads = flags.get_int("heads");
  std::int64_t clusters = flags.get_int("clusters");
  std::int64_t warmup = flags.get_int("warmup"), steps = flags.get_int("steps");
  SELA_CHECK(batch >= 2, "sela bench train-step", "--batch must be >= 2 (BatchNorm), got " << batch);
  SELA_CHECK(heads >= 1 && clusters >= 1, "sela bench train-step",
             "--heads and --clusters must be >= 1");
  SELA_CHECK(steps >= 1 && warmup >= 0, "sela bench train-step", "--steps must be >= 1");
  cpu::set_num_threads(static_cast<int>(flags.get_int("threads")));

  ModelConfig config;
  config.arch = flags.get("arch");
  config.width_mult = flags.get_double("width-mult");
  config.clusters.assign(static_cast<std::size_t>(heads), clusters);
  config.seed = static_cast<std::uint64_t>(flags.get_int("seed"));
  auto model = make_model(config);
  model->train();
  SgdOptions sgd;  // lr 0.05, momentum 0.9, weight decay 5e-4 (the reference's defaults)
  Sgd optimizer(model->parameters(), sgd);

  Rng rng(config.seed + 12345);
  std::int64_t size = model->input_size();
  Tensor images = randn({batch, config.in_channels, size, size}, rng);
  std::vector<Tensor> targets;
  for (std::int64_t t = 0; t < heads; ++t) {
    std::vector<std::int64_t> labels(static_cast<std::size_t>(batch));
    for (auto& label : labels) label = static_cast<std::int64_t>(rng.below(clusters));
    targets.push_back(Tensor::from_vector(labels, {batch}));
  }

  bool json = flags.get_switch("json");
  std::cout << "sela bench train-step: " << config.arch << " width " << config.width_mult
            << ", batch " << batch << ", " << heads << " heads x " << clusters
            << " clusters, " << model->parameter_count() << " parameters, device cpu, "
            << cpu::num_threads() << " threads, gemm " << cpu::gemm_backend_name() << "\n";
  double loss = 0;
  for (std::int64_t i = 0; i < warmup; ++i) loss = train_step(*model, optimizer, images, targets);
  reset_host_peak();
  std::vector<double> seconds;
  for (std::int64_t i = 0; i < steps; ++i) {
    auto start = std::chrono::steady_clock::now();
    loss = train_step(*model, optimizer, images, targets);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!json) std::fprintf(stdout, "  step %lld: %.1f ms, loss %.4f\n", static_cast<long long>(i), seconds.back() * 1e3, loss);
  }
  SELA_CHECK(std::isfinite(loss), "sela bench train-step", "loss became " << loss);
  double step_s = median(seconds);
  double images_per_s = static_cast<double>(batch) / step_s;
  // Forward multiply-adds x 2 flops x 3 (forward, backward-data, backward-weight).
  double gflops = model->forward_macs_per_image() * 2 * 3 * static_cast<double>(batch) / step_s / 1e9;
  double peak_mb = static_cast<double>(host_memory_stats().peak_bytes) / (1 << 20);
  std::fprintf(stdout, "median step %.1f ms  ->  %.1f images/s, %.1f GFLOP/s, peak tensor memory %.0f MiB\n",
               step_s * 1e3, images_per_s, gflops, peak_mb);
  if (json) {
    std::ostringstream out;
    out << "{\"arch\": \"" << config.arch << "\", \"width_mult\": " << config.width_mult
        << ", \"batch\": " << batch << ", \"heads\": " << heads << ", \"clusters\": " << clusters
        << ", \"device\": \"cpu\", \"threads\": " << cpu::num_threads()
        << ", \"gemm\": \"" << cpu::gemm_backend_name() << "\", \"steps\": " << steps
        << ", \"step_ms\": " << step_s * 1e3 << ", \"images_per_s\": " << images_per_s
        << ", \"gflops\": " << gflops << ", \"peak_mib\": " << peak_mb
        << ", \"final_loss\": " << loss << "}";
    std::cout << out.str() << "\n";
  }
  return 0;
}

}  // namespace sela::tools
