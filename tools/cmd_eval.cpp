// `sela eval`: the paper's evaluation of a trained run, printed and written as JSON.
//
//   sela eval --checkpoint RUNDIR [--data SPEC] [--test-data SPEC] [--probes] [--json FILE]
//
// Clustering metrics (sela/evaluate.h): NMI / AMI / ARI / matched accuracy of each head's
// argmax on the test split, the same for the run's pseudo-labels (RUNDIR/labels.csv, when
// --data is the run's own training data and the row count matches) and weighted kNN top-1
// on fc7 (k = 200 and 10).
// With --probes: linear probes on conv1 ... conv5 (sela/probe.h). Defaults come from the
// run: --data is its training data (with its sample limit), --test-data its test data or
// the test split of --data; a spec naming a source with splits (fashion-mnist, cifar) is
// read at its test split unless --test-split says otherwise.
#include <chrono>
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "kernels/cpu/parallel.h"
#include "sela/checkpoint_model.h"
#include "sela/evaluate.h"
#include "sela/device_choice.h"
#include "sela/probe.h"
#include "sela/run_files.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace sela::tools {

namespace {

bool source_has_splits(const std::string& spec) {
  std::string kind = spec.substr(0, spec.find(':'));
  return kind == "fashion-mnist" || kind == "cifar10" || kind == "cifar100";
}

}  // namespace

int run_eval(const Args& args) {
  cli::Flags flags(
      "sela eval",
      "Evaluates a trained SeLa run: clustering metrics of every head on the test "
      "split (NMI, AMI, ARI, matched\naccuracy), the same for the run's pseudo-labels, "
      "weighted kNN top-1 on fc7 features (k = 200, 10;\nas they are, and after PCA to 128 "
      "dimensions as the reference's final figure), and with --probes\nlinear probes on "
      "conv1..conv5. Prints a table and writes JSON.");
  flags.add("checkpoint", "", "run folder of `sela train` (config.json, weights.safetensors)");
  flags.add("data", "", "training data: kNN memory, probe training (default: the run's)");
  flags.add("test-data", "",
            "test data (default: the run's --test-data, else the test split of --data)");
  flags.add("test-split", "auto",
            "split of the test data: auto (test where the source has splits) | train | test");
  flags.add("json", "", "JSON file to write (default: RUNDIR/eval.json)");
  flags.add_switch("probes", "also train linear probes on conv1..conv5");
  flags.add_switch("precise-bn",
                   "first re-estimate the BatchNorm statistics on the training data without "
                   "augmentation (the weights file is not changed)");
  flags.add("probe-epochs", "4", "SGD epochs of each probe");
  flags.add("probe-batch-size", "256", "batch size of the probes");
  flags.add("probe-lr", "0.01", "learning rate of the probes (momentum 0.9, weight decay 5e-4)");
  flags.add("probe-layers", "1,2,3,4,5", "conv blocks to probe");
  flags.add("probe-train-samples", "0", "probe on a random subset of N training images (0 = all)");
  flags.add("probe-storage", "bf16", "cached probe features: bf16 | f32");
  flags.add("batch-size", "256", "images per forward pass");
  flags.add("limit-samples", "0",
            "use only the first N training samples (0 = all, or the run's limit)");
  flags.add("seed", "0", "seed of the probes");
  flags.add("device", "auto",
            "auto (a GPU when this build and the machine have one, else cpu) | cpu | cuda[:N]; "
            "linear probes run on the CPU");
  flags.add("threads", "0", "compute threads (0 = all hardware threads)");
  flags.add("workers", "1", "data loader threads");
  if (!flags.parse(args)) return 0;
  const std::string command = "sela eval";
  auto start = std::chrono::steady_clock::now();
  SELA_CHECK(!flags.get("checkpoint").empty(), command, "--checkpoint RUNDIR is required");
  std::int64_t batch_size = flags.get_int("batch-size");
  int workers = static_cast<int>(flags.get_int("workers"));
  SELA_CHECK(batch_size >= 1, command, "--batch-size must be >= 1, got " << batch_size);
  SELA_CHECK(workers >= 1, command, "--workers must be >= 1, got " << workers);
  std::string test_split = flags.get("test-split");
  SELA_CHECK(test_split == "auto" || test_split == "train" || test_split == "test", command,
             "--test-split must be auto, train or test, got '" << test_split << "'");
  ProbeOptions probe_options;
  bool probes = flags.get_switch("probes");
  if (probes) {
    probe_options.epochs = flags.get_int("probe-epochs");
    probe_options.batch_size = flags.get_int("probe-batch-size");
    probe_options.lr = flags.get_double("probe-lr");
    probe_options.train_limit = flags.get_int("probe-train-samples");
    probe_options.seed = static_cast<std::uint64_t>(flags.get_int("seed"));
    probe_options.network_batch_size = batch_size;
    probe_options.workers = workers;
    std::string storage = flags.get("probe-storage");
    SELA_CHECK(storage == "bf16" || storage == "f32", command,
               "--probe-storage must be bf16 or f32, got '" << storage << "'");
    probe_options.storage = storage == "bf16" ? FeatureStorage::bf16 : FeatureStorage::f32;
    probe_options.layers.clear();
    for (std::int64_t layer : flags.get_int_list("probe-layers")) {
      SELA_CHECK(layer >= 1 && layer <= 5, command,
                 "--probe-layers lists conv" << layer << "; use 1..5");
      probe_options.layers.push_back(static_cast<int>(layer - 1));
    }
    SELA_CHECK(probe_options.epochs >= 1, command, "--probe-epochs must be >= 1");
    SELA_CHECK(probe_options.batch_size >= 2, command, "--probe-batch-size must be >= 2");
    SELA_CHECK(probe_options.lr > 0, command, "--probe-lr must be > 0");
  }
  cpu::set_num_threads(static_cast<int>(flags.get_int("threads")));

  RunFolder run = read_run_folder(flags.get("checkpoint"), command);
  std::string json_path = flags.get("json").empty() ? run.path + "/eval.json" : flags.get("json");
  check_output_folder(json_path, "--json", command);
  std::shared_ptr<SelaNet> model = load_run_model(run, command);
  const Device device = resolve_device(flags.get("device"));
  const std::string device_line = checked_device_description(device, command);
  if (!device.is_cpu()) {
    std::printf("sela eval: %s\n", device_line.c_str());
    model->to(device);
  }
  std::unique_ptr<data::Dataset> train =
      open_run_data(run, flags.get("data"), "train", flags.get_int("limit-samples"), command);

  std::string test_spec = flags.get("test-data");
  if (test_spec.empty())
    test_spec = flags.get("data").empty() && !run.test_data.empty() ? run.test_data : "";
  bool test_from_training_source = test_spec.empty();
  if (test_from_training_source)
    test_spec = flags.get("data").empty() ? run.data : flags.get("data");
  std::string split = test_split;
  if (split == "auto")
    split = test_from_training_source || source_has_splits(test_spec) ? "test" : "train";
  std::unique_ptr<data::Dataset> test = open_run_data(run, test_spec, split, 0, command);
  std::string test_split_text = test->info().split.empty() ? "" : " split " + test->info().split;
  std::printf(
      "sela eval: %s (%s width %.3g, %zu heads): train %s (%lld samples), test %s%s "
      "(%lld samples)\n",
      run.path.c_str(), run.model.arch.c_str(), run.model.width_mult, run.model.clusters.size(),
      train->info().spec.c_str(), static_cast<long long>(train->size()), test->info().spec.c_str(),
      test_split_text.c_str(), static_cast<long long>(test->size()));
  std::fflush(stdout);

  // The run's pseudo-labels, when they are labels of this training data.
  std::vector<std::vector<std::int64_t>> train_labels = read_run_labels(run);
  std::string labels_note;
  bool own_data = flags.get("data").empty() || flags.get("data") == run.data;
  if (train_labels.empty()) {
    labels_note = run.labels_path() + " is missing";
  } else if (!own_data) {
    labels_note = "they label the run's training data " + run.data + ", not " + flags.get("data");
    train_labels.clear();
  } else if (train_labels.size() != run.model.clusters.size() ||
             static_cast<std::int64_t>(train_labels[0].size()) != train->size()) {
    labels_note = run.labels_path() + " has " + std::to_string(train_labels.size()) + " heads x " +
                  std::to_string(train_labels[0].size()) + " rows, the training data " +
                  std::to_string(train->size()) + " samples";
    train_labels.clear();
  }

  if (flags.get_switch("precise-bn")) {
    recompute_batch_norm_statistics(*model, *train, batch_size, workers);
  }
  EvalReport report = evaluate(*model, *train, *test, train_labels, batch_size, workers);
  report.select_by_stability(
      label_stability_from_metrics(run.path + "/metrics.jsonl", run.model.clusters.size()));
  nlohmann::json out = nlohmann::json::parse(report.to_json());
  out["checkpoint"] = run.path;
  out["data"] = train->info().spec;
  out["test_data"] = test->info().spec;
  out["test_split"] = test->info().split;
  if (!labels_note.empty()) {
    out["train_labels"] = "not scored: " + labels_note;
    for (auto& head : out["heads"]) {
      for (const char* key :
           {"train_labels_nmi", "train_labels_ami", "train_labels_ari", "train_labels_accuracy"}) {
        head.erase(key);
      }
    }
  } else {
    out["train_labels"] = run.labels_path();
  }
  std::printf("\n%s", report.table().c_str());
  if (!labels_note.empty()) std::printf("(train labels not scored: %s)\n", labels_note.c_str());
  std::fflush(stdout);

  if (probes) {
    std::printf("\n");
    model->to(Device::cpu());  // the probes' feature cache and SGD are CPU code
    ProbeReport probe_report = run_linear_probes(*model, *train, *test, probe_options);
    out["linear_probes"] = nlohmann::json::parse(probe_report.to_json());
    std::printf("\n%s", probe_report.table().c_str());
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out["seconds"] = seconds;
  write_file_atomic(json_path, out.dump(2) + "\n");
  std::printf("wrote %s (%.0f s)\n", json_path.c_str(), seconds);
  return 0;
}

}  // namespace sela::tools
