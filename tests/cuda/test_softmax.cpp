// Tests of kernels/cuda/softmax.cuh against the CPU kernels (kernels/cpu/softmax.h), on a
// GPU; skipped (loudly) without one.
//
// Shapes (rows, cols): 1 x 1, odd sizes, the SeLa heads (256 x 128, 256 x 3000), long rows
// (2 x 100000) and many short rows (20000 x 10). Logits are fresh random values in [-5, 5)
// with a per-row offset of up to +-40 (the max subtraction must make it harmless); targets
// random in [0, cols). Device outputs are poisoned and must be finite. The GPU's expf may
// differ from the host's by an ulp or two and the log of the row sum is rounded to T, so
// float tolerances are
//   log_softmax / log_probs   atol 1e-5 + rtol 1e-5
//   log_softmax_backward      atol 2e-5 + rtol 1e-5   (grad_y in [-1, 1))
//   loss                      atol 1e-6 + rtol 1e-5
//   cross_entropy_backward    atol 1e-9 + rtol 1e-5   (values ~ 1 / rows)
// and 1e-12 (atol and rtol) in double. Forward and loss twice: identical bits. Invalid
// targets: the synchronous forward throws the CPU's error, the asynchronous one reports the
// row, the backward pass fills that row with NaN.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cuda/softmax.cuh"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::test::check_close;
using sela::test::check_identical;
using sela::test::DeviceBuffer;
using sela::test::nan_vector;
using sela::test::poisoned;
using sela::test::random_indices;
using sela::test::random_vector;
using sela::test::TestStream;
using sela::test::Tolerance;

const std::int64_t kShapes[][2] = {{1, 1},      {7, 33},     {33, 7},    {256, 128},
                                   {256, 3000}, {2, 100000}, {20000, 10}};

template <typename T>
Tolerance tolerance(double atol, double rtol) {
  return sizeof(T) == 4 ? Tolerance{atol, rtol} : Tolerance{1e-12, 1e-12};
}

// Random logits with a random offset per row.
template <typename T>
std::vector<T> random_logits(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  auto x = random_vector<T>(rows * cols, seed, -5.0, 5.0);
  const auto offsets = random_vector<double>(rows, seed + 1, -40.0, 40.0);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      x[static_cast<std::size_t>(r * cols + c)] +=
          static_cast<T>(offsets[static_cast<std::size_t>(r)]);
  return x;
}

template <typename T>
void check_softmax(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  TestStream stream;
  const std::int64_t n = rows * cols;
  const std::string tag = " (" + std::to_string(rows) + " x " + std::to_string(cols) +
                          (sizeof(T) == 4 ? ", float)" : ", double)");
  const auto x = random_logits<T>(rows, cols, seed);
  const auto targets = random_indices(rows, seed + 2, 0, cols - 1);
  const auto grad_y = random_vector<T>(n, seed + 3, -1.0, 1.0);
  DeviceBuffer<T> dx(x), dgrad_y(grad_y);
  DeviceBuffer<std::int64_t> dtargets(targets);

  // log_softmax forward, twice.
  auto y = poisoned<T>(n);
  sela::cuda::log_softmax_forward<T>(rows, cols, dx.data(), y.data(), stream);
  stream.sync();
  const auto got_y = y.download();
  auto want_y = nan_vector<T>(n);
  sela::cpu::log_softmax_forward<T>(rows, cols, x.data(), want_y.data());
  check_close(got_y, want_y, tolerance<T>(1e-5, 1e-5), "log_softmax_forward" + tag);
  y.poison();
  sela::cuda::log_softmax_forward<T>(rows, cols, dx.data(), y.data(), stream);
  stream.sync();
  check_identical(y.download(), got_y, "log_softmax_forward twice" + tag);

  // log_softmax backward, from the CPU's forward output.
  DeviceBuffer<T> dwant_y(want_y);
  auto grad_x = poisoned<T>(n);
  sela::cuda::log_softmax_backward<T>(rows, cols, dwant_y.data(), dgrad_y.data(), grad_x.data(),
                                      stream);
  stream.sync();
  auto want_grad_x = nan_vector<T>(n);
  sela::cpu::log_softmax_backward<T>(rows, cols, want_y.data(), grad_y.data(), want_grad_x.data());
  check_close(grad_x.download(), want_grad_x, tolerance<T>(2e-5, 1e-5),
              "log_softmax_backward" + tag);

  // Cross-entropy forward: synchronous and asynchronous forms, same bits.
  auto log_probs = poisoned<T>(n);
  const T loss = sela::cuda::cross_entropy_forward<T>(rows, cols, dx.data(), dtargets.data(),
                                                      log_probs.data(), stream);
  auto want_log_probs = nan_vector<T>(n);
  const T want_loss = sela::cpu::cross_entropy_forward<T>(rows, cols, x.data(), targets.data(),
                                                          want_log_probs.data());
  check_close(std::vector<T>{loss}, std::vector<T>{want_loss}, tolerance<T>(1e-6, 1e-5),
              "cross_entropy_forward loss" + tag);
  check_close(log_probs.download(), want_log_probs, tolerance<T>(1e-5, 1e-5),
              "cross_entropy_forward log_probs" + tag);

  auto log_probs2 = poisoned<T>(n);
  auto device_loss = poisoned<T>(1);
  auto bad_row = poisoned<std::int64_t>(1);
  sela::cuda::cross_entropy_forward_into<T>(rows, cols, dx.data(), dtargets.data(),
                                            log_probs2.data(), device_loss.data(), bad_row.data(),
                                            stream);
  stream.sync();
  check_identical(device_loss.download(), std::vector<T>{loss},
                  "forward_into vs forward loss" + tag);
  CHECK(bad_row.download()[0] == -1);

  // Cross-entropy backward, from the CPU's log-probabilities.
  const T grad_loss = static_cast<T>(0.7);
  DeviceBuffer<T> dwant_log_probs(want_log_probs);
  auto grad_logits = poisoned<T>(n);
  sela::cuda::cross_entropy_backward<T>(rows, cols, dwant_log_probs.data(), dtargets.data(),
                                        grad_loss, grad_logits.data(), stream);
  stream.sync();
  auto want_grad_logits = nan_vector<T>(n);
  sela::cpu::cross_entropy_backward<T>(rows, cols, want_log_probs.data(), targets.data(), grad_loss,
                                       want_grad_logits.data());
  check_close(grad_logits.download(), want_grad_logits, tolerance<T>(1e-9, 1e-5),
              "cross_entropy_backward" + tag);
}

}  // namespace

SELA_CUDA_TEST("log_softmax and cross-entropy forward/backward equal the CPU kernels",
               softmax_matches) {
  std::uint64_t seed = 11000;
  for (const auto& shape : kShapes) {
    check_softmax<float>(shape[0], shape[1], seed += 10);
    check_softmax<double>(shape[0], shape[1], seed += 10);
  }
}

SELA_CUDA_TEST("a NaN logit makes its row NaN, as on the CPU", softmax_nan_row) {
  TestStream stream;
  const std::int64_t rows = 3, cols = 50;
  auto x = random_vector<float>(rows * cols, 12000);
  x[60] = std::nanf("");  // row 1
  DeviceBuffer<float> dx(x);
  auto y = poisoned<float>(rows * cols);
  sela::cuda::log_softmax_forward<float>(rows, cols, dx.data(), y.data(), stream);
  stream.sync();
  const auto got = y.download();
  auto want = nan_vector<float>(rows * cols);
  sela::cpu::log_softmax_forward<float>(rows, cols, x.data(), want.data());
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    CAPTURE(i);
    CHECK(std::isnan(got[static_cast<std::size_t>(i)]) ==
          std::isnan(want[static_cast<std::size_t>(i)]));
  }
  CHECK(std::isnan(got[cols]));  // row 1 is NaN
  CHECK(!std::isnan(got[0]));    // rows 0 and 2 are not
  CHECK(!std::isnan(got[2 * cols]));
}

SELA_CUDA_TEST("invalid targets: forward throws, forward_into reports the row, backward NaNs it",
               cross_entropy_bad_target) {
  TestStream stream;
  const std::int64_t rows = 9, cols = 40;
  const auto x = random_vector<float>(rows * cols, 13000);
  auto targets = random_indices(rows, 13001, 0, cols - 1);
  targets[5] = cols;  // out of range
  targets[7] = -1;    // too, but row 5 is the first
  DeviceBuffer<float> dx(x);
  DeviceBuffer<std::int64_t> dtargets(targets);
  auto log_probs = poisoned<float>(rows * cols);

  try {
    sela::cuda::cross_entropy_forward<float>(rows, cols, dx.data(), dtargets.data(),
                                             log_probs.data(), stream);
    FAIL("no exception for an invalid target");
  } catch (const sela::Error& e) {
    CHECK(e.op() == "cross_entropy");
    CHECK(std::string(e.what()).find("target of row 5 is 40, outside [0, 40)") !=
          std::string::npos);
  }

  auto loss = poisoned<float>(1);
  auto bad_row = poisoned<std::int64_t>(1);
  sela::cuda::cross_entropy_forward_into<float>(rows, cols, dx.data(), dtargets.data(),
                                                log_probs.data(), loss.data(), bad_row.data(),
                                                stream);
  stream.sync();
  CHECK(bad_row.download()[0] == 5);
  CHECK(std::isnan(loss.download()[0]));

  auto grad = poisoned<float>(rows * cols);
  sela::cuda::cross_entropy_backward<float>(rows, cols, log_probs.data(), dtargets.data(), 1.0f,
                                            grad.data(), stream);
  stream.sync();
  const auto g = grad.download();
  for (std::int64_t r = 0; r < rows; ++r) {
    CAPTURE(r);
    const bool bad = r == 5 || r == 7;
    for (std::int64_t c = 0; c < cols; ++c)
      REQUIRE(std::isnan(g[static_cast<std::size_t>(r * cols + c)]) == bad);
  }
}
