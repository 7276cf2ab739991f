// The trainer on a tiny synthetic data set (an IDX pair written here): a run interrupted
// after epoch 1 and resumed gives exactly the losses, labels and weights of an uninterrupted
// run; a checkpoint that does not match the flags is refused with the differing setting
// named; the run folder holds what the README promises; the label schedule is the
// reference's.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/data/dataset.h"
#include "engine/safetensors.h"
#include "engine/state_io.h"
#include "sela/checkpoint_model.h"
#include "sela/evaluate.h"
#include "sela/run_files.h"
#include "sela/trainer.h"
#include "tests/sela/synthetic_run.h"

using namespace sela;

namespace {

using sela::test::TempFolder;
using sela::test::write_synthetic_idx;

TrainConfig tiny_config(const std::string& spec, const std::string& out) {
  return sela::test::tiny_train_config(spec, out, 3, 11);
}

}  // namespace

TEST_CASE("label schedule: quadratic spacing as the reference, t_j = (E + 1.01) N (j/(S-1))^2") {
  std::vector<double> t = label_schedule(5, 10, 1000, "quadratic");
  REQUIRE(t.size() == 5);
  CHECK(t[0] == 0.0);
  CHECK(t[2] == doctest::Approx(11.01 * 1000 * 0.25));
  CHECK(t[4] == doctest::Approx(11.01 * 1000));
  std::vector<double> linear = label_schedule(3, 2, 100, "linear");
  CHECK(linear[1] == doctest::Approx(3.01 * 100 * 0.5));
  CHECK_THROWS_AS(label_schedule(3, 2, 100, "cubic"), Error);
}

TEST_CASE("an interrupted and resumed run equals an uninterrupted one; mismatches are refused") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);

  TrainConfig whole = tiny_config(spec, folder.path + "/whole");
  TrainSummary uninterrupted = train(whole);
  REQUIRE(uninterrupted.epoch_losses.size() == 3);
  for (double loss : uninterrupted.epoch_losses) CHECK(std::isfinite(loss));
  CHECK(uninterrupted.label_steps_done >= 2);

  sela::test::check_resumed_run_matches(tiny_config(spec, folder.path + "/split"), uninterrupted);
  sela::test::check_same_tensors(folder.path + "/whole/weights.safetensors",
                                 folder.path + "/split/weights.safetensors");

  // The run folder: labels.csv holds the final labels, metrics one line per epoch.
  auto csv = parse_labels_csv(folder.path + "/whole/labels.csv");
  CHECK(csv == uninterrupted.labels);
  std::ifstream metrics(folder.path + "/whole/metrics.jsonl");
  int epochs = 0, label_steps = 0;
  for (std::string line; std::getline(metrics, line);) {
    epochs += line.find("\"event\":\"epoch\"") != std::string::npos;
    label_steps += line.find("\"event\":\"label_step\"") != std::string::npos;
  }
  CHECK(epochs == 3);
  CHECK(label_steps == uninterrupted.label_steps_done);

  // Refusals: a checkpoint for other heads, and starting over an existing run.
  TrainConfig other_heads = tiny_config(spec, folder.path + "/split");
  other_heads.resume = true;
  other_heads.clusters = {4, 7};
  std::string message = sela::test::train_error(other_heads);
  CHECK(message.find("clusters") != std::string::npos);
  CHECK(message.find("[4,6]") != std::string::npos);
  CHECK(sela::test::train_error(tiny_config(spec, folder.path + "/whole")).find("--resume") != std::string::npos);
  TrainConfig no_checkpoint = tiny_config(spec, folder.path + "/nothing_here");
  no_checkpoint.resume = true;
  CHECK(sela::test::train_error(no_checkpoint).find("no checkpoint") != std::string::npos);
}

TEST_CASE("--label-logits recorded: label steps reuse the training pass's logits; resume is exact") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  auto recorded_config = [&](const std::string& out) {
    TrainConfig config = tiny_config(spec, folder.path + "/" + out);
    config.label_logits = "recorded";
    config.label_steps = 4;  // at 0, 0.45, 1.78 and 4.01 epochs of 160 samples
    return config;
  };
  TrainSummary whole = train(recorded_config("whole"));
  REQUIRE(whole.epoch_losses.size() == 3);
  CHECK(whole.label_steps_done == 3);

  // The step at t = 0 has nothing recorded: a full eval pass. The one at 0.45 epochs has
  // 96 of 160 samples recorded: a pass over the other 64 only. The one at 1.78 epochs has
  // every sample recorded: no network pass at all.
  std::ifstream metrics(folder.path + "/whole/metrics.jsonl");
  std::vector<double> forward_seconds;
  for (std::string line; std::getline(metrics, line);) {
    if (line.find("\"event\":\"label_step\"") == std::string::npos) continue;
    auto at = line.find("\"forward_s\":");
    REQUIRE(at != std::string::npos);
    forward_seconds.push_back(std::stod(line.substr(at + 12)));
  }
  REQUIRE(forward_seconds.size() == 3);
  CHECK(forward_seconds[0] > 0);
  CHECK(forward_seconds[1] > 0);
  CHECK(forward_seconds[2] == 0);

  // The labels differ from a fresh-pass run (the logits come from augmented views).
  TrainConfig fresh = tiny_config(spec, folder.path + "/fresh");
  fresh.label_steps = 4;
  CHECK(train(fresh).labels != whole.labels);

  // Interrupted after epoch 1 and resumed: the recorded logits travel in the checkpoint.
  sela::test::check_resumed_run_matches(recorded_config("split"), whole);

  TrainConfig absent_gpu = recorded_config("gpu7");  // no machine here has eight GPUs
  absent_gpu.device = "cuda:7";
  CHECK(sela::test::train_error(absent_gpu).find("--device cuda:7 is not available") != std::string::npos);
  TrainConfig nonsense = recorded_config("tpu");
  nonsense.device = "tpu";
  CHECK(sela::test::train_error(nonsense).find("unknown device 'tpu'") != std::string::npos);

  TrainConfig wrong = recorded_config("bad");
  wrong.label_logits = "stale";
  CHECK(sela::test::train_error(wrong).find("--label-logits must be fresh or recorded") != std::string::npos);
}

TEST_CASE("--sinkhorn-omega reaches the label steps' solver and config.json") {
  // The solver's own tests show what omega does (tests/assign/test_sinkhorn.cpp); this one
  // shows that the trainer hands it over: every head solve of every label step reports it.
  using nlohmann::json;
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  auto every_solve_reports = [&](const std::string& out, double omega) {
    std::ifstream metrics(folder.path + "/" + out + "/metrics.jsonl");
    int solves = 0, matching = 0;
    for (std::string line; std::getline(metrics, line);) {
      json entry = json::parse(line);
      if (entry["event"] != "label_step") continue;
      for (const json& head : entry["heads"]) {
        ++solves;
        if (head["over_relaxation"].get<double>() == omega) ++matching;
      }
    }
    return solves > 0 && matching == solves;
  };
  TrainConfig plain = tiny_config(spec, folder.path + "/plain");
  plain.sinkhorn_omega = 1.0;  // the published iteration (the default is 1.8)
  train(plain);
  TrainConfig relaxed = tiny_config(spec, folder.path + "/relaxed");
  relaxed.sinkhorn_omega = 1.4;
  train(relaxed);
  CHECK(every_solve_reports("plain", 1.0));
  CHECK(every_solve_reports("relaxed", 1.4));
  std::ifstream config_file(folder.path + "/relaxed/config.json");
  CHECK(json::parse(config_file)["sinkhorn_omega"].get<double>() == 1.4);
}

TEST_CASE("--cuda-graph: on needs a GPU, auto resolves to off on the CPU, other values refused") {
  // The graph itself is tested on a GPU (tests/cuda/test_trainer_cuda.cpp, test_cuda_graph.cpp).
  using nlohmann::json;
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  TrainConfig on_cpu = tiny_config(spec, folder.path + "/on");
  on_cpu.cuda_graph = "on";
  CHECK_THROWS_WITH_AS(train(on_cpu), doctest::Contains("--cuda-graph on needs a GPU"),
                       sela::Error);
  TrainConfig unknown = tiny_config(spec, folder.path + "/unknown");
  unknown.cuda_graph = "yes";
  CHECK_THROWS_WITH_AS(train(unknown), doctest::Contains("must be auto, on or off"), sela::Error);
  TrainConfig automatic = tiny_config(spec, folder.path + "/auto");
  automatic.epochs = 1;
  train(automatic);
  std::ifstream config_file(folder.path + "/auto/config.json");
  CHECK(json::parse(config_file)["cuda_graph"].get<std::string>() == "off");
}

TEST_CASE("--sinkhorn-warm-start: later solves start from the last answer; resume keeps it") {
  // The solver's tests show what a warm start does (tests/assign/test_sinkhorn.cpp); this
  // one shows that the trainer hands each head its own previous r, that auto means on for
  // a CPU run, and that the scalings travel in the checkpoint so that resume stays exact.
  using nlohmann::json;
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  auto config_for = [&](const std::string& out, const std::string& warm_start) {
    TrainConfig config = tiny_config(spec, folder.path + "/" + out);
    config.label_steps = 6;  // at 0, 0.8, 1.6 and 2.4 epochs: two after the stop at epoch 1
    config.label_spacing = "linear";
    config.sinkhorn_warm_start = warm_start;
    return config;
  };
  // {iterations, warm_started} of every solve of a run, in order.
  auto solves_of = [&](const std::string& out) {
    std::vector<std::pair<std::int64_t, bool>> solves;
    for (const json& head : sela::test::label_step_solves(folder.path + "/" + out))
      solves.emplace_back(head["iterations"].get<std::int64_t>(), head["warm_started"].get<bool>());
    return solves;
  };
  TrainSummary whole = train(config_for("whole", "auto"));
  REQUIRE(whole.label_steps_done == 4);
  sela::test::check_warm_after_first_solve(folder.path + "/whole", 2, 8);  // 4 steps x 2 heads
  const auto warm_solves = solves_of("whole");
  std::ifstream config_file(folder.path + "/whole/config.json");
  CHECK(json::parse(config_file)["sinkhorn_warm_start"].get<std::string>() == "on");
  CHECK(SafetensorsFile(folder.path + "/whole/checkpoint.safetensors").contains("sinkhorn_r/1"));

  train(config_for("cold", "off"));
  const auto cold_solves = solves_of("cold");
  REQUIRE(cold_solves.size() == 8);
  for (const auto& solve : cold_solves) CHECK_FALSE(solve.second);

  // Stopped after epoch 1 and resumed: the same losses and labels, and the solves after the
  // stop start from the checkpointed r (same iteration counts as without the stop).
  sela::test::check_resumed_run_matches(config_for("split", "auto"), whole);
  CHECK(solves_of("split") == warm_solves);

  TrainConfig unknown = config_for("unknown", "sometimes");
  CHECK(sela::test::train_error(unknown).find("--sinkhorn-warm-start must be auto, on or off") !=
        std::string::npos);
}

TEST_CASE("--precise-bn: only the final BatchNorm statistics change, to the re-estimate") {
  // Two runs of one seed, with and without the re-estimate: the training trajectory (every
  // weight, the labels) is the same; the "on" run's statistics are what
  // recompute_batch_norm_statistics makes of the "off" run's final model (same batches).
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  TrainConfig off = tiny_config(spec, folder.path + "/off");
  off.precise_bn = false;
  TrainSummary without = train(off);
  TrainConfig on = tiny_config(spec, folder.path + "/on");
  on.precise_bn = true;
  TrainSummary with = train(on);
  CHECK(with.labels == without.labels);
  CHECK(with.epoch_losses == without.epoch_losses);

  RunFolder off_run = read_run_folder(folder.path + "/off", "test");
  std::shared_ptr<SelaNet> reestimated = load_run_model(off_run, "test");
  auto data = data::open_dataset(spec);
  CHECK(recompute_batch_norm_statistics(*reestimated, *data, off.batch_size, 1) == 5);
  SafetensorsFile on_weights(folder.path + "/on/weights.safetensors");
  SafetensorsFile off_weights(folder.path + "/off/weights.safetensors");
  int statistics = 0, weights = 0;
  for (const auto& [name, tensor] : reestimated->named_buffers()) {
    if (!is_floating(tensor.dtype())) continue;
    INFO(name);
    CHECK(tensor_from_file(on_weights, name).to_vector<float>() == tensor.to_vector<float>());
    CHECK(tensor_from_file(off_weights, name).to_vector<float>() != tensor.to_vector<float>());
    ++statistics;
  }
  for (const auto& [name, tensor] : reestimated->named_parameters()) {
    INFO(name);
    CHECK(tensor_from_file(on_weights, name).to_vector<float>() ==
          tensor_from_file(off_weights, name).to_vector<float>());
    ++weights;
  }
  CHECK(statistics == 14);  // running mean and variance of conv1..conv5's and fc6, fc7's BatchNorms
  CHECK(weights > 0);
  std::ifstream metrics(folder.path + "/on/metrics.jsonl");
  int events = 0;
  for (std::string line; std::getline(metrics, line);)
    events += nlohmann::json::parse(line)["event"] == "precise_bn";
  CHECK(events == 1);
}

TEST_CASE("--precise-bn: a run stopped after its last epoch gets the re-estimate on --resume") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  auto events = [&](const std::string& out) {
    std::ifstream metrics(folder.path + "/" + out + "/metrics.jsonl");
    int count = 0;
    for (std::string line; std::getline(metrics, line);)
      count += nlohmann::json::parse(line)["event"] == "precise_bn";
    return count;
  };
  TrainConfig whole = tiny_config(spec, folder.path + "/whole");
  train(whole);
  TrainConfig stopped = tiny_config(spec, folder.path + "/stopped");
  stopped.stop_after_epoch = stopped.epochs;  // stops before the re-estimate
  train(stopped);
  CHECK(events("stopped") == 0);
  stopped.stop_after_epoch = -1;
  stopped.resume = true;
  train(stopped);
  CHECK(events("stopped") == 1);
  train(stopped);  // a finished run: nothing more
  CHECK(events("stopped") == 1);
  SafetensorsFile a(folder.path + "/whole/weights.safetensors");
  SafetensorsFile b(folder.path + "/stopped/weights.safetensors");
  for (const char* name : {"features.1.running_mean", "features.1.running_var"}) {
    INFO(name);
    CHECK(tensor_from_file(a, name).to_vector<float>() == tensor_from_file(b, name).to_vector<float>());
  }
}

TEST_CASE("a diverging run stops with a clear message and keeps the last good checkpoint") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 96, 7);
  TrainConfig config = tiny_config(spec, folder.path + "/run");
  config.epochs = 1;
  config.stop_after_epoch = 1;
  train(config);
  std::string before = read_file(folder.path + "/run/checkpoint.safetensors");
  TrainConfig diverging = tiny_config(spec, folder.path + "/run");
  diverging.resume = true;
  diverging.epochs = 2;
  diverging.lr = 1e30;
  std::string message = sela::test::train_error(diverging);
  CHECK(message.find("loss became") != std::string::npos);
  CHECK(read_file(folder.path + "/run/checkpoint.safetensors") == before);
}

TEST_CASE("--jitter reaches the training augmentation and config.json") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 96, 9);
  TrainConfig plain = sela::test::tiny_train_config(spec, folder.path + "/plain", 1, 2);
  TrainConfig still = sela::test::tiny_train_config(spec, folder.path + "/still", 1, 2);
  still.jitter = 0;  // no brightness or contrast change: other images, another loss
  TrainConfig same = sela::test::tiny_train_config(spec, folder.path + "/same", 1, 2);
  same.jitter = 0.4;  // the source's default, spelled out: the very same run
  const double plain_loss = train(plain).epoch_losses.at(0);
  CHECK(train(still).epoch_losses.at(0) != plain_loss);
  CHECK(train(same).epoch_losses.at(0) == plain_loss);
  nlohmann::json config;
  std::ifstream(folder.path + "/still/config.json") >> config;
  CHECK(config["jitter"] == 0.0);
}

TEST_CASE("--label-history keeps every label step's labels; resumed runs write the same files") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 7);
  TrainConfig whole = tiny_config(spec, folder.path + "/whole");
  whole.label_history = true;
  const TrainSummary uninterrupted = train(whole);
  REQUIRE(uninterrupted.label_steps_done >= 2);
  auto step_file = [&](const std::string& run, std::int64_t step) {
    char name[48];
    std::snprintf(name, sizeof name, "/labels/step_%03lld.csv", static_cast<long long>(step));
    return folder.path + "/" + run + name;
  };
  // One file per step, no more; the last is labels.csv; consecutive steps differ.
  std::vector<std::vector<std::vector<std::int64_t>>> steps;
  for (std::int64_t step = 1; step <= uninterrupted.label_steps_done; ++step) {
    steps.push_back(parse_labels_csv(step_file("whole", step)));
    CHECK(steps.back().size() == whole.clusters.size());
  }
  CHECK_FALSE(std::ifstream(step_file("whole", uninterrupted.label_steps_done + 1)).good());
  CHECK(steps.back() == uninterrupted.labels);
  CHECK(steps.back() == parse_labels_csv(folder.path + "/whole/labels.csv"));
  CHECK(steps[0] != steps[1]);
  nlohmann::json config;
  std::ifstream(folder.path + "/whole/config.json") >> config;
  CHECK(config["label_history"] == true);

  // Interrupted after epoch 1 and resumed: the steps after the checkpoint are solved again
  // and their files rewritten, to the same labels.
  TrainConfig split = tiny_config(spec, folder.path + "/split");
  split.label_history = true;
  sela::test::check_resumed_run_matches(split, uninterrupted);
  for (std::int64_t step = 1; step <= uninterrupted.label_steps_done; ++step) {
    CHECK(parse_labels_csv(step_file("split", step)) == steps[static_cast<std::size_t>(step - 1)]);
  }
  // Off (the default): no labels/ folder.
  TrainConfig plain = sela::test::tiny_train_config(spec, folder.path + "/plain", 1, 2);
  train(plain);
  CHECK_FALSE(std::ifstream(folder.path + "/plain/labels/step_001.csv").good());
}

// BatchNorm in the fc layers (--fc-batch-norm on): the run resumes exactly (the classifier's
// running statistics are in the checkpoint), trains differently from the plain network, is
// recorded in config.json so that `sela eval`/`label`/`viz` rebuild the same network from
// the run folder, and a checkpoint of the other kind is refused with the setting named.
TEST_CASE("--fc-batch-norm: exact resume, recorded for the run folder's readers, mismatches refused") {
  TempFolder folder;
  std::string spec = write_synthetic_idx(folder.path, "train", 160, 5);
  auto normed = [&](const std::string& out) {
    TrainConfig config = tiny_config(spec, folder.path + "/" + out);
    config.fc_batch_norm = true;
    return config;
  };
  auto plain_config = [&](const std::string& out) {
    TrainConfig config = tiny_config(spec, folder.path + "/" + out);
    config.fc_batch_norm = false;
    return config;
  };
  TrainSummary whole = train(normed("whole"));
  TrainSummary plain = train(plain_config("plain"));
  REQUIRE(whole.epoch_losses.size() == 3);
  CHECK(whole.epoch_losses[0] != plain.epoch_losses[0]);
  sela::test::check_resumed_run_matches(normed("split"), whole);
  sela::test::check_same_tensors(folder.path + "/whole/checkpoint.safetensors",
                                 folder.path + "/split/checkpoint.safetensors");
  {
    SafetensorsFile weights(folder.path + "/whole/weights.safetensors");
    CHECK(weights.contains("classifier.2.running_var"));  // fc6's BatchNorm1d
    CHECK(weights.contains("classifier.6.weight"));       // fc7's
    CHECK(weights.contains("classifier.5.weight"));       // the second Linear, moved
  }
  nlohmann::json config;
  std::ifstream(folder.path + "/whole/config.json") >> config;
  CHECK(config["fc_batch_norm"] == true);
  RunFolder run = read_run_folder(folder.path + "/whole", "sela eval");
  CHECK(run.model.fc_batch_norm);
  std::shared_ptr<SelaNet> model = load_run_model(run, "sela eval");  // strict: all names
  CHECK(model->config().fc_batch_norm);
  CHECK_FALSE(read_run_folder(folder.path + "/plain", "sela eval").model.fc_batch_norm);

  TrainConfig other = plain_config("split");  // without BatchNorm in the fc layers
  other.resume = true;
  std::string message = sela::test::train_error(other);
  CHECK(message.find("fc_batch_norm: checkpoint true, flags false") != std::string::npos);

  // A run folder from before the flag existed (no "fc_batch_norm" in config.json nor in the
  // checkpoint's fingerprint) reads as without it, and resuming it under the default (on)
  // is refused with the flag to use.
  {
    const std::string old_run = folder.path + "/plain";
    nlohmann::json old_config;
    std::ifstream(old_run + "/config.json") >> old_config;
    old_config.erase("fc_batch_norm");
    std::ofstream(old_run + "/config.json") << old_config.dump();
    CHECK_FALSE(read_run_folder(old_run, "sela eval").model.fc_batch_norm);
    CHECK(load_run_model(read_run_folder(old_run, "sela eval"), "sela eval") != nullptr);
    SafetensorsFile checkpoint(old_run + "/checkpoint.safetensors");
    nlohmann::json state = nlohmann::json::parse(checkpoint.metadata().at("sela_state"));
    REQUIRE(state["fingerprint"].contains("fc_batch_norm"));
    state["fingerprint"].erase("fc_batch_norm");
    NamedTensors tensors;
    for (const std::string& name : checkpoint.names()) tensors.emplace_back(name, tensor_from_file(checkpoint, name));
    std::map<std::string, std::string> metadata = checkpoint.metadata();
    metadata["sela_state"] = state.dump();
    save_tensors(tensors, old_run + "/checkpoint.safetensors", metadata);
    TrainConfig resumed = tiny_config(spec, old_run);  // the default: fc BatchNorm on
    resumed.resume = true;
    CHECK(sela::test::train_error(resumed).find(
              "fc_batch_norm: checkpoint false, flags true (--fc-batch-norm off)") != std::string::npos);
    resumed.fc_batch_norm = false;
    resumed.epochs = 4;  // one more epoch than the run had
    CHECK(train(resumed).epoch_losses.size() == 1);
  }

  // One turned image alone has no fc statistics: refused before anything is written.
  TrainConfig lone = normed("lone");
  lone.rotation_weight = 1;
  lone.rotation_batch = 1;
  CHECK(sela::test::train_error(lone).find("--fc-batch-norm on needs --rotation-batch >= 2") !=
        std::string::npos);
  CHECK_FALSE(std::ifstream(folder.path + "/lone/config.json").good());
}
