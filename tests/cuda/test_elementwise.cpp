// Tests of kernels/cuda/elementwise.cuh against the CPU kernels (kernels/cpu/elementwise.h),
// on a GPU; skipped (loudly) without one.
//
// Fresh random inputs in [-2, 2) for every size (1, 7, 33, 1000, 2^20 + 3) and type; device
// outputs poisoned with NaN, CPU outputs filled with NaN; every output finite. Tolerance:
// fill, add, mul, scale, relu forward/backward, add_row_bias and cast are the same IEEE
// operation on both sides, so they must be EXACT (atol = rtol = 0); axpy may differ by the
// fused multiply-add nvcc emits: atol 1e-6, rtol 1e-6 (float), 1e-14 / 1e-14 (double).
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/elementwise.cuh"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::test::check_close;
using sela::test::DeviceBuffer;
using sela::test::nan_vector;
using sela::test::poisoned;
using sela::test::random_vector;
using sela::test::TestStream;
using sela::test::Tolerance;

constexpr Tolerance kExact{0, 0};
const std::int64_t kSizes[] = {1, 7, 33, 1000, (1 << 20) + 3};

template <typename T>
Tolerance axpy_tolerance() {
  return sizeof(T) == 4 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-14, 1e-14};
}

template <typename T>
void check_binary_and_unary(std::int64_t n, std::uint64_t seed) {
  TestStream stream;
  const std::string tag =
      " (n = " + std::to_string(n) + ", " + (sizeof(T) == 4 ? "float" : "double") + ")";
  const auto a = random_vector<T>(n, seed), b = random_vector<T>(n, seed + 1);
  DeviceBuffer<T> da(a), db(b);
  const T alpha = static_cast<T>(0.7321);

  {  // fill
    auto out = poisoned<T>(n);
    sela::cuda::fill<T>(n, a[0], out.data(), stream);
    stream.sync();
    auto want = nan_vector<T>(n);
    sela::cpu::fill<T>(n, a[0], want.data());
    check_close(out.download(), want, kExact, "fill" + tag);
  }
  {  // add, mul
    auto out = poisoned<T>(n);
    sela::cuda::add<T>(n, da.data(), db.data(), out.data(), stream);
    stream.sync();
    auto want = nan_vector<T>(n);
    sela::cpu::add<T>(n, a.data(), b.data(), want.data());
    check_close(out.download(), want, kExact, "add" + tag);

    out.poison();
    sela::cuda::mul<T>(n, da.data(), db.data(), out.data(), stream);
    stream.sync();
    sela::cpu::mul<T>(n, a.data(), b.data(), want.data());
    check_close(out.download(), want, kExact, "mul" + tag);
  }
  {  // scale
    auto out = poisoned<T>(n);
    sela::cuda::scale<T>(n, alpha, da.data(), out.data(), stream);
    stream.sync();
    auto want = nan_vector<T>(n);
    sela::cpu::scale<T>(n, alpha, a.data(), want.data());
    check_close(out.download(), want, kExact, "scale" + tag);
  }
  {  // axpy: y += alpha * x (y is input and output)
    DeviceBuffer<T> y(b);
    sela::cuda::axpy<T>(n, alpha, da.data(), y.data(), stream);
    stream.sync();
    auto want = b;
    sela::cpu::axpy<T>(n, alpha, a.data(), want.data());
    check_close(y.download(), want, axpy_tolerance<T>(), "axpy" + tag);
  }
  {  // relu forward (out of place and in place), backward from the output
    auto y = poisoned<T>(n);
    sela::cuda::relu_forward<T>(n, da.data(), y.data(), stream);
    stream.sync();
    auto want_y = nan_vector<T>(n);
    sela::cpu::relu_forward<T>(n, a.data(), want_y.data());
    check_close(y.download(), want_y, kExact, "relu_forward" + tag);

    DeviceBuffer<T> in_place(a);
    sela::cuda::relu_forward<T>(n, in_place.data(), in_place.data(), stream);
    stream.sync();
    check_close(in_place.download(), want_y, kExact, "relu_forward in place" + tag);

    auto grad_x = poisoned<T>(n);
    sela::cuda::relu_backward<T>(n, y.data(), db.data(), grad_x.data(), stream);
    stream.sync();
    auto want_grad = nan_vector<T>(n);
    sela::cpu::relu_backward<T>(n, want_y.data(), b.data(), want_grad.data());
    check_close(grad_x.download(), want_grad, kExact, "relu_backward" + tag);
  }
}

template <typename T>
void check_add_row_bias(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  TestStream stream;
  const std::string tag = " (" + std::to_string(rows) + " x " + std::to_string(cols) + ")";
  const auto matrix = random_vector<T>(rows * cols, seed), bias = random_vector<T>(cols, seed + 1);
  DeviceBuffer<T> out(matrix), dbias(bias);
  sela::cuda::add_row_bias<T>(rows, cols, dbias.data(), out.data(), stream);
  stream.sync();
  auto want = matrix;
  sela::cpu::add_row_bias<T>(rows, cols, bias.data(), want.data());
  check_close(out.download(), want, kExact, "add_row_bias" + tag);
}

template <typename From, typename To>
void check_cast(const std::vector<From>& in, const std::string& what) {
  TestStream stream;
  const auto n = static_cast<std::int64_t>(in.size());
  DeviceBuffer<From> din(in);
  auto out = poisoned<To>(n);
  sela::cuda::cast<From, To>(n, din.data(), out.data(), stream);
  stream.sync();
  std::vector<To> want(in.size());
  sela::cpu::cast<From, To>(n, in.data(), want.data());
  check_close(out.download(), want, kExact, "cast " + what + " (n = " + std::to_string(n) + ")");
}

template <typename T>
std::vector<T> random_integers(std::int64_t n, std::uint64_t seed, std::int64_t lo,
                               std::int64_t hi) {
  const auto values = sela::test::random_indices(n, seed, lo, hi);
  return std::vector<T>(values.begin(), values.end());
}

}  // namespace

SELA_CUDA_TEST("fill/add/mul/scale/axpy/relu equal the CPU kernels (float, double)",
               binary_and_unary) {
  std::uint64_t seed = 100;
  for (std::int64_t n : kSizes) {
    check_binary_and_unary<float>(n, seed += 10);
    check_binary_and_unary<double>(n, seed += 10);
  }
}

SELA_CUDA_TEST("fill on integer buffers equals the CPU kernel", fill_integers) {
  TestStream stream;
  for (std::int64_t n : kSizes) {
    auto i32 = poisoned<std::int32_t>(n);
    sela::cuda::fill<std::int32_t>(n, -123456, i32.data(), stream);
    auto i64 = poisoned<std::int64_t>(n);
    sela::cuda::fill<std::int64_t>(n, std::int64_t{1} << 40, i64.data(), stream);
    auto u8 = poisoned<std::uint8_t>(n);
    sela::cuda::fill<std::uint8_t>(n, 7, u8.data(), stream);
    stream.sync();
    CHECK(i32.download() == std::vector<std::int32_t>(static_cast<std::size_t>(n), -123456));
    CHECK(i64.download() ==
          std::vector<std::int64_t>(static_cast<std::size_t>(n), std::int64_t{1} << 40));
    CHECK(u8.download() == std::vector<std::uint8_t>(static_cast<std::size_t>(n), 7));
  }
}

SELA_CUDA_TEST("add_row_bias equals the CPU kernel on odd shapes", row_bias) {
  const std::int64_t shapes[][2] = {{1, 1}, {7, 33}, {33, 7}, {1000, 129}, {256, 4096}, {3, 4099}};
  std::uint64_t seed = 300;
  for (const auto& shape : shapes) {
    check_add_row_bias<float>(shape[0], shape[1], seed += 10);
    check_add_row_bias<double>(shape[0], shape[1], seed += 10);
  }
}

SELA_CUDA_TEST("cast equals the CPU kernel for every offered type pair", casts) {
  std::uint64_t seed = 500;
  for (std::int64_t n : kSizes) {
    check_cast<float, double>(random_vector<float>(n, seed += 10), "float -> double");
    check_cast<double, float>(random_vector<double>(n, seed += 10, -1e30, 1e30), "double -> float");
    check_cast<std::int32_t, std::int64_t>(
        random_integers<std::int32_t>(n, seed += 10, -2000000000, 2000000000), "int32 -> int64");
    check_cast<std::int64_t, std::int32_t>(
        random_integers<std::int64_t>(n, seed += 10, -2000000000, 2000000000), "int64 -> int32");
    // Large int64 values: the conversion to float / double rounds, identically on both sides.
    check_cast<std::int64_t, float>(
        random_integers<std::int64_t>(n, seed += 10, -(std::int64_t{1} << 62),
                                      std::int64_t{1} << 62),
        "int64 -> float");
    check_cast<std::int64_t, double>(
        random_integers<std::int64_t>(n, seed += 10, -(std::int64_t{1} << 62),
                                      std::int64_t{1} << 62),
        "int64 -> double");
    check_cast<std::int32_t, float>(
        random_integers<std::int32_t>(n, seed += 10, -2000000000, 2000000000), "int32 -> float");
    check_cast<std::int32_t, double>(
        random_integers<std::int32_t>(n, seed += 10, -2000000000, 2000000000), "int32 -> double");
    check_cast<std::uint8_t, float>(random_integers<std::uint8_t>(n, seed += 10, 0, 255),
                                    "uint8 -> float");
  }
}
