// Tests of kernels/cpu/sgd.h: several steps of sgd_update against a scalar loop written
// from torch.optim.SGD's documented update in double (plain, momentum, dampening, weight
// decay, nesterov), float against double, 1 and 2 threads, and the configuration checks.
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/sgd.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::cpu::SgdConfig;
using sela::test::as;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::widen;
using sela::test::within_tolerance;

// One parameter through `steps` updates, in double, element by element, exactly as the
// PyTorch documentation writes the algorithm.
std::vector<double> reference_sgd(std::vector<double> param,
                                  const std::vector<std::vector<double>>& grads,
                                  const SgdConfig& cfg) {
  std::vector<double> buf(param.size(), 0.0);
  for (std::size_t t = 0; t < grads.size(); ++t) {
    for (std::size_t i = 0; i < param.size(); ++i) {
      double g = grads[t][i];
      if (cfg.weight_decay != 0) g = g + cfg.weight_decay * param[i];
      if (cfg.momentum != 0) {
        if (t == 0) {
          buf[i] = g;
        } else {
          buf[i] = cfg.momentum * buf[i] + (1 - cfg.dampening) * g;
        }
        if (cfg.nesterov) {
          g = g + cfg.momentum * buf[i];
        } else {
          g = buf[i];
        }
      }
      param[i] = param[i] - cfg.lr * g;
    }
  }
  return param;
}

SgdConfig config(double lr, double momentum, double dampening, double weight_decay, bool nesterov) {
  SgdConfig c;
  c.lr = lr;
  c.momentum = momentum;
  c.dampening = dampening;
  c.weight_decay = weight_decay;
  c.nesterov = nesterov;
  return c;
}

template <typename T>
void check_steps(std::int64_t n, const SgdConfig& cfg, int steps, std::uint64_t seed, double atol,
                 double rtol) {
  const auto start = random_values(n, seed, -1.0, 1.0);
  std::vector<std::vector<double>> grads;
  for (int t = 0; t < steps; ++t)
    grads.push_back(random_values(n, seed + 100 + static_cast<std::uint64_t>(t), -1.0, 1.0));
  auto param = as<T>(start);
  // The reference starts from the same (rounded) values the kernel sees.
  const auto start_rounded = widen(param);
  std::vector<std::vector<double>> grads_rounded;
  // Poisoned: on the first step the buffer must only be written.
  auto buffer = poisoned<T>(n);
  for (int t = 0; t < steps; ++t) {
    const auto g = as<T>(grads[t]);
    grads_rounded.push_back(widen(g));
    sela::cpu::sgd_update<T>(n, param.data(), g.data(), cfg.momentum != 0 ? buffer.data() : nullptr,
                             cfg, t == 0);
  }
  const auto want = reference_sgd(start_rounded, grads_rounded, cfg);
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < n; ++i)
    if (!within_tolerance(static_cast<double>(param[i]), want[i], atol, rtol)) ++bad;
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("sgd_update follows torch.optim.SGD over several steps") {
  const SgdConfig configs[] = {
      config(0.1, 0, 0, 0, false),          // plain
      config(0.05, 0, 0, 5e-4, false),      // weight decay, no momentum
      config(0.05, 0.9, 0, 0, false),       // momentum (SeLa's setting)
      config(0.05, 0.9, 0, 5e-4, false),    // momentum + weight decay
      config(0.05, 0.9, 0.3, 1e-3, false),  // dampening
      config(0.05, 0.9, 0, 0, true),        // nesterov
      config(0.05, 0.8, 0, 1e-2, true),     // nesterov + weight decay
  };
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    int index = 0;
    for (const auto& cfg : configs) {
      CAPTURE(threads);
      CAPTURE(index++);
      for (std::int64_t n : {1, 3, 7, 33, 100003}) {
        CAPTURE(n);
        check_steps<double>(n, cfg, 5, 7 + static_cast<std::uint64_t>(n), 1e-14, 1e-13);
        check_steps<float>(n, cfg, 5, 7 + static_cast<std::uint64_t>(n), 2e-6, 2e-6);
      }
    }
  }
  sela::cpu::set_num_threads(0);
}

TEST_CASE("sgd_update rejects configurations torch.optim.SGD rejects") {
  float p = 1, g = 1, b = 0;
  CHECK_THROWS_AS(
      sela::cpu::sgd_update<float>(1, &p, &g, nullptr, config(-0.1, 0, 0, 0, false), true),
      sela::Error);
  CHECK_THROWS_AS(sela::cpu::sgd_update<float>(1, &p, &g, &b, config(0.1, -0.9, 0, 0, false), true),
                  sela::Error);
  CHECK_THROWS_AS(
      sela::cpu::sgd_update<float>(1, &p, &g, nullptr, config(0.1, 0, 0, -1e-4, false), true),
      sela::Error);
  CHECK_THROWS_AS(
      sela::cpu::sgd_update<float>(1, &p, &g, nullptr, config(0.1, 0, 0, 0, true), true),
      sela::Error);
  CHECK_THROWS_AS(sela::cpu::sgd_update<float>(1, &p, &g, &b, config(0.1, 0.9, 0.1, 0, true), true),
                  sela::Error);
  // Momentum without a buffer.
  CHECK_THROWS_AS(
      sela::cpu::sgd_update<float>(1, &p, &g, nullptr, config(0.1, 0.9, 0, 0, false), true),
      sela::Error);
  CHECK(p == 1.0f);  // nothing was updated
}
