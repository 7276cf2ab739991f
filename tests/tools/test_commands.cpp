// `sela label`, `sela eval` and `sela viz` end to end on a tiny synthetic run: train two
// epochs on an IDX data set written here, then label (the CSV parses with one row per
// sample), eval with probes (the JSON has every key), viz (the PNGs decode with the sizes
// the layout says), and the errors a user meets first: no run folder, a folder that is not
// a run, missing weights, a data set too small for the heads, a data set that does not
// match the run's labels (not an error: said in the JSON).
//
// The subcommands live in the `sela` program, not in a library; this test compiles their
// sources (and the flag parser) into itself so that it runs exactly the code the program
// runs, through the same argument vectors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "engine/data/idx.h"
#include "engine/data/image_io.h"
#include "sela/checkpoint_model.h"
#include "sela/run_files.h"
#include "sela/trainer.h"

#include "tests/sela/synthetic_run.h"
#include "tools/commands.h"

using namespace sela;

namespace {

using sela::test::TempFolder;
using sela::test::write_synthetic_idx;

std::string error_of(int (*command)(const tools::Args&), const tools::Args& args) {
  try {
    command(args);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

}  // namespace

TEST_CASE(
    "train -> label -> eval (with probes) -> viz on a tiny run; the first errors a user meets") {
  TempFolder folder;
  const std::string train_spec = write_synthetic_idx(folder.path, "train", 160, 1);
  const std::string test_spec = write_synthetic_idx(folder.path, "test", 64, 2);
  const std::string run = folder.path + "/run";

  TrainConfig run_config = sela::test::tiny_train_config(train_spec, run, 2, 3);
  run_config.sinkhorn_omega = 1.3;  // not the defaults, so that `sela label` must read them
  run_config.sinkhorn_max_iters = 777;
  train(run_config);
  REQUIRE(exists(run + "/weights.safetensors"));
  // (Plain blocks, not SUBCASEs: doctest would train once per subcase.)

  {  // sela label solves with the run's Sinkhorn settings (config.json), not the solver's
    const RunFolder folder_info = read_run_folder(run, "sela label");
    CHECK(folder_info.sinkhorn_omega == 1.3);
    CHECK(folder_info.sinkhorn_max_iters == 777);
  }

  {  // label: one row per sample, one column per head, labels in [0, K)
    std::string csv = folder.path + "/relabelled.csv";
    CHECK(tools::run_label(
              {"--checkpoint", run, "--data", train_spec, "--out", csv, "--threads", "2"}) == 0);
    auto labels = parse_labels_csv(csv);
    REQUIRE(labels.size() == 2);
    const std::int64_t ks[2] = {4, 6};
    for (std::size_t t = 0; t < 2; ++t) {
      REQUIRE(labels[t].size() == 160);
      for (std::int64_t y : labels[t]) {
        CHECK(y >= 0);
        CHECK(y < ks[t]);
      }
    }
    // Without --data: the run's own training data, the same labels.
    std::string again = folder.path + "/again.csv";
    CHECK(tools::run_label({"--checkpoint", run, "--out", again}) == 0);
    CHECK(parse_labels_csv(again) == labels);
    // A run trained with --limit-samples: without --data, only its first samples.
    std::string limited = folder.path + "/limited";
    make_directories(limited);
    nlohmann::json limited_config = nlohmann::json::parse(read_file(run + "/config.json"));
    limited_config["limit_samples"] = 100;
    write_file_atomic(limited + "/config.json", limited_config.dump());
    write_file_atomic(limited + "/weights.safetensors", read_file(run + "/weights.safetensors"));
    CHECK(tools::run_label({"--checkpoint", limited, "--out", again}) == 0);
    auto first = parse_labels_csv(again);
    REQUIRE(first.size() == 2);
    CHECK(first[0].size() == 100);
    // --out is required; a data set smaller than a head's K is refused, saying why.
    CHECK(error_of(tools::run_label, {"--checkpoint", run}).find("--out") != std::string::npos);
    std::string tiny = write_synthetic_idx(folder.path, "tiny", 5, 3);
    std::string message =
        error_of(tools::run_label, {"--checkpoint", run, "--data", tiny, "--out", csv});
    CHECK(message.find("K = 6") != std::string::npos);
    CHECK(message.find("N >= K") != std::string::npos);
  }

  {  // eval: the JSON holds every metric, per head, kNN and the five probes
    std::string json_path = folder.path + "/eval.json";
    CHECK(tools::run_eval({"--checkpoint", run, "--data", train_spec, "--test-data", test_spec,
                           "--probes", "--probe-epochs", "2", "--json", json_path, "--threads",
                           "2"}) == 0);
    nlohmann::json j = nlohmann::json::parse(read_file(json_path));
    CHECK(j["train_samples"] == 160);
    CHECK(j["test_samples"] == 64);
    REQUIRE(j["heads"].size() == 2);
    for (const char* key : {"test_nmi", "test_ami", "test_ari", "train_labels_nmi",
                            "train_labels_ami", "train_labels_ari"}) {
      for (const auto& head : j["heads"]) {
        REQUIRE(head.contains(key));
        double v = head[key].get<double>();
        CHECK(std::isfinite(v));
        CHECK(v <= 1.0 + 1e-12);
      }
    }
    // Matched accuracy where K equals the class count (head 0: K = 4) only.
    CHECK(j["heads"][0].contains("test_accuracy"));
    CHECK_FALSE(j["heads"][1].contains("test_accuracy"));
    CHECK(j["knn_pca_components"] == 128);  // min(128, 160 - 1, fc7 width)
    CHECK(j["knn_pca_converged"] == true);
    CHECK(j["knn_pca_residual"].get<double>() <= 1e-9);
    for (const char* key : {"knn_top1_k200", "knn_top1_k10", "knn_pca_top1_k200", "knn_pca_top1_k10"}) {
      REQUIRE(j.contains(key));
      CHECK(j[key].get<double>() >= 0.0);
      CHECK(j[key].get<double>() <= 1.0);
    }
    REQUIRE(j["linear_probes"]["layers"].size() == 5);
    for (std::size_t l = 0; l < 5; ++l) {
      const auto& layer = j["linear_probes"]["layers"][l];
      CHECK(layer["layer"] == "conv" + std::to_string(l + 1));
      CHECK(layer["test_top1"].get<double>() >= 0.0);
      CHECK(layer["test_top1"].get<double>() <= 1.0);
      CHECK(layer["epoch_losses"].size() == 2);
      CHECK(layer["dims"].get<std::int64_t>() == layer["channels"].get<std::int64_t>() *
                                                     layer["pooled_height"].get<std::int64_t>() *
                                                     layer["pooled_width"].get<std::int64_t>());
    }
    CHECK(j["train_labels"] == run + "/labels.csv");

    // A training set that does not match labels.csv: the pseudo-labels are not scored, and
    // the JSON says so; without --json it goes to RUNDIR/eval.json.
    CHECK(tools::run_eval({"--checkpoint", run, "--data", train_spec, "--test-data", test_spec,
                           "--limit-samples", "100"}) == 0);
    nlohmann::json partial = nlohmann::json::parse(read_file(run + "/eval.json"));
    CHECK(partial["train_samples"] == 100);
    CHECK(partial["train_labels"].get<std::string>().find("not scored") != std::string::npos);
    CHECK_FALSE(partial["heads"][0].contains("train_labels_nmi"));
    CHECK_FALSE(partial.contains("linear_probes"));
    // Another data set of the same size: labels.csv labels the run's data, not this one.
    std::string lookalike = write_synthetic_idx(folder.path, "lookalike", 160, 9);
    CHECK(tools::run_eval({"--checkpoint", run, "--data", lookalike, "--test-data", test_spec}) ==
          0);
    nlohmann::json other = nlohmann::json::parse(read_file(run + "/eval.json"));
    CHECK(other["train_samples"] == 160);
    CHECK(other["train_labels"].get<std::string>().find("not scored") != std::string::npos);
    CHECK_FALSE(other["heads"][0].contains("train_labels_nmi"));
  }

  {  // viz: the cluster grid and the curves as PNG
    std::string grid = folder.path + "/clusters.png";
    CHECK(tools::run_viz(
              {"--checkpoint", run, "--out", grid, "--per-cluster", "5", "--head", "1"}) == 0);
    REQUIRE(exists(grid));
    data::Image picture = data::decode_image_file(grid, 0);
    CHECK(picture.channels == 1);
    // At most 6 rows of 32-pixel tiles with 2-pixel separators, 5 tiles plus the text margin.
    std::int64_t rows = (picture.height - 2) / 34;
    CHECK(rows >= 1);
    CHECK(rows <= 6);
    CHECK(picture.height == rows * 32 + (rows + 1) * 2);
    CHECK(picture.width > 5 * 32 + 6 * 2);
    // Data of another size than labels.csv: the head's argmax is used instead (no error).
    CHECK(tools::run_viz({"--checkpoint", run, "--data", test_spec, "--out", grid}) == 0);

    std::string curves = folder.path + "/curves.png";
    CHECK(tools::run_viz({"--curves", run, "--out", curves}) == 0);
    data::Image plot = data::decode_image_file(curves, 3);
    CHECK(plot.width == 800);
    CHECK(plot.height == 600);
    CHECK(error_of(tools::run_viz, {"--checkpoint", run, "--out", grid, "--head", "2"})
              .find("heads 0..1") != std::string::npos);
    CHECK(error_of(tools::run_viz, {"--checkpoint", run, "--curves", run, "--out", grid})
              .find("either") != std::string::npos);
  }

  {  // errors name the folder and the file
    std::string missing = folder.path + "/no_such_run";
    std::string message =
        error_of(tools::run_eval, {"--checkpoint", missing, "--data", train_spec});
    CHECK(message.find("no run folder at " + missing) != std::string::npos);
    CHECK(error_of(tools::run_label, {"--checkpoint", missing, "--out", "x.csv"})
              .find("no run folder") != std::string::npos);
    CHECK(error_of(tools::run_viz, {"--curves", missing, "--out", "x.png"}).find("metrics.jsonl") !=
          std::string::npos);

    std::string empty = folder.path + "/empty";
    make_directories(empty);
    message = error_of(tools::run_eval, {"--checkpoint", empty});
    CHECK(message.find(empty + "/config.json is missing") != std::string::npos);

    std::string no_weights = folder.path + "/no_weights";
    make_directories(no_weights);
    write_file_atomic(no_weights + "/config.json", read_file(run + "/config.json"));
    message = error_of(tools::run_label, {"--checkpoint", no_weights, "--out", "x.csv"});
    CHECK(message.find(no_weights + "/weights.safetensors is missing") != std::string::npos);

    // Weights of another model than config.json says: the mismatch is named.
    std::string other = folder.path + "/other";
    make_directories(other);
    nlohmann::json changed = nlohmann::json::parse(read_file(run + "/config.json"));
    changed["clusters"] = {4, 7};
    write_file_atomic(other + "/config.json", changed.dump());
    write_file_atomic(other + "/weights.safetensors", read_file(run + "/weights.safetensors"));
    message = error_of(tools::run_label, {"--checkpoint", other, "--out", "x.csv"});
    CHECK(message.find("does not match") != std::string::npos);
    CHECK(message.find("top_layer1") != std::string::npos);

    CHECK(error_of(tools::run_eval, {}).find("--checkpoint RUNDIR is required") !=
          std::string::npos);
    // An output folder that does not exist is refused before any work.
    message = error_of(tools::run_label, {"--checkpoint", run, "--out", missing + "/labels.csv"});
    CHECK(message.find("the folder " + missing + " does not exist") != std::string::npos);
  }
}

TEST_CASE("sela train: out-of-range --jitter, --rotation-* and --label-history values are refused") {
  TempFolder folder;
  const std::string spec = write_synthetic_idx(folder.path, "train", 64, 4);
  const tools::Args base{"--data", spec, "--out", folder.path + "/run", "--epochs", "1",
                         "--batch-size", "16", "--width-mult", "0.0625", "--no-eval"};
  auto with = [&](tools::Args extra) {
    tools::Args args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return error_of(tools::run_train, args);
  };
  CHECK(with({"--jitter", "1.5"}).find("--jitter must be in [0, 1)") != std::string::npos);
  CHECK(with({"--rotation-weight", "-1"}).find("--rotation-weight must be >= 0") !=
        std::string::npos);
  CHECK(with({"--rotation-batch", "17"}).find("--rotation-batch must be between 1 and "
                                              "--batch-size (16)") != std::string::npos);
  CHECK(with({"--rotation-batch", "8", "--rotation-pass", "both"}).find("--rotation-pass must be grouped, joint or "
                                               "separate, got 'both'") != std::string::npos);
  CHECK(with({"--label-history", "yes"}).find("--label-history expects on or off, got 'yes'") !=
        std::string::npos);
  CHECK(!exists(folder.path + "/run/checkpoint.safetensors"));  // refused before any work
}
