// One step of SGD on one parameter tensor, with the semantics of torch.optim.SGD:
//   g = grad + weight_decay * param
//   if momentum != 0: buf = first_step ? g : momentum * buf + (1 - dampening) * g
//                     g   = nesterov ? g + momentum * buf : buf
//   param -= lr * g
//
// CPU reference of the update (a CUDA twin gets the same signature). The hyper-parameters
// are held in double and converted once to the element type, as PyTorch does when it
// updates a float tensor. Elementwise, so the result does not depend on the thread count.
// Instantiated for float and double.
#pragma once

#include <cstdint>

namespace sela::cpu {

struct SgdConfig {
  double lr = 0.01, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};

// Throws sela::Error (op "sgd") for a configuration torch.optim.SGD rejects: lr, momentum
// or weight_decay negative, or nesterov without momentum > 0 and dampening == 0.
void check_sgd_config(const SgdConfig& config);

// Updates param (n) in place from grad (n). momentum_buffer (n) is read and written when
// config.momentum != 0 (on first_step it is only written) and may be nullptr otherwise.
template <typename T>
void sgd_update(std::int64_t n, T* param, const T* grad, T* momentum_buffer,
                const SgdConfig& config, bool first_step);

}  // namespace sela::cpu
