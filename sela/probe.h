// Linear probes: how linearly separable the true classes are in each frozen conv block's
// output (the paper's conv1 ... conv5 table, after the protocol of DeepCluster/SeLa).
//
// For each block b: its output (C, H, W) after BN+ReLU, network in eval mode and frozen, is
// max-pooled spatially to about 9000 numbers (choose_probe_pool), then a BatchNorm without
// affine parameters (batch statistics while training, running statistics at test) and a
// Linear to the class count are trained with SGD (momentum 0.9, lr 0.01, weight decay 5e-4)
// on the training split; the result is top-1 on the test split.
//
// Shape of the implementation: the features are frozen, so they are computed once and kept
// in memory (FeatureMatrix: a row per sample, bfloat16 by default to halve the memory) and
// every probe epoch is then a pass over memory, not over the network. When the cached
// features of all five blocks would not fit in the memory budget, the blocks are split into
// groups and the network runs once per group. Only the Linear has parameters; the BN has
// none, so no gradient flows into the cached features and backward costs one GEMM.
//
// The pooling: a side of s cells with s = round(sqrt(9000 / C)), at most the block's own
// side, in PyTorch's AdaptiveMaxPool2d windows. For AlexNet on 224 inputs this gives the
// reference's sizes (conv1 96x10x10 = 9600, conv2 256x6x6 = 9216, conv3/4 384x5x5 = 9600,
// conv5 256x6x6 = 9216); a block already below ~9000 numbers is not pooled.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "models/alexnet.h"

namespace sela {

// How one block's output is reduced before its probe.
struct ProbePool {
  std::int64_t channels = 0, height = 0, width = 0;  // block output (C, H, W)
  std::int64_t out_height = 0, out_width = 0;        // after adaptive max pooling
  std::int64_t dims() const { return channels * out_height * out_width; }
  bool pooled() const { return out_height != height || out_width != width; }
  std::string describe() const;  // "16x32x32 -> max-pool 16x24x24 = 9216"
};

// Side s = clamp(round(sqrt(target_dims / C)), 1, side) for each spatial side.
ProbePool choose_probe_pool(std::int64_t channels, std::int64_t height, std::int64_t width,
                            std::int64_t target_dims = 9000);

// Adaptive max pooling of `count` planes (H, W) -> (out_h, out_w): cell (i, j) is the max of
// rows [floor(i H / out_h), ceil((i + 1) H / out_h)) and the same for columns.
template <typename T>
void adaptive_max_pool2d(const T* input /* (count, H, W) */, std::int64_t count,
                         std::int64_t height, std::int64_t width, std::int64_t out_height,
                         std::int64_t out_width, T* output /* (count, out_h, out_w) */);

enum class FeatureStorage : std::uint8_t { f32, bf16 };

// A (rows, dims) matrix of frozen features held in float32 or bfloat16 (round to nearest
// even; read back as float32).
class FeatureMatrix {
 public:
  FeatureMatrix() = default;
  FeatureMatrix(std::int64_t rows, std::int64_t dims, FeatureStorage storage);
  std::int64_t rows() const { return rows_; }
  std::int64_t dims() const { return dims_; }
  FeatureStorage storage() const { return storage_; }
  std::uint64_t bytes() const;

  void set_row(std::int64_t row, const float* values /* (dims) */);
  // out (count, dims) = the rows listed in `rows`.
  void gather(const std::int64_t* rows, std::int64_t count, float* out) const;

  static std::uint64_t bytes_for(std::int64_t rows, std::int64_t dims, FeatureStorage storage);

 private:
  std::int64_t rows_ = 0, dims_ = 0;
  FeatureStorage storage_ = FeatureStorage::f32;
  std::vector<float> f32_;
  std::vector<std::uint16_t> bf16_;
};

struct ProbeOptions {
  std::int64_t target_dims = 9000;
  std::int64_t epochs = 4;
  std::int64_t batch_size = 256;
  double lr = 0.01;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  std::uint64_t seed = 0;  // probe weights and batch order
  FeatureStorage storage = FeatureStorage::bf16;
  // Cached features per network pass at most; 0 = half of the memory the system reports
  // as available.
  std::uint64_t memory_budget_bytes = 0;
  std::int64_t network_batch_size = 128;  // images per forward pass when caching
  int workers = 1;                        // loader threads when caching
  std::int64_t train_limit = 0;  // > 0: probe on a seeded random subset of the training split
  std::vector<int> layers{0, 1, 2, 3, 4};  // conv blocks to probe (0 = conv1)
  bool verbose = true;                     // per-epoch lines on stdout
};

struct ProbeResult {
  std::string layer;  // "conv1" ...
  ProbePool pool;
  std::vector<double> epoch_losses;  // mean training cross-entropy of each epoch
  double train_top1 = 0;             // running top-1 over the last epoch's batches
  double test_top1 = 0;
  double seconds = 0;  // probe training + test
};

// Trains one probe on cached features (rows with class < 0 are skipped) and scores it on
// `test`. `name` labels the printed lines.
ProbeResult train_linear_probe(const FeatureMatrix& train,
                               const std::vector<std::int64_t>& train_classes,
                               const FeatureMatrix& test,
                               const std::vector<std::int64_t>& test_classes,
                               std::int64_t num_classes, const ProbeOptions& options,
                               const std::string& name);

struct ProbeReport {
  std::vector<ProbeResult> layers;
  std::int64_t train_samples = 0, test_samples = 0;
  std::int64_t network_passes = 0;  // over train + test
  double feature_seconds = 0;       // network passes and pooling
  double seconds = 0;               // everything
  ProbeOptions options;
  std::string to_json() const;  // {"probes": [...], ...} as one JSON object
  std::string table() const;    // one line per layer
};

// The whole protocol on a model: features of `train` and `test` (eval transform, dataset
// order), one probe per requested block. Both data sets need true classes.
ProbeReport run_linear_probes(SelaNet& model, const data::Dataset& train, const data::Dataset& test,
                              const ProbeOptions& options);

// Bytes of memory the system reports as available (MemAvailable), 0 when unknown.
std::uint64_t available_memory_bytes();

}  // namespace sela
