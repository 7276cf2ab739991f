// The small model of the whole-step tests: alexnet-32 at width 0.125 (conv widths
// 8-24-48-32-32, fc 512) with 10 heads of 13 clusters, and one forward/backward of it on a
// fixed batch, in any device, dtype and precision mode (the bf16 tests compare such steps).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "models/alexnet.h"

namespace sela::test {

inline constexpr std::int64_t kSmallHeads = 10, kSmallClusters = 13, kSmallFcWidth = 512;

inline ModelConfig small_alexnet32(std::uint64_t seed, double dropout) {
  ModelConfig config;
  config.arch = "alexnet-32";
  config.width_mult = 0.125;
  config.clusters.assign(kSmallHeads, kSmallClusters);
  config.dropout = dropout;
  config.seed = seed;
  return config;
}

// A batch of `batch` random 3x32x32 images and, per head, random labels below
// kSmallClusters (all on the host, float32 / int64).
struct SmallBatch {
  Tensor images;                // (batch, 3, 32, 32)
  std::vector<Tensor> targets;  // kSmallHeads x (batch)
};
inline SmallBatch small_batch(std::int64_t batch, std::uint64_t seed) {
  Rng rng(seed);
  SmallBatch out;
  out.images = randn({batch, 3, 32, 32}, rng);
  for (std::int64_t t = 0; t < kSmallHeads; ++t) {
    std::vector<std::int64_t> labels(static_cast<std::size_t>(batch));
    for (auto& label : labels) label = static_cast<std::int64_t>(rng.below(kSmallClusters));
    out.targets.push_back(Tensor::from_vector(labels, {batch}));
  }
  return out;
}

// One forward/backward of a fresh model made from `config`, in `dtype` on `device`: its
// loss and every parameter gradient that it gives (in named_parameters order, as float64
// values). In training mode, or, when !train, evaluation mode (BatchNorm with its running
// statistics); with autocast_bfloat16 on for the step when `bf16` (off again afterwards,
// whatever happens). The backward starts at sela_loss of the heads, or, when `fc7_upstream`
// (batch, fc width) is given, at fc7's output with that gradient (the heads then get none and
// are left out; the loss is 0).
struct StepGradients {
  double loss = 0;
  std::vector<std::string> names;
  std::vector<std::vector<double>> grads;
};
inline StepGradients step_gradients(const ModelConfig& config, const SmallBatch& batch,
                                    Device device, DType dtype, bool bf16, bool train = true,
                                    const Tensor& fc7_upstream = Tensor()) {
  auto model = make_model(config);
  model->to(dtype);
  model->to(device);
  if (train) {
    model->train();
  } else {
    model->eval();
  }
  std::vector<Tensor> targets;
  for (const auto& t : batch.targets) targets.push_back(t.to(device));
  struct Autocast {
    explicit Autocast(bool on) { set_autocast_bfloat16(on); }
    ~Autocast() { set_autocast_bfloat16(false); }
  } autocast(bf16);
  StepGradients out;
  const Tensor images = batch.images.to(dtype).to(device);
  if (fc7_upstream.defined()) {
    model->forward_fc7(images).backward(fc7_upstream.to(dtype).to(device));
  } else {
    Tensor loss = sela_loss(model->forward_heads(images), targets);
    loss.backward();
    out.loss = loss.item();
  }
  for (const auto& p : model->named_parameters()) {
    if (!p.second.grad().defined()) continue;
    out.names.push_back(p.first);
    out.grads.push_back(p.second.grad().to_vector<double>());
  }
  return out;
}

// The parameters whose gradient is zero in exact arithmetic (in `reference`: below 1e-6 of the
// largest gradient's L2 norm; the conv biases that BatchNorm follows), to be left out of
// relative comparisons.
inline std::vector<bool> zero_in_exact_arithmetic(const StepGradients& reference) {
  std::vector<double> norms;
  double largest = 0;
  for (const auto& g : reference.grads) {
    double norm = 0;
    for (double v : g) norm += v * v;
    norms.push_back(std::sqrt(norm));
    largest = std::max(largest, norms.back());
  }
  std::vector<bool> zero;
  for (double norm : norms) zero.push_back(norm < 1e-6 * largest);
  return zero;
}

// Relative L2 distance |a - b| / |b| (b the reference).
inline double relative_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

}  // namespace sela::test
