// Implementation of engine/optim.h on the fused CPU kernel cpu::sgd_update.
#include "engine/optim.h"

#include "kernels/cpu/sgd.h"

namespace sela {

Sgd::Sgd(std::vector<Tensor> parameters, SgdOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  SELA_CHECK(options.lr >= 0 && options.momentum >= 0 && options.weight_decay >= 0, "sgd",
             "lr, momentum and weight decay must be >= 0 (lr " << options.lr << ", momentum "
                                                               << options.momentum << ", wd "
                                                               << options.weight_decay << ")");
  SELA_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0), "sgd",
             "Nesterov momentum needs momentum > 0 and zero dampening");
  for (const Tensor& p : parameters_) {
    check_cpu_floating("sgd", p, "parameter");
    SELA_CHECK(p.is_leaf(), "sgd", "can only optimise leaf tensors, got a computed "
                                       << p.describe());
  }
  momentum_buffers_.resize(parameters_.size());
}

void Sgd::step() {
  cpu::SgdConfig config;
  config.lr = options_.lr;
  config.momentum = options_.momentum;
  config.dampening = options_.dampening;
  config.weight_decay = options_.weight_decay;
  config.nesterov = options_.nesterov;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    Tensor& p = parameters_[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    bool first = false;
    if (options_.momentum != 0 && !momentum_buffers_[i].defined()) {
      momentum_buffers_[i] = Tensor::empty(p.shape(), p.dtype());
      first = true;
    }
    Tensor& buffer = momentum_buffers_[i];
    if (p.dtype() == DType::f32) {
      cpu::sgd_update<float>(p.numel(), p.data<float>(), g.data<float>(),
                             buffer.defined() ? buffer.data<float>() : nullptr, config, first);
    } else {
      cpu::sgd_update<double>(p.numel(), p.data<double>(), g.data<double>(),
                              buffer.defined() ? buffer.data<double>() : nullptr, config, first);
    }
  }
}

void Sgd::zero_grad() {
  for (Tensor& p : parameters_) p.zero_grad();
}

double step_learning_rate(double base_lr, std::int64_t epoch,
                          const std::vector<std::int64_t>& drop_epochs, double factor) {
  double lr = base_lr;
  for (std::int64_t drop : drop_epochs) {
    if (epoch >= drop) lr *= factor;
  }
  return lr;
}

}  // namespace sela
