// SGD step on CPU (see sgd.h).
//
// The four cases (plain, momentum first step, momentum, nesterov) are separate loops so
// that each is branch-free and vectorises; weight decay 0 is just a multiply by zero.
#include "kernels/cpu/sgd.h"

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

constexpr std::int64_t kSgdGrain = 1 << 15;  // elements per thread below which not split

}  // namespace

void check_sgd_config(const SgdConfig& config) {
  SELA_CHECK(config.lr >= 0, "sgd", "learning rate must be >= 0, got " << config.lr);
  SELA_CHECK(config.momentum >= 0, "sgd", "momentum must be >= 0, got " << config.momentum);
  SELA_CHECK(config.weight_decay >= 0, "sgd",
             "weight_decay must be >= 0, got " << config.weight_decay);
  if (config.nesterov && !(config.momentum > 0 && config.dampening == 0)) {
    SELA_FAIL_HINT("sgd",
                   "nesterov momentum needs momentum > 0 and dampening == 0, got momentum "
                       << config.momentum << ", dampening " << config.dampening,
                   "as torch.optim.SGD");
  }
}

template <typename T>
void sgd_update(std::int64_t n, T* param, const T* grad, T* momentum_buffer,
                const SgdConfig& config, bool first_step) {
  SELA_CHECK(n >= 0, "sgd", "element count must be >= 0, got " << n);
  check_sgd_config(config);
  const bool use_momentum = config.momentum != 0;
  SELA_CHECK(!use_momentum || momentum_buffer != nullptr || n == 0, "sgd",
             "momentum " << config.momentum << " needs a momentum buffer, got nullptr");

  const T lr = static_cast<T>(config.lr);
  const T momentum = static_cast<T>(config.momentum);
  const T keep = static_cast<T>(1.0 - config.dampening);  // weight of the new gradient
  const T decay = static_cast<T>(config.weight_decay);

  const bool nesterov = config.nesterov;
  // Captured by value: a store to param or the buffer cannot then alias lr, momentum, ...
  parallel_for(0, n, kSgdGrain, [=](std::int64_t begin, std::int64_t end) {
    if (!use_momentum) {
      for (std::int64_t i = begin; i < end; ++i) param[i] -= lr * (grad[i] + decay * param[i]);
    } else if (first_step && !nesterov) {
      for (std::int64_t i = begin; i < end; ++i) {
        const T g = grad[i] + decay * param[i];
        momentum_buffer[i] = g;
        param[i] -= lr * g;
      }
    } else if (first_step) {  // nesterov, first step: buf = g
      for (std::int64_t i = begin; i < end; ++i) {
        const T g = grad[i] + decay * param[i];
        momentum_buffer[i] = g;
        param[i] -= lr * (g + momentum * g);
      }
    } else if (!nesterov) {
      for (std::int64_t i = begin; i < end; ++i) {
        const T g = grad[i] + decay * param[i];
        const T buf = momentum * momentum_buffer[i] + keep * g;
        momentum_buffer[i] = buf;
        param[i] -= lr * buf;
      }
    } else {
      for (std::int64_t i = begin; i < end; ++i) {
        const T g = grad[i] + decay * param[i];
        const T buf = momentum * momentum_buffer[i] + keep * g;
        momentum_buffer[i] = buf;
        param[i] -= lr * (g + momentum * buf);
      }
    }
  });
}

template void sgd_update<float>(std::int64_t, float*, const float*, float*, const SgdConfig&, bool);
template void sgd_update<double>(std::int64_t, double*, const double*, double*, const SgdConfig&,
                                 bool);

}  // namespace sela::cpu
