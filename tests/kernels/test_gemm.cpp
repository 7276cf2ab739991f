// Tests of kernels/cpu/gemm.h: sela::cpu::gemm (the configured library) and gemm_builtin
// (our own kernel, whatever the build chose), float and double, against a naive triple loop
// in double.
//
// Covered: all four transpose combinations; sizes around and across the builtin kernel's
// tile (12x32 / 6x16...), k slice (384 / 256) and column block (512 / 384) boundaries, from
// 1 up; row strides larger than the rows (the gap must stay untouched); beta == 0 with C
// poisoned by NaN (must not leak), beta != 0, alpha != 1; k == 0 and alpha == 0 (C = beta*C);
// argument errors; results of the builtin kernel identical for 1 and 2 threads.
// Tolerance: |got - ref| <= atol + rtol*|ref| with atol = 8*eps*k (inputs in [-1, 1], so the
// sum of |a*b| is below k) and rtol = 8*eps, eps of the element type; NaN/Inf fail.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::cpu::gemm;
using sela::cpu::gemm_builtin;
using sela::test::within_tolerance;

struct Case {
  bool transpose_a, transpose_b;
  std::int64_t m, n, k;
  std::int64_t pad_a, pad_b, pad_c;  // extra elements per stored row
  double alpha, beta;
};

template <typename T>
using GemmFn = void (*)(bool, bool, std::int64_t, std::int64_t, std::int64_t, T, const T*,
                        std::int64_t, const T*, std::int64_t, T, T*, std::int64_t);

// Runs one case through `fn` and checks every element of C (and the untouched gaps).
template <typename T>
void check_case(GemmFn<T> fn, const Case& c, std::mt19937& rng) {
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  const std::int64_t a_rows = c.transpose_a ? c.k : c.m, a_cols = c.transpose_a ? c.m : c.k;
  const std::int64_t b_rows = c.transpose_b ? c.n : c.k, b_cols = c.transpose_b ? c.k : c.n;
  const std::int64_t lda = a_cols + c.pad_a, ldb = b_cols + c.pad_b, ldc = c.n + c.pad_c;
  std::vector<T> a(static_cast<std::size_t>(std::max<std::int64_t>(1, a_rows * lda)));
  std::vector<T> b(static_cast<std::size_t>(std::max<std::int64_t>(1, b_rows * ldb)));
  for (T& x : a) x = static_cast<T>(uniform(rng));
  for (T& x : b) x = static_cast<T>(uniform(rng));
  const T sentinel = static_cast<T>(-12345.0);
  std::vector<T> c_in(static_cast<std::size_t>(std::max<std::int64_t>(1, c.m * ldc)), sentinel);
  for (std::int64_t i = 0; i < c.m; ++i)
    for (std::int64_t j = 0; j < c.n; ++j)
      c_in[i * ldc + j] =
          c.beta == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(uniform(rng));
  std::vector<T> c_out = c_in;
  fn(c.transpose_a, c.transpose_b, c.m, c.n, c.k, static_cast<T>(c.alpha), a.data(), lda, b.data(),
     ldb, static_cast<T>(c.beta), c_out.data(), ldc);

  const double eps = std::numeric_limits<T>::epsilon();
  const double atol = 8 * eps * static_cast<double>(std::max<std::int64_t>(c.k, 1));
  const double rtol = 8 * eps;
  int failures = 0;
  for (std::int64_t i = 0; i < c.m; ++i) {
    for (std::int64_t j = 0; j < c.n; ++j) {
      double sum = 0;
      for (std::int64_t p = 0; p < c.k; ++p) {
        double av = c.transpose_a ? a[p * lda + i] : a[i * lda + p];
        double bv = c.transpose_b ? b[j * ldb + p] : b[p * ldb + j];
        sum += av * bv;
      }
      double ref = c.alpha * sum + (c.beta == 0 ? 0.0 : c.beta * double(c_in[i * ldc + j]));
      double got = c_out[i * ldc + j];
      bool ok = within_tolerance(got, ref, atol, rtol);  // false for NaN/Inf
      if (!ok && failures++ < 3) {
        INFO("C(" << i << "," << j << ") = " << got << ", reference " << ref);
        CHECK(ok);
      }
    }
    for (std::int64_t j = c.n; j < ldc; ++j) {  // the gap between rows is not C
      if (c_out[i * ldc + j] != sentinel && failures++ < 3) {
        INFO("gap element C(" << i << "," << j << ") was written");
        CHECK(false);
      }
    }
  }
  CHECK(failures == 0);
}

std::vector<Case> cases() {
  // (m, n, k): edges of the register tile, k slices and cache blocks, and degenerate sizes.
  const std::int64_t sizes[][3] = {{1, 1, 1},     {7, 33, 130}, {33, 7, 1},     {130, 129, 33},
                                   {1, 130, 7},   {64, 1, 300}, {13, 65, 400},  {25, 530, 17},
                                   {12, 32, 384}, {3100, 9, 5}, {37, 517, 771}, {5, 3, 1000}};
  std::vector<Case> out;
  int variant = 0;
  for (const auto& s : sizes) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        ++variant;
        Case c{ta == 1, tb == 1, s[0], s[1], s[2], 0, 0, 0, 1.0, 0.0};
        if (variant % 2 == 0) c.pad_a = 3, c.pad_b = 5, c.pad_c = 2;  // non-tight strides
        if (variant % 3 == 1) c.alpha = 0.75, c.beta = 0.0;           // NaN-poisoned C
        if (variant % 3 == 2) c.alpha = -1.25, c.beta = 0.5;
        if (variant % 5 == 0) c.beta = 1.0;
        out.push_back(c);
      }
    }
  }
  return out;
}

std::string describe(const Case& c) {
  return std::string(c.transpose_a ? "A^T" : "A") + (c.transpose_b ? " B^T" : " B") +
         " m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         " pads=" + std::to_string(c.pad_a) + "," + std::to_string(c.pad_b) + "," +
         std::to_string(c.pad_c) + " alpha=" + std::to_string(c.alpha) +
         " beta=" + std::to_string(c.beta);
}

template <typename T>
void check_all(GemmFn<T> fn, std::uint32_t seed) {
  std::mt19937 rng(seed);
  for (const Case& c : cases()) {
    INFO(describe(c));
    check_case<T>(fn, c, rng);
  }
}

}  // namespace

TEST_CASE("gemm (configured backend) matches a naive double loop, float") {
  MESSAGE("gemm backend: " << std::string(sela::cpu::gemm_backend_name()));
  check_all<float>(&gemm<float>, 1);
}

TEST_CASE("gemm (configured backend) matches a naive double loop, double") {
  check_all<double>(&gemm<double>, 2);
}

TEST_CASE("gemm_builtin matches a naive double loop, float") {
  MESSAGE("builtin kernel: " << std::string(sela::cpu::gemm_builtin_tile_name<float>()));
  check_all<float>(&gemm_builtin<float>, 3);
}

TEST_CASE("gemm_builtin matches a naive double loop, double") {
  MESSAGE("builtin kernel: " << std::string(sela::cpu::gemm_builtin_tile_name<double>()));
  check_all<double>(&gemm_builtin<double>, 4);
}

TEST_CASE("gemm with k == 0 or alpha == 0 scales C by beta and never reads it when beta == 0") {
  for (auto fn : {&gemm<float>, &gemm_builtin<float>}) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> a(6, nan), b(6, 1.0f);  // A is never read when k == 0
    std::vector<float> c = {nan, nan, nan, nan};
    fn(false, false, 2, 2, 0, 1.0f, a.data(), 1, b.data(), 2, 0.0f, c.data(), 2);
    for (float x : c) CHECK(x == 0.0f);
    c = {1, 2, 3, 4};
    fn(false, false, 2, 2, 0, 1.0f, a.data(), 1, b.data(), 2, 0.5f, c.data(), 2);
    CHECK(c[0] == 0.5f);
    CHECK(c[3] == 2.0f);
    std::vector<float> finite_a = {1, 2, 3, 4};
    c = {1, 2, 3, 4};
    fn(false, false, 2, 2, 2, 0.0f, finite_a.data(), 2, b.data(), 2, 2.0f, c.data(), 2);
    CHECK(c[1] == 4.0f);
    fn(false, false, 0, 2, 2, 1.0f, nullptr, 2, b.data(), 2, 0.0f, nullptr, 2);  // empty: no-op
  }
}

TEST_CASE("gemm rejects bad arguments with sela::Error") {
  std::vector<float> a(16, 1.0f), b(16, 1.0f), c(16, 0.0f);
  CHECK_THROWS_AS(
      gemm<float>(false, false, -1, 2, 2, 1.0f, a.data(), 2, b.data(), 2, 0.0f, c.data(), 2),
      sela::Error);
  // A is (m=2, k=4) stored with lda = 3 < 4.
  CHECK_THROWS_AS(
      gemm<float>(false, false, 2, 2, 4, 1.0f, a.data(), 3, b.data(), 2, 0.0f, c.data(), 2),
      sela::Error);
  // A^T stored (k=4, m=3): lda must be >= 3.
  CHECK_THROWS_AS(
      gemm_builtin<float>(true, false, 3, 2, 4, 1.0f, a.data(), 2, b.data(), 2, 0.0f, c.data(), 2),
      sela::Error);
  CHECK_THROWS_AS(gemm<double>(false, true, 2, 3, 2, 1.0, nullptr, 2, nullptr, 2, 0.0, nullptr, 3),
                  sela::Error);
  try {
    gemm<float>(false, false, 2, 5, 2, 1.0f, a.data(), 2, b.data(), 5, 0.0f, c.data(), 4);
    FAIL("expected an error");
  } catch (const sela::Error& e) {
    CHECK(std::string(e.what()).find("ldc=4") != std::string::npos);
  }
}

TEST_CASE("gemm_builtin gives bitwise the same result for 1 and 2 threads") {
  const std::int64_t m = 150, n = 700, k = 500;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> a(m * k), b(k * n), c1(m * n), c2(m * n), c3(n * n);
  for (float& x : a) x = uniform(rng);
  for (float& x : b) x = uniform(rng);
  int before = sela::cpu::num_threads();
  sela::cpu::set_num_threads(1);
  gemm_builtin<float>(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c1.data(), n);
  sela::cpu::set_num_threads(2);
  gemm_builtin<float>(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c2.data(), n);
  sela::cpu::set_num_threads(before);
  CHECK(c1 == c2);
}
