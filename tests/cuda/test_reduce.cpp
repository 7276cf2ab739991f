// Tests of kernels/cuda/reduce.cuh against the CPU kernels (kernels/cpu/reduce.h), on a
// GPU; skipped (loudly) without one.
//
// sum and sum_rows: fresh random inputs in [-2, 2), sizes 1 .. 2^22 + 5 and odd matrix
// shapes (1 x 1 .. 100000 x 10). Both sides accumulate in double in different orders and
// round once to T, so float results agree to a couple of ulps: atol 1e-10 + rtol 2.5e-7;
// double results to the rounding of a double sum of up to 4M values: atol 1e-9 + rtol 1e-12.
// Determinism: two runs (and sum vs sum_into) give identical bits. argmax_rows must equal
// the CPU exactly, including planted ties (first wins), -0.0 vs +0.0, +inf, and NaN (the
// first NaN wins) on rows up to 100000 wide.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/reduce.h"
#include "kernels/cuda/reduce.cuh"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::test::check_close;
using sela::test::check_identical;
using sela::test::DeviceBuffer;
using sela::test::nan_vector;
using sela::test::poisoned;
using sela::test::random_vector;
using sela::test::TestStream;
using sela::test::Tolerance;

template <typename T>
Tolerance sum_tolerance() {
  return sizeof(T) == 4 ? Tolerance{1e-10, 2.5e-7} : Tolerance{1e-9, 1e-12};
}

template <typename T>
const char* type_name() {
  return sizeof(T) == 4 ? "float" : "double";
}

template <typename T>
void check_sum(std::int64_t n, std::uint64_t seed) {
  TestStream stream;
  const std::string tag = std::string(" (n = ") + std::to_string(n) + ", " + type_name<T>() + ")";
  const auto x = random_vector<T>(n, seed);
  DeviceBuffer<T> dx(x);
  const T got = sela::cuda::sum<T>(n, dx.data(), stream);
  const T again = sela::cuda::sum<T>(n, dx.data(), stream);
  const T want = sela::cpu::sum<T>(n, x.data());
  check_close(std::vector<T>{got}, std::vector<T>{want}, sum_tolerance<T>(), "sum" + tag);
  check_identical(std::vector<T>{got}, std::vector<T>{again}, "sum twice" + tag);

  // The asynchronous form with a caller workspace gives the same bits.
  auto workspace = poisoned<double>(sela::cuda::sum_workspace_size(n));
  auto out = poisoned<T>(1);
  sela::cuda::sum_into<T>(n, dx.data(), workspace.data(), out.data(), stream);
  stream.sync();
  check_identical(out.download(), std::vector<T>{got}, "sum_into vs sum" + tag);
}

template <typename T>
void check_sum_rows(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  TestStream stream;
  const std::string tag =
      " (" + std::to_string(rows) + " x " + std::to_string(cols) + ", " + type_name<T>() + ")";
  const auto x = random_vector<T>(rows * cols, seed);
  DeviceBuffer<T> dx(x);
  auto out = poisoned<T>(cols);
  sela::cuda::sum_rows<T>(rows, cols, dx.data(), out.data(), stream);
  stream.sync();
  const auto got = out.download();
  auto want = nan_vector<T>(cols);
  sela::cpu::sum_rows<T>(rows, cols, x.data(), want.data());
  check_close(got, want, sum_tolerance<T>(), "sum_rows" + tag);

  out.poison();
  sela::cuda::sum_rows<T>(rows, cols, dx.data(), out.data(), stream);
  stream.sync();
  check_identical(out.download(), got, "sum_rows twice" + tag);
}

template <typename T>
void check_argmax(std::int64_t rows, std::int64_t cols, std::vector<T> x, const std::string& what) {
  TestStream stream;
  DeviceBuffer<T> dx(x);
  auto out = poisoned<std::int64_t>(rows);
  sela::cuda::argmax_rows<T>(rows, cols, dx.data(), out.data(), stream);
  stream.sync();
  std::vector<std::int64_t> want(static_cast<std::size_t>(rows), -7);
  sela::cpu::argmax_rows<T>(rows, cols, x.data(), want.data());
  check_identical(out.download(), want,
                  "argmax_rows " + what + " (" + std::to_string(rows) + " x " +
                      std::to_string(cols) + ", " + type_name<T>() + ")");
}

// Random rows with planted special cases in the first rows (when there are enough columns):
// row 0: the maximum twice (the first must win); row 1: -0.0 then +0.0 as the maximum of
// negative values; row 2: +inf; row 3: two NaNs after the maximum (the first NaN wins);
// row 4: NaN in column 0.
template <typename T>
std::vector<T> argmax_input(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  auto x = random_vector<T>(rows * cols, seed);
  if (cols < 4) return x;
  auto row = [&](std::int64_t r) { return x.data() + r * cols; };
  const T nan = std::numeric_limits<T>::quiet_NaN();
  if (rows > 0) {
    row(0)[1] = T(5);
    row(0)[cols - 1] = T(5);
  }
  if (rows > 1) {
    for (std::int64_t c = 0; c < cols; ++c) row(1)[c] = -std::fabs(row(1)[c]) - T(1);
    row(1)[cols / 2] = T(-0.0);
    row(1)[cols - 1] = T(0.0);
  }
  if (rows > 2) row(2)[cols - 2] = std::numeric_limits<T>::infinity();
  if (rows > 3) {
    row(3)[0] = T(9);
    row(3)[cols / 2] = nan;
    row(3)[cols - 1] = nan;
  }
  if (rows > 4) row(4)[0] = nan;
  return x;
}

}  // namespace

SELA_CUDA_TEST("sum equals the CPU kernel and is bitwise reproducible", sum_matches) {
  const std::int64_t sizes[] = {1, 7, 33, 1000, 65536 + 1, (1 << 22) + 5};
  std::uint64_t seed = 1000;
  for (std::int64_t n : sizes) {
    check_sum<float>(n, seed += 10);
    check_sum<double>(n, seed += 10);
  }
}

SELA_CUDA_TEST("sum of zero elements is 0", sum_empty) {
  TestStream stream;
  CHECK(sela::cuda::sum<float>(0, nullptr, stream) == 0.0f);
}

SELA_CUDA_TEST("sum_rows (bias gradient) equals the CPU kernel and is reproducible",
               sum_rows_matches) {
  const std::int64_t shapes[][2] = {{1, 1},      {7, 33},     {33, 7},      {1000, 129},
                                    {256, 4096}, {256, 3000}, {100000, 10}, {0, 5}};
  std::uint64_t seed = 2000;
  for (const auto& shape : shapes) {
    check_sum_rows<float>(shape[0], shape[1], seed += 10);
    check_sum_rows<double>(shape[0], shape[1], seed += 10);
  }
}

SELA_CUDA_TEST("argmax_rows equals the CPU kernel exactly, ties, signed zeros, inf and NaN",
               argmax_matches) {
  const std::int64_t shapes[][2] = {{1, 1},       {7, 33},     {33, 1000},
                                    {1000, 3000}, {5, 100000}, {100000, 5}};
  std::uint64_t seed = 3000;
  for (const auto& shape : shapes) {
    check_argmax<float>(shape[0], shape[1], argmax_input<float>(shape[0], shape[1], seed += 10),
                        "random + planted");
    check_argmax<double>(shape[0], shape[1], argmax_input<double>(shape[0], shape[1], seed += 10),
                         "random + planted");
  }
  // Many ties: values from {1, 2, 3} only.
  auto ties = random_vector<float>(1000 * 37, 3999, 1.0, 4.0);
  for (float& v : ties) v = std::floor(v);
  check_argmax<float>(1000, 37, ties, "ties");
}
