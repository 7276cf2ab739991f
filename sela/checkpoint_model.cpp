// Implementation of sela/checkpoint_model.h.
#include "sela/checkpoint_model.h"

#include <fstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "engine/state_io.h"
#include "sela/run_files.h"

namespace sela {

namespace {

using nlohmann::json;

bool is_folder(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

bool is_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// A required field of config.json, with the folder and the field named when absent or of
// the wrong type.
template <typename T>
T field(const json& config, const char* key, const RunFolder& run, const std::string& command) {
  auto it = config.find(key);
  SELA_CHECK(it != config.end(), command,
             run.config_path() << " has no \"" << key
                               << "\": it was not written by this version of sela train");
  try {
    return it->get<T>();
  } catch (const std::exception& e) {
    SELA_FAIL(command, run.config_path() << ": \"" << key << "\" has an unexpected value "
                                         << it->dump() << " (" << e.what() << ")");
  }
}

template <typename T>
T field_or(const json& config, const char* key, T fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const std::exception&) {
    return fallback;
  }
}

}  // namespace

RunFolder read_run_folder(const std::string& path, const std::string& command) {
  RunFolder run;
  run.path = path;
  while (run.path.size() > 1 && run.path.back() == '/') run.path.pop_back();
  SELA_CHECK(!run.path.empty(), command,
             "--checkpoint needs a run folder (the --out of sela train)");
  if (!is_folder(run.path)) {
    SELA_FAIL_HINT(command, "no run folder at " << run.path,
                   "--checkpoint takes the --out folder of `sela train`, which holds config.json "
                   "and weights.safetensors");
  }
  if (!is_file(run.config_path())) {
    SELA_FAIL_HINT(command,
                   run.path << " is not a run folder: " << run.config_path() << " is missing",
                   "--checkpoint takes the --out folder of `sela train`");
  }
  json config;
  try {
    config = json::parse(read_file(run.config_path()));
  } catch (const json::exception& e) {
    SELA_FAIL(command, run.config_path() << " is not valid JSON: " << e.what());
  }
  SELA_CHECK(config.is_object(), command, run.config_path() << " does not hold a JSON object");

  run.model.arch = field<std::string>(config, "arch", run, command);
  run.model.width_mult = field<double>(config, "width_mult", run, command);
  run.model.clusters = field<std::vector<std::int64_t>>(config, "clusters", run, command);
  SELA_CHECK(!run.model.clusters.empty(), command, run.config_path() << ": \"clusters\" is empty");
  run.model.dropout = field_or<double>(config, "dropout", 0.5);
  run.model.fc_batch_norm = field_or<bool>(config, "fc_batch_norm", false);
  run.data = field_or<std::string>(config, "data", "");
  run.test_data = field_or<std::string>(config, "test_data", "");
  run.lambda = field_or<double>(config, "lambda", 10.0);
  run.sinkhorn_storage = field_or<std::string>(config, "sinkhorn_storage", "f32");
  run.sinkhorn_omega = field_or<double>(config, "sinkhorn_omega", 1.0);
  run.sinkhorn_max_iters = field_or<std::int64_t>(config, "sinkhorn_max_iters", 10000);
  run.limit_samples = field_or<std::int64_t>(config, "limit_samples", 0);
  run.batch_size = field_or<std::int64_t>(config, "batch_size", 128);

  if (config.contains("in_channels")) {
    run.model.in_channels = field<std::int64_t>(config, "in_channels", run, command);
  } else {
    // config.json of sela train does not record the input channels; the first conv says.
    SELA_CHECK(is_file(run.weights_path()), command,
               run.weights_path() << " is missing: the run has not finished an epoch yet, or "
                                     "the folder was not written by sela train");
    SafetensorsFile weights(run.weights_path());
    SELA_CHECK(weights.contains("features.0.weight"), command,
               run.weights_path() << " has no features.0.weight: not a SeLa AlexNet");
    const auto& shape = weights.get("features.0.weight").shape;
    SELA_CHECK(shape.size() == 4, command,
               run.weights_path() << ": features.0.weight has shape " << shape_str(shape)
                                  << ", expected (out, in, k, k)");
    run.model.in_channels = shape[1];
  }
  return run;
}

std::shared_ptr<SelaNet> load_run_model(const RunFolder& run, const std::string& command) {
  if (!is_file(run.weights_path())) {
    SELA_FAIL_HINT(command, run.weights_path() << " is missing",
                   "sela train writes it at the end of every epoch; wait for the first epoch "
                   "to finish or point --checkpoint at a finished run");
  }
  std::shared_ptr<SelaNet> model;
  try {
    model = std::make_shared<SelaNet>(run.model);
  } catch (const Error& e) {
    SELA_FAIL(command, run.config_path()
                           << " describes a model that cannot be built: " << e.message());
  }
  try {
    load_state(*model, run.weights_path());
  } catch (const Error& e) {
    SELA_FAIL_HINT(command,
                   run.weights_path()
                       << " does not match " << run.config_path() << " (" << run.model.arch
                       << ", width " << run.model.width_mult << ", " << run.model.clusters.size()
                       << " heads): " << e.message(),
                   "the folder's files come from different runs; retrain or restore them");
  }
  model->eval();
  return model;
}

std::vector<std::vector<std::int64_t>> read_run_labels(const RunFolder& run) {
  if (!is_file(run.labels_path())) return {};
  return parse_labels_csv(run.labels_path());
}

std::unique_ptr<data::Dataset> open_run_data(const RunFolder& run, const std::string& spec,
                                             const std::string& split, std::int64_t limit,
                                             const std::string& command) {
  std::string chosen = spec;
  std::int64_t keep = limit;
  if (chosen.empty()) {
    SELA_CHECK(!run.data.empty(), command,
               run.config_path() << " records no training data; pass --data SPEC");
    chosen = run.data;
    if (keep <= 0 && (split.empty() || split == "train")) keep = run.limit_samples;
  }
  data::OpenOptions options;
  options.split = split;
  std::unique_ptr<data::Dataset> dataset = data::open_dataset(chosen, options);
  SELA_CHECK(dataset->size() > 0, command, chosen << " holds no samples");
  if (dataset->info().channels != run.model.in_channels) {
    SELA_FAIL_HINT(command,
                   chosen << " has " << dataset->info().channels
                          << "-channel images but the model of " << run.path << " was trained on "
                          << run.model.in_channels << "-channel images",
                   "pass data of the kind the run was trained on (" + run.data + ")");
  }
  if (keep > 0 && keep < dataset->size()) {
    dataset = std::make_unique<PrefixDataset>(std::move(dataset), keep);
  }
  return dataset;
}

void check_output_folder(const std::string& path, const std::string& flag,
                         const std::string& command) {
  SELA_CHECK(!path.empty(), command, flag << " FILE is required");
  std::string::size_type slash = path.find_last_of('/');
  std::string folder = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  SELA_CHECK(is_folder(folder), command,
             flag << " " << path << ": the folder " << folder << " does not exist");
}

namespace {
std::vector<std::int64_t> first_classes(const data::Dataset& base, std::int64_t count) {
  SELA_CHECK(count >= 1 && count <= base.size(), "data",
             "cannot keep " << count << " samples of " << base.info().spec << " (" << base.size()
                            << " samples)");
  return std::vector<std::int64_t>(base.true_classes().begin(),
                                   base.true_classes().begin() + count);
}
}  // namespace

PrefixDataset::PrefixDataset(std::unique_ptr<data::Dataset> base, std::int64_t count)
    : data::Dataset(base->info(), first_classes(*base, count)), base_(std::move(base)) {}

data::ImageView PrefixDataset::image(std::int64_t index, data::Image* scratch) const {
  check_index(index);
  return base_->image(index, scratch);
}

std::string PrefixDataset::sample_name(std::int64_t index) const {
  check_index(index);
  return base_->sample_name(index);
}

namespace {

std::vector<std::int64_t> classes_at(const data::Dataset& base,
                                     const std::vector<std::int64_t>& indices) {
  std::vector<std::int64_t> classes;
  classes.reserve(indices.size());
  for (std::int64_t index : indices) {
    SELA_CHECK(index >= 0 && index < base.size(), "SubsetDataset",
               "index " << index << " is outside the data set of " << base.size() << " samples");
    classes.push_back(base.true_class(index));
  }
  return classes;
}

}  // namespace

SubsetDataset::SubsetDataset(const data::Dataset& base, std::vector<std::int64_t> indices)
    : data::Dataset(base.info(), classes_at(base, indices)), base_(base),
      indices_(std::move(indices)) {}

data::ImageView SubsetDataset::image(std::int64_t index, data::Image* scratch) const {
  check_index(index);
  return base_.image(indices_[static_cast<std::size_t>(index)], scratch);
}

std::string SubsetDataset::sample_name(std::int64_t index) const {
  check_index(index);
  return base_.sample_name(indices_[static_cast<std::size_t>(index)]);
}

}  // namespace sela
