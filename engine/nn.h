// Neural-network modules with PyTorch-style parameter names.
//
// A Module owns named parameters (leaf tensors that require grad), named buffers (state
// that is saved but not trained, e.g. BatchNorm running statistics) and named child
// modules. Names compose with dots exactly as in PyTorch (`features.0.weight`,
// `top_layer3.bias`), so a state dict written here loads into the PyTorch twin and back.
// A child registered with an empty name adds no prefix (used by MultiHead, whose heads sit
// at the top level of the model as in the reference code).
//
// forward() maps one tensor to one tensor; multi-output modules (MultiHead, the SeLa models)
// offer their own forward returning several.
//
// Sequential runs a BatchNorm2d (or BatchNorm1d) directly followed by a ReLU as one
// batch_norm_relu2d (the same values and gradients; on CUDA one pass and one tensor less
// per block). The modules and their names stay as they are, so state dicts do not change.
// On by default; set_fuse_batch_norm_relu(false) runs them one by one (for A/B
// measurements).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace sela {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Whether Sequential fuses BatchNorm2d + ReLU (see the top); process-wide, default on.
void set_fuse_batch_norm_relu(bool enabled);
bool fuse_batch_norm_relu();

class Module {
 public:
  virtual ~Module() = default;
  virtual const char* type_name() const = 0;
  virtual Tensor forward(const Tensor& x);

  void train(bool training = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  NamedTensors named_parameters() const;  // recursive, registration order
  NamedTensors named_buffers() const;
  NamedTensors state_dict() const;  // parameters then buffers
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;
  std::int64_t parameter_count() const;
  // Converts every floating parameter and buffer in place (float32 <-> float64).
  void to(DType dtype);
  // Moves every floating parameter and buffer to `device` in place: every handle (an
  // optimiser's, a test's) sees the new storage; requires_grad is kept and accumulated
  // gradients move along. Integer buffers (BatchNorm's num_batches_tracked) are counters the
  // host increments every step: they stay on the host, where counting costs no device
  // round trip (state_dict() shows them on cpu).
  void to(Device device);
  void zero_grad() const;

 protected:
  Tensor register_parameter(const std::string& name, Tensor value);
  Tensor register_buffer(const std::string& name, Tensor value);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    children_.emplace_back(name, child);
    return child;
  }

 private:
  void collect(const std::string& prefix, bool parameters, NamedTensors* out) const;
  void collect_modules(const std::string& prefix,
                       std::vector<std::pair<std::string, std::shared_ptr<Module>>>* out) const;

  NamedTensors parameters_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

class Conv2d : public Module {
 public:
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
         std::int64_t stride = 1, std::int64_t padding = 0, bool bias = true);
  const char* type_name() const override { return "Conv2d"; }
  Tensor forward(const Tensor& x) override;

  Tensor weight;  // (out, in, k, k)
  Tensor bias;    // (out) or undefined
  std::int64_t stride, padding;
};

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(std::int64_t channels, double eps = 1e-5, double momentum = 0.1,
                       bool affine = true);
  const char* type_name() const override { return "BatchNorm2d"; }
  Tensor forward(const Tensor& x) override;
  // relu(forward(x)) as one op (batch_norm_relu2d)
  virtual Tensor forward_relu(const Tensor& x);
  // In training mode, forward (or forward_relu) with rows [0, first_rows) and the rest
  // normalised by statistics of their own (batch_norm2d_grouped), counted as two batches
  // (two calls would count two); in eval mode the same as forward / forward_relu.
  virtual Tensor forward_grouped(const Tensor& x, std::int64_t first_rows, bool relu);

  Tensor weight, bias;                // (C) or undefined without affine
  Tensor running_mean, running_var;   // (C)
  Tensor num_batches_tracked;         // () int64, as PyTorch keeps it
  double eps, momentum;

 private:
  void count_batch(const Tensor& x);
};

// BatchNorm over the features of (N, C) rows (PyTorch's BatchNorm1d on 2-D input): the
// BatchNorm2d kernels on an (N, C, 1, 1) view, so the same parameters, buffers, state-dict
// names, fused ReLU and row groups. Used by the AlexNets' classifier with
// ModelConfig::fc_batch_norm (RotNet's AlexNet, Gidaris et al. 2018, normalises its fc layers).
class BatchNorm1d : public BatchNorm2d {
 public:
  using BatchNorm2d::BatchNorm2d;
  const char* type_name() const override { return "BatchNorm1d"; }
  Tensor forward(const Tensor& x) override;
  Tensor forward_relu(const Tensor& x) override;
  Tensor forward_grouped(const Tensor& x, std::int64_t first_rows, bool relu) override;

 private:
  Tensor as_4d(const Tensor& x) const;  // (N, C) -> (N, C, 1, 1), else a clear error
};

class Linear : public Module {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias = true);
  const char* type_name() const override { return "Linear"; }
  Tensor forward(const Tensor& x) override;

  Tensor weight;  // (out, in)
  Tensor bias;    // (out) or undefined
};

class ReLU : public Module {
 public:
  const char* type_name() const override { return "ReLU"; }
  Tensor forward(const Tensor& x) override;
};

class MaxPool2d : public Module {
 public:
  MaxPool2d(std::int64_t kernel, std::int64_t stride, std::int64_t padding = 0)
      : kernel(kernel), stride(stride), padding(padding) {}
  const char* type_name() const override { return "MaxPool2d"; }
  Tensor forward(const Tensor& x) override;
  std::int64_t kernel, stride, padding;
};

// Inverted dropout. The mask of call number `calls` uses counters starting at
// calls * 2^40 (kDropoutOffsetPerCall), so masks never repeat within a run; `calls` is trainer
// state (checkpointed). Inside a CUDA-graph capture the offset is a refreshed device value
// and each replay counts one call (engine/cuda_graph.h).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, std::uint64_t seed = 0) : p(p), seed(seed) {}
  const char* type_name() const override { return "Dropout"; }
  Tensor forward(const Tensor& x) override;
  double p;
  std::uint64_t seed;
  std::uint64_t calls = 0;

 private:
  std::uint64_t capture_id_ = 0, calls_in_capture_ = 0;  // calls in the capture running
};

class Flatten : public Module {
 public:
  const char* type_name() const override { return "Flatten"; }
  Tensor forward(const Tensor& x) override;
};

// Children named "0", "1", ... applied in order.
class Sequential : public Module {
 public:
  const char* type_name() const override { return "Sequential"; }
  Tensor forward(const Tensor& x) override;
  // forward(x) with the batch's rows in two groups, [0, first_rows) and [first_rows, N), as
  // far as BatchNorm is concerned: in training mode each BatchNorm2d normalises each group
  // with that group's own statistics and updates its running statistics from the first group,
  // then the second (BatchNorm2d::forward_grouped); every other layer sees all N rows at once.
  // The values and gradients are those of forward() run on the two groups one after the other
  // (up to float rounding), with one pass of N rows through the convolutions and GEMMs and
  // no copy of either group. In eval mode, forward(x).
  Tensor forward_grouped(const Tensor& x, std::int64_t first_rows);
  template <typename M>
  std::shared_ptr<M> add(std::shared_ptr<M> layer) {
    layers_.push_back(layer);
    return register_module(std::to_string(layers_.size() - 1), layer);
  }
  const std::vector<std::shared_ptr<Module>>& layers() const { return layers_; }

 private:
  // forward() when first_rows is 0, else forward_grouped().
  Tensor run(const Tensor& x, std::int64_t first_rows);

  std::vector<std::shared_ptr<Module>> layers_;
};

// T linear heads on one feature vector, head t named `top_layer<t>` with its own K_t.
class MultiHead : public Module {
 public:
  MultiHead(std::int64_t in_features, const std::vector<std::int64_t>& clusters_per_head);
  const char* type_name() const override { return "MultiHead"; }
  std::vector<Tensor> forward_heads(const Tensor& features);  // T tensors (N, K_t)
  const std::vector<std::shared_ptr<Linear>>& heads() const { return heads_; }

 private:
  std::vector<std::shared_ptr<Linear>> heads_;
};

}  // namespace sela
