// The SeLa networks: AlexNet variants with T linear heads (DESIGN.md, "Models").
//
//   features   conv+BN+ReLU blocks and max-pools  (names features.0 ... features.17)
//   classifier Dropout, Linear(flat, fc), ReLU, Dropout, Linear(fc, fc), ReLU   (classifier.*)
//              with fc_batch_norm: 0 Dropout, 1 Linear, 2 BatchNorm1d, 3 ReLU, 4 Dropout,
//              5 Linear, 6 BatchNorm1d, 7 ReLU (the Linear biases stay, though the BatchNorm
//              after them cancels them, so that classifier.1 is the same in both variants)
//   heads      top_layer0 ... top_layer{T-1}: Linear(fc, K_t)
// The names and layer indices match the PyTorch twin in tests/golden/make_golden.py and
// tools/bench/torch_train_step.py, so weights move both ways through safetensors.
// A width multiplier scales every conv width and the fc width (rounded, at least 1) for
// CPU-sized runs; the arch names keep their DESIGN.md shapes at width 1.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/nn.h"
#include "engine/random.h"

namespace sela {

struct ModelConfig {
  std::string arch = "alexnet-32";              // alexnet | alexnet-small | alexnet-32
  double width_mult = 1.0;
  std::int64_t in_channels = 3;
  std::vector<std::int64_t> clusters{128};      // K_t of each head
  double dropout = 0.5;
  bool fc_batch_norm = false;                    // BatchNorm1d after both fc layers
  std::uint64_t seed = 0;                        // initial weights and dropout masks
};

class SelaNet : public Module {
 public:
  explicit SelaNet(const ModelConfig& config);
  const char* type_name() const override { return "SelaNet"; }

  // x (N, C, S, S) -> one (N, K_t) logits tensor per head.
  std::vector<Tensor> forward_heads(const Tensor& x);
  // x -> the last hidden layer (fc7 after ReLU), (N, fc) — the kNN feature.
  Tensor forward_fc7(const Tensor& x);
  // forward_fc7 with BatchNorm statistics of their own for rows [0, first_rows) and the rest
  // (Sequential::forward_grouped): two batches in one pass.
  Tensor forward_fc7_grouped(const Tensor& x, std::int64_t first_rows);
  // x -> outputs of the five conv blocks after ReLU (conv1 ... conv5), for linear probes.
  std::vector<Tensor> forward_conv_blocks(const Tensor& x);

  // The reference initialisation: conv N(0, sqrt(2/(k*k*out))), linear N(0, 0.01), biases 0,
  // BatchNorm weight 1 bias 0.
  void initialize(Rng& rng);

  const ModelConfig& config() const { return config_; }
  std::int64_t input_size() const { return input_size_; }   // 224 or 32
  std::int64_t feature_dim() const { return fc_width_; }    // fc7 width
  Device device() const { return parameters().front().device(); }  // where the weights live
  std::int64_t num_heads() const { return static_cast<std::int64_t>(config_.clusters.size()); }
  // Multiply-adds of one forward pass for one image (for GFLOP/s figures).
  double forward_macs_per_image() const { return forward_macs_; }

  std::shared_ptr<Sequential> features;
  std::shared_ptr<Sequential> classifier;
  std::shared_ptr<MultiHead> heads;

 private:
  void check_input(const Tensor& x) const;  // (N, C, S, S) as configured, else a clear error

  ModelConfig config_;
  std::int64_t input_size_ = 0;
  std::int64_t fc_width_ = 0;
  double forward_macs_ = 0;
  std::vector<std::int64_t> conv_block_ends_;  // index in `features` of each block's ReLU
};

std::shared_ptr<SelaNet> make_model(const ModelConfig& config);  // built and initialised

// The SeLa representation loss: the mean over heads of each head's mean cross-entropy
// against its labels. logits and targets: one (N, K_t) / (N) int64 tensor per head.
Tensor sela_loss(const std::vector<Tensor>& logits, const std::vector<Tensor>& targets);
std::vector<std::string> known_archs();

}  // namespace sela
