// SGD with momentum, weight decay and Nesterov, with torch.optim.SGD's exact semantics,
// and the step learning-rate schedule of the reference code.
//
//   g = grad + weight_decay * p
//   buf = (first step) ? g : momentum * buf + (1 - dampening) * g      (if momentum != 0)
//   g = nesterov ? g + momentum * buf : buf
//   p -= lr * g
// Parameters without a gradient are skipped (as PyTorch skips p.grad is None). Momentum
// buffers are public state so that the trainer can checkpoint them.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace sela {

struct SgdOptions {
  double lr = 0.05;
  double momentum = 0.9;
  double dampening = 0.0;
  double weight_decay = 5e-4;
  bool nesterov = false;
};

class Sgd {
 public:
  Sgd(std::vector<Tensor> parameters, SgdOptions options);
  void step();
  void zero_grad();
  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  const SgdOptions& options() const { return options_; }

  // One per parameter; undefined until that parameter's first update.
  std::vector<Tensor>& momentum_buffers() { return momentum_buffers_; }
  const std::vector<Tensor>& parameters() const { return parameters_; }

 private:
  std::vector<Tensor> parameters_;
  std::vector<Tensor> momentum_buffers_;
  SgdOptions options_;
};

// lr for `epoch` (0-based): base_lr * factor^(number of drop epochs <= epoch).
double step_learning_rate(double base_lr, std::int64_t epoch,
                          const std::vector<std::int64_t>& drop_epochs, double factor = 0.1);

}  // namespace sela
