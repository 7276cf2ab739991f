// Implementation of sela/trainer.h. The flow of one run:
//   open data -> build model -> labels (random equipartition, or from the checkpoint)
//   for each epoch: for each batch: [label step if the schedule says so] -> SGD step
//                   end of epoch: metrics line, checkpoint (atomic)
//   final evaluation on the test split (when asked and the data has classes)
#include "sela/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/allocator.h"
#include "engine/cuda_graph.h"
#include "engine/data/augment.h"
#include "engine/data/loader.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/progress.h"
#include "engine/state_io.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/metrics.h"
#include "sela/assign/sinkhorn.h"
#include "sela/checkpoint_model.h"
#include "sela/device_choice.h"
#include "sela/evaluate.h"
#include "sela/rotation.h"
#include "sela/run_files.h"


namespace sela {

using nlohmann::json;

std::vector<double> label_schedule(std::int64_t steps, std::int64_t epochs, std::int64_t n,
                                   const std::string& spacing) {
  SELA_CHECK(spacing == "quadratic" || spacing == "linear", "sela train",
             "--label-spacing must be quadratic or linear, got '" << spacing << "'");
  std::vector<double> times;
  if (steps <= 0) return times;
  if (steps == 1) return {0.0};
  for (std::int64_t j = 0; j < steps; ++j) {
    double x = static_cast<double>(j) / static_cast<double>(steps - 1);
    times.push_back((static_cast<double>(epochs) + 1.01) * static_cast<double>(n) *
                    (spacing == "quadratic" ? x * x : x));
  }
  return times;
}

namespace {

std::vector<std::int64_t> random_equipartition(std::int64_t n, std::int64_t k, std::uint64_t seed) {
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) labels[static_cast<std::size_t>(i)] = i % k;
  Rng rng(seed);
  for (std::int64_t i = n - 1; i > 0; --i) {
    std::swap(labels[static_cast<std::size_t>(i)],
              labels[static_cast<std::size_t>(rng.below(static_cast<std::uint64_t>(i + 1)))]);
  }
  return labels;
}

std::vector<Dropout*> dropouts_of(SelaNet& model) {
  std::vector<Dropout*> out;
  for (auto& entry : model.named_modules()) {
    if (auto* d = dynamic_cast<Dropout*>(entry.second.get())) out.push_back(d);
  }
  return out;
}

// " rot 1.2345" for the progress line when the rotation task is on, else "".
std::string rotation_field(bool on, double rotation_loss) {
  if (!on) return "";
  char text[32];
  std::snprintf(text, sizeof text, " rot %.4f", rotation_loss);
  return text;
}

// What a checkpoint must agree on with the flags to be resumed.
json fingerprint(const TrainConfig& config, std::int64_t n, std::int64_t in_channels) {
  return {{"arch", config.arch}, {"width_mult", config.width_mult},
          {"clusters", config.clusters}, {"samples", n}, {"in_channels", in_channels},
          {"data", config.data}, {"rotation_weight", config.rotation_weight},
          {"rotation_batch", config.rotation_batch}, {"rotation_pass", config.rotation_pass},
          {"fc_batch_norm", config.fc_batch_norm}};
}

json config_json(const TrainConfig& c, std::int64_t in_channels) {
  return {{"data", c.data}, {"in_channels", in_channels}, {"test_data", c.test_data}, {"arch", c.arch},
          {"width_mult", c.width_mult}, {"clusters", c.clusters}, {"lambda", c.lambda},
          {"label_steps", c.label_steps}, {"label_spacing", c.label_spacing},
          {"label_logits", c.label_logits},
          {"epochs", c.epochs}, {"batch_size", c.batch_size}, {"lr", c.lr},
          {"momentum", c.momentum}, {"weight_decay", c.weight_decay}, {"lr_drops", c.lr_drops},
          {"dropout", c.dropout}, {"fc_batch_norm", c.fc_batch_norm},
          {"crop_min_scale", c.crop_min_scale}, {"jitter", c.jitter},
          {"rotation_weight", c.rotation_weight}, {"rotation_batch", c.rotation_batch},
          {"rotation_pass", c.rotation_pass},
          {"sinkhorn_max_iters", c.sinkhorn_max_iters},
          {"sinkhorn_omega", c.sinkhorn_omega}, {"sinkhorn_storage", c.storage},
          {"sinkhorn_warm_start", c.sinkhorn_warm_start}, {"device", c.device},
          {"cuda_graph", c.cuda_graph}, {"precise_bn", c.precise_bn},
          {"label_history", c.label_history},
          {"threads", cpu::num_threads()}, {"workers", c.workers}, {"seed", c.seed},
          {"out", c.out}, {"limit_samples", c.limit_samples},
          {"gemm", cpu::gemm_backend_name()}, {"sela_version", "0.1.0"}};
}

class Run {
 public:
  explicit Run(const TrainConfig& config) : config_(config) {}
  TrainSummary go();

 private:
  void open_data();
  void build_model();
  void start_fresh();
  void resume_from_checkpoint();
  void label_step(std::int64_t epoch);
  // The (T) x (N * K_t) logits a label step solves from: recorded_logits_ itself when every
  // sample has been recorded, else *scratch (a fresh pass, or the recorded logits completed
  // by a pass over the samples not seen yet).
  const std::vector<std::vector<float>>& label_step_logits(
      const std::string& label, double* seconds, std::vector<std::vector<float>>* scratch);
  void record_logits(const std::vector<Tensor>& logits, const data::Batch& batch);
  double train_epoch(std::int64_t epoch);
  // One step's forward: the heads' logits of `images`, the SeLa loss, and with the rotation
  // task on its loss on `rotation` and the weighted sum to differentiate (else loss is the
  // SeLa loss itself).
  struct StepTensors {
    std::vector<Tensor> logits;  // (B, K_t) per head
    Tensor sela_loss, rotation_loss, loss;
  };
  StepTensors forward_step(const Tensor& images, const std::vector<Tensor>& targets,
                           const RotationBatch& rotation);
  // --cuda-graph: one training step on `images` / `targets` as a replay of the captured step,
  // capturing it first when there is none yet or the lr changed. Returns the loss (after the
  // update, which the graph includes) and the step's logits, outputs of the graph.
  // The rotation task's loss comes back in *rotation_loss (0 when off).
  double graph_step(const Tensor& images, const std::vector<Tensor>& targets,
                    const RotationBatch& rotation, std::vector<Tensor>* logits,
                    double* rotation_loss);
  void save_checkpoint(std::int64_t epochs_done);
  void log(const json& line) { append_line(config_.out + "/metrics.jsonl", line.dump()); }

  TrainConfig config_;
  Device device_ = Device::cpu();  // where the model, its gradients and the batches live
  std::unique_ptr<data::Dataset> train_data_;  // the source, or its first --limit-samples
  const data::Dataset* train_ = nullptr;
  std::int64_t n_ = 0;
  std::shared_ptr<SelaNet> model_;
  std::unique_ptr<Sgd> optimizer_;  // the model's parameters, then the rotation head's
  std::shared_ptr<Linear> rotation_head_;  // (4 x fc7) with --rotation-weight > 0, else null
  RotationPass rotation_pass_ = RotationPass::grouped;  // --rotation-pass, parsed in go()
  std::vector<std::vector<std::int64_t>> labels_;  // (T) x (N)
  std::vector<double> schedule_;
  std::size_t next_label_step_ = 0;
  double samples_seen_ = 0;
  std::int64_t start_epoch_ = 0;
  std::unique_ptr<assign::SinkhornSolver> solver_;
  // Each head's column scaling r from its last label step, the next solve's warm start
  // (--sinkhorn-warm-start on; empty before the first solve). Checkpointed.
  std::vector<std::vector<double>> sinkhorn_r_;
  // --label-logits recorded: each head's logits of every sample as last trained on,
  // (T) x (N * K_t), and whether sample i has been recorded yet, (N).
  std::vector<std::vector<float>> recorded_logits_;
  std::vector<std::uint8_t> recorded_;
  TrainSummary summary_;
  // --cuda-graph: the captured step, its static inputs and outputs, the lr it was captured
  // with, and the eager steps taken so far (a capture needs one: cuDNN plans, first update).
  struct CapturedStep {
    std::unique_ptr<CudaGraph> graph;
    Tensor images;
    std::vector<Tensor> targets;
    RotationBatch rotation;
    StepTensors out;
    double lr = -1;
  };
  CapturedStep captured_;
  std::int64_t eager_steps_ = 0;
  bool precise_bn_done_ = false;  // the final BatchNorm re-estimate ran (checkpointed)
};

void Run::open_data() {
  train_data_ = data::open_dataset(config_.data);
  if (config_.limit_samples > 0 && config_.limit_samples < train_data_->size()) {
    train_data_ = std::make_unique<PrefixDataset>(std::move(train_data_), config_.limit_samples);
  }
  train_ = train_data_.get();
  n_ = train_->size();
  for (std::int64_t k : config_.clusters) {
    SELA_CHECK(k >= 1 && k <= n_, "sela train",
               "--clusters " << k << " must be between 1 and the number of samples (" << n_ << ")");
  }
  SELA_CHECK(config_.batch_size >= 2 && config_.batch_size <= n_, "sela train",
             "--batch-size must be in [2, " << n_ << "], got " << config_.batch_size);
}

void Run::build_model() {
  ModelConfig mc;
  mc.arch = config_.arch;
  mc.width_mult = config_.width_mult;
  mc.in_channels = train_->info().channels;
  mc.clusters = config_.clusters;
  mc.dropout = config_.dropout;
  mc.fc_batch_norm = config_.fc_batch_norm;
  mc.seed = config_.seed;
  model_ = make_model(mc);
  if (!device_.is_cpu()) model_->to(device_);  // before the optimiser takes its handles
  SgdOptions options;
  options.lr = config_.lr;
  options.momentum = config_.momentum;
  options.weight_decay = config_.weight_decay;
  std::vector<Tensor> parameters = model_->parameters();
  if (config_.rotation_weight > 0) {
    rotation_head_ = std::make_shared<Linear>(model_->feature_dim(), 4);
    Rng rng(config_.seed * 2 + 7);  // as the clustering heads: N(0, 0.01), bias 0
    fill_normal(rotation_head_->weight, rng, 0.0, 0.01);
    if (!device_.is_cpu()) rotation_head_->to(device_);
    for (const Tensor& p : rotation_head_->parameters()) parameters.push_back(p);
  }
  optimizer_ = std::make_unique<Sgd>(parameters, options);
  assign::SinkhornOptions sk;
  sk.lambda = config_.lambda;
  sk.storage = assign::parse_storage(config_.storage);
  sk.max_iters = config_.sinkhorn_max_iters;
  sk.over_relaxation = config_.sinkhorn_omega;
  sk.device = device_;  // the fused CUDA kernels on a GPU run (logits come from the host)
  solver_ = std::make_unique<assign::SinkhornSolver>(sk);
  sinkhorn_r_.assign(config_.clusters.size(), {});
  if (config_.label_logits == "recorded") {
    std::int64_t total_k = 0;
    for (std::int64_t k : config_.clusters) total_k += k;
    const double gib = static_cast<double>(n_) * static_cast<double>(total_k) * 4.0 / (1 << 30);
    SELA_CHECK(gib <= 16.0, "sela train",
               "--label-logits recorded keeps " << n_ << " x " << total_k << " float logits ("
                                                << gib << " GiB) in host memory; use "
                                                   "--label-logits fresh for this size");
    for (std::int64_t k : config_.clusters) {
      recorded_logits_.emplace_back(static_cast<std::size_t>(n_ * k), 0.0f);
    }
    recorded_.assign(static_cast<std::size_t>(n_), 0);
  }
}

void Run::start_fresh() {
  for (std::size_t t = 0; t < config_.clusters.size(); ++t) {
    labels_.push_back(random_equipartition(n_, config_.clusters[t], config_.seed * 1000 + 17 + t));
  }
  write_file_atomic(config_.out + "/config.json", config_json(config_, model_->config().in_channels).dump(2) + "\n");
  write_file_atomic(config_.out + "/labels.csv", labels_csv(labels_));
  std::remove((config_.out + "/metrics.jsonl").c_str());
}

void Run::save_checkpoint(std::int64_t epochs_done) {
  NamedTensors tensors;
  for (auto& entry : model_->state_dict()) tensors.emplace_back("model/" + entry.first, entry.second);
  auto named = model_->named_parameters();
  auto& buffers = optimizer_->momentum_buffers();
  for (std::size_t i = 0; i < named.size(); ++i) {
    if (buffers[i].defined()) tensors.emplace_back("momentum/" + named[i].first, buffers[i]);
  }
  if (rotation_head_) {  // its parameters follow the model's in the optimiser
    auto rotation = rotation_head_->named_parameters();
    for (std::size_t i = 0; i < rotation.size(); ++i) {
      tensors.emplace_back("rotation_head/" + rotation[i].first, rotation[i].second);
      const Tensor& buffer = buffers[named.size() + i];
      if (buffer.defined()) tensors.emplace_back("momentum/rotation_head." + rotation[i].first, buffer);
    }
  }
  for (std::size_t t = 0; t < labels_.size(); ++t) {
    tensors.emplace_back("labels/" + std::to_string(t), Tensor::from_vector(labels_[t], {n_}));
  }
  for (std::size_t t = 0; t < recorded_logits_.size(); ++t) {  // --label-logits recorded
    tensors.emplace_back("recorded_logits/" + std::to_string(t),
                         Tensor::from_vector(recorded_logits_[t], {n_, config_.clusters[t]}));
  }
  if (!recorded_.empty()) tensors.emplace_back("recorded", Tensor::from_vector(recorded_, {n_}));
  for (std::size_t t = 0; t < sinkhorn_r_.size(); ++t) {
    if (sinkhorn_r_[t].empty()) continue;
    tensors.emplace_back("sinkhorn_r/" + std::to_string(t),
                         Tensor::from_vector(sinkhorn_r_[t], {config_.clusters[t]}));
  }
  json dropout_calls = json::array();
  for (Dropout* d : dropouts_of(*model_)) dropout_calls.push_back(d->calls);
  json state = {{"epochs_done", epochs_done}, {"samples_seen", samples_seen_},
                {"next_label_step", next_label_step_}, {"dropout_calls", dropout_calls},
                {"precise_bn_done", precise_bn_done_},
                {"fingerprint", fingerprint(config_, n_, model_->config().in_channels)}};
  save_tensors(tensors, config_.out + "/checkpoint.safetensors", {{"sela_state", state.dump()}});
  save_state(*model_, config_.out + "/weights.safetensors",
             {{"arch", config_.arch}, {"config", config_json(config_, model_->config().in_channels).dump()}});
}

void Run::resume_from_checkpoint() {
  std::string path = config_.out + "/checkpoint.safetensors";
  SafetensorsFile file(path);
  auto it = file.metadata().find("sela_state");
  SELA_CHECK(it != file.metadata().end(), "sela train --resume",
             path << " has no sela_state metadata: it was not written by sela train");
  json state = json::parse(it->second);
  json expected = fingerprint(config_, n_, model_->config().in_channels);
  json saved = state["fingerprint"];
  // Checkpoints from before the rotation task were made without it.
  if (!saved.contains("rotation_weight")) saved["rotation_weight"] = 0.0;
  if (!saved.contains("rotation_batch")) saved["rotation_batch"] = TrainConfig().rotation_batch;
  if (!saved.contains("rotation_pass")) saved["rotation_pass"] = "separate";  // the only one then
  if (!saved.contains("fc_batch_norm")) saved["fc_batch_norm"] = false;  // nor fc BatchNorm
  std::ostringstream differences;
  for (auto& item : expected.items()) {
    if (saved[item.key()] != item.value()) {
      differences << " " << item.key() << ": checkpoint " << saved[item.key()].dump()
                  << ", flags " << item.value().dump();
      // Runs made before the fc BatchNorm became the default resume with it off.
      if (item.key() == "fc_batch_norm") {
        differences << " (--fc-batch-norm " << (saved[item.key()] == true ? "on" : "off") << ")";
      }
      differences << ";";
    }
  }
  SELA_CHECK(differences.str().empty(), "sela train --resume",
             path << " does not match the flags:" << differences.str()
                  << " resume with the run's own settings (see " << config_.out
                  << "/config.json) or use another --out");
  LoadOptions load;
  load.prefix = "model/";
  load.strict = false;  // the file also holds momentum/ and labels/
  load_state(*model_, file, load);
  auto named = model_->named_parameters();
  auto& buffers = optimizer_->momentum_buffers();
  for (std::size_t i = 0; i < named.size(); ++i) {
    std::string key = "momentum/" + named[i].first;
    if (file.contains(key)) buffers[i] = tensor_from_file(file, key).to(device_);
  }
  if (rotation_head_) {
    auto rotation = rotation_head_->named_parameters();
    for (std::size_t i = 0; i < rotation.size(); ++i) {
      std::string key = "rotation_head/" + rotation[i].first;
      SELA_CHECK(file.contains(key), "sela train --resume", path << " has no " << key);
      rotation[i].second.copy_from(tensor_from_file(file, key).to(device_));
      key = "momentum/rotation_head." + rotation[i].first;
      if (file.contains(key)) buffers[named.size() + i] = tensor_from_file(file, key).to(device_);
    }
  }
  labels_.clear();
  for (std::size_t t = 0; t < config_.clusters.size(); ++t) {
    labels_.push_back(tensor_from_file(file, "labels/" + std::to_string(t)).to_vector<std::int64_t>());
  }
  for (std::size_t t = 0; t < recorded_logits_.size(); ++t) {
    std::string key = "recorded_logits/" + std::to_string(t);
    SELA_CHECK(file.contains(key), "sela train --resume",
               path << " has no " << key << ": the run was made with --label-logits fresh");
    recorded_logits_[t] = tensor_from_file(file, key).to_vector<float>();
  }
  if (!recorded_.empty()) recorded_ = tensor_from_file(file, "recorded").to_vector<std::uint8_t>();
  // A checkpoint from before the warm start has no scalings: its next solves start cold.
  for (std::size_t t = 0; t < sinkhorn_r_.size(); ++t) {
    std::string key = "sinkhorn_r/" + std::to_string(t);
    if (!file.contains(key)) continue;
    sinkhorn_r_[t] = tensor_from_file(file, key).to_vector<double>();
    bool usable = static_cast<std::int64_t>(sinkhorn_r_[t].size()) == config_.clusters[t];
    for (double v : sinkhorn_r_[t]) usable = usable && v > 0.0 && std::isfinite(v);
    SELA_CHECK(usable || config_.sinkhorn_warm_start == "off", "sela train --resume",
               path << ": " << key << " is not " << config_.clusters[t]
                    << " positive finite scalings (a damaged checkpoint?); resume with "
                       "--sinkhorn-warm-start off to start that head's next solve cold");
    if (!usable) sinkhorn_r_[t].clear();
  }
  auto dropouts = dropouts_of(*model_);
  for (std::size_t i = 0; i < dropouts.size(); ++i) {
    dropouts[i]->calls = state["dropout_calls"][i].get<std::uint64_t>();
  }
  start_epoch_ = state["epochs_done"].get<std::int64_t>();
  samples_seen_ = state["samples_seen"].get<double>();
  precise_bn_done_ = state.value("precise_bn_done", false);
  next_label_step_ = state["next_label_step"].get<std::size_t>();
  std::printf("resuming %s after epoch %lld (%zu of %zu label steps done)\n", config_.out.c_str(),
              static_cast<long long>(start_epoch_), next_label_step_, schedule_.size());
}

void Run::label_step(std::int64_t epoch) {
  auto start = std::chrono::steady_clock::now();
  std::string label = "label step " + std::to_string(next_label_step_ + 1) + "/" +
                      std::to_string(schedule_.size());
  double forward_seconds = 0;
  std::vector<std::vector<float>> scratch;
  const std::vector<std::vector<float>>& logits =
      label_step_logits(label, &forward_seconds, &scratch);
  json line = {{"event", "label_step"}, {"step", next_label_step_}, {"epoch", epoch},
               {"samples_seen", samples_seen_}, {"forward_s", forward_seconds}};
  for (std::size_t t = 0; t < labels_.size(); ++t) {
    std::int64_t k = config_.clusters[t];
    if (config_.sinkhorn_warm_start == "on") solver_->warm_start(sinkhorn_r_[t]);
    assign::SinkhornResult result =
        solver_->solve(logits[t].data(), n_, k, "head" + std::to_string(t));
    sinkhorn_r_[t] = result.r;
    double nmi_previous =
        normalized_mutual_info(labels_[t].data(), result.labels.data(), n_);
    json head = {{"head", t}, {"k", k}, {"iterations", result.iterations},
                 {"converged", result.converged}, {"seconds", result.total_seconds},
                 {"absorptions", result.absorptions},
                 {"row_marginal_error", result.row_marginal_error},
                 {"col_marginal_error", result.col_marginal_error},
                 {"cluster_min", result.cluster_min}, {"cluster_max", result.cluster_max},
                 {"clusters_empty", result.clusters_empty}, {"nmi_previous", nmi_previous},
                 {"over_relaxation", result.over_relaxation},
                 {"warm_started", result.warm_started}};
    std::printf("  %s head%zu K=%lld: %lld iterations %.2fs, marginal errors %.1e/%.1e, "
                "clusters %lld..%lld, NMI(previous) %.3f",
                label.c_str(), t, static_cast<long long>(k),
                static_cast<long long>(result.iterations), result.total_seconds,
                result.row_marginal_error, result.col_marginal_error,
                static_cast<long long>(result.cluster_min),
                static_cast<long long>(result.cluster_max), nmi_previous);
    if (train_->labelled()) {
      ClusteringScores scores =
          score_clustering(result.labels, train_->true_classes(), k, train_->num_classes());
      head["nmi_true"] = scores.nmi;
      head["ari_true"] = scores.ari;
      std::printf(", NMI/ARI(true) %.3f/%.3f", scores.nmi, scores.ari);
    }
    if (!result.warning.empty()) head["warning"] = result.warning;
    std::printf("\n");
    line["heads"].push_back(head);
    labels_[t] = std::move(result.labels);
  }
  std::fflush(stdout);
  line["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log(line);
  write_file_atomic(config_.out + "/labels.csv", labels_csv(labels_));
  if (config_.label_history) {
    char name[48];
    std::snprintf(name, sizeof name, "/step_%03zu.csv", next_label_step_ + 1);
    make_directories(config_.out + "/labels");
    write_file_atomic(config_.out + "/labels" + name, labels_csv(labels_));
  }
  ++next_label_step_;
  summary_.label_steps_done++;
}

const std::vector<std::vector<float>>& Run::label_step_logits(
    const std::string& label, double* seconds, std::vector<std::vector<float>>* scratch) {
  std::vector<std::int64_t> missing;
  if (config_.label_logits == "recorded") {
    for (std::int64_t i = 0; i < n_; ++i) {
      if (!recorded_[static_cast<std::size_t>(i)]) missing.push_back(i);
    }
  }
  if (config_.label_logits != "recorded" || static_cast<std::int64_t>(missing.size()) == n_) {
    NetworkOutputs outputs = run_network(*model_, *train_, config_.batch_size, config_.workers,
                                         true, false, label + ": logits");
    *seconds = outputs.seconds;
    *scratch = std::move(outputs.logits);
    return *scratch;
  }
  *seconds = 0;
  if (missing.empty()) return recorded_logits_;
  // Recorded logits, completed by an eval pass over the samples that have none yet.
  std::vector<std::vector<float>>& logits = *scratch;
  logits = recorded_logits_;
  SubsetDataset unseen(*train_, missing);
  NetworkOutputs outputs = run_network(*model_, unseen, config_.batch_size, config_.workers, true,
                                       false,
                                       label + ": logits of " + std::to_string(missing.size()) +
                                           " unseen samples");
  *seconds = outputs.seconds;
  for (std::size_t t = 0; t < logits.size(); ++t) {
    const std::size_t k = static_cast<std::size_t>(config_.clusters[t]);
    for (std::size_t j = 0; j < missing.size(); ++j) {
      std::copy_n(outputs.logits[t].data() + j * k, k,
                  logits[t].data() + static_cast<std::size_t>(missing[j]) * k);
    }
  }
  return logits;
}

void Run::record_logits(const std::vector<Tensor>& logits, const data::Batch& batch) {
  for (std::size_t t = 0; t < logits.size(); ++t) {
    Tensor rows = logits[t].detach();  // (B, K_t)
    if (!rows.device().is_cpu()) rows = rows.to(Device::cpu());
    const float* source = rows.data<float>();
    const std::size_t k = static_cast<std::size_t>(config_.clusters[t]);
    for (std::int64_t j = 0; j < batch.size; ++j) {
      const std::size_t index = static_cast<std::size_t>(batch.indices[static_cast<std::size_t>(j)]);
      std::copy_n(source + static_cast<std::size_t>(j) * k, k, recorded_logits_[t].data() + index * k);
      recorded_[index] = 1;
    }
  }
}

double Run::train_epoch(std::int64_t epoch) {
  double lr = step_learning_rate(config_.lr, epoch, config_.lr_drops);
  optimizer_->set_lr(lr);
  model_->train();
  data::AugmentConfig augment =
      data::default_augment(train_->info(), true, static_cast<int>(model_->input_size()));
  if (config_.crop_min_scale > 0) augment.scale_min = config_.crop_min_scale;
  if (config_.jitter >= 0) {
    augment.brightness = augment.contrast = static_cast<float>(config_.jitter);
    if (train_->info().channels == 3) augment.saturation = static_cast<float>(config_.jitter);
  }
  augment.validate(train_->info().channels);
  data::LoaderConfig lc;
  lc.batch_size = config_.batch_size;
  lc.shuffle = true;
  lc.drop_last = true;
  lc.seed = config_.seed;
  lc.workers = config_.workers;
  lc.allocator = batch_allocator_for(device_);  // pinned for a GPU: loss.item() below syncs
  data::Loader loader(*train_, augment, lc);
  loader.start_epoch(epoch);
  Progress progress("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(config_.epochs),
                    loader.batches_per_epoch(), 25);
  data::Batch batch;
  double loss_sum = 0, rotation_loss_sum = 0;
  std::int64_t batches = 0, images_done = 0;
  double wait_before_labels = 0;  // data wait excluding label steps' own loaders
  auto start = std::chrono::steady_clock::now();
  double label_seconds = 0;
  while (loader.next(&batch)) {
    while (next_label_step_ < schedule_.size() && samples_seen_ >= schedule_[next_label_step_]) {
      auto label_start = std::chrono::steady_clock::now();
      label_step(epoch);
      label_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - label_start).count();
      model_->train();
    }
    Tensor images = batch_images_on(batch, device_);  // (B, C, H, W)
    std::vector<Tensor> targets;
    for (const auto& head_labels : labels_) {
      // (B) int64; for a GPU in pinned memory, so that the upload is queued without a wait
      // (the pinned pool reuses the block only after the copy has run).
      Tensor head_targets = device_.is_cpu() ? Tensor::empty({batch.size}, DType::i64)
                                             : Tensor::pinned({batch.size}, DType::i64);
      std::int64_t* y = head_targets.data<std::int64_t>();
      for (std::int64_t j = 0; j < batch.size; ++j) {
        y[j] = head_labels[static_cast<std::size_t>(batch.indices[static_cast<std::size_t>(j)])];
      }
      targets.push_back(device_.is_cpu() ? head_targets : head_targets.to(device_));
    }
    RotationBatch rotation;  // --rotation-weight: turned images and their turns, on device_
    if (rotation_head_) {
      rotation = make_rotation_batch(batch, config_.rotation_batch, !device_.is_cpu());
      if (!device_.is_cpu()) {
        rotation.images = rotation.images.to(device_);
        rotation.targets = rotation.targets.to(device_);
      }
    }
    std::vector<Tensor> logits;  // (B, K_t) per head
    StepTensors step;
    double value = 0, rotation_value = 0;  // the SeLa loss, the rotation task's
    const bool replay = config_.cuda_graph == "on" && eager_steps_ > 0;
    if (replay) {
      value = graph_step(images, targets, rotation, &logits, &rotation_value);
    } else {
      optimizer_->zero_grad();
      step = forward_step(images, targets, rotation);
      logits = step.logits;
      value = step.sela_loss.item();
      if (rotation_head_) rotation_value = step.rotation_loss.item();
    }
    // After item(): on a GPU the forward pass has run, so these copies wait for nothing.
    if (config_.label_logits == "recorded") record_logits(logits, batch);
    if (!std::isfinite(value) || !std::isfinite(rotation_value)) {
      SELA_FAIL_HINT("sela train",
                     "the " << (std::isfinite(value) ? "rotation task's loss" : "loss") << " became "
                            << (std::isfinite(value) ? rotation_value : value) << " in epoch "
                            << epoch + 1 << ", batch " << batches + 1
                            << "; the last good checkpoint is kept in " << config_.out,
                     "lower --lr (or --rotation-weight) or check the input data");
    }
    if (!replay) {
      step.loss.backward();
      optimizer_->step();
      ++eager_steps_;
    }
    loss_sum += value;
    rotation_loss_sum += rotation_value;
    ++batches;
    images_done += batch.size;
    samples_seen_ += static_cast<double>(batch.size);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() - label_seconds;
    data::LoaderStats stats = loader.stats();
    wait_before_labels = stats.wait_seconds;
    const std::string rotation_text =
        rotation_field(rotation_head_ != nullptr, rotation_loss_sum / static_cast<double>(batches));
    char fields[200];
    std::snprintf(fields, sizeof fields, "loss %.4f%s lr %.4g %.0f img/s data-wait %.0f%%",
                  loss_sum / static_cast<double>(batches), rotation_text.c_str(), lr,
                  static_cast<double>(images_done) / std::max(elapsed, 1e-9),
                  100 * wait_before_labels / std::max(elapsed, 1e-9));
    progress.update(batches, fields);
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double train_seconds = seconds - label_seconds;
  double mean_loss = loss_sum / static_cast<double>(std::max<std::int64_t>(batches, 1));
  double mean_rotation_loss =
      rotation_loss_sum / static_cast<double>(std::max<std::int64_t>(batches, 1));
  char fields[240];
  std::snprintf(fields, sizeof fields, "loss %.4f%s lr %.4g %.0f img/s data-wait %.0f%%", mean_loss,
                rotation_field(rotation_head_ != nullptr, mean_rotation_loss).c_str(), lr,
                static_cast<double>(images_done) / std::max(train_seconds, 1e-9),
                100 * wait_before_labels / std::max(train_seconds, 1e-9));
  progress.finish(fields);
  json line = {{"event", "epoch"}, {"epoch", epoch + 1}, {"loss", mean_loss}, {"lr", lr},
       {"images", images_done}, {"train_seconds", train_seconds},
       {"label_seconds", label_seconds},
       {"images_per_s", static_cast<double>(images_done) / std::max(train_seconds, 1e-9)},
       {"data_wait_s", wait_before_labels}, {"samples_seen", samples_seen_}};
  if (rotation_head_) line["rotation_loss"] = mean_rotation_loss;
  log(line);
  return mean_loss;
}

Run::StepTensors Run::forward_step(const Tensor& images, const std::vector<Tensor>& targets,
                                   const RotationBatch& rotation) {
  StepTensors out;
  RotationForward both;  // turn_logits only with the rotation task
  if (rotation_head_) {
    both = forward_with_rotation(*model_, *rotation_head_, images, rotation.images, rotation_pass_);
  } else {
    both.logits = model_->forward_heads(images);
  }
  out.logits = std::move(both.logits);
  out.sela_loss = sela_loss(out.logits, targets);
  out.loss = out.sela_loss;
  if (rotation_head_) {
    out.rotation_loss = cross_entropy(both.turn_logits, rotation.targets);
    out.loss = add(out.sela_loss, scale(out.rotation_loss, config_.rotation_weight));
  }
  return out;
}

double Run::graph_step(const Tensor& images, const std::vector<Tensor>& targets,
                      const RotationBatch& rotation, std::vector<Tensor>* logits,
                      double* rotation_loss) {
  CapturedStep& step = captured_;
  if (!step.graph || step.lr != optimizer_->lr()) {
    step.graph.reset();  // its private pool goes back to the shared cache
    if (!step.images.defined()) {
      step.images = Tensor::empty(images.shape(), images.dtype(), device_, "static images");
      for (const Tensor& t : targets) {
        step.targets.push_back(Tensor::empty(t.shape(), t.dtype(), device_, "static targets"));
      }
      if (rotation_head_) {
        step.rotation.images = Tensor::empty(rotation.images.shape(), DType::f32, device_,
                                             "static rotation images");
        step.rotation.targets = Tensor::empty(rotation.targets.shape(), DType::i64, device_,
                                              "static rotation targets");
      }
    }
    step.graph = std::make_unique<CudaGraph>(device_);
    step.graph->capture([&]() {
      optimizer_->zero_grad();
      step.out = forward_step(step.images, step.targets, step.rotation);
      step.out.loss.backward();
      optimizer_->step();
    });
    step.lr = optimizer_->lr();
    ++summary_.graph_captures;
  }
  SELA_CHECK(images.shape() == step.images.shape(), "sela train",
             "--cuda-graph: batch " << images.describe() << " differs from the captured step's "
                                    << step.images.describe() << " (batches must be full)");
  step.images.copy_from(images);  // queued on the device's stream, before the replay
  for (std::size_t t = 0; t < targets.size(); ++t) step.targets[t].copy_from(targets[t]);
  if (rotation_head_) {
    step.rotation.images.copy_from(rotation.images);
    step.rotation.targets.copy_from(rotation.targets);
  }
  step.graph->replay();
  ++summary_.graph_replays;
  *logits = step.out.logits;
  *rotation_loss = rotation_head_ ? step.out.rotation_loss.item() : 0.0;
  return step.out.sela_loss.item();
}

TrainSummary Run::go() {
  auto start = std::chrono::steady_clock::now();
  cpu::set_num_threads(config_.threads);
  device_ = resolve_device(config_.device);
  config_.device = device_.str();  // config.json records where the run actually ran
  if (config_.workers == 0) {
    const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    config_.workers = device_.is_cpu() ? 1 : std::clamp(hardware / 2, 1, 8);
  }
  const std::string device_line = checked_device_description(device_, "sela train");
  if (!device_.is_cpu()) std::printf("sela train: %s\n", device_line.c_str());
  SELA_CHECK(config_.cuda_graph == "auto" || config_.cuda_graph == "on" ||
                 config_.cuda_graph == "off",
             "sela train", "--cuda-graph must be auto, on or off, got '" << config_.cuda_graph << "'");
  SELA_CHECK(config_.cuda_graph != "on" || device_.is_cuda(), "sela train",
             "--cuda-graph on needs a GPU, but the run is on " << device_.str()
                                                              << " (use --device cuda or drop "
                                                                 "--cuda-graph)");
  if (config_.cuda_graph == "auto") config_.cuda_graph = device_.is_cuda() ? "on" : "off";
  SELA_CHECK(config_.sinkhorn_warm_start == "auto" || config_.sinkhorn_warm_start == "on" ||
                 config_.sinkhorn_warm_start == "off",
             "sela train",
             "--sinkhorn-warm-start must be auto, on or off, got '" << config_.sinkhorn_warm_start
                                                                    << "'");
  // auto stays off on a GPU until a GPU run has measured it (the device solver's warm start
  // is tested against the CPU's in tests/cuda/test_sinkhorn_cuda.cpp).
  if (config_.sinkhorn_warm_start == "auto") {
    config_.sinkhorn_warm_start = device_.is_cpu() ? "on" : "off";
  }
  SELA_CHECK(!config_.clusters.empty(), "sela train", "--clusters needs at least one head");
  rotation_pass_ = parse_rotation_pass(config_.rotation_pass, "sela train");
  if (config_.rotation_weight > 0) {
    check_rotation_batch(config_.fc_batch_norm, rotation_pass_, config_.rotation_batch,
                         "sela train");
  }
  SELA_CHECK(config_.epochs >= 1, "sela train", "--epochs must be >= 1");
  SELA_CHECK(config_.label_logits == "fresh" || config_.label_logits == "recorded", "sela train",
             "--label-logits must be fresh or recorded, got '" << config_.label_logits << "'");
  make_directories(config_.out);
  open_data();
  build_model();
  schedule_ = label_schedule(config_.label_steps, config_.epochs, n_, config_.label_spacing);
  bool have_checkpoint = std::ifstream(config_.out + "/checkpoint.safetensors").good();
  if (config_.resume) {
    SELA_CHECK(have_checkpoint, "sela train --resume",
               "no checkpoint in " << config_.out << " (expected " << config_.out
                                   << "/checkpoint.safetensors)");
    resume_from_checkpoint();
  } else {
    SELA_CHECK(!have_checkpoint, "sela train",
               config_.out << " already holds a run; pass --resume to continue it or choose "
                              "another --out");
    start_fresh();
  }
  std::printf("sela train: %s, %lld samples, %s%s width %.3g (%lld parameters), heads K=%s, "
              "%lld epochs, batch %lld, %zu label steps (%s), lambda %.3g, %d threads, gemm %s, "
              "device %s\n",
              train_->info().spec.c_str(), static_cast<long long>(n_), config_.arch.c_str(),
              config_.fc_batch_norm ? " with BatchNorm in the fc layers," : "",
              config_.width_mult, static_cast<long long>(model_->parameter_count()),
              json(config_.clusters).dump().c_str(), static_cast<long long>(config_.epochs),
              static_cast<long long>(config_.batch_size), schedule_.size(),
              config_.label_spacing.c_str(), config_.lambda, cpu::num_threads(),
              cpu::gemm_backend_name(), device_.str().c_str());
  std::fflush(stdout);
  const auto epochs_start = std::chrono::steady_clock::now();
  for (std::int64_t epoch = start_epoch_; epoch < config_.epochs; ++epoch) {
    summary_.epoch_losses.push_back(train_epoch(epoch));
    save_checkpoint(epoch + 1);
    // The whole run's pace, so that a slow machine shows early how long the run will take.
    const std::int64_t epochs_left = config_.epochs - (epoch + 1);
    if (epochs_left > 0) {
      const double so_far =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - epochs_start).count();
      const double per_epoch = so_far / static_cast<double>(epoch + 1 - start_epoch_);
      auto duration = [](double seconds) {
        char text[32];
        if (seconds < 120) std::snprintf(text, sizeof text, "%.0f s", seconds);
        else std::snprintf(text, sizeof text, "%.1f min", seconds / 60.0);
        return std::string(text);
      };
      std::printf("run: epoch %lld of %lld done, %s so far; about %s of epochs left at this "
                  "pace, then the final steps\n",
                  static_cast<long long>(epoch + 1), static_cast<long long>(config_.epochs),
                  duration(so_far).c_str(),
                  duration(per_epoch * static_cast<double>(epochs_left)).c_str());
      std::fflush(stdout);
    }
    if (config_.stop_after_epoch >= 0 && epoch + 1 >= config_.stop_after_epoch) {
      std::printf("stopping after epoch %lld as asked (--stop-after-epoch)\n",
                  static_cast<long long>(epoch + 1));
      summary_.labels = labels_;
      return summary_;
    }
  }
  summary_.labels = labels_;
  if (captured_.graph) {
    log({{"event", "cuda_graph"}, {"captures", summary_.graph_captures},
         {"replays", summary_.graph_replays}});
    captured_ = CapturedStep();  // its private pool goes back to the shared cache
  }
  if (config_.precise_bn && !precise_bn_done_) {  // once per run, also across --resume
    auto bn_start = std::chrono::steady_clock::now();
    const std::int64_t batches =
        recompute_batch_norm_statistics(*model_, *train_, config_.batch_size, config_.workers);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - bn_start).count();
    log({{"event", "precise_bn"}, {"batches", batches}, {"seconds", seconds}});
    precise_bn_done_ = true;
    save_checkpoint(config_.epochs);  // the final weights carry the new statistics
  }
  if (config_.evaluate && train_->labelled()) {
    std::string test_spec = config_.test_data;
    data::OpenOptions options;
    if (test_spec.empty()) {
      test_spec = config_.data;
      options.split = "test";
    }
    auto test = data::open_dataset(test_spec, options);
    EvalReport report = evaluate(*model_, *train_, *test, labels_, config_.batch_size, config_.workers);
    report.select_by_stability(
        label_stability_from_metrics(config_.out + "/metrics.jsonl", labels_.size()));
    json line = json::parse(report.to_json());
    line["test_data"] = test->info().spec;
    log(line);
    write_file_atomic(config_.out + "/eval.json", line.dump(2) + "\n");
    std::printf("\nevaluation (%s, test split of %s):\n%s", config_.out.c_str(),
                test->info().spec.c_str(), report.table().c_str());
  }
  summary_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("done in %.0f s; outputs in %s (config.json, checkpoint.safetensors, "
              "weights.safetensors, labels.csv, metrics.jsonl%s)\n",
              summary_.seconds, config_.out.c_str(), config_.evaluate ? ", eval.json" : "");
  return summary_;
}

}  // namespace

TrainSummary train(const TrainConfig& config) {
  Run run(config);
  return run.go();
}

}  // namespace sela
