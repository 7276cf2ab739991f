// Running a trained SeLa network over a data set, and the paper's evaluation.
//
// run_network() makes one eval-mode pass (BatchNorm running statistics, no dropout, the
// evaluation transform: resize/pad + centre crop, nothing random) in dataset order and
// keeps what is asked: each head's logits and/or the fc7 features. The self-labelling step
// and `sela eval` / `sela label` share it.
//
// evaluate() reports what the paper reports for a clustering model with true classes:
// NMI, adjusted NMI (AMI) and ARI of each head's argmax on the test split, the same for the
// training pseudo-labels, accuracy after Hungarian matching for heads whose K equals the
// class count, and weighted kNN top-1 on fc7 features (train as memory, test as queries;
// k = 200 and 10, σ = 0.1, cosine similarity: the reference's CIFAR protocol).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "models/alexnet.h"

namespace sela {

struct NetworkOutputs {
  std::int64_t n = 0;
  std::vector<std::vector<float>> logits;  // (T) x (N * K_t), when asked
  std::vector<float> fc7;                  // (N * D), when asked
  std::int64_t fc7_dim = 0;
  std::vector<std::int64_t> classes;       // (N) true classes or -1
  double seconds = 0;
};

// A loader batch's images as a (B, C, H, W) float32 tensor on `device`. For cuda:N the
// host-to-device copy is queued asynchronously when the batch is in pinned memory: the
// caller must let the device stream pass it (any item()/to_vector()/to(cpu) after the
// forward pass does) before handing the batch back to the loader for refilling.
Tensor batch_images_on(const data::Batch& batch, Device device);

// Where a loader feeding `device` should put its batches: page-locked memory for a GPU (so
// that uploads overlap), plain host memory for the CPU.
data::ImageAllocator batch_allocator_for(Device device);

NetworkOutputs run_network(SelaNet& model, const data::Dataset& dataset, std::int64_t batch_size,
                           int workers, bool want_logits, bool want_fc7,
                           const std::string& progress_label);

struct ClusteringScores {
  double nmi = 0, ami = 0, ari = 0;
  double accuracy = -1;  // Hungarian-matched accuracy, -1 when K != number of classes
};
// Scores of predicted labels against true classes (samples with class -1 are left out).
ClusteringScores score_clustering(const std::vector<std::int64_t>& predicted,
                                  const std::vector<std::int64_t>& truth,
                                  std::int64_t num_clusters, std::int64_t num_classes);

struct HeadReport {
  std::int64_t k = 0;
  ClusteringScores test;         // argmax of the head on the test split
  ClusteringScores train_labels; // the pseudo-labels of the training split
};

struct EvalReport {
  std::vector<HeadReport> heads;
  double knn_top1_k200 = -1, knn_top1_k10 = -1;
  std::int64_t train_samples = 0, test_samples = 0;
  std::string to_json() const;
  std::string table() const;  // the human-readable summary printed at the end of a run
};

// train_labels: the run's pseudo-labels, (T) x (N_train). Needs labelled data sets.
EvalReport evaluate(SelaNet& model, const data::Dataset& train, const data::Dataset& test,
                    const std::vector<std::vector<std::int64_t>>& train_labels,
                    std::int64_t batch_size, int workers);

}  // namespace sela
