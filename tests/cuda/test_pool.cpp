// Tests of kernels/cuda/pool.cuh against the CPU kernels (kernels/cpu/pool.h), on a GPU;
// skipped (loudly) without one.
//
// Shapes: 1x1 planes, odd sizes (7, 17, 33, 55), overlapping (3/2) and non-overlapping
// (2/2) windows, padding, stride 1 with a 5x5 kernel, and an AlexNet-sized batch. Inputs
// are fresh random values in [-2, 2); the forward output and argmax must equal the CPU's
// EXACTLY (the same scan order), and so must the backward pass (the same additions in the
// same order): atol = rtol = 0, outputs poisoned first and required finite. Also exact:
// inputs with many ties (values from {1, 2, 3}), and NaN propagation (planted NaNs: same
// argmax, same NaN outputs). The backward pass is run twice: identical bits.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/pool.h"
#include "kernels/cuda/pool.cuh"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::cuda::Pool2dShape;
using sela::test::check_close;
using sela::test::check_identical;
using sela::test::DeviceBuffer;
using sela::test::nan_vector;
using sela::test::poisoned;
using sela::test::random_vector;
using sela::test::TestStream;
using sela::test::Tolerance;

constexpr Tolerance kExact{0, 0};

std::string describe(const Pool2dShape& s) {
  return "(" + std::to_string(s.batch) + ", " + std::to_string(s.channels) + ", " +
         std::to_string(s.in_height) + ", " + std::to_string(s.in_width) + ") k" +
         std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w) + " s" +
         std::to_string(s.stride_h) + "x" + std::to_string(s.stride_w) + " p" +
         std::to_string(s.pad_h) + "x" + std::to_string(s.pad_w);
}

const Pool2dShape kShapes[] = {
    {1, 1, 1, 1, 1, 1, 1, 1, 0, 0},     {2, 3, 7, 7, 3, 3, 2, 2, 1, 1},
    {3, 5, 33, 33, 3, 3, 2, 2, 0, 0},   {2, 4, 33, 17, 2, 2, 2, 2, 1, 1},
    {2, 3, 17, 33, 5, 5, 1, 1, 2, 2},   {1, 2, 7, 33, 3, 2, 2, 1, 1, 0},
    {16, 96, 55, 55, 3, 3, 2, 2, 0, 0},
};

// Runs forward and backward on `input` (grad_output drawn from `seed`). Where NaNs were
// planted in the input, outputs are compared bitwise instead of being required finite.
template <typename T>
void check_pool(const Pool2dShape& s, const std::vector<T>& input, std::uint64_t seed,
                const std::string& what) {
  TestStream stream;
  const std::string tag = " " + describe(s) + " " + what + (sizeof(T) == 4 ? " float" : " double");
  const std::int64_t outputs = s.batch * s.channels * s.out_height() * s.out_width();
  const std::int64_t inputs = s.batch * s.channels * s.in_height * s.in_width;

  DeviceBuffer<T> din(input);
  auto out = poisoned<T>(outputs);
  auto arg = poisoned<std::int32_t>(outputs);
  sela::cuda::max_pool2d_forward<T>(s, din.data(), out.data(), arg.data(), stream);
  stream.sync();
  auto want_out = nan_vector<T>(outputs);
  std::vector<std::int32_t> want_arg(static_cast<std::size_t>(outputs), -1);
  sela::cpu::max_pool2d_forward<T>(s, input.data(), want_out.data(), want_arg.data());
  check_identical(arg.download(), want_arg, "max_pool2d argmax" + tag);
  bool has_nan = false;
  for (const T& v : input) has_nan = has_nan || std::isnan(v);
  if (has_nan) {
    check_identical(out.download(), want_out, "max_pool2d output" + tag);
  } else {
    check_close(out.download(), want_out, kExact, "max_pool2d output" + tag);
  }

  const auto grad_out = random_vector<T>(outputs, seed);
  DeviceBuffer<T> dgrad_out(grad_out);
  auto grad_in = poisoned<T>(inputs);
  sela::cuda::max_pool2d_backward<T>(s, dgrad_out.data(), arg.data(), grad_in.data(), stream);
  stream.sync();
  const auto got_grad = grad_in.download();
  auto want_grad = nan_vector<T>(inputs);
  sela::cpu::max_pool2d_backward<T>(s, grad_out.data(), want_arg.data(), want_grad.data());
  check_close(got_grad, want_grad, kExact, "max_pool2d_backward" + tag);

  grad_in.poison();
  sela::cuda::max_pool2d_backward<T>(s, dgrad_out.data(), arg.data(), grad_in.data(), stream);
  stream.sync();
  check_identical(grad_in.download(), got_grad, "max_pool2d_backward twice" + tag);
}

}  // namespace

SELA_CUDA_TEST("max_pool2d forward/backward equal the CPU kernels exactly on odd shapes",
               pool_random) {
  std::uint64_t seed = 4000;
  for (const Pool2dShape& s : kShapes) {
    const std::int64_t inputs = s.batch * s.channels * s.in_height * s.in_width;
    seed += 10;
    check_pool<float>(s, random_vector<float>(inputs, seed), seed + 1, "random");
    seed += 10;
    check_pool<double>(s, random_vector<double>(inputs, seed), seed + 1, "random");
  }
}

SELA_CUDA_TEST("max_pool2d ties: the first maximum in scan order wins, as on the CPU", pool_ties) {
  std::uint64_t seed = 5000;
  for (const Pool2dShape& s : kShapes) {
    const std::int64_t inputs = s.batch * s.channels * s.in_height * s.in_width;
    auto x = random_vector<float>(inputs, seed += 10, 1.0, 4.0);
    for (float& v : x) v = std::floor(v);
    check_pool<float>(s, x, seed + 1, "ties");
  }
}

SELA_CUDA_TEST("max_pool2d propagates NaN and records the same argmax as the CPU", pool_nan) {
  std::uint64_t seed = 6000;
  for (const Pool2dShape& s : kShapes) {
    const std::int64_t inputs = s.batch * s.channels * s.in_height * s.in_width;
    auto x = random_vector<float>(inputs, seed += 10);
    for (std::int64_t i = 0; i < inputs; i += 5) x[static_cast<std::size_t>(i)] = std::nanf("");
    // The gradient through a NaN maximum is still routed to its (recorded) position.
    check_pool<float>(s, x, seed + 1, "NaN");
  }
}
