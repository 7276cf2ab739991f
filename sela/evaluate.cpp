// Implementation of sela/evaluate.h.
#include "sela/evaluate.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/data/augment.h"
#include "engine/data/loader.h"
#include "engine/progress.h"
#include "sela/assign/knn.h"
#include "sela/assign/pca.h"
#include "sela/assign/metrics.h"

namespace sela {

Tensor batch_images_on(const data::Batch& batch, Device device) {
  Tensor images =
      Tensor::empty({batch.size, batch.channels, batch.height, batch.width}, DType::f32, device);
  SELA_CHECK(batch.images.capacity() >= static_cast<std::size_t>(images.numel()),
             "batch_images_on",
             "the batch holds " << batch.images.capacity() << " floats, the tensor needs "
                                << images.numel());
  images.copy_from_host(batch.images.data());
  return images;
}

data::ImageAllocator batch_allocator_for(Device device) {
  if (device.is_cpu() || !pinned_memory_available()) return data::ImageAllocator::host();
  data::ImageAllocator pinned;
  pinned.allocate = [](std::size_t floats) {
    return static_cast<float*>(pinned_allocate(floats * sizeof(float)));
  };
  pinned.release = [](float* data, std::size_t floats) { pinned_free(data, floats * sizeof(float)); };
  pinned.name = "pinned";
  return pinned;
}

std::int64_t recompute_batch_norm_statistics(SelaNet& model, const data::Dataset& dataset,
                                             std::int64_t batch_size, int workers) {
  std::vector<BatchNorm2d*> norms;  // BatchNorm1d too (the classifier's, with fc_batch_norm)
  bool classifier_norms = false;
  for (const auto& layer : model.features->layers()) {
    if (auto* norm = dynamic_cast<BatchNorm2d*>(layer.get())) norms.push_back(norm);
  }
  for (const auto& layer : model.classifier->layers()) {
    if (auto* norm = dynamic_cast<BatchNorm2d*>(layer.get())) {
      norms.push_back(norm);
      classifier_norms = true;
    }
  }
  if (norms.empty()) return 0;
  SELA_CHECK(dataset.size() >= 2 && batch_size >= 2, "precise BatchNorm",
             "needs at least 2 images per batch (" << dataset.size() << " images, batch "
                                                   << batch_size << ")");
  NoGradGuard no_grad;
  // Momenta, counters and mode are put back however the pass ends (an exception included).
  struct Restore {
    SelaNet& model;
    const std::vector<BatchNorm2d*>& norms;
    bool was_training = model.is_training();
    std::vector<double> momenta;
    std::vector<std::int64_t> tracked;
    ~Restore() {
      for (std::size_t i = 0; i < norms.size(); ++i) {
        norms[i]->momentum = momenta[i];
        *norms[i]->num_batches_tracked.data<std::int64_t>() = tracked[i];
      }
      model.train(was_training);
    }
  } restore{model, norms, model.is_training(), {}, {}};
  for (BatchNorm2d* norm : norms) {
    restore.momenta.push_back(norm->momentum);
    restore.tracked.push_back(*norm->num_batches_tracked.data<std::int64_t>());
  }
  model.train();  // batch statistics in the BatchNorms (the features have no dropout)
  for (const auto& layer : model.classifier->layers()) {
    if (dynamic_cast<Dropout*>(layer.get())) layer->train(false);  // no masks drawn or counted
  }
  data::AugmentConfig augment =
      data::default_augment(dataset.info(), false, static_cast<int>(model.input_size()));
  data::LoaderConfig config;
  config.batch_size = std::min(batch_size, dataset.size());
  config.shuffle = false;
  config.drop_last = true;  // equal weights
  config.workers = workers;
  config.allocator = batch_allocator_for(model.device());
  data::Loader loader(dataset, augment, config);
  Progress progress("precise BatchNorm statistics", loader.batches_per_epoch(), 50);
  loader.start_epoch(0);
  data::Batch batch;
  std::int64_t batches = 0;
  while (loader.next(&batch)) {
    for (BatchNorm2d* norm : norms) norm->momentum = 1.0 / static_cast<double>(batches + 1);
    Tensor images = batch_images_on(batch, model.device());
    if (classifier_norms) {
      (void)model.forward_fc7(images);  // updates the statistics
    } else {
      (void)model.features->forward(images);
    }
    if (!model.device().is_cpu()) synchronize(model.device());  // before the batch is reused
    ++batches;
    progress.update(batches, "");
  }
  progress.finish(std::to_string(batches) + " batches");
  return batches;
}

NetworkOutputs run_network(SelaNet& model, const data::Dataset& dataset, std::int64_t batch_size,
                           int workers, bool want_logits, bool want_fc7,
                           const std::string& progress_label) {
  NoGradGuard no_grad;
  bool was_training = model.is_training();
  model.eval();
  data::AugmentConfig augment =
      data::default_augment(dataset.info(), false, static_cast<int>(model.input_size()));
  data::LoaderConfig config;
  config.batch_size = batch_size;
  config.shuffle = false;
  config.workers = workers;
  config.allocator = batch_allocator_for(model.device());
  data::Loader loader(dataset, augment, config);

  NetworkOutputs out;
  out.n = dataset.size();
  out.classes.assign(static_cast<std::size_t>(out.n), -1);
  const auto& clusters = model.config().clusters;
  if (want_logits) {
    for (std::int64_t k : clusters) out.logits.emplace_back(static_cast<std::size_t>(out.n * k));
  }
  if (want_fc7) {
    out.fc7_dim = model.feature_dim();
    out.fc7.resize(static_cast<std::size_t>(out.n * out.fc7_dim));
  }
  const Device device = model.device();
  Progress progress(progress_label, loader.batches_per_epoch(), 50);
  loader.start_epoch(0);
  data::Batch batch;
  std::int64_t done = 0;
  while (loader.next(&batch)) {
    Tensor images = batch_images_on(batch, device);  // (B, C, H, W) where the model is
    Tensor fc7 = model.forward_fc7(images);
    for (std::int64_t j = 0; j < batch.size; ++j) {
      out.classes[static_cast<std::size_t>(batch.indices[static_cast<std::size_t>(j)])] =
          batch.classes[static_cast<std::size_t>(j)];
    }
    // Rows land at their dataset index (the loader keeps dataset order, but say so in code).
    auto scatter = [&](const Tensor& device_rows, std::vector<float>& destination,
                       std::int64_t width) {
      Tensor rows = device.is_cpu() ? device_rows : device_rows.to(Device::cpu());
      const float* source = rows.data<float>();
      for (std::int64_t j = 0; j < batch.size; ++j) {
        std::int64_t index = batch.indices[static_cast<std::size_t>(j)];
        std::memcpy(destination.data() + index * width, source + j * width,
                    static_cast<std::size_t>(width) * sizeof(float));
      }
    };
    if (want_fc7) scatter(fc7, out.fc7, out.fc7_dim);
    if (want_logits) {
      std::vector<Tensor> logits = model.heads->forward_heads(fc7);
      for (std::size_t t = 0; t < logits.size(); ++t) scatter(logits[t], out.logits[t], clusters[t]);
    }
    done += 1;
    progress.update(done, "");
  }
  out.seconds = progress.elapsed_seconds();
  progress.finish(std::to_string(out.n) + " images");
  model.train(was_training);
  return out;
}

ClusteringScores score_clustering(const std::vector<std::int64_t>& predicted,
                                  const std::vector<std::int64_t>& truth,
                                  std::int64_t num_clusters, std::int64_t num_classes) {
  SELA_CHECK(predicted.size() == truth.size(), "evaluate",
             predicted.size() << " predictions for " << truth.size() << " true classes");
  std::vector<std::int64_t> p, t;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] < 0) continue;
    p.push_back(predicted[i]);
    t.push_back(truth[i]);
  }
  SELA_CHECK(!t.empty(), "evaluate", "no sample has a true class: nothing to score against");
  std::int64_t n = static_cast<std::int64_t>(t.size());
  ClusteringScores scores;
  scores.nmi = normalized_mutual_info(t.data(), p.data(), n);
  scores.ami = adjusted_mutual_info(t.data(), p.data(), n);
  scores.ari = adjusted_rand_index(t.data(), p.data(), n);
  if (num_clusters == num_classes) scores.accuracy = matched_accuracy(t.data(), p.data(), n);
  return scores;
}

EvalReport evaluate(SelaNet& model, const data::Dataset& train, const data::Dataset& test,
                    const std::vector<std::vector<std::int64_t>>& train_labels,
                    std::int64_t batch_size, int workers) {
  SELA_CHECK(train.labelled() && test.labelled(), "evaluate",
             "evaluation needs true classes in both data sets (" << train.info().spec << ", "
                                                                 << test.info().spec << ")");
  std::int64_t classes = train.num_classes();
  NetworkOutputs train_out = run_network(model, train, batch_size, workers, false, true, "eval: train features");
  NetworkOutputs test_out = run_network(model, test, batch_size, workers, true, true, "eval: test split");

  EvalReport report;
  report.train_samples = train_out.n;
  report.test_samples = test_out.n;
  const auto& clusters = model.config().clusters;
  for (std::size_t t = 0; t < clusters.size(); ++t) {
    HeadReport head;
    head.k = clusters[t];
    std::vector<std::int64_t> predicted(static_cast<std::size_t>(test_out.n));
    const float* logits = test_out.logits[t].data();
    for (std::int64_t i = 0; i < test_out.n; ++i) {
      const float* row = logits + i * head.k;
      std::int64_t best = 0;
      for (std::int64_t k = 1; k < head.k; ++k) {
        if (row[k] > row[best]) best = k;
      }
      predicted[static_cast<std::size_t>(i)] = best;
    }
    head.test = score_clustering(predicted, test_out.classes, head.k, classes);
    if (t < train_labels.size()) {
      head.train_labels = score_clustering(train_labels[t], train_out.classes, head.k, classes);
    }
    report.heads.push_back(head);
  }
  std::vector<KnnResult> knn = weighted_knn_top1(
      train_out.fc7.data(), train_out.classes.data(), train_out.n, test_out.fc7.data(),
      test_out.classes.data(), test_out.n, train_out.fc7_dim, {200, 10}, 0.1, classes);
  report.knn_top1_k200 = knn[0].top1;
  report.knn_top1_k10 = knn[1].top1;
  if (train_out.n >= 2) {  // a PCA needs two samples; the figures stay -1 otherwise
    report.knn_pca_components =
        std::min({kKnnPcaComponents, train_out.n - 1, train_out.fc7_dim});
    PcaBasis basis;
    std::vector<KnnResult> knn_pca = weighted_knn_top1_after_pca(
        train_out.fc7.data(), train_out.classes.data(), train_out.n, test_out.fc7.data(),
        test_out.classes.data(), test_out.n, train_out.fc7_dim, report.knn_pca_components,
        {200, 10}, 0.1, classes, &basis);
    report.knn_pca_passes = basis.passes;
    report.knn_pca_residual = basis.residual;
    report.knn_pca_converged = basis.converged;
    report.knn_pca_top1_k200 = knn_pca[0].top1;
    report.knn_pca_top1_k10 = knn_pca[1].top1;
  }
  return report;
}

std::vector<bool> most_stable_of_each_k(const std::vector<std::int64_t>& clusters,
                                        const std::vector<double>& stability) {
  std::map<std::int64_t, std::size_t> best;  // K -> head
  auto known = [&](std::size_t t) { return t < stability.size() && stability[t] >= 0; };
  for (std::size_t t = 0; t < clusters.size(); ++t) {
    if (!known(t)) continue;
    auto it = best.find(clusters[t]);
    if (it == best.end() || stability[t] > stability[it->second]) best[clusters[t]] = t;
  }
  std::vector<bool> selected(clusters.size(), false);
  for (const auto& entry : best) selected[entry.second] = true;
  return selected;
}

std::size_t default_display_head(const std::vector<std::int64_t>& clusters,
                                 const std::vector<double>& stability) {
  SELA_CHECK(!clusters.empty(), "default_display_head", "the run has no heads");
  const std::int64_t smallest = *std::min_element(clusters.begin(), clusters.end());
  std::vector<bool> selected = most_stable_of_each_k(clusters, stability);
  std::size_t first = clusters.size();
  for (std::size_t t = 0; t < clusters.size(); ++t) {
    if (clusters[t] != smallest) continue;
    if (selected[t]) return t;
    first = std::min(first, t);
  }
  return first;
}

void EvalReport::select_by_stability(const std::vector<double>& stability) {
  std::vector<std::int64_t> clusters;
  for (const HeadReport& head : heads) clusters.push_back(head.k);
  std::vector<bool> selected = most_stable_of_each_k(clusters, stability);
  for (std::size_t t = 0; t < heads.size(); ++t) {
    heads[t].label_stability = t < stability.size() ? stability[t] : -1;
    heads[t].selected = selected[t];
  }
}

std::vector<double> label_stability_from_metrics(const std::string& metrics_path,
                                                 std::size_t heads) {
  std::vector<double> stability(heads, -1.0);
  std::ifstream in(metrics_path);
  if (!in) return stability;
  std::map<std::int64_t, std::vector<double>> by_step;  // step -> NMI(previous) per head
  std::string line;
  std::int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find("\"label_step\"") == std::string::npos) continue;
    nlohmann::json entry = nlohmann::json::parse(line, nullptr, false);
    SELA_CHECK(!entry.is_discarded(), "label stability",
               metrics_path << " line " << line_number << " is not JSON");
    if (entry.value("event", "") != "label_step" || !entry.contains("heads")) continue;
    std::vector<double> values(heads, -1.0);
    for (const auto& head : entry["heads"]) {
      std::size_t t = head.value("head", std::size_t{0});
      if (t < heads && head.contains("nmi_previous")) {
        values[t] = head["nmi_previous"].get<double>();
      }
    }
    by_step[entry.value("step", std::int64_t{0})] = values;  // a repeated step: the last wins
  }
  by_step.erase(0);  // its predecessor is the random initial partition
  if (by_step.empty()) return stability;
  // A quarter of all the run's steps, step 0 included in the count (but not averaged).
  const std::size_t count = std::max<std::size_t>(1, (by_step.size() + 1) / 4);
  for (std::size_t t = 0; t < heads; ++t) {
    double sum = 0;
    std::size_t used = 0;
    for (auto it = by_step.rbegin(); it != by_step.rend() && used < count; ++it, ++used) {
      if (it->second[t] < 0) break;
      sum += it->second[t];
    }
    if (used == count) stability[t] = sum / static_cast<double>(count);
  }
  return stability;
}

std::string EvalReport::to_json() const {
  nlohmann::json j;
  j["event"] = "eval";
  j["train_samples"] = train_samples;
  j["test_samples"] = test_samples;
  j["knn_top1_k200"] = knn_top1_k200;
  j["knn_top1_k10"] = knn_top1_k10;
  j["knn_pca_components"] = knn_pca_components;
  j["knn_pca_top1_k200"] = knn_pca_top1_k200;
  j["knn_pca_top1_k10"] = knn_pca_top1_k10;
  j["knn_pca_passes"] = knn_pca_passes;
  j["knn_pca_residual"] = knn_pca_residual;
  j["knn_pca_converged"] = knn_pca_converged;
  for (std::size_t t = 0; t < heads.size(); ++t) {
    const HeadReport& h = heads[t];
    nlohmann::json head = {{"head", t}, {"k", h.k},
                           {"test_nmi", h.test.nmi}, {"test_ami", h.test.ami},
                           {"test_ari", h.test.ari}, {"train_labels_nmi", h.train_labels.nmi},
                           {"train_labels_ami", h.train_labels.ami},
                           {"train_labels_ari", h.train_labels.ari}};
    if (h.label_stability >= 0) {
      head["label_stability"] = h.label_stability;
      head["selected_by_stability"] = h.selected;
    }
    if (h.test.accuracy >= 0) head["test_accuracy"] = h.test.accuracy;
    if (h.train_labels.accuracy >= 0) head["train_labels_accuracy"] = h.train_labels.accuracy;
    j["heads"].push_back(head);
  }
  return j.dump();
}

std::string EvalReport::table() const {
  std::ostringstream out;
  char line[256];
  auto number_or_dash = [](double a) {
    char b[16];
    if (a < 0) return std::string("   -");
    std::snprintf(b, sizeof b, "%.3f", a);
    return std::string(b);
  };
  std::snprintf(line, sizeof line, "%-7s %5s | %-26s | %-26s | %s\n", "head", "K",
                "test split: NMI  AMI  ARI  acc", "train labels: NMI  ARI  acc",
                "label stability");
  out << line;
  std::map<std::int64_t, int> heads_of_k;
  for (const HeadReport& h : heads) ++heads_of_k[h.k];
  for (std::size_t t = 0; t < heads.size(); ++t) {
    const HeadReport& h = heads[t];
    const char marker = h.selected && heads_of_k[h.k] > 1 ? '*' : ' ';
    std::snprintf(line, sizeof line,
                  "head%-2zu%c %5lld | %.3f %.3f %.3f %5s | %.3f %.3f %5s | %s\n", t, marker,
                  static_cast<long long>(h.k), h.test.nmi, h.test.ami, h.test.ari,
                  number_or_dash(h.test.accuracy).c_str(), h.train_labels.nmi,
                  h.train_labels.ari, number_or_dash(h.train_labels.accuracy).c_str(),
                  number_or_dash(h.label_stability).c_str());
    out << line;
  }
  for (std::size_t t = 0; t < heads.size(); ++t) {
    const HeadReport& h = heads[t];
    if (!h.selected || heads_of_k[h.k] < 2) continue;
    std::snprintf(line, sizeof line,
                  "* head%zu: the most stable of the %d heads with K=%lld (chosen without true "
                  "classes): test NMI %.3f, ARI %.3f%s%s\n",
                  t, heads_of_k[h.k], static_cast<long long>(h.k), h.test.nmi, h.test.ari,
                  h.test.accuracy >= 0 ? ", acc " : "",
                  h.test.accuracy >= 0 ? number_or_dash(h.test.accuracy).c_str() : "");
    out << line;
  }
  std::snprintf(line, sizeof line,
                "weighted kNN on fc7 (train memory %lld, test queries %lld): top-1 %.2f%% (k=200), "
                "%.2f%% (k=10)\n",
                static_cast<long long>(train_samples), static_cast<long long>(test_samples),
                100 * knn_top1_k200, 100 * knn_top1_k10);
  out << line;
  if (knn_pca_components < 1) return out.str();
  std::snprintf(line, sizeof line,
                "weighted kNN on fc7 after PCA to %lld dimensions (the reference's final protocol): "
                "top-1 %.2f%% (k=200), %.2f%% (k=10)\n",
                static_cast<long long>(knn_pca_components), 100 * knn_pca_top1_k200,
                100 * knn_pca_top1_k10);
  out << line;
  if (!knn_pca_converged) {
    std::snprintf(line, sizeof line,
                  "WARNING: the PCA stopped after %lld passes with residual %.2g (tolerance 1e-9 of "
                  "the top variance): the figures after PCA are approximate\n",
                  static_cast<long long>(knn_pca_passes), knn_pca_residual);
    out << line;
  }
  return out.str();
}

}  // namespace sela
