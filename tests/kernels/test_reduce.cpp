// Tests of kernels/cpu/reduce.h: sum, sum_rows and argmax_rows against naive references in
// long double / double on random inputs, with 1 and 2 threads and sizes on both sides of
// the threading grain; sum's bitwise determinism for a fixed thread count; argmax's rules
// for ties (first wins) and NaN (first NaN wins).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/reduce.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::cpu::set_num_threads;
using sela::test::as;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::within_tolerance;

template <typename T>
void check_sum(std::int64_t n, std::uint64_t seed) {
  // Offset values (mean 0.25) so that the sum does not cancel to nothing.
  const auto values = as<T>(random_values(n, seed, -0.5, 1.0));
  long double ref = 0, abs_sum = 0;
  for (T v : values) {
    ref += static_cast<long double>(v);
    abs_sum += std::abs(static_cast<long double>(v));
  }
  const T got = sela::cpu::sum<T>(n, values.data());
  // Double accumulation: error well under 1e-13 * sum|x|; then one rounding to T.
  const double rtol = std::is_same<T, float>::value ? 1.2e-7 : 1e-15;
  const double atol = 1e-13 * static_cast<double>(abs_sum) + 1e-300;
  CAPTURE(n);
  CAPTURE(static_cast<double>(got));
  CAPTURE(static_cast<double>(ref));
  CHECK(within_tolerance(static_cast<double>(got), static_cast<double>(ref), atol, rtol));
}

}  // namespace

TEST_CASE("sum matches a long double reference (float, double; 1 and 2 threads)") {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    set_num_threads(threads);
    for (std::int64_t n : {1, 3, 7, 15, 16, 17, 33, 1000, 65537, 1000003}) {
      check_sum<float>(n, 100 + static_cast<std::uint64_t>(n));
      check_sum<double>(n, 200 + static_cast<std::uint64_t>(n));
    }
  }
  CHECK(sela::cpu::sum<float>(0, nullptr) == 0.0f);
  set_num_threads(0);
}

TEST_CASE("sum of float accumulates in double") {
  // 2^24 + 1 + 1 + ... : a float accumulator would stall at 2^24.
  std::vector<float> values(1001, 1.0f);
  values[0] = 16777216.0f;
  const float got = sela::cpu::sum<float>(static_cast<std::int64_t>(values.size()), values.data());
  CHECK(got == 16777216.0f + 1000.0f);
}

TEST_CASE("sum is bitwise reproducible for a fixed thread count") {
  const std::int64_t n = 3000017;
  const auto values = as<float>(random_values(n, 9, -1.0, 1.0));
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    set_num_threads(threads);
    const float first = sela::cpu::sum<float>(n, values.data());
    for (int repeat = 0; repeat < 5; ++repeat) {
      const float again = sela::cpu::sum<float>(n, values.data());
      CHECK(std::memcmp(&first, &again, sizeof(float)) == 0);
    }
  }
  set_num_threads(0);
}

TEST_CASE("sum_rows matches column sums in long double") {
  const std::pair<std::int64_t, std::int64_t> shapes[] = {
      {1, 1}, {3, 7}, {33, 5}, {7, 1000}, {256, 4099}, {1, 513}, {100003, 3}, {40000, 17}, {0, 5}};
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (auto shape : shapes) {
      const std::int64_t rows = shape.first, cols = shape.second;
      CAPTURE(threads);
      CAPTURE(rows);
      CAPTURE(cols);
      const auto x =
          random_values(rows * cols, 17 + static_cast<std::uint64_t>(rows * cols), -1.0, 1.0);
      std::vector<long double> ref(static_cast<std::size_t>(cols), 0.0L), abs_ref(ref);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
          ref[c] += x[r * cols + c];
          abs_ref[c] += std::abs(x[r * cols + c]);
        }
      const auto x_f = as<float>(x);
      auto out_d = poisoned<double>(cols);
      auto out_f = poisoned<float>(cols);
      sela::cpu::sum_rows<double>(rows, cols, x.data(), out_d.data());
      sela::cpu::sum_rows<float>(rows, cols, x_f.data(), out_f.data());
      std::int64_t bad_d = 0, bad_f = 0;
      for (std::int64_t c = 0; c < cols; ++c) {
        const double atol = 1e-13 * static_cast<double>(abs_ref[c]) + 1e-300;
        if (!within_tolerance(out_d[c], static_cast<double>(ref[c]), atol, 1e-15)) ++bad_d;
        // float: inputs rounded to float (error <= 6e-8 |x| each), then a double sum.
        const double atol_f = 6e-8 * static_cast<double>(abs_ref[c]) + 1e-30;
        if (!within_tolerance(out_f[c], static_cast<double>(ref[c]), atol_f, 1.2e-7)) ++bad_f;
      }
      CHECK(bad_d == 0);
      CHECK(bad_f == 0);
    }
  }
  set_num_threads(0);
}

namespace {

// Naive argmax: largest value, first one on ties; a NaN beats every number and the first
// NaN wins.
template <typename T>
std::int64_t reference_argmax(const T* row, std::int64_t cols) {
  for (std::int64_t c = 0; c < cols; ++c)
    if (std::isnan(row[c])) return c;
  std::int64_t best = 0;
  for (std::int64_t c = 1; c < cols; ++c)
    if (row[c] > row[best]) best = c;
  return best;
}

template <typename T>
void check_argmax(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  // Values on a coarse grid so that ties are frequent; some NaN and +-Inf sprinkled in.
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> grid(-4, 4);
  std::uniform_int_distribution<int> special(0, 199);
  std::vector<T> x(static_cast<std::size_t>(rows * cols));
  for (T& v : x) {
    v = static_cast<T>(grid(rng)) * T(0.5);
    const int s = special(rng);
    if (s == 0) v = std::numeric_limits<T>::quiet_NaN();
    if (s == 1) v = std::numeric_limits<T>::infinity();
    if (s == 2) v = -std::numeric_limits<T>::infinity();
  }
  std::vector<std::int64_t> out(static_cast<std::size_t>(rows), -12345);
  sela::cpu::argmax_rows<T>(rows, cols, x.data(), out.data());
  std::int64_t bad = 0;
  for (std::int64_t r = 0; r < rows; ++r)
    if (out[r] != reference_argmax(x.data() + r * cols, cols)) ++bad;
  CAPTURE(rows);
  CAPTURE(cols);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("argmax_rows: first maximum on ties, first NaN wins") {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    set_num_threads(threads);
    for (auto shape : {std::pair<std::int64_t, std::int64_t>{1, 1},
                       {3, 7},
                       {33, 3},
                       {7, 1000},
                       {5000, 33},
                       {2000, 128}}) {
      check_argmax<float>(shape.first, shape.second, 3);
      check_argmax<double>(shape.first, shape.second, 4);
    }
  }
  set_num_threads(0);

  // Hand-made rows.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float rows[4][4] = {{1, 3, 3, 2}, {nan, 5, nan, 1}, {-1, -1, -1, -1}, {0, 1, nan, 9}};
  std::int64_t out[4] = {-1, -1, -1, -1};
  sela::cpu::argmax_rows<float>(4, 4, &rows[0][0], out);
  CHECK(out[0] == 1);
  CHECK(out[1] == 0);
  CHECK(out[2] == 0);
  CHECK(out[3] == 2);
}

TEST_CASE("argmax_rows of random distinct values (float vs double agree)") {
  const std::int64_t rows = 301, cols = 129;
  const auto x = random_values(rows * cols, 55, -1.0, 1.0);
  const auto x_f = as<float>(x);
  std::vector<std::int64_t> out_d(rows, -1), out_f(rows, -1);
  sela::cpu::argmax_rows<double>(rows, cols, x.data(), out_d.data());
  sela::cpu::argmax_rows<float>(rows, cols, x_f.data(), out_f.data());
  std::int64_t bad = 0;
  for (std::int64_t r = 0; r < rows; ++r)
    if (out_d[r] != reference_argmax(x.data() + r * cols, cols) || out_f[r] != out_d[r]) ++bad;
  CHECK(bad == 0);
}

TEST_CASE("argmax_rows rejects rows without columns") {
  std::int64_t out = 0;
  CHECK_THROWS_AS(sela::cpu::argmax_rows<float>(2, 0, nullptr, &out), sela::Error);
}
