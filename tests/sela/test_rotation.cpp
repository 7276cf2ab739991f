// The rotation task of `sela train --rotation-weight` (sela/rotation.h): the sub-batch holds
// the first R images turned by (j + batch number) mod 4 quarter turns, built from the batch
// images with an independent index formula; and a tiny run with the task on resumes exactly
// (the rotation head and its momentum are in the checkpoint), differs from a run without it,
// logs the task's loss (near ln 4 at the start: a 4-way head starting from small weights),
// and a checkpoint made with another --rotation-weight is refused with the setting named.
// The joint pass (`--rotation-pass joint`: turned images appended to the batch) gives the
// separate passes' logits and gradients where no batch statistics couple the samples (eval
// mode), and differs from them in train mode; a joint run resumes exactly too. The grouped
// pass (`grouped`: appended, BatchNorm statistics per group) gives the separate passes'
// logits, gradients and running statistics in train mode too, and resumes exactly.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "sela/rotation.h"
#include "sela/trainer.h"
#include "tests/sela/synthetic_run.h"

using namespace sela;

namespace {

data::Batch random_batch(std::int64_t size, std::int64_t channels, std::int64_t side,
                         std::int64_t number, std::mt19937& gen) {
  data::Batch batch;
  batch.size = size;
  batch.channels = channels;
  batch.height = side;
  batch.width = side;
  batch.number = number;
  batch.images.ensure(std::make_shared<const data::ImageAllocator>(data::ImageAllocator::host()),
                      static_cast<std::size_t>(size * channels * side * side));
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  for (std::size_t i = 0; i < batch.images.capacity(); ++i) batch.images.data()[i] = value(gen);
  return batch;
}


TrainConfig rotation_config(const std::string& spec, const std::string& out, double weight) {
  TrainConfig config = sela::test::tiny_train_config(spec, out, 3, 5);
  config.rotation_weight = weight;
  config.rotation_batch = 8;
  config.rotation_pass = "separate";
  return config;
}

// A scalar loss of both outputs with fixed random weights, so every logit gets a gradient.
Tensor weighted_loss(const RotationForward& out, Rng& rng) {
  Tensor loss = sum(mul(out.turn_logits, randn(out.turn_logits.shape(), rng)));
  for (const Tensor& logits : out.logits) loss = add(loss, sum(mul(logits, randn(logits.shape(), rng))));
  return loss;
}

// Every parameter gradient of `model` and `head` after backward of `loss`, in order.
std::vector<std::vector<float>> gradients_of(SelaNet& model, Linear& head, const Tensor& loss) {
  model.zero_grad();
  head.zero_grad();
  loss.backward();
  std::vector<std::vector<float>> grads;
  for (const Tensor& p : model.parameters()) grads.push_back(p.grad().to_vector<float>());
  for (const Tensor& p : head.parameters()) grads.push_back(p.grad().to_vector<float>());
  return grads;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
  return worst;
}

double max_abs(const std::vector<float>& a) {
  double worst = 0;
  for (float v : a) worst = std::max(worst, std::fabs(double(v)));
  return worst;
}

// alexnet-32 at width 1/16 on one channel, two heads, no dropout (the passes would draw
// their masks for other row counts).
ModelConfig small_model_config(bool fc_batch_norm = false) {
  ModelConfig config;
  config.fc_batch_norm = fc_batch_norm;
  config.width_mult = 0.0625;
  config.in_channels = 1;
  config.clusters = {5, 3};
  config.dropout = 0;
  return config;
}

// Every head's logits and the turn logits of `a` within 1e-5 of `b`'s largest entry.
void check_same_outputs(const RotationForward& a, const RotationForward& b) {
  REQUIRE(a.logits.size() == b.logits.size());
  for (std::size_t t = 0; t < a.logits.size(); ++t) {
    REQUIRE(a.logits[t].shape() == b.logits[t].shape());
    std::vector<float> values_a = a.logits[t].to_vector<float>(), values_b = b.logits[t].to_vector<float>();
    CHECK(max_abs(values_b) > 0);
    CHECK(max_abs_difference(values_a, values_b) <= 1e-5 * max_abs(values_b));
  }
  REQUIRE(a.turn_logits.shape() == b.turn_logits.shape());
  std::vector<float> turns_a = a.turn_logits.to_vector<float>(), turns_b = b.turn_logits.to_vector<float>();
  CHECK(max_abs(turns_b) > 0);
  CHECK(max_abs_difference(turns_a, turns_b) <= 1e-5 * max_abs(turns_b));
}

}  // namespace

TEST_CASE("make_rotation_batch: the first R images, image j turned (j + number) mod 4 times") {
  std::mt19937 gen(7);
  for (std::int64_t number : {0, 1, 6}) {
    for (std::int64_t channels : {1, 3}) {
      CAPTURE(number);
      CAPTURE(channels);
      const std::int64_t size = 12, side = 5, count = 8;
      data::Batch batch = random_batch(size, channels, side, number, gen);
      RotationBatch rotation = make_rotation_batch(batch, count, false);
      REQUIRE(rotation.images.shape() == Shape{count, channels, side, side});
      REQUIRE(rotation.targets.shape() == Shape{count});
      const float* turned = rotation.images.data<float>();
      const std::int64_t* turns = rotation.targets.data<std::int64_t>();
      int per_turn[4] = {0, 0, 0, 0};
      for (std::int64_t j = 0; j < count; ++j) {
        CHECK(turns[j] == (j + number) % 4);
        ++per_turn[turns[j]];
        // Turning back by hand: turned image t times counter-clockwise, so its pixel (y, x)
        // came from the source pixel reached by t clockwise quarter turns of (y, x).
        const float* source = batch.image(j);
        for (std::int64_t c = 0; c < channels; ++c) {
          for (std::int64_t y = 0; y < side; ++y) {
            for (std::int64_t x = 0; x < side; ++x) {
              std::int64_t sy = y, sx = x;
              for (std::int64_t t = 0; t < turns[j]; ++t) {  // one clockwise turn of (sy, sx)
                const std::int64_t ny = sx, nx = side - 1 - sy;
                sy = ny;
                sx = nx;
              }
              CHECK(turned[((j * channels + c) * side + y) * side + x] ==
                    source[(c * side + sy) * side + sx]);
            }
          }
        }
      }
      for (int t = 0; t < 4; ++t) CHECK(per_turn[t] == 2);  // balanced: R = 8
    }
  }
  data::Batch batch = random_batch(4, 1, 3, 0, gen);
  CHECK_THROWS_AS(make_rotation_batch(batch, 5, false), Error);  // more than the batch
  CHECK_THROWS_AS(make_rotation_batch(batch, 0, false), Error);
  batch.width = 4;  // not square
  CHECK_THROWS_AS(make_rotation_batch(batch, 2, false), Error);
}

TEST_CASE("--rotation-weight: exact resume, the task in effect and logged, mismatches refused") {
  sela::test::TempFolder folder;
  const std::string spec = sela::test::write_synthetic_idx(folder.path, "train", 160, 3);

  TrainSummary plain = train(rotation_config(spec, folder.path + "/plain", 0));
  TrainSummary whole = train(rotation_config(spec, folder.path + "/whole", 1));
  REQUIRE(whole.epoch_losses.size() == 3);
  // The SeLa loss is logged alone; the task changes it through the shared trunk.
  CHECK(whole.epoch_losses[0] != plain.epoch_losses[0]);

  sela::test::check_resumed_run_matches(rotation_config(spec, folder.path + "/split", 1), whole);
  sela::test::check_same_tensors(folder.path + "/whole/checkpoint.safetensors",
                                 folder.path + "/split/checkpoint.safetensors");
  SafetensorsFile a(folder.path + "/whole/checkpoint.safetensors");
  int rotation_tensors = 0;
  for (const std::string& name : a.names()) {
    rotation_tensors += name.find("rotation_head") != std::string::npos;
  }
  CHECK(rotation_tensors == 4);  // weight, bias and their momentum buffers
  // The model's own weights file holds no rotation head (sela eval loads it as before).
  SafetensorsFile weights(folder.path + "/whole/weights.safetensors");
  for (const std::string& name : weights.names()) CHECK(name.find("rotation") == std::string::npos);

  // metrics.jsonl: the task's loss per epoch, near ln 4 in the first epoch.
  std::ifstream metrics(folder.path + "/whole/metrics.jsonl");
  std::vector<double> rotation_losses;
  for (std::string line; std::getline(metrics, line);) {
    nlohmann::json entry = nlohmann::json::parse(line);
    if (entry["event"] == "epoch") rotation_losses.push_back(entry.at("rotation_loss").get<double>());
  }
  REQUIRE(rotation_losses.size() == 3);
  CHECK(rotation_losses[0] == doctest::Approx(std::log(4.0)).epsilon(0.15));
  for (double loss : rotation_losses) CHECK(std::isfinite(loss));
  nlohmann::json config;
  std::ifstream(folder.path + "/whole/config.json") >> config;
  CHECK(config["rotation_weight"] == 1.0);
  CHECK(config["rotation_batch"] == 8);

  // Resuming with the task off (or another batch) is refused, naming the setting.
  TrainConfig without = rotation_config(spec, folder.path + "/split", 0);
  without.resume = true;
  std::string message = sela::test::train_error(without);
  CHECK(message.find("rotation_weight") != std::string::npos);
  TrainConfig other_batch = rotation_config(spec, folder.path + "/split", 1);
  other_batch.resume = true;
  other_batch.rotation_batch = 4;
  CHECK(sela::test::train_error(other_batch).find("rotation_batch") != std::string::npos);
}

TEST_CASE("forward_with_rotation: joint equals separate in eval mode, differs in train mode") {
  std::shared_ptr<SelaNet> model = make_model(small_model_config());
  Linear head(model->feature_dim(), 4);
  Rng rng(19);
  fill_normal(head.weight, rng, 0.0, 0.1);
  // Train mode first, for a few steps' worth of running statistics to differ from (0, 1).
  Tensor images = randn({6, 1, 32, 32}, rng), turned = randn({4, 1, 32, 32}, rng);
  model->train();
  {
    NoGradGuard no_grad;
    for (int i = 0; i < 3; ++i) forward_with_rotation(*model, head, images, turned, RotationPass::separate);
  }
  RotationForward train_joint = forward_with_rotation(*model, head, images, turned, RotationPass::joint);
  RotationForward train_separate = forward_with_rotation(*model, head, images, turned, RotationPass::separate);
  // Train mode: the joint pass normalises over all 10 images, so its logits differ.
  CHECK(max_abs_difference(train_joint.turn_logits.to_vector<float>(),
                           train_separate.turn_logits.to_vector<float>()) > 1e-4);

  // Eval mode: per-sample computations, so both passes give the same values and gradients
  // up to float rounding (GEMMs of 10 rows or of 6 and 4 sum in other orders). Measured:
  // logits equal, gradients within 4.2e-7 of their largest entry; tolerance 1e-5 of it.
  model->eval();
  Rng loss_rng_a(23), loss_rng_b(23);
  RotationForward joint = forward_with_rotation(*model, head, images, turned, RotationPass::joint);
  RotationForward separate = forward_with_rotation(*model, head, images, turned, RotationPass::separate);
  REQUIRE(joint.logits.size() == 2);
  REQUIRE(joint.turn_logits.shape() == Shape{4, 4});
  check_same_outputs(joint, separate);
  auto grads_joint = gradients_of(*model, head, weighted_loss(joint, loss_rng_a));
  auto grads_separate = gradients_of(*model, head, weighted_loss(separate, loss_rng_b));
  REQUIRE(grads_joint.size() == grads_separate.size());
  for (std::size_t i = 0; i < grads_joint.size(); ++i) {
    CAPTURE(i);
    const double scale = max_abs(grads_separate[i]);
    CHECK(scale > 0);  // every parameter takes part
    CHECK(max_abs_difference(grads_joint[i], grads_separate[i]) <= 1e-5 * scale);
  }
}

// Two models with the same initial weights: `grouped` on one and `separate` on the other must
// agree on logits, gradients and every BatchNorm buffer after the same train-mode passes,
// with and without the fused BatchNorm + ReLU. Rounding only: the weight gradients sum over
// 10 rows at once or over 6 and then 4. Measured: logits, turn logits and buffers equal to
// the bit, gradients within 1.9e-6 of their largest entry (tolerance 1e-5).
// With fc_batch_norm the classifier's two BatchNorm1d take statistics per group as well.
TEST_CASE("forward_with_rotation: grouped equals separate in train mode, BatchNorm buffers too") {
  const bool fused_before = fuse_batch_norm_relu();
  for (bool fc_batch_norm : {false, true}) {
  for (bool fuse : {true, false}) {
    CAPTURE(fc_batch_norm);
    CAPTURE(fuse);
    set_fuse_batch_norm_relu(fuse);
    std::shared_ptr<SelaNet> grouped_model = make_model(small_model_config(fc_batch_norm));
    std::shared_ptr<SelaNet> separate_model = make_model(small_model_config(fc_batch_norm));
    Linear grouped_head(grouped_model->feature_dim(), 4), separate_head(grouped_model->feature_dim(), 4);
    Rng rng(fuse ? 29 : 31);
    fill_normal(grouped_head.weight, rng, 0.0, 0.1);
    separate_head.weight.copy_from(grouped_head.weight);
    // Images and turned images from different distributions, so that statistics of the 10
    // rows together would differ clearly from those of each group.
    Tensor images = randn({6, 1, 32, 32}, rng);
    Tensor turned = randn({4, 1, 32, 32}, rng);
    float* shifted = turned.data<float>();
    for (std::int64_t i = 0; i < turned.numel(); ++i) shifted[i] = 3.0f * shifted[i] + 1.5f;
    grouped_model->train();
    separate_model->train();
    for (int step = 0; step < 2; ++step) {
      CAPTURE(step);
      Rng loss_rng_a(37 + step), loss_rng_b(37 + step);
      RotationForward grouped =
          forward_with_rotation(*grouped_model, grouped_head, images, turned, RotationPass::grouped);
      RotationForward separate =
          forward_with_rotation(*separate_model, separate_head, images, turned, RotationPass::separate);
      check_same_outputs(grouped, separate);
      auto grads_a = gradients_of(*grouped_model, grouped_head, weighted_loss(grouped, loss_rng_a));
      auto grads_b = gradients_of(*separate_model, separate_head, weighted_loss(separate, loss_rng_b));
      REQUIRE(grads_a.size() == grads_b.size());
      double largest = 0;
      for (const auto& grad : grads_b) largest = std::max(largest, max_abs(grad));
      for (std::size_t i = 0; i < grads_a.size(); ++i) {
        CAPTURE(i);
        const double scale_b = max_abs(grads_b[i]);
        if (scale_b < 1e-6 * largest) {
          // A convolution's bias just before a BatchNorm: its gradient is zero in exact
          // arithmetic (the batch mean absorbs it), so both are rounding noise; measured
          // within 1e-8 of the largest gradient, 2.2e-7 with BatchNorm in the fc layers
          // (whose larger gradients reach the first conv layer).
          CHECK(max_abs_difference(grads_a[i], grads_b[i]) <= (fc_batch_norm ? 1e-6 : 1e-7) * largest);
          continue;
        }
        CHECK(max_abs_difference(grads_a[i], grads_b[i]) <= 1e-5 * scale_b);
      }
    }
    // Running statistics (updated by the upright group, then the turned one, per step) and
    // the batch counters.
    NamedTensors buffers_a = grouped_model->named_buffers(), buffers_b = separate_model->named_buffers();
    REQUIRE(buffers_a.size() == buffers_b.size());
    REQUIRE(buffers_a.size() == (fc_batch_norm ? 21u : 15u));  // 5 or 7 BatchNorms x (mean, var, count)
    for (std::size_t i = 0; i < buffers_a.size(); ++i) {
      CAPTURE(buffers_a[i].first);
      if (buffers_a[i].second.dtype() == DType::i64) {
        CHECK(buffers_a[i].second.item() == 4);  // 2 steps x 2 groups
        CHECK(buffers_b[i].second.item() == 4);
        continue;
      }
      std::vector<float> a = buffers_a[i].second.to_vector<float>(), b = buffers_b[i].second.to_vector<float>();
      CHECK(max_abs_difference(a, b) <= 1e-5 * max_abs(b));
    }
    // And the statistics over all 10 rows (the joint pass) differ clearly from these.
    RotationForward joint =
        forward_with_rotation(*separate_model, separate_head, images, turned, RotationPass::joint);
    RotationForward grouped =
        forward_with_rotation(*grouped_model, grouped_head, images, turned, RotationPass::grouped);
    CHECK(max_abs_difference(joint.turn_logits.to_vector<float>(),
                             grouped.turn_logits.to_vector<float>()) > 1e-3);
  }
  }
  set_fuse_batch_norm_relu(fused_before);
}

// Each one-pass variant resumes exactly and is recorded; `joint` trains differently from
// `separate` (BatchNorm over B + R images; on these synthetic images the first epoch's loss
// differs by 8e-7 relative) and `grouped` like it, up to rounding (measured: the same loss;
// tolerance 1e-5 relative).
TEST_CASE("--rotation-pass joint and grouped: exact resume, logged in config.json, mismatches refused") {
  sela::test::TempFolder folder;
  const std::string spec = sela::test::write_synthetic_idx(folder.path, "train", 160, 3);
  // Dropout 0: the passes would draw their masks for other row counts.
  auto no_dropout = [](TrainConfig config) {
    config.dropout = 0;
    return config;
  };
  TrainSummary separate = train(no_dropout(rotation_config(spec, folder.path + "/separate", 1)));
  for (const std::string pass : {"joint", "grouped"}) {
    CAPTURE(pass);
    auto pass_config = [&](const std::string& out) {
      TrainConfig config = no_dropout(rotation_config(spec, folder.path + "/" + pass + "_" + out, 1));
      config.rotation_pass = pass;
      return config;
    };
    TrainSummary whole = train(pass_config("whole"));
    REQUIRE(whole.epoch_losses.size() == 3);
    for (double loss : whole.epoch_losses) CHECK(std::isfinite(loss));
    const double relative = std::fabs(whole.epoch_losses[0] - separate.epoch_losses[0]) /
                            separate.epoch_losses[0];
    if (pass == "joint") {
      CHECK(relative > 0);  // BatchNorm over B + R images
    } else {
      CHECK(relative <= 1e-5);  // BatchNorm per group: the separate passes' arithmetic
    }
    sela::test::check_resumed_run_matches(pass_config("split"), whole);
    sela::test::check_same_tensors(folder.path + "/" + pass + "_whole/checkpoint.safetensors",
                                   folder.path + "/" + pass + "_split/checkpoint.safetensors");
    nlohmann::json config;
    std::ifstream(folder.path + "/" + pass + "_whole/config.json") >> config;
    CHECK(config["rotation_pass"] == pass);

    TrainConfig other_pass = no_dropout(rotation_config(spec, folder.path + "/" + pass + "_split", 1));
    other_pass.resume = true;
    std::string message = sela::test::train_error(other_pass);
    CHECK(message.find("rotation_pass") != std::string::npos);
    CHECK(message.find(pass) != std::string::npos);
  }
  TrainConfig unknown = rotation_config(spec, folder.path + "/unknown", 1);
  unknown.rotation_pass = "both";
  CHECK(sela::test::train_error(unknown).find("--rotation-pass must be grouped, joint or separate") !=
        std::string::npos);
}
