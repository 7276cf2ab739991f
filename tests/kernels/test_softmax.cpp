// Tests of kernels/cpu/softmax.h: log_softmax and cross-entropy forward against naive
// long double loops (moderate logits, and logits with a large common offset or spread that
// overflow a naive exp), both backward passes against central finite differences in
// float64, float against double, 1 and 2 threads, and the invalid-target error (naming the
// row and the value, raised before anything is written).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/softmax.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::test::as;
using sela::test::central_differences;
using sela::test::count_bad;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::widen;

// log_softmax in long double: x - log(sum exp(x - max)) - max.
std::vector<double> reference_log_softmax(std::int64_t rows, std::int64_t cols,
                                          const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    long double m = x[r * cols];
    for (std::int64_t c = 1; c < cols; ++c) m = std::max<long double>(m, x[r * cols + c]);
    long double s = 0;
    for (std::int64_t c = 0; c < cols; ++c)
      s += std::exp(static_cast<long double>(x[r * cols + c]) - m);
    for (std::int64_t c = 0; c < cols; ++c)
      y[r * cols + c] =
          static_cast<double>((static_cast<long double>(x[r * cols + c]) - m) - std::log(s));
  }
  return y;
}

const std::pair<std::int64_t, std::int64_t> kShapes[] = {{1, 1},    {3, 7},      {33, 10},
                                                         {7, 3000}, {256, 1000}, {5, 1}};

template <typename T>
void check_log_softmax(std::int64_t rows, std::int64_t cols, double lo, double hi,
                       std::uint64_t seed, double atol, double rtol) {
  const auto x = as<T>(random_values(rows * cols, seed, lo, hi));
  const auto x_r = widen(x);
  const auto want = reference_log_softmax(rows, cols, x_r);
  auto y = poisoned<T>(rows * cols);
  sela::cpu::log_softmax_forward<T>(rows, cols, x.data(), y.data());
  CHECK(count_bad(y, want, atol, rtol) == 0);
}

}  // namespace

TEST_CASE("log_softmax_forward matches a long double reference") {
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    std::uint64_t seed = 1;
    for (auto shape : kShapes) {
      CAPTURE(threads);
      CAPTURE(shape.first);
      CAPTURE(shape.second);
      check_log_softmax<float>(shape.first, shape.second, -4, 4, ++seed, 2e-6, 2e-6);
      check_log_softmax<double>(shape.first, shape.second, -4, 4, ++seed, 1e-13, 1e-13);
      // A large common offset: exp(x) overflows, x - max does not.
      check_log_softmax<float>(shape.first, shape.second, 1e4 - 5, 1e4 + 5, ++seed, 2e-6, 2e-6);
      check_log_softmax<double>(shape.first, shape.second, -1e4 - 5, -1e4 + 5, ++seed, 1e-12,
                                1e-12);
      // A wide spread: most probabilities underflow to 0; log-probs stay finite.
      check_log_softmax<float>(shape.first, shape.second, -200, 200, ++seed, 2e-5, 2e-6);
      check_log_softmax<double>(shape.first, shape.second, -800, 800, ++seed, 1e-12, 1e-13);
    }
  }
  sela::cpu::set_num_threads(0);
}

TEST_CASE("log_softmax_backward matches finite differences in float64; float agrees") {
  for (auto shape : {std::pair<std::int64_t, std::int64_t>{1, 1}, {3, 7}, {4, 33}, {2, 100}}) {
    const std::int64_t rows = shape.first, cols = shape.second, n = rows * cols;
    CAPTURE(rows);
    CAPTURE(cols);
    auto x = random_values(n, 10 + static_cast<std::uint64_t>(n), -4.0, 4.0);
    const auto weight =
        random_values(n, 20 + static_cast<std::uint64_t>(n), -4.0, 4.0);  // = grad_y
    std::vector<double> y(n);
    sela::cpu::log_softmax_forward<double>(rows, cols, x.data(), y.data());
    auto grad = poisoned<double>(n);
    sela::cpu::log_softmax_backward<double>(rows, cols, y.data(), weight.data(), grad.data());

    std::vector<double> out(n);
    auto loss = [&] {  // sum(weight * log_softmax(x))
      sela::cpu::log_softmax_forward<double>(rows, cols, x.data(), out.data());
      double total = 0;
      for (std::int64_t k = 0; k < n; ++k) total += weight[k] * out[k];
      return total;
    };
    const auto numeric = central_differences(&x, loss, 1e-6);
    CHECK(count_bad(grad, numeric, 1e-7, 1e-6) == 0);

    const auto y_f = as<float>(y), w_f = as<float>(weight);
    auto grad_f = poisoned<float>(n);
    sela::cpu::log_softmax_backward<float>(rows, cols, y_f.data(), w_f.data(), grad_f.data());
    CHECK(count_bad(grad_f, grad, 2e-6, 2e-6) == 0);
  }
}

namespace {

std::vector<std::int64_t> random_targets(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> dist(0, cols - 1);
  std::vector<std::int64_t> t(static_cast<std::size_t>(rows));
  for (auto& v : t) v = dist(rng);
  return t;
}

}  // namespace

TEST_CASE("cross_entropy_forward: mean of -log_softmax at the targets; writes log_probs") {
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    std::uint64_t seed = 40;
    for (auto shape : kShapes) {
      const std::int64_t rows = shape.first, cols = shape.second;
      CAPTURE(threads);
      CAPTURE(rows);
      CAPTURE(cols);
      const auto logits = random_values(rows * cols, ++seed, -4.0, 4.0);
      const auto targets = random_targets(rows, cols, ++seed);
      const auto want_lp = reference_log_softmax(rows, cols, logits);
      long double want = 0;
      for (std::int64_t r = 0; r < rows; ++r) want -= want_lp[r * cols + targets[r]];
      want /= rows;

      auto lp = poisoned<double>(rows * cols);
      const double loss = sela::cpu::cross_entropy_forward<double>(rows, cols, logits.data(),
                                                                   targets.data(), lp.data());
      CHECK(count_bad(lp, want_lp, 1e-13, 1e-13) == 0);
      CHECK(std::abs(loss - static_cast<double>(want)) <=
            1e-13 + 1e-13 * std::abs(static_cast<double>(want)));

      const auto logits_f = as<float>(logits);
      auto lp_f = poisoned<float>(rows * cols);
      const float loss_f = sela::cpu::cross_entropy_forward<float>(rows, cols, logits_f.data(),
                                                                   targets.data(), lp_f.data());
      CHECK(count_bad(lp_f, want_lp, 3e-6, 3e-6) == 0);
      CHECK(std::abs(loss_f - static_cast<double>(want)) <=
            3e-6 + 3e-6 * std::abs(static_cast<double>(want)));
    }
  }
  sela::cpu::set_num_threads(0);
}

TEST_CASE("cross_entropy_backward matches finite differences of the loss in float64") {
  for (auto shape : {std::pair<std::int64_t, std::int64_t>{1, 1}, {1, 5}, {3, 7}, {6, 33}}) {
    const std::int64_t rows = shape.first, cols = shape.second, n = rows * cols;
    CAPTURE(rows);
    CAPTURE(cols);
    auto logits = random_values(n, 60 + static_cast<std::uint64_t>(n), -4.0, 4.0);
    const auto targets = random_targets(rows, cols, 70 + static_cast<std::uint64_t>(n));
    const double grad_loss = 0.7;
    std::vector<double> lp(n);
    sela::cpu::cross_entropy_forward<double>(rows, cols, logits.data(), targets.data(), lp.data());
    auto grad = poisoned<double>(n);
    sela::cpu::cross_entropy_backward<double>(rows, cols, lp.data(), targets.data(), grad_loss,
                                              grad.data());

    const double h = 1e-6;
    std::vector<double> numeric(n), scratch(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const double keep = logits[i];
      logits[i] = keep + h;
      const double up = sela::cpu::cross_entropy_forward<double>(rows, cols, logits.data(),
                                                                 targets.data(), scratch.data());
      logits[i] = keep - h;
      const double down = sela::cpu::cross_entropy_forward<double>(rows, cols, logits.data(),
                                                                   targets.data(), scratch.data());
      logits[i] = keep;
      numeric[i] = grad_loss * (up - down) / (2 * h);
    }
    CHECK(count_bad(grad, numeric, 1e-8, 1e-6) == 0);

    const auto lp_f = as<float>(lp);
    auto grad_f = poisoned<float>(n);
    sela::cpu::cross_entropy_backward<float>(rows, cols, lp_f.data(), targets.data(), 0.7f,
                                             grad_f.data());
    CHECK(count_bad(grad_f, grad, 1e-7, 2e-6) == 0);
  }
}

TEST_CASE("cross_entropy: a target outside [0, cols) is an Error naming the row and the value") {
  const std::int64_t rows = 4, cols = 5;
  const auto logits = random_values(rows * cols, 80, -4.0, 4.0);
  for (std::int64_t bad : {std::int64_t{5}, std::int64_t{-1}, std::int64_t{1000000}}) {
    CAPTURE(bad);
    std::vector<std::int64_t> targets = {0, 4, bad, 1};
    auto lp = poisoned<double>(rows * cols);
    bool thrown = false;
    try {
      sela::cpu::cross_entropy_forward<double>(rows, cols, logits.data(), targets.data(),
                                               lp.data());
    } catch (const sela::Error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(e.op() == "cross_entropy");
      CHECK(what.find("row 2") != std::string::npos);
      CHECK(what.find(std::to_string(bad)) != std::string::npos);
    }
    CHECK(thrown);
    // Checked before any work: log_probs still holds its NaN poison.
    std::int64_t written = 0;
    for (double v : lp) written += std::isnan(v) ? 0 : 1;
    CHECK(written == 0);
    std::vector<double> grad(rows * cols);
    CHECK_THROWS_AS(sela::cpu::cross_entropy_backward<double>(rows, cols, lp.data(), targets.data(),
                                                              1.0, grad.data()),
                    sela::Error);
  }
}
