// The golden test: alexnet-32 (width 0.0625, 3 heads with K = 10, 16, 7, dropout 0) against
// PyTorch. tests/golden/make_golden.py built the same network in PyTorch 1.13, ran one
// forward/backward and three SGD steps (lr 0.05, momentum 0.9, weight decay 5e-4) on a fixed
// batch, in float32 and float64, and wrote everything to alexnet32_golden.safetensors.
// Here the engine loads the same initial weights and batch, repeats the computation and
// compares logits, loss, every parameter gradient, the three losses, and every parameter
// and BatchNorm buffer after the three steps. No Python runs here.
//
// Tolerances, per tensor, element-wise |ours − ref| <= atol + rtol·|ref| with
// atol = max(atol_scale·max|ref|, floor), so tiny entries of a large gradient are held to
// the gradient's own precision, and tensors that are zero in exact arithmetic (the conv
// biases: a training-mode BatchNorm follows each conv, so their gradient is pure rounding
// noise, ~1e-9 in float32 and ~1e-18 in float64) are held to the floor:
//   float64: rtol 1e-7, atol 1e-9·scale, floor 1e-15 — only summation order differs.
//   float32: rtol 2e-3, atol 2e-4·scale, floor 1e-7 — float32 convolutions/GEMMs summed in
//            another order, through 5 BatchNorms over a batch of 8, leave ~1e-5 relative
//            noise; the bound is 20x that, and still far below what any wrong index or
//            missing term gives.
// The float64 run starts from the float32 initial weights and batch converted exactly.
//
// alexnet32_fcbn_golden.safetensors (make_golden.py --fc-batch-norm) is the same run for the
// network with BatchNorm1d after both fc layers (ModelConfig::fc_batch_norm) at width
// 0.03125, held to the same tolerances.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/state_io.h"
#include "models/alexnet.h"

using namespace sela;

namespace {

struct Tolerance {
  double rtol, atol_scale, atol_floor;
};

void compare(const std::string& what, const Tensor& ours, const Tensor& reference,
             Tolerance tol) {
  REQUIRE_MESSAGE(ours.shape() == reference.shape(),
                  what << ": shape " << shape_str(ours.shape()) << " vs "
                       << shape_str(reference.shape()));
  std::vector<double> a = ours.to_vector<double>();
  std::vector<double> b = reference.to_vector<double>();
  double scale = 0;
  for (double v : b) scale = std::max(scale, std::fabs(v));
  double atol = std::max(tol.atol_scale * scale, tol.atol_floor);
  std::size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double bound = atol + tol.rtol * std::fabs(b[i]);
    double err = std::fabs(a[i] - b[i]);
    bool ok = std::isfinite(a[i]) && err <= bound;
    if (!ok) ++bad;
    double excess = std::isfinite(a[i]) ? err - bound : 1e300;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << a.size()
                               << " elements off; worst at " << worst << ": ours " << a[worst]
                               << ", reference " << b[worst] << " (scale " << scale << ")");
}

// The golden file holds targets as one (T, N) tensor; the engine's loss takes one per head.
std::vector<Tensor> per_head(const Tensor& targets) {
  std::vector<Tensor> heads;
  for (std::int64_t t = 0; t < targets.size(0); ++t) heads.push_back(targets.rows(t, t + 1).view({-1}));
  return heads;
}

struct Golden {
  const char* file;  // in tests/golden
  double width_mult;
  bool fc_batch_norm;
};
const Golden kPlain{"alexnet32_golden.safetensors", 0.0625, false};
const Golden kFcBatchNorm{"alexnet32_fcbn_golden.safetensors", 0.03125, true};

void run_golden(const Golden& which, DType dtype, const std::string& prefix, Tolerance tol) {
  SafetensorsFile golden(std::string(SELA_SOURCE_DIR) + "/tests/golden/" + which.file);
  ModelConfig config;
  config.arch = "alexnet-32";
  config.width_mult = which.width_mult;
  config.clusters = {10, 16, 7};
  config.dropout = 0.0;  // the golden data has no dropout: our mask RNG is not PyTorch's
  config.fc_batch_norm = which.fc_batch_norm;
  SelaNet model(config);
  model.to(dtype);
  LoadOptions load;
  load.prefix = "init/";
  load.convert_dtype = true;
  load_state(model, golden, load);  // strict: every name of the model in the file, and back
  model.train();

  Tensor input = tensor_from_file(golden, "input").to(dtype);  // (8, 3, 32, 32)
  Tensor targets = tensor_from_file(golden, "targets");        // (T, N) int64
  REQUIRE(input.dtype() == dtype);

  std::vector<Tensor> logits = model.forward_heads(input);
  REQUIRE(logits.size() == 3);
  for (std::size_t t = 0; t < logits.size(); ++t) {
    compare(prefix + "logits/" + std::to_string(t), logits[t],
            tensor_from_file(golden, prefix + "logits/" + std::to_string(t)), tol);
  }
  Tensor loss = sela_loss(logits, per_head(targets));
  compare(prefix + "loss", loss.view({1}), tensor_from_file(golden, prefix + "loss"), tol);
  loss.backward();
  for (auto& entry : model.named_parameters()) {
    REQUIRE_MESSAGE(entry.second.grad().defined(), entry.first << " got no gradient");
    compare(prefix + "grad/" + entry.first, entry.second.grad(),
            tensor_from_file(golden, prefix + "grad/" + entry.first), tol);
  }

  SgdOptions options;
  options.lr = 0.05;
  options.momentum = 0.9;
  options.weight_decay = 5e-4;
  Sgd optimizer(model.parameters(), options);
  std::vector<double> losses{loss.item()};
  optimizer.step();
  for (int step = 1; step < 3; ++step) {
    optimizer.zero_grad();
    Tensor next = sela_loss(model.forward_heads(input), per_head(targets));
    next.backward();
    optimizer.step();
    losses.push_back(next.item());
  }
  Tensor loss_steps = Tensor::from_vector(losses, {3});
  compare(prefix + "loss_steps", loss_steps, tensor_from_file(golden, prefix + "loss_steps"), tol);
  for (auto& entry : model.state_dict()) {
    Tensor reference = tensor_from_file(golden, prefix + "step3/" + entry.first);
    if (entry.second.dtype() == DType::i64) {  // num_batches_tracked
      CHECK_MESSAGE(entry.second.item() == reference.item(), entry.first);
      continue;
    }
    compare(prefix + "step3/" + entry.first, entry.second, reference, tol);
  }
}

}  // namespace

TEST_CASE("alexnet-32 matches PyTorch in float64: logits, loss, gradients, 3 SGD steps") {
  run_golden(kPlain, DType::f64, "f64/", Tolerance{1e-7, 1e-9, 1e-15});
}

TEST_CASE("alexnet-32 matches PyTorch in float32: logits, loss, gradients, 3 SGD steps") {
  run_golden(kPlain, DType::f32, "", Tolerance{2e-3, 2e-4, 1e-7});
}

TEST_CASE("alexnet-32 with BatchNorm in the fc layers matches PyTorch's BatchNorm1d, float64") {
  run_golden(kFcBatchNorm, DType::f64, "f64/", Tolerance{1e-7, 1e-9, 1e-15});
}

TEST_CASE("alexnet-32 with BatchNorm in the fc layers matches PyTorch's BatchNorm1d, float32") {
  run_golden(kFcBatchNorm, DType::f32, "", Tolerance{2e-3, 2e-4, 1e-7});
}
