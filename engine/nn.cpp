// Implementation of engine/nn.h. Layers hold uninitialised-but-finite defaults (zeros and
// ones); the models in models/ apply the reference initialisation.
#include "engine/nn.h"

#include <atomic>
#include <typeinfo>

#include "engine/cuda_graph.h"
#include "engine/ops.h"

namespace sela {

Tensor Module::forward(const Tensor&) {
  SELA_FAIL(type_name(), "has no single-tensor forward(); use its own forward method");
}

void Module::train(bool training) {
  training_ = training;
  for (auto& child : children_) child.second->train(training);
}

void Module::collect(const std::string& prefix, bool parameters, NamedTensors* out) const {
  for (const auto& entry : parameters ? parameters_ : buffers_) {
    out->emplace_back(prefix + entry.first, entry.second);
  }
  for (const auto& child : children_) {
    child.second->collect(child.first.empty() ? prefix : prefix + child.first + ".", parameters,
                          out);
  }
}

void Module::collect_modules(
    const std::string& prefix,
    std::vector<std::pair<std::string, std::shared_ptr<Module>>>* out) const {
  for (const auto& child : children_) {
    std::string name = child.first.empty() ? prefix : prefix + child.first;
    out->emplace_back(name, child.second);
    child.second->collect_modules(name.empty() ? name : name + ".", out);
  }
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", true, &out);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, &out);
  return out;
}

NamedTensors Module::state_dict() const {
  NamedTensors out = named_parameters();
  NamedTensors buffers = named_buffers();
  out.insert(out.end(), buffers.begin(), buffers.end());
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& entry : named_parameters()) out.push_back(entry.second);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  collect_modules("", &out);
  return out;
}

std::int64_t Module::parameter_count() const {
  std::int64_t count = 0;
  for (auto& entry : named_parameters()) count += entry.second.numel();
  return count;
}

void Module::to(DType dtype) {
  SELA_CHECK(dtype == DType::f32 || dtype == DType::f64, type_name(),
             "modules compute in float32 or float64, not " << dtype_name(dtype));
  for (auto& entry : state_dict()) {
    if (is_floating(entry.second.dtype())) entry.second.convert_(dtype);
  }
}

void Module::to(Device device) {
  for (auto& entry : state_dict()) {
    if (is_floating(entry.second.dtype())) entry.second.move_(device);
  }
}

void Module::zero_grad() const {
  for (auto& entry : named_parameters()) entry.second.zero_grad();
}

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  value.set_requires_grad(true);
  parameters_.emplace_back(name, value);
  return value;
}

Tensor Module::register_buffer(const std::string& name, Tensor value) {
  buffers_.emplace_back(name, value);
  return value;
}

Conv2d::Conv2d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
               std::int64_t stride, std::int64_t padding, bool with_bias)
    : stride(stride), padding(padding) {
  SELA_CHECK(in_channels > 0 && out_channels > 0 && kernel > 0, "Conv2d",
             "channels and kernel must be positive, got in " << in_channels << ", out "
                                                             << out_channels << ", kernel "
                                                             << kernel);
  weight = register_parameter("weight",
                              Tensor::zeros({out_channels, in_channels, kernel, kernel}));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_channels}));
}

Tensor Conv2d::forward(const Tensor& x) { return conv2d(x, weight, bias, stride, padding); }

BatchNorm2d::BatchNorm2d(std::int64_t channels, double eps, double momentum, bool affine)
    : eps(eps), momentum(momentum) {
  if (affine) {
    weight = register_parameter("weight", Tensor::full({channels}, 1.0));
    bias = register_parameter("bias", Tensor::zeros({channels}));
  }
  running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
  running_var = register_buffer("running_var", Tensor::full({channels}, 1.0));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::i64));
}

// One more batch tracked: now, or (inside a CUDA-graph capture) after every replay.
void BatchNorm2d::count_batch(const Tensor& x) {
  if (!is_training()) return;
  auto count = [this]() { *num_batches_tracked.data<std::int64_t>() += 1; };  // a host int64
  if (graph::capturing(x.device())) {
    graph::after_each_replay(x.device(), count);
  } else {
    count();
  }
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  count_batch(x);
  return batch_norm2d(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
}

Tensor BatchNorm2d::forward_grouped(const Tensor& x, std::int64_t first_rows, bool relu) {
  // Qualified calls: a BatchNorm1d passes its (N, C, 1, 1) view here.
  if (!is_training()) return relu ? BatchNorm2d::forward_relu(x) : BatchNorm2d::forward(x);
  Tensor out = batch_norm2d_grouped(x, weight, bias, running_mean, running_var, first_rows, relu,
                                    momentum, eps);  // checks first_rows before anything counts
  count_batch(x);
  count_batch(x);
  return out;
}

Tensor BatchNorm2d::forward_relu(const Tensor& x) {
  count_batch(x);
  return batch_norm_relu2d(x, weight, bias, running_mean, running_var, is_training(), momentum,
                           eps);
}

Tensor BatchNorm1d::as_4d(const Tensor& x) const {
  SELA_CHECK(x.dim() == 2 && x.size(1) == running_mean.size(0), "BatchNorm1d",
             "expects (N, " << running_mean.size(0) << ") rows, got " << x.describe());
  return reshape(x, {x.size(0), x.size(1), 1, 1});
}

Tensor BatchNorm1d::forward(const Tensor& x) {
  return reshape(BatchNorm2d::forward(as_4d(x)), {x.size(0), x.size(1)});
}

Tensor BatchNorm1d::forward_relu(const Tensor& x) {
  return reshape(BatchNorm2d::forward_relu(as_4d(x)), {x.size(0), x.size(1)});
}

Tensor BatchNorm1d::forward_grouped(const Tensor& x, std::int64_t first_rows, bool relu) {
  return reshape(BatchNorm2d::forward_grouped(as_4d(x), first_rows, relu), {x.size(0), x.size(1)});
}

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool with_bias) {
  SELA_CHECK(in_features > 0 && out_features > 0, "Linear",
             "features must be positive, got in " << in_features << ", out " << out_features);
  weight = register_parameter("weight", Tensor::zeros({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", Tensor::zeros({out_features}));
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

Tensor ReLU::forward(const Tensor& x) { return relu(x); }

Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, kernel, stride, padding); }

Tensor Dropout::forward(const Tensor& x) {
  if (!is_training() || p == 0.0) return x;
  if (const std::uint64_t capture = graph::capture_id(x.device())) {
    // The k-th call of this module in the captured step draws, at each replay, the masks of
    // call number calls + k, as an eager step would; each replay then counts its calls.
    if (capture != capture_id_) {
      capture_id_ = capture;
      calls_in_capture_ = 0;
    }
    const std::uint64_t k = calls_in_capture_++;
    const std::int64_t* offset = graph::refreshed_value(x.device(), [this, k]() {
      return static_cast<std::int64_t>((calls + k) * kDropoutOffsetPerCall);
    });
    graph::after_each_replay(x.device(), [this]() { ++calls; });
    return dropout(x, p, true, seed, (calls + k) * kDropoutOffsetPerCall, offset);
  }
  const std::uint64_t offset = calls++ * kDropoutOffsetPerCall;
  return dropout(x, p, true, seed, offset);
}

Tensor Flatten::forward(const Tensor& x) { return flatten(x); }

namespace {
std::atomic<bool> g_fuse_batch_norm_relu{true};
}  // namespace

void set_fuse_batch_norm_relu(bool enabled) { g_fuse_batch_norm_relu = enabled; }
bool fuse_batch_norm_relu() { return g_fuse_batch_norm_relu; }

Tensor Sequential::forward(const Tensor& x) { return run(x, 0); }

Tensor Sequential::forward_grouped(const Tensor& x, std::int64_t first_rows) {
  SELA_CHECK(x.dim() >= 1 && first_rows >= 1 && first_rows < x.size(0), "Sequential",
             "row groups need 1 <= first_rows < N, got first_rows " << first_rows << " for "
                                                                    << x.describe());
  return run(x, is_training() ? first_rows : 0);
}

Tensor Sequential::run(const Tensor& x, std::int64_t first_rows) {
  const bool fuse = fuse_batch_norm_relu();
  Tensor h = x;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    // Exactly these types: a further subclass may override forward().
    const bool batch_norm = typeid(*layers_[i]) == typeid(BatchNorm2d) ||
                            typeid(*layers_[i]) == typeid(BatchNorm1d);
    const bool with_relu = fuse && batch_norm && i + 1 < layers_.size() &&
                           typeid(*layers_[i + 1]) == typeid(ReLU);
    if (batch_norm && first_rows > 0) {
      h = static_cast<BatchNorm2d&>(*layers_[i]).forward_grouped(h, first_rows, with_relu);
    } else if (with_relu) {
      h = static_cast<BatchNorm2d&>(*layers_[i]).forward_relu(h);
    } else {
      h = layers_[i]->forward(h);
    }
    if (with_relu) ++i;  // the ReLU ran inside
  }
  return h;
}

MultiHead::MultiHead(std::int64_t in_features,
                     const std::vector<std::int64_t>& clusters_per_head) {
  SELA_CHECK(!clusters_per_head.empty(), "MultiHead", "needs at least one head");
  for (std::size_t t = 0; t < clusters_per_head.size(); ++t) {
    SELA_CHECK(clusters_per_head[t] >= 1, "MultiHead",
               "head " << t << " has " << clusters_per_head[t] << " clusters; need >= 1");
    heads_.push_back(register_module("top_layer" + std::to_string(t),
                                     std::make_shared<Linear>(in_features, clusters_per_head[t])));
  }
}

std::vector<Tensor> MultiHead::forward_heads(const Tensor& features) {
  std::vector<Tensor> out;
  out.reserve(heads_.size());
  for (auto& head : heads_) out.push_back(head->forward(features));
  return out;
}

}  // namespace sela
