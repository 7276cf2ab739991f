// Implementation of models/alexnet.h.
#include "models/alexnet.h"

#include <cmath>

#include "engine/ops.h"

namespace sela {
namespace {

struct ConvSpec {
  std::int64_t width, kernel, stride, padding;
  bool pool_after;  // MaxPool2d(3, 2) after the block
};

std::vector<ConvSpec> conv_specs(const std::string& arch) {
  if (arch == "alexnet") {
    return {{96, 11, 4, 2, true}, {256, 5, 1, 2, true}, {384, 3, 1, 1, false},
            {384, 3, 1, 1, false}, {256, 3, 1, 1, true}};
  }
  if (arch == "alexnet-small") {
    return {{64, 11, 4, 2, true}, {192, 5, 1, 2, true}, {384, 3, 1, 1, false},
            {256, 3, 1, 1, false}, {256, 3, 1, 1, true}};
  }
  if (arch == "alexnet-32") {
    return {{64, 5, 1, 2, true}, {192, 5, 1, 2, true}, {384, 3, 1, 1, false},
            {256, 3, 1, 1, false}, {256, 3, 1, 1, true}};
  }
  SELA_FAIL_HINT("model", "unknown architecture '" << arch << "'",
                 "use alexnet, alexnet-small or alexnet-32");
}

std::int64_t scaled(std::int64_t width, double mult) {
  return std::max<std::int64_t>(1, std::llround(static_cast<double>(width) * mult));
}

}  // namespace

std::vector<std::string> known_archs() { return {"alexnet", "alexnet-small", "alexnet-32"}; }

SelaNet::SelaNet(const ModelConfig& config) : config_(config) {
  std::vector<ConvSpec> specs = conv_specs(config.arch);
  SELA_CHECK(config.width_mult > 0 && config.width_mult <= 4, "model",
             "--width-mult must be in (0, 4], got " << config.width_mult);
  SELA_CHECK(config.in_channels >= 1, "model",
             "input channels must be >= 1, got " << config.in_channels);
  SELA_CHECK(config.dropout >= 0 && config.dropout < 1, "model",
             "dropout must be in [0, 1), got " << config.dropout);
  input_size_ = config.arch == "alexnet-32" ? 32 : 224;

  features = register_module("features", std::make_shared<Sequential>());
  std::int64_t channels = config.in_channels;
  std::int64_t size = input_size_;
  for (const ConvSpec& spec : specs) {
    std::int64_t width = scaled(spec.width, config.width_mult);
    features->add(std::make_shared<Conv2d>(channels, width, spec.kernel, spec.stride,
                                           spec.padding));
    std::int64_t out = (size + 2 * spec.padding - spec.kernel) / spec.stride + 1;
    forward_macs_ += static_cast<double>(width * channels * spec.kernel * spec.kernel * out * out);
    features->add(std::make_shared<BatchNorm2d>(width));
    features->add(std::make_shared<ReLU>());
    conv_block_ends_.push_back(static_cast<std::int64_t>(features->layers().size()) - 1);
    if (spec.pool_after) {
      features->add(std::make_shared<MaxPool2d>(3, 2));
      out = (out - 3) / 2 + 1;
    }
    channels = width;
    size = out;
  }
  std::int64_t flat = channels * size * size;
  fc_width_ = scaled(4096, config.width_mult);

  classifier = register_module("classifier", std::make_shared<Sequential>());
  classifier->add(std::make_shared<Dropout>(config.dropout, config.seed * 2 + 1));
  classifier->add(std::make_shared<Linear>(flat, fc_width_));
  if (config.fc_batch_norm) classifier->add(std::make_shared<BatchNorm1d>(fc_width_));
  classifier->add(std::make_shared<ReLU>());
  classifier->add(std::make_shared<Dropout>(config.dropout, config.seed * 2 + 2));
  classifier->add(std::make_shared<Linear>(fc_width_, fc_width_));
  if (config.fc_batch_norm) classifier->add(std::make_shared<BatchNorm1d>(fc_width_));
  classifier->add(std::make_shared<ReLU>());
  heads = register_module("", std::make_shared<MultiHead>(fc_width_, config.clusters));

  forward_macs_ += static_cast<double>(flat * fc_width_ + fc_width_ * fc_width_);
  for (std::int64_t k : config.clusters) forward_macs_ += static_cast<double>(fc_width_ * k);
}

void SelaNet::check_input(const Tensor& x) const {
  SELA_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels && x.size(2) == input_size_ &&
                 x.size(3) == input_size_,
             config_.arch,
             "expects input (N, " << config_.in_channels << ", " << input_size_ << ", "
                                  << input_size_ << "), got " << x.describe());
}

Tensor SelaNet::forward_fc7(const Tensor& x) {
  check_input(x);
  return classifier->forward(flatten(features->forward(x)));
}

Tensor SelaNet::forward_fc7_grouped(const Tensor& x, std::int64_t first_rows) {
  check_input(x);
  Tensor flat = flatten(features->forward_grouped(x, first_rows));
  return classifier->forward_grouped(flat, first_rows);  // per group too, with fc_batch_norm
}

std::vector<Tensor> SelaNet::forward_heads(const Tensor& x) {
  return heads->forward_heads(forward_fc7(x));
}

std::vector<Tensor> SelaNet::forward_conv_blocks(const Tensor& x) {
  std::vector<Tensor> blocks;
  Tensor h = x;
  const auto& layers = features->layers();
  std::size_t next_block = 0;
  for (std::size_t i = 0; i < layers.size() && next_block < conv_block_ends_.size(); ++i) {
    h = layers[i]->forward(h);
    if (static_cast<std::int64_t>(i) == conv_block_ends_[next_block]) {
      blocks.push_back(h);
      ++next_block;
    }
  }
  return blocks;
}

void SelaNet::initialize(Rng& rng) {
  for (auto& entry : named_modules()) {
    Module* module = entry.second.get();
    if (auto* conv = dynamic_cast<Conv2d*>(module)) {
      double fan = static_cast<double>(conv->weight.size(0) * conv->weight.size(2) *
                                       conv->weight.size(3));
      fill_normal(conv->weight, rng, 0.0, std::sqrt(2.0 / fan));
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* fc = dynamic_cast<Linear*>(module)) {
      fill_normal(fc->weight, rng, 0.0, 0.01);
      if (fc->bias.defined()) fc->bias.zero_();
    } else if (auto* bn = dynamic_cast<BatchNorm2d*>(module)) {
      if (bn->weight.defined()) bn->weight.fill_(1.0);
      if (bn->bias.defined()) bn->bias.zero_();
    }
  }
}

Tensor sela_loss(const std::vector<Tensor>& logits, const std::vector<Tensor>& targets) {
  SELA_CHECK(!logits.empty() && logits.size() == targets.size(), "sela_loss",
             logits.size() << " heads of logits for " << targets.size() << " label tensors");
  Tensor loss = cross_entropy(logits[0], targets[0]);
  for (std::size_t t = 1; t < logits.size(); ++t) loss = add(loss, cross_entropy(logits[t], targets[t]));
  return scale(loss, 1.0 / static_cast<double>(logits.size()));
}

std::shared_ptr<SelaNet> make_model(const ModelConfig& config) {
  auto model = std::make_shared<SelaNet>(config);
  Rng rng(config.seed);
  model->initialize(rng);
  return model;
}

}  // namespace sela
