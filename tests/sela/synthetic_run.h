// Fixtures for tests that train tiny SeLa runs: a self-removing temporary folder and a
// synthetic labelled IDX data set (4 classes a small network can tell apart).
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/data/idx.h"
#include "engine/safetensors.h"
#include "sela/trainer.h"
#include "tests/temp_folder.h"

namespace sela::test {

// n 28x28 images of 4 classes (a bright 8x8 block at the class's own place, plus noise),
// written as FOLDER/STEM-images.idx and FOLDER/STEM-labels.idx; returns the `idx:` spec.
inline std::string write_synthetic_idx(const std::string& folder, const std::string& stem, int n,
                                       std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> images(static_cast<std::size_t>(n) * 28 * 28),
      labels(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    int c = i % 4;
    labels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(c);
    int top = 2 + 12 * (c / 2), left = 2 + 12 * (c % 2);
    for (int y = 0; y < 28; ++y) {
      for (int x = 0; x < 28; ++x) {
        int value = static_cast<int>(rng() % 40);
        if (y >= top && y < top + 8 && x >= left && x < left + 8) value += 180;
        images[static_cast<std::size_t>((i * 28 + y) * 28 + x)] = static_cast<std::uint8_t>(value);
      }
    }
  }
  std::string images_path = folder + "/" + stem + "-images.idx",
              labels_path = folder + "/" + stem + "-labels.idx";
  data::write_idx(images_path, {n, 28, 28}, images.data(), false);
  data::write_idx(labels_path, {n}, labels.data(), false);
  return "idx:" + images_path + "," + labels_path;
}

// A run small enough for a test: alexnet-32 at width 1/16, heads K = 4 and 6, batch 32,
// 3 label steps, 2 threads, on the CPU, no final evaluation; dropout 0.5 (so that resume
// must restore the masks' counters) and no rotation task, whatever the defaults are.
inline TrainConfig tiny_train_config(const std::string& spec, const std::string& out,
                                     std::int64_t epochs, std::uint64_t seed) {
  TrainConfig config;
  config.data = spec;
  config.width_mult = 0.0625;
  config.clusters = {4, 6};
  config.epochs = epochs;
  config.batch_size = 32;
  config.label_steps = 3;
  config.label_spacing = "quadratic";  // the tests' schedules are written for these two
  config.label_logits = "fresh";
  config.lambda = 10;
  config.dropout = 0.5;
  config.rotation_weight = 0;
  config.workers = 1;
  config.threads = 2;
  config.device = "cpu";  // exact resume is promised on the CPU; tests/cuda covers the GPU
  config.seed = seed;
  config.out = out;
  config.evaluate = false;
  config.verbose = 0;
  return config;
}

// The message of the sela::Error that train(config) throws, or "" when it runs through.
inline std::string train_error(const TrainConfig& config) {
  try {
    train(config);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Runs `config` (3 epochs, into config.out) in two parts, stopped after epoch 1 and then
// resumed, and checks that the parts give exactly (same bits) the epoch losses and final
// labels of `whole`, the same configuration run without a stop.
inline void check_resumed_run_matches(const TrainConfig& config, const TrainSummary& whole) {
  REQUIRE(whole.epoch_losses.size() == 3);
  TrainConfig first = config;
  first.stop_after_epoch = 1;
  TrainSummary part1 = train(first);
  TrainConfig second = config;
  second.resume = true;
  TrainSummary part2 = train(second);
  REQUIRE(part1.epoch_losses.size() == 1);
  REQUIRE(part2.epoch_losses.size() == 2);
  CHECK(part1.epoch_losses[0] == whole.epoch_losses[0]);
  CHECK(part2.epoch_losses[0] == whole.epoch_losses[1]);
  CHECK(part2.epoch_losses[1] == whole.epoch_losses[2]);
  CHECK(part2.labels == whole.labels);
}

// Every tensor of two safetensors files byte for byte (the same names first), except those
// whose names start with `skip_prefix` (when not empty).
inline void check_same_tensors(const std::string& path_a, const std::string& path_b,
                               const std::string& skip_prefix = "") {
  SafetensorsFile a(path_a), b(path_b);
  REQUIRE(a.names() == b.names());
  for (const std::string& name : a.names()) {
    if (!skip_prefix.empty() && name.rfind(skip_prefix, 0) == 0) continue;
    CHECK_MESSAGE(a.get(name).bytes == b.get(name).bytes, name);
  }
}

// Every Sinkhorn solve of a run, in order: the "heads" entries of the label_step lines of
// its metrics.jsonl (iterations, converged, warm_started, ...).
inline std::vector<nlohmann::json> label_step_solves(const std::string& run_folder) {
  std::ifstream metrics(run_folder + "/metrics.jsonl");
  REQUIRE(metrics.good());
  std::vector<nlohmann::json> solves;
  for (std::string line; std::getline(metrics, line);) {
    nlohmann::json entry = nlohmann::json::parse(line);
    if (entry["event"] != "label_step") continue;
    for (const nlohmann::json& head : entry["heads"]) solves.push_back(head);
  }
  return solves;
}

// A warm-started run's solves: `count` of them, each of the first `heads` (every head's
// first solve) cold, every later one warm.
inline void check_warm_after_first_solve(const std::string& run_folder, std::size_t heads,
                                         std::size_t count) {
  const std::vector<nlohmann::json> solves = label_step_solves(run_folder);
  REQUIRE(solves.size() == count);
  for (std::size_t i = 0; i < solves.size(); ++i) {
    CAPTURE(i);
    CHECK(solves[i]["warm_started"].get<bool>() == (i >= heads));
  }
}

}  // namespace sela::test
