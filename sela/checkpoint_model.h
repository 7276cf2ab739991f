// A trained SeLa network back from its run folder, for `sela label`, `sela eval` and
// `sela viz`.
//
// A run folder (sela/trainer.h) holds config.json (every setting of `sela train`) and
// weights.safetensors (the model alone, PyTorch names). read_run_folder() reads the settings
// a model needs (arch, width, clusters per head, dropout; the input channels come from
// config.json when it has them, else from the shape of the first conv weight) and the ones
// the commands default to (training data, λ, Sinkhorn storage, sample limit);
// load_run_model() builds that model and loads the weights strictly. Every failure is an
// Error naming the folder and the file that is missing or wrong, and what to do.
//
// open_run_data() opens the data a command acts on: the spec given on the command line, or
// the run's own training data when none is given — then with the run's --limit-samples, so
// that row i of the run's labels.csv is sample i again. It also checks that the images have
// the channel count the model was trained on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "models/alexnet.h"

namespace sela {

struct RunFolder {
  std::string path;       // as given
  ModelConfig model;      // what make_model needs (seed unused: weights are loaded)
  std::string data;       // --data of the run
  std::string test_data;  // --test-data of the run ("" = the data's test split)
  double lambda = 10.0;   // --lambda of the run
  std::string sinkhorn_storage = "f32";
  double sinkhorn_omega = 1.0;             // --sinkhorn-omega of the run (1 before it existed)
  std::int64_t sinkhorn_max_iters = 10000;  // --sinkhorn-max-iters of the run
  std::int64_t limit_samples = 0;  // 0 = the whole training set
  std::int64_t batch_size = 128;

  std::string config_path() const { return path + "/config.json"; }
  std::string weights_path() const { return path + "/weights.safetensors"; }
  std::string labels_path() const { return path + "/labels.csv"; }
  std::string metrics_path() const { return path + "/metrics.jsonl"; }
};

// Reads RUNDIR/config.json (and the first conv weight's shape when config.json does not
// record the input channels). `command` names the caller in errors ("sela eval").
RunFolder read_run_folder(const std::string& path, const std::string& command);

// Builds the run's model and loads RUNDIR/weights.safetensors into it (strict: every tensor
// present with its shape). Returned in eval mode.
std::shared_ptr<SelaNet> load_run_model(const RunFolder& run, const std::string& command);

// The run's pseudo-labels (T) x (N) from RUNDIR/labels.csv; empty when the file is absent.
std::vector<std::vector<std::int64_t>> read_run_labels(const RunFolder& run);

// Opens `spec` (or, when empty, the run's own training data with its sample limit) at
// `split`; `limit` > 0 keeps only the first `limit` samples. Errors when the images do not
// have the model's channel count.
std::unique_ptr<data::Dataset> open_run_data(const RunFolder& run, const std::string& spec,
                                             const std::string& split, std::int64_t limit,
                                             const std::string& command);

// Checks, before any work, that the folder `path` will be written into exists (Error naming
// the flag and the folder otherwise), so that a typo does not cost a whole network pass.
void check_output_folder(const std::string& path, const std::string& flag,
                         const std::string& command);

// The first `count` samples of another data set, which it owns.
class PrefixDataset : public data::Dataset {
 public:
  PrefixDataset(std::unique_ptr<data::Dataset> base, std::int64_t count);
  data::ImageView image(std::int64_t index, data::Image* scratch) const override;
  std::string sample_name(std::int64_t index) const override;

 private:
  std::unique_ptr<data::Dataset> base_;
};

// The samples `indices` of `base` (not owned; it must outlive this), in that order: sample
// j here is sample indices[j] there. The trainer runs the network over the few samples
// whose recorded logits are missing.
class SubsetDataset : public data::Dataset {
 public:
  SubsetDataset(const data::Dataset& base, std::vector<std::int64_t> indices);
  data::ImageView image(std::int64_t index, data::Image* scratch) const override;
  std::string sample_name(std::int64_t index) const override;

 private:
  const data::Dataset& base_;
  std::vector<std::int64_t> indices_;  // (M,) indices into base_
};

}  // namespace sela
