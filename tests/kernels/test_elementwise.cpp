// Tests of kernels/cpu/elementwise.h: every kernel against a naive double-precision loop on
// random inputs (odd sizes, and sizes large enough to be split over threads), outputs
// poisoned with NaN first so that an unwritten element fails; ReLU's backward against
// central finite differences in float64, on inputs kept away from the kink at 0.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/parallel.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::cpu::set_num_threads;
using sela::test::as;
using sela::test::central_differences;
using sela::test::check_close;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::widen;

// Sizes: tiny, odd, one vector register, and past the threading grain (32768).
const std::int64_t kSizes[] = {1, 3, 7, 33, 100, 1000, 70001};

template <typename T>
double rtol_for() {
  return std::is_same<T, float>::value ? 2e-7 : 1e-15;
}

template <typename T>
void check_binary_and_unary_ops() {
  const double rtol = rtol_for<T>();
  for (std::int64_t n : kSizes) {
    CAPTURE(n);
    const auto a_ref = random_values(n, 11 + static_cast<std::uint64_t>(n), -2.0, 2.0);
    const auto b_ref = random_values(n, 29 + static_cast<std::uint64_t>(n), -2.0, 2.0);
    // Round the references through T first so only the op itself is measured.
    const auto a = as<T>(a_ref), b = as<T>(b_ref);
    const auto a_d = widen(a), b_d = widen(b);
    std::vector<double> want(static_cast<std::size_t>(n));

    auto out = poisoned<T>(n);
    sela::cpu::fill<T>(n, T(0.375), out.data());
    for (auto& w : want) w = 0.375;
    check_close(out, want, 0, 0, "fill");

    out = poisoned<T>(n);
    sela::cpu::add<T>(n, a.data(), b.data(), out.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a_d[i] + b_d[i];
    check_close(out, want, 1e-30, rtol, "add");

    out = poisoned<T>(n);
    sela::cpu::mul<T>(n, a.data(), b.data(), out.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a_d[i] * b_d[i];
    check_close(out, want, 1e-30, rtol, "mul");

    out = poisoned<T>(n);
    sela::cpu::scale<T>(n, T(-1.75), a.data(), out.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = -1.75 * a_d[i];
    check_close(out, want, 1e-30, rtol, "scale");

    auto y = b;  // axpy accumulates into y
    sela::cpu::axpy<T>(n, T(0.625), a.data(), y.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = b_d[i] + 0.625 * a_d[i];
    // Two roundings (alpha * x, then the add) unless fused: error up to eps * |alpha * x|.
    check_close(y, want, 4 * rtol, 2 * rtol, "axpy");

    out = poisoned<T>(n);
    sela::cpu::relu_forward<T>(n, a.data(), out.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a_d[i] > 0 ? a_d[i] : 0.0;
    check_close(out, want, 0, 0, "relu_forward");

    // In place: add into a copy of a.
    auto in_place = a;
    sela::cpu::add<T>(n, in_place.data(), b.data(), in_place.data());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = a_d[i] + b_d[i];
    check_close(in_place, want, 1e-30, rtol, "add in place");
  }
}

}  // namespace

TEST_CASE("elementwise ops match double loops (float and double, several sizes and threads)") {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    set_num_threads(threads);
    check_binary_and_unary_ops<float>();
    check_binary_and_unary_ops<double>();
  }
  set_num_threads(0);
}

TEST_CASE("relu_forward passes NaN through and handles in-place use") {
  std::vector<float> x = {-1.0f, 0.0f, 2.5f, std::numeric_limits<float>::quiet_NaN(), -0.0f};
  sela::cpu::relu_forward<float>(static_cast<std::int64_t>(x.size()), x.data(), x.data());
  CHECK(x[0] == 0.0f);
  CHECK(x[1] == 0.0f);
  CHECK(x[2] == 2.5f);
  CHECK(std::isnan(x[3]));
  CHECK(x[4] == 0.0f);
}

TEST_CASE("relu_backward matches central finite differences in float64") {
  // Inputs are kept at least 0.1 away from the kink at 0 so that a step of 1e-6 never
  // crosses it: there the derivative is 0 or 1 exactly.
  const std::int64_t n = 257;
  auto x = random_values(n, 5, -2.0, 2.0);
  for (double& v : x) v = v >= 0 ? v + 0.1 : v - 0.1;
  const auto weight = random_values(n, 6, -2.0, 2.0);  // loss = sum(weight * relu(x))
  auto y = poisoned<double>(n);
  sela::cpu::relu_forward<double>(n, x.data(), y.data());
  auto grad_x = poisoned<double>(n);
  sela::cpu::relu_backward<double>(n, y.data(), weight.data(), grad_x.data());

  std::vector<double> out(static_cast<std::size_t>(n));
  auto loss = [&] {
    sela::cpu::relu_forward<double>(n, x.data(), out.data());
    double total = 0;
    for (std::size_t i = 0; i < out.size(); ++i) total += weight[i] * out[i];
    return total;
  };
  const auto numeric = central_differences(&x, loss, 1e-6);
  check_close(grad_x, numeric, 1e-8, 1e-6, "relu_backward vs finite differences");

  // float agrees with double.
  const auto x_f = as<float>(x), w_f = as<float>(weight);
  auto y_f = poisoned<float>(n), gx_f = poisoned<float>(n);
  sela::cpu::relu_forward<float>(n, x_f.data(), y_f.data());
  sela::cpu::relu_backward<float>(n, y_f.data(), w_f.data(), gx_f.data());
  check_close(gx_f, grad_x, 1e-7, 1e-6, "relu_backward float vs double");
}

TEST_CASE("add_row_bias adds bias[c] to every row") {
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto shape :
         {std::pair<std::int64_t, std::int64_t>{1, 1}, {3, 7}, {33, 5}, {7, 4099}, {64, 1000}}) {
      const std::int64_t rows = shape.first, cols = shape.second;
      CAPTURE(threads);
      CAPTURE(rows);
      CAPTURE(cols);
      const auto m = random_values(rows * cols, 41, -2.0, 2.0);
      const auto bias = random_values(cols, 43, -2.0, 2.0);
      auto out_d = m;
      sela::cpu::add_row_bias<double>(rows, cols, bias.data(), out_d.data());
      auto out_f = as<float>(m);
      const auto bias_f = as<float>(bias);
      sela::cpu::add_row_bias<float>(rows, cols, bias_f.data(), out_f.data());
      std::vector<double> want(m.size());
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) want[r * cols + c] = m[r * cols + c] + bias[c];
      check_close(out_d, want, 1e-15, 1e-15, "add_row_bias double");
      check_close(out_f, want, 1e-6, 1e-6, "add_row_bias float");
    }
  }
  set_num_threads(0);
}

TEST_CASE("cast converts between the instantiated types") {
  const std::int64_t n = 1001;
  const auto values = random_values(n, 77, -1e6, 1e6);

  const auto as_double = values;
  auto to_float = poisoned<float>(n);
  sela::cpu::cast<double, float>(n, as_double.data(), to_float.data());
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(to_float[i] == static_cast<float>(values[i]));

  auto back = poisoned<double>(n);
  sela::cpu::cast<float, double>(n, to_float.data(), back.data());
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(back[i] == static_cast<double>(to_float[i]));

  std::vector<std::int64_t> ints(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) ints[i] = static_cast<std::int64_t>(values[i]) * 3;
  std::vector<std::int32_t> narrow(static_cast<std::size_t>(n), -7);
  sela::cpu::cast<std::int64_t, std::int32_t>(n, ints.data(), narrow.data());
  std::vector<std::int64_t> wide(static_cast<std::size_t>(n), -7);
  sela::cpu::cast<std::int32_t, std::int64_t>(n, narrow.data(), wide.data());
  auto from_int_f = poisoned<float>(n);
  auto from_int_d = poisoned<double>(n);
  sela::cpu::cast<std::int64_t, float>(n, ints.data(), from_int_f.data());
  sela::cpu::cast<std::int64_t, double>(n, ints.data(), from_int_d.data());
  for (std::int64_t i = 0; i < n; ++i) {
    REQUIRE(wide[i] == ints[i]);
    REQUIRE(from_int_d[i] == static_cast<double>(ints[i]));
    REQUIRE(from_int_f[i] == static_cast<float>(ints[i]));
  }
}

TEST_CASE("elementwise kernels reject a negative size") {
  float x = 1.0f;
  CHECK_THROWS_AS(sela::cpu::add<float>(-1, &x, &x, &x), sela::Error);
  CHECK_THROWS_AS(sela::cpu::add_row_bias<float>(2, -3, &x, &x), sela::Error);
}
