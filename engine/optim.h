// SGD with momentum, weight decay and Nesterov, with torch.optim.SGD's exact semantics,
// and the step learning-rate schedule of the reference code.
//
//   g = grad + weight_decay * p
//   buf = (first step) ? g : momentum * buf + (1 - dampening) * g      (if momentum != 0)
//   g = nesterov ? g + momentum * buf : buf
//   p -= lr * g
// Parameters without a gradient are skipped (as PyTorch skips p.grad is None). Momentum
// buffers are public state so that the trainer can checkpoint them; they live on their
// parameter's device.
//
// On the CPU each parameter is one call of cpu::sgd_update. On a GPU the parameters of one
// device and dtype are updated by ONE launch of cuda::sgd_update_multi per step (two on a
// step where some parameters take their first update and others do not): the launch reads
// device arrays of parameter, gradient and momentum-buffer pointers and sizes. The arrays
// are uploaded only when one of those pointers changed since the last step (the caching
// allocator usually hands the gradients the same blocks every step), by small kernels that
// carry the values in their arguments. Inside a CUDA-graph capture (engine/cuda_graph.h) the
// arrays are always written, the hyper-parameters are fixed (a replay with another lr is
// refused), and no parameter may take its first update. The momentum buffers and pointer arrays of GPU parameters are
// allocated when the optimiser is made (momentum_buffers() still shows a buffer only from
// its parameter's first update on), so the first step uses the same memory as every later
// step and the caching allocator reaches its steady state after one step.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace sela {

namespace cpu {
struct SgdConfig;  // kernels/cpu/sgd.h
}

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
  ~Sgd();
  Sgd(Sgd&&) noexcept;
  Sgd& operator=(Sgd&&) noexcept;
  Sgd(const Sgd&) = delete;
  Sgd& operator=(const Sgd&) = delete;
  void step();
  void zero_grad();
  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  const SgdOptions& options() const { return options_; }

  // One per parameter; undefined until that parameter's first update.
  std::vector<Tensor>& momentum_buffers() { return momentum_buffers_; }
  const std::vector<Tensor>& parameters() const { return parameters_; }

 private:
  struct DeviceArrays;  // the fused update's pointer arrays on the GPU (optim.cpp)
  void step_cuda(const cpu::SgdConfig& config);

  std::vector<Tensor> parameters_;
  std::vector<Tensor> momentum_buffers_;
  SgdOptions options_;
  std::unique_ptr<DeviceArrays> device_arrays_;
};

// lr for `epoch` (0-based): base_lr * factor^(number of drop epochs <= epoch).
double step_learning_rate(double base_lr, std::int64_t epoch,
                          const std::vector<std::int64_t>& drop_epochs, double factor = 0.1);

}  // namespace sela
