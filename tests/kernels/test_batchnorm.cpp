// Tests of kernels/cpu/batchnorm.h: training and eval forward against naive double loops
// (mean, biased variance, saved statistics, running statistics against the closed form with
// the unbiased variance), the full training-mode backward through the batch statistics and
// the eval backward against central finite differences in float64, float against double,
// affine = false and untracked statistics (nullptr), and a float input with a large mean.
// spatial = 1 (BatchNorm1d's rows, a loop of its own in the kernel) is among the shapes,
// with channel counts across several of its channel blocks (256) and a partial last block,
// and on its own at the fc layers' size: against the closed form, float against double, and
// the same bits with 1 and 2 threads.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/parallel.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::test::as;
using sela::test::central_differences;
using sela::test::count_bad;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::widen;

struct BnShape {
  std::int64_t batch, channels, spatial;
  std::int64_t size() const { return batch * channels * spatial; }
};

// Naive statistics of channel c: mean and biased variance (two passes, double).
void reference_stats(const BnShape& s, const std::vector<double>& x, std::int64_t c, double* mean,
                     double* var_biased) {
  double total = 0;
  for (std::int64_t n = 0; n < s.batch; ++n)
    for (std::int64_t i = 0; i < s.spatial; ++i) total += x[(n * s.channels + c) * s.spatial + i];
  const double count = static_cast<double>(s.batch * s.spatial);
  *mean = total / count;
  double sq = 0;
  for (std::int64_t n = 0; n < s.batch; ++n)
    for (std::int64_t i = 0; i < s.spatial; ++i) {
      const double d = x[(n * s.channels + c) * s.spatial + i] - *mean;
      sq += d * d;
    }
  *var_biased = sq / count;
}

template <typename T>
void check_forward_train(const BnShape& s, bool affine, bool track, std::uint64_t seed) {
  const double eps = 1e-5, momentum = 0.1;
  const auto x_d = random_values(s.size(), seed, -1.0, 3.0);
  const auto gamma_d = random_values(s.channels, seed + 1, 0.5, 1.5);
  const auto beta_d = random_values(s.channels, seed + 2, -2.0, 2.0);
  const auto rm_d = random_values(s.channels, seed + 3, -2.0, 2.0);
  const auto rv_d = random_values(s.channels, seed + 4, 0.5, 2.0);
  const auto x = as<T>(x_d), gamma = as<T>(gamma_d), beta = as<T>(beta_d);
  auto running_mean = as<T>(rm_d), running_var = as<T>(rv_d);
  const auto x_r = widen(x);  // the input as the kernel sees it

  auto y = poisoned<T>(s.size());
  auto save_mean = poisoned<T>(s.channels), save_invstd = poisoned<T>(s.channels);
  sela::cpu::batch_norm_forward_train<T>(
      s.batch, s.channels, s.spatial, x.data(), affine ? gamma.data() : nullptr,
      affine ? beta.data() : nullptr, T(eps), T(momentum), track ? running_mean.data() : nullptr,
      track ? running_var.data() : nullptr, y.data(), save_mean.data(), save_invstd.data());

  std::vector<double> want_y(static_cast<std::size_t>(s.size())), want_mean(s.channels),
      want_invstd(s.channels), want_rm(s.channels), want_rv(s.channels);
  const double count = static_cast<double>(s.batch * s.spatial);
  for (std::int64_t c = 0; c < s.channels; ++c) {
    double mean = 0, var = 0;
    reference_stats(s, x_r, c, &mean, &var);
    want_mean[c] = mean;
    want_invstd[c] = 1.0 / std::sqrt(var + eps);
    // PyTorch's running update: the unbiased variance var * M / (M - 1).
    const double rm0 = static_cast<double>(static_cast<T>(rm_d[c]));
    const double rv0 = static_cast<double>(static_cast<T>(rv_d[c]));
    want_rm[c] = (1 - momentum) * rm0 + momentum * mean;
    want_rv[c] = (1 - momentum) * rv0 + momentum * var * count / (count - 1);
    const double g = affine ? static_cast<double>(gamma[c]) : 1.0;
    const double b = affine ? static_cast<double>(beta[c]) : 0.0;
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t i = 0; i < s.spatial; ++i) {
        const std::int64_t k = (n * s.channels + c) * s.spatial + i;
        want_y[k] = (x_r[k] - mean) * want_invstd[c] * g + b;
      }
  }
  const bool is_float = std::is_same<T, float>::value;
  const double atol = is_float ? 2e-6 : 1e-12, rtol = is_float ? 2e-6 : 1e-12;
  CHECK(count_bad(y, want_y, atol, rtol) == 0);
  CHECK(count_bad(save_mean, want_mean, atol, rtol) == 0);
  CHECK(count_bad(save_invstd, want_invstd, atol, rtol) == 0);
  if (track) {
    CHECK(count_bad(running_mean, want_rm, atol, rtol) == 0);
    CHECK(count_bad(running_var, want_rv, atol, rtol) == 0);
  } else {
    // Untouched.
    const auto initial = as<T>(rm_d);
    CHECK(count_bad(running_mean, widen(initial), 0, 0) == 0);
  }
}

const BnShape kShapes[] = {{2, 1, 1},  {3, 2, 5},    {1, 3, 7},     {33, 3, 1},  {20, 700, 1},
                           {4, 7, 33}, {8, 16, 169}, {2, 5, 3025}};

}  // namespace

TEST_CASE("batch_norm_forward_train matches naive statistics and the running-stat closed form") {
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    std::uint64_t seed = 10;
    for (const auto& s : kShapes) {
      CAPTURE(threads);
      CAPTURE(s.batch);
      CAPTURE(s.channels);
      CAPTURE(s.spatial);
      for (bool affine : {true, false})
        for (bool track : {true, false}) {
          CAPTURE(affine);
          CAPTURE(track);
          check_forward_train<float>(s, affine, track, seed += 10);
          check_forward_train<double>(s, affine, track, seed += 10);
        }
    }
  }
  sela::cpu::set_num_threads(0);
}

TEST_CASE("batch_norm_forward_train keeps float precision when |mean| >> std") {
  // x = 1000 + U(-1, 1): E[x^2] - E[x]^2 in float would lose everything; the two-pass double
  // statistics do not. The one error left is the input's own float rounding (ulp(1000)/2).
  const BnShape s{16, 2, 64};
  const auto noise = random_values(s.size(), 7, -1.0, 1.0);
  std::vector<float> x(noise.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(1000.0 + noise[i]);
  const auto x_r = widen(x);
  auto y = poisoned<float>(s.size());
  std::vector<float> mean(2), invstd(2);
  sela::cpu::batch_norm_forward_train<float>(s.batch, s.channels, s.spatial, x.data(), nullptr,
                                             nullptr, 1e-5f, 0.1f, nullptr, nullptr, y.data(),
                                             mean.data(), invstd.data());
  std::vector<double> want(x.size());
  for (std::int64_t c = 0; c < s.channels; ++c) {
    double m = 0, v = 0;
    reference_stats(s, x_r, c, &m, &v);
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t i = 0; i < s.spatial; ++i) {
        const std::int64_t k = (n * s.channels + c) * s.spatial + i;
        want[k] = (x_r[k] - m) / std::sqrt(v + 1e-5);
      }
  }
  // mean rounded to float: up to ulp(1000)/2 = 3e-5 absolute, times invstd ~ 1.7.
  CHECK(count_bad(y, want, 1e-4, 1e-5) == 0);
}

TEST_CASE(
    "batch_norm_forward_eval matches (x - running_mean) / sqrt(running_var + eps) * gamma + beta") {
  for (const auto& s : kShapes) {
    CAPTURE(s.spatial);
    const double eps = 1e-3;
    const auto x = random_values(s.size(), 1, -2.0, 2.0);
    const auto gamma = random_values(s.channels, 2, -2.0, 2.0),
               beta = random_values(s.channels, 3, -2.0, 2.0);
    const auto rm = random_values(s.channels, 4, -2.0, 2.0),
               rv = random_values(s.channels, 5, 0.1, 2.0);
    std::vector<double> want(x.size());
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t c = 0; c < s.channels; ++c)
        for (std::int64_t i = 0; i < s.spatial; ++i) {
          const std::int64_t k = (n * s.channels + c) * s.spatial + i;
          want[k] = (x[k] - rm[c]) / std::sqrt(rv[c] + eps) * gamma[c] + beta[c];
        }
    auto y = poisoned<double>(s.size());
    sela::cpu::batch_norm_forward_eval<double>(s.batch, s.channels, s.spatial, x.data(),
                                               gamma.data(), beta.data(), rm.data(), rv.data(), eps,
                                               y.data());
    CHECK(count_bad(y, want, 1e-13, 1e-13) == 0);
    auto y_f = poisoned<float>(s.size());
    const auto x_f = as<float>(x), g_f = as<float>(gamma), b_f = as<float>(beta),
               rm_f = as<float>(rm), rv_f = as<float>(rv);
    sela::cpu::batch_norm_forward_eval<float>(s.batch, s.channels, s.spatial, x_f.data(),
                                              g_f.data(), b_f.data(), rm_f.data(), rv_f.data(),
                                              float(eps), y_f.data());
    CHECK(count_bad(y_f, want, 2e-5, 2e-5) == 0);
  }
}

namespace {

// loss(x, gamma, beta) = sum(weight * batch_norm_forward_train(x; gamma, beta)).
double train_loss(const BnShape& s, const std::vector<double>& x, const std::vector<double>& gamma,
                  const std::vector<double>& beta, const std::vector<double>& weight) {
  std::vector<double> y(x.size()), mean(s.channels), invstd(s.channels);
  sela::cpu::batch_norm_forward_train<double>(s.batch, s.channels, s.spatial, x.data(),
                                              gamma.data(), beta.data(), 1e-5, 0.1, nullptr,
                                              nullptr, y.data(), mean.data(), invstd.data());
  double total = 0;
  for (std::size_t i = 0; i < y.size(); ++i) total += weight[i] * y[i];
  return total;
}

}  // namespace

TEST_CASE("batch_norm_backward_train matches finite differences through the batch statistics") {
  const BnShape shapes[] = {{3, 2, 5}, {2, 3, 1}, {1, 2, 7}, {4, 3, 6}, {3, 520, 1}};
  std::uint64_t seed = 300;
  for (const auto& s : shapes) {
    CAPTURE(s.batch);
    CAPTURE(s.channels);
    CAPTURE(s.spatial);
    auto x = random_values(s.size(), ++seed, -2.0, 2.0);
    auto gamma = random_values(s.channels, ++seed, 0.5, 1.5);
    auto beta = random_values(s.channels, ++seed, -2.0, 2.0);
    const auto weight = random_values(s.size(), ++seed, -2.0, 2.0);  // = grad_y

    std::vector<double> y(x.size()), mean(s.channels), invstd(s.channels);
    sela::cpu::batch_norm_forward_train<double>(s.batch, s.channels, s.spatial, x.data(),
                                                gamma.data(), beta.data(), 1e-5, 0.1, nullptr,
                                                nullptr, y.data(), mean.data(), invstd.data());
    auto grad_x = poisoned<double>(s.size());
    auto grad_gamma = poisoned<double>(s.channels), grad_beta = poisoned<double>(s.channels);
    sela::cpu::batch_norm_backward_train<double>(
        s.batch, s.channels, s.spatial, x.data(), weight.data(), gamma.data(), mean.data(),
        invstd.data(), grad_x.data(), grad_gamma.data(), grad_beta.data());
    auto loss = [&] { return train_loss(s, x, gamma, beta, weight); };
    const auto num_x = central_differences(&x, loss, 1e-6);
    const auto num_gamma = central_differences(&gamma, loss, 1e-6);
    const auto num_beta = central_differences(&beta, loss, 1e-6);
    CHECK(count_bad(grad_x, num_x, 1e-7, 1e-5) == 0);
    CHECK(count_bad(grad_gamma, num_gamma, 1e-7, 1e-5) == 0);
    CHECK(count_bad(grad_beta, num_beta, 1e-7, 1e-5) == 0);

    // float agrees with double (same inputs rounded to float).
    const auto x_f = as<float>(x), w_f = as<float>(weight), g_f = as<float>(gamma),
               b_f = as<float>(beta);
    std::vector<float> y_f(x.size()), mean_f(s.channels), invstd_f(s.channels);
    sela::cpu::batch_norm_forward_train<float>(s.batch, s.channels, s.spatial, x_f.data(),
                                               g_f.data(), b_f.data(), 1e-5f, 0.1f, nullptr,
                                               nullptr, y_f.data(), mean_f.data(), invstd_f.data());
    auto gx_f = poisoned<float>(s.size());
    auto gg_f = poisoned<float>(s.channels), gb_f = poisoned<float>(s.channels);
    sela::cpu::batch_norm_backward_train<float>(
        s.batch, s.channels, s.spatial, x_f.data(), w_f.data(), g_f.data(), mean_f.data(),
        invstd_f.data(), gx_f.data(), gg_f.data(), gb_f.data());
    CHECK(count_bad(gx_f, grad_x, 2e-5, 2e-4) == 0);
    CHECK(count_bad(gg_f, grad_gamma, 2e-5, 2e-5) == 0);
    CHECK(count_bad(gb_f, grad_beta, 2e-5, 2e-5) == 0);
  }
}

TEST_CASE("batch_norm_backward_train without gamma and without parameter gradients") {
  for (const BnShape s : {BnShape{3, 4, 5}, BnShape{4, 300, 1}}) {  // the channel walk, rows
    CAPTURE(s.spatial);
    auto x = random_values(s.size(), 61, -2.0, 2.0);
    const auto weight = random_values(s.size(), 62, -2.0, 2.0);
    std::vector<double> ones(s.channels, 1.0), zeros(s.channels, 0.0);
    std::vector<double> y(x.size()), mean(s.channels), invstd(s.channels);
    sela::cpu::batch_norm_forward_train<double>(s.batch, s.channels, s.spatial, x.data(), nullptr,
                                                nullptr, 1e-5, 0.1, nullptr, nullptr, y.data(),
                                                mean.data(), invstd.data());
    auto grad_x = poisoned<double>(s.size());
    sela::cpu::batch_norm_backward_train<double>(s.batch, s.channels, s.spatial, x.data(),
                                                 weight.data(), nullptr, mean.data(), invstd.data(),
                                                 grad_x.data(), nullptr, nullptr);
    auto loss = [&] { return train_loss(s, x, ones, zeros, weight); };
    const auto num_x = central_differences(&x, loss, 1e-6);
    CHECK(count_bad(grad_x, num_x, 1e-7, 1e-5) == 0);
  }
}

TEST_CASE("batch_norm_backward_train large shape: float vs double, 1 and 2 threads") {
  const BnShape s{8, 16, 400};
  const auto x = random_values(s.size(), 71, -2.0, 2.0), w = random_values(s.size(), 72, -2.0, 2.0);
  const auto gamma = random_values(s.channels, 73, 0.5, 1.5);
  std::vector<double> mean(s.channels), invstd(s.channels), y(x.size());
  sela::cpu::batch_norm_forward_train<double>(s.batch, s.channels, s.spatial, x.data(),
                                              gamma.data(), nullptr, 1e-5, 0.1, nullptr, nullptr,
                                              y.data(), mean.data(), invstd.data());
  auto gx = poisoned<double>(s.size());
  std::vector<double> gg(s.channels), gb(s.channels);
  sela::cpu::batch_norm_backward_train<double>(s.batch, s.channels, s.spatial, x.data(), w.data(),
                                               gamma.data(), mean.data(), invstd.data(), gx.data(),
                                               gg.data(), gb.data());
  // Closed form in plain loops, as a second, independent reference.
  std::vector<double> want(x.size());
  const double count = static_cast<double>(s.batch * s.spatial);
  for (std::int64_t c = 0; c < s.channels; ++c) {
    double m = 0, v = 0, sum_dy = 0, sum_dy_xhat = 0;
    reference_stats(s, x, c, &m, &v);
    const double is = 1.0 / std::sqrt(v + 1e-5);
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t i = 0; i < s.spatial; ++i) {
        const std::int64_t k = (n * s.channels + c) * s.spatial + i;
        sum_dy += w[k];
        sum_dy_xhat += w[k] * (x[k] - m) * is;
      }
    for (std::int64_t n = 0; n < s.batch; ++n)
      for (std::int64_t i = 0; i < s.spatial; ++i) {
        const std::int64_t k = (n * s.channels + c) * s.spatial + i;
        const double xhat = (x[k] - m) * is;
        want[k] = gamma[c] * is / count * (count * w[k] - sum_dy - xhat * sum_dy_xhat);
      }
  }
  CHECK(count_bad(gx, want, 1e-12, 1e-10) == 0);
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    const auto x_f = as<float>(x), w_f = as<float>(w), g_f = as<float>(gamma);
    std::vector<float> mean_f(s.channels), invstd_f(s.channels), y_f(x.size());
    sela::cpu::batch_norm_forward_train<float>(s.batch, s.channels, s.spatial, x_f.data(),
                                               g_f.data(), nullptr, 1e-5f, 0.1f, nullptr, nullptr,
                                               y_f.data(), mean_f.data(), invstd_f.data());
    auto gx_f = poisoned<float>(s.size());
    sela::cpu::batch_norm_backward_train<float>(s.batch, s.channels, s.spatial, x_f.data(),
                                                w_f.data(), g_f.data(), mean_f.data(),
                                                invstd_f.data(), gx_f.data(), nullptr, nullptr);
    CHECK(count_bad(gx_f, want, 2e-5, 2e-4) == 0);
  }
  sela::cpu::set_num_threads(0);
}

namespace {

template <typename T>
struct TrainPass {
  std::vector<T> y, grad_x, grad_gamma, grad_beta;
};

// batch_norm_forward_train (no running statistics), then batch_norm_backward_train with
// grad_y = w, on the inputs rounded to T.
template <typename T>
TrainPass<T> train_pass(const BnShape& s, const std::vector<double>& x, const std::vector<double>& w,
                        const std::vector<double>& gamma, const std::vector<double>& beta) {
  const auto x_t = as<T>(x), w_t = as<T>(w), g_t = as<T>(gamma), b_t = as<T>(beta);
  TrainPass<T> out{poisoned<T>(s.size()), poisoned<T>(s.size()), poisoned<T>(s.channels),
                   poisoned<T>(s.channels)};
  std::vector<T> mean(s.channels), invstd(s.channels);
  sela::cpu::batch_norm_forward_train<T>(s.batch, s.channels, s.spatial, x_t.data(), g_t.data(),
                                         b_t.data(), T(1e-5), T(0.1), nullptr, nullptr,
                                         out.y.data(), mean.data(), invstd.data());
  sela::cpu::batch_norm_backward_train<T>(s.batch, s.channels, s.spatial, x_t.data(), w_t.data(),
                                          g_t.data(), mean.data(), invstd.data(),
                                          out.grad_x.data(), out.grad_gamma.data(),
                                          out.grad_beta.data());
  return out;
}

}  // namespace

TEST_CASE("batch_norm spatial = 1 at the fc layers' size: closed form, 1 and 2 threads the same bits") {
  const BnShape s{160, 1100, 1};  // 4 full channel blocks and a partial one
  const auto x = random_values(s.size(), 91, -1.0, 3.0), w = random_values(s.size(), 92, -2.0, 2.0);
  const auto gamma = random_values(s.channels, 93, 0.5, 1.5), beta = random_values(s.channels, 94, -1.0, 1.0);
  // The closed form in plain loops, in double.
  std::vector<double> want_y(x.size()), want_gx(x.size()), want_gg(s.channels), want_gb(s.channels);
  const double count = static_cast<double>(s.batch);
  for (std::int64_t c = 0; c < s.channels; ++c) {
    double m = 0, v = 0, sum_dy = 0, sum_dy_xhat = 0;
    reference_stats(s, x, c, &m, &v);
    const double is = 1.0 / std::sqrt(v + 1e-5);
    for (std::int64_t n = 0; n < s.batch; ++n) {
      const std::int64_t k = n * s.channels + c;
      want_y[k] = (x[k] - m) * is * gamma[c] + beta[c];
      sum_dy += w[k];
      sum_dy_xhat += w[k] * (x[k] - m) * is;
    }
    want_gg[c] = sum_dy_xhat;
    want_gb[c] = sum_dy;
    for (std::int64_t n = 0; n < s.batch; ++n) {
      const std::int64_t k = n * s.channels + c;
      const double xhat = (x[k] - m) * is;
      want_gx[k] = gamma[c] * is / count * (count * w[k] - sum_dy - xhat * sum_dy_xhat);
    }
  }
  std::vector<std::vector<float>> outputs;  // per thread count: y, grad_x, grad_gamma, grad_beta
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    sela::cpu::set_num_threads(threads);
    const TrainPass<double> d = train_pass<double>(s, x, w, gamma, beta);
    CHECK(count_bad(d.y, want_y, 1e-12, 1e-10) == 0);
    CHECK(count_bad(d.grad_x, want_gx, 1e-12, 1e-10) == 0);
    CHECK(count_bad(d.grad_gamma, want_gg, 1e-10, 1e-10) == 0);
    CHECK(count_bad(d.grad_beta, want_gb, 1e-10, 1e-10) == 0);
    const TrainPass<float> f = train_pass<float>(s, x, w, gamma, beta);
    CHECK(count_bad(f.y, want_y, 2e-5, 2e-5) == 0);
    CHECK(count_bad(f.grad_x, want_gx, 2e-5, 2e-4) == 0);
    outputs.insert(outputs.end(), {f.y, f.grad_x, f.grad_gamma, f.grad_beta});
  }
  sela::cpu::set_num_threads(0);
  for (std::size_t i = 0; i < 4; ++i) {  // 2 threads = 1 thread, to the bit
    CAPTURE(i);
    CHECK(count_bad(outputs[4 + i], widen(outputs[i]), 0, 0) == 0);
  }
}

TEST_CASE("batch_norm_backward_eval matches finite differences of the eval forward") {
  for (const BnShape s : {BnShape{3, 4, 5}, BnShape{3, 300, 1}}) {
    CAPTURE(s.spatial);
    auto x = random_values(s.size(), 81, -2.0, 2.0);
    const auto gamma = random_values(s.channels, 82, -2.0, 2.0),
               beta = random_values(s.channels, 83, -2.0, 2.0);
    const auto rm = random_values(s.channels, 84, -2.0, 2.0),
               rv = random_values(s.channels, 85, 0.1, 2.0);
    const auto weight = random_values(s.size(), 86, -2.0, 2.0);
    const double eps = 1e-5;
    auto grad_x = poisoned<double>(s.size());
    sela::cpu::batch_norm_backward_eval<double>(s.batch, s.channels, s.spatial, weight.data(),
                                                gamma.data(), rv.data(), eps, grad_x.data());
    auto eval_loss = [&] {  // sum(weight * batch_norm_forward_eval(x))
      std::vector<double> y(x.size());
      sela::cpu::batch_norm_forward_eval<double>(s.batch, s.channels, s.spatial, x.data(),
                                                 gamma.data(), beta.data(), rm.data(), rv.data(), eps,
                                                 y.data());
      double total = 0;
      for (std::size_t i = 0; i < y.size(); ++i) total += weight[i] * y[i];
      return total;
    };
    const auto numeric = central_differences(&x, eval_loss, 1e-6);
    CHECK(count_bad(grad_x, numeric, 1e-7, 1e-6) == 0);

    const auto w_f = as<float>(weight), g_f = as<float>(gamma), rv_f = as<float>(rv);
    auto gx_f = poisoned<float>(s.size());
    sela::cpu::batch_norm_backward_eval<float>(s.batch, s.channels, s.spatial, w_f.data(), g_f.data(),
                                               rv_f.data(), float(eps), gx_f.data());
    CHECK(count_bad(gx_f, grad_x, 1e-6, 1e-6) == 0);
  }
}

TEST_CASE("batch_norm_forward_train rejects a single value per channel") {
  float x[3] = {1, 2, 3}, y[3], mean[3], invstd[3];
  CHECK_THROWS_AS(sela::cpu::batch_norm_forward_train<float>(
                      1, 3, 1, x, nullptr, nullptr, 1e-5f, 0.1f, nullptr, nullptr, y, mean, invstd),
                  sela::Error);
}
