// The rotation task of `sela train --rotation-weight` (sela/rotation.h): the sub-batch holds
// the first R images turned by (j + batch number) mod 4 quarter turns, built from the batch
// images with an independent index formula; and a tiny run with the task on resumes exactly
// (the rotation head and its momentum are in the checkpoint), differs from a run without it,
// logs the task's loss (near ln 4 at the start: a 4-way head starting from small weights),
// and a checkpoint made with another --rotation-weight is refused with the setting named.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

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
  return config;
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
