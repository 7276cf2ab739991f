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
// k = 200 and 10, σ = 0.1, cosine similarity: the reference's CIFAR protocol) twice: on the
// features as they are (the protocol of the reference's per-epoch monitor) and after PCA to
// 128 dimensions fitted on the training features (its final figure: cifar.py ends with
// kNN(..., K=10, sigma=0.1, use_pca=True); sela/assign/pca.h). Among heads of one K, the
// one whose labels were most stable is marked (select_by_stability).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "models/alexnet.h"

namespace sela {

// Components of the PCA before the final kNN (the reference's cifar_utils.kNN, use_pca=True).
constexpr std::int64_t kKnnPcaComponents = 128;

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

// "Precise BatchNorm" (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): replaces
// the running statistics of every BatchNorm of the network by their average over one pass
// of `dataset` with the evaluation transform (full batches of `batch_size`, dataset order;
// batch b enters with momentum 1 / (b + 1), so the result is the plain mean of the batch
// means and of the unbiased batch variances). Training keeps exponential averages of
// statistics of augmented batches while the weights still move; evaluation sees
// unaugmented images through the final weights. Only the feature extractor runs, unless
// the classifier has BatchNorm too (ModelConfig::fc_batch_norm): then the classifier as
// well, its dropout off. Leaves the batches-tracked counters, the momenta and the
// train/eval mode as they were. Returns the number of batches used.
std::int64_t recompute_batch_norm_statistics(SelaNet& model, const data::Dataset& dataset,
                                             std::int64_t batch_size, int workers);

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
  double label_stability = -1;   // see label_stability_from_metrics; -1 unknown
  bool selected = false;         // the most stable head of its K (select_by_stability)
};

struct EvalReport {
  std::vector<HeadReport> heads;
  double knn_top1_k200 = -1, knn_top1_k10 = -1;          // fc7 as it is
  double knn_pca_top1_k200 = -1, knn_pca_top1_k10 = -1;  // fc7 after PCA (see above)
  std::int64_t knn_pca_components = 0;  // min(128, train samples - 1, fc7 width); 0: not run
  // The PCA's solve (sela/assign/pca.h): passes, final residual, and whether it met its
  // tolerance (if not, the table says so; the figures above are then approximate).
  std::int64_t knn_pca_passes = 0;
  double knn_pca_residual = 0;
  bool knn_pca_converged = true;
  std::int64_t train_samples = 0, test_samples = 0;
  std::string to_json() const;
  std::string table() const;  // the human-readable summary printed at the end of a run
  // Records each head's stability and marks, for every K, the head with the highest one
  // (ties: the lower index); heads with unknown stability (-1) are never selected.
  void select_by_stability(const std::vector<double>& stability);
};

// How stable each head's labels were at the end of a run, a way to choose among heads of
// the same K without true classes: the mean NMI between the labels before and after each
// of the last quarter of the run's label steps (at least one; the first step, whose
// predecessor is the random initial partition, never counts). Heads of one run that fell
// into a poor partition early keep re-shuffling it; docs/results.md measures how often the
// most stable K = 10 head is also the best one against the true classes. Read from the
// label_step lines of metrics.jsonl; a step logged twice (a resumed run repeats the steps
// after its last checkpoint) counts once, by its last line. Every head -1 when the file is
// missing or holds fewer than two label steps.
std::vector<double> label_stability_from_metrics(const std::string& metrics_path,
                                                 std::size_t heads);

// For heads with K = clusters[t] and the given stability (-1 unknown): whether each head is
// the most stable of its K (ties: the lower index; a K with no known stability has none).
std::vector<bool> most_stable_of_each_k(const std::vector<std::int64_t>& clusters,
                                        const std::vector<double>& stability);

// The head a picture of "the" clustering should show: the most stable head of the smallest
// K, or that K's first head when the run has no stability (fewer than two label steps).
std::size_t default_display_head(const std::vector<std::int64_t>& clusters,
                                 const std::vector<double>& stability);

// train_labels: the run's pseudo-labels, (T) x (N_train). Needs labelled data sets.
EvalReport evaluate(SelaNet& model, const data::Dataset& train, const data::Dataset& test,
                    const std::vector<std::vector<std::int64_t>>& train_labels,
                    std::int64_t batch_size, int workers);

}  // namespace sela
