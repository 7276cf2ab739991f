// Tests of kernels/cuda/dropout.cuh against the CPU kernels (kernels/cpu/dropout.h), on a
// GPU; skipped (loudly) without one.
//
// The mask is a pure function of (seed, offset + i), so the GPU must reproduce the CPU's
// masks BIT FOR BIT — and its outputs too (x * scale is one IEEE multiply on both sides):
// compared exactly, for sizes 1 .. 2^20 + 1, offsets that start inside a Philox block (1, 2,
// 3, 77) and one that crosses the 2^32-block boundary (the counter's high word), p in
// {0, 0.1, 0.5, 0.9}, float and double, random 64-bit seeds, in place and out of place.
// Device outputs are poisoned first. A call split in two with offsets equals one call. The
// backward pass must equal the CPU's exactly.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/dropout.h"
#include "kernels/cuda/dropout.cuh"
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

constexpr Tolerance kExact{0, 0};

template <typename T>
void check_dropout(std::int64_t n, T p, std::uint64_t seed, std::uint64_t offset,
                   std::uint64_t data_seed) {
  TestStream stream;
  const std::string tag = " (n = " + std::to_string(n) + ", p = " + std::to_string(p) +
                          ", seed = " + std::to_string(seed) +
                          ", offset = " + std::to_string(offset) +
                          (sizeof(T) == 4 ? ", float)" : ", double)");
  const auto x = random_vector<T>(n, data_seed);
  DeviceBuffer<T> dx(x);
  auto y = poisoned<T>(n);
  auto mask = poisoned<std::uint8_t>(n);
  sela::cuda::dropout_forward<T>(n, dx.data(), p, seed, offset, y.data(), mask.data(), stream);
  stream.sync();
  auto want_y = nan_vector<T>(n);
  std::vector<std::uint8_t> want_mask(static_cast<std::size_t>(n), 7);
  sela::cpu::dropout_forward<T>(n, x.data(), p, seed, offset, want_y.data(), want_mask.data());
  const auto got_mask = mask.download();
  check_identical(got_mask, want_mask, "dropout mask" + tag);
  check_close(y.download(), want_y, kExact, "dropout_forward y" + tag);

  // In place (y = x).
  DeviceBuffer<T> in_place(x);
  auto mask2 = poisoned<std::uint8_t>(n);
  sela::cuda::dropout_forward<T>(n, in_place.data(), p, seed, offset, in_place.data(), mask2.data(),
                                 stream);
  stream.sync();
  check_close(in_place.download(), want_y, kExact, "dropout_forward in place" + tag);
  check_identical(mask2.download(), want_mask, "dropout mask in place" + tag);

  // Backward from the mask.
  const auto grad_y = random_vector<T>(n, data_seed + 1);
  DeviceBuffer<T> dgrad_y(grad_y);
  auto grad_x = poisoned<T>(n);
  sela::cuda::dropout_backward<T>(n, dgrad_y.data(), mask.data(), p, grad_x.data(), stream);
  stream.sync();
  auto want_grad = nan_vector<T>(n);
  sela::cpu::dropout_backward<T>(n, grad_y.data(), want_mask.data(), p, want_grad.data());
  check_close(grad_x.download(), want_grad, kExact, "dropout_backward" + tag);
}

}  // namespace

SELA_CUDA_TEST("dropout masks and outputs equal the CPU kernel's bit for bit", dropout_matches) {
  const std::int64_t sizes[] = {1, 7, 33, 1000, (1 << 20) + 1};
  const std::uint64_t offsets[] = {0, 1, 2, 3, 77, (std::uint64_t{1} << 34) - 5};
  std::mt19937_64 seeds(12345);
  std::uint64_t data_seed = 10000;
  for (std::int64_t n : sizes) {
    for (std::uint64_t offset : offsets) {
      for (double p : {0.0, 0.1, 0.5, 0.9}) {
        const std::uint64_t seed = seeds();
        check_dropout<float>(n, static_cast<float>(p), seed, offset, data_seed += 10);
        if (n <= 1000) check_dropout<double>(n, p, seed, offset, data_seed += 10);
      }
    }
  }
  check_dropout<double>((1 << 20) + 1, 0.3, seeds(), 5, data_seed + 10);
}

SELA_CUDA_TEST("dropout: a call split in two with offsets equals one call", dropout_split) {
  TestStream stream;
  const std::int64_t n = 100003, first = 33331;
  const std::uint64_t seed = 0xfeedfacecafebeefULL, offset = 1001;
  const auto x = random_vector<float>(n, 10500);
  DeviceBuffer<float> dx(x);
  auto whole_y = poisoned<float>(n), split_y = poisoned<float>(n);
  auto whole_mask = poisoned<std::uint8_t>(n), split_mask = poisoned<std::uint8_t>(n);
  sela::cuda::dropout_forward<float>(n, dx.data(), 0.4f, seed, offset, whole_y.data(),
                                     whole_mask.data(), stream);
  sela::cuda::dropout_forward<float>(first, dx.data(), 0.4f, seed, offset, split_y.data(),
                                     split_mask.data(), stream);
  sela::cuda::dropout_forward<float>(n - first, dx.data() + first, 0.4f, seed,
                                     offset + static_cast<std::uint64_t>(first),
                                     split_y.data() + first, split_mask.data() + first, stream);
  stream.sync();
  check_identical(split_mask.download(), whole_mask.download(), "split vs whole mask");
  check_identical(split_y.download(), whole_y.download(), "split vs whole output");
}
