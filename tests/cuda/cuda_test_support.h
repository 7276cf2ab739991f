// Shared pieces of the CUDA kernel tests (tests/cuda/test_*.cpp).
//
// SELA_CUDA_TEST(name, function) declares a doctest case that runs `function` only where a
// CUDA device is usable. Elsewhere it prints "SKIPPED (no CUDA device): <name> (<reason>)"
// and returns; CMake registers these binaries with SKIP_REGULAR_EXPRESSION on that text, so
// CTest reports them as Skipped, by name — never as passed.
//
// The comparison helpers follow the project's test rules: outputs are poisoned (device
// buffers with all-ones bytes, i.e. NaN) before a kernel runs, every value must be finite,
// and each element must satisfy |got - want| <= atol + rtol * |want| with the tolerance
// stated by the test. Failures report the count, the first offending index and the worst
// element, with a single CHECK per array (no flood of output).
#pragma once

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/device.cuh"

namespace sela::test {

inline bool cuda_device_present() {
  static const bool present = sela::cuda::device_count() > 0;
  return present;
}

}  // namespace sela::test

#define SELA_CUDA_TEST(name, function)                                                            \
  static void function();                                                                         \
  TEST_CASE(name) {                                                                               \
    if (!::sela::test::cuda_device_present()) {                                                   \
      MESSAGE("SKIPPED (no CUDA device): " name " (" << ::sela::cuda::no_device_reason() << ")"); \
      return;                                                                                     \
    }                                                                                             \
    function();                                                                                   \
  }                                                                                               \
  static void function()

namespace sela::test {

using sela::cuda::DeviceBuffer;

// A CUDA stream for one test (a blocking stream: the synchronous copies of DeviceBuffer on
// the legacy default stream are ordered after its work).
class TestStream {
 public:
  TestStream() { SELA_CUDA_CHECK(cudaStreamCreate(&stream_)); }
  ~TestStream() { SELA_CUDA_WARN(cudaStreamDestroy(stream_)); }
  TestStream(const TestStream&) = delete;
  TestStream& operator=(const TestStream&) = delete;
  cudaStream_t get() const { return stream_; }
  operator cudaStream_t() const { return stream_; }
  // Waits for the stream; an asynchronous kernel fault surfaces here as a sela::Error.
  void sync() const { SELA_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

// n values uniform in [lo, hi) (the probability of an exact zero is negligible).
template <typename T>
std::vector<T> random_vector(std::int64_t n, std::uint64_t seed, double lo = -2.0,
                             double hi = 2.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (T& x : v) x = static_cast<T>(dist(rng));
  return v;
}

// Integers uniform in [lo, hi].
inline std::vector<std::int64_t> random_indices(std::int64_t n, std::uint64_t seed, std::int64_t lo,
                                                std::int64_t hi) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> dist(lo, hi);
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (std::int64_t& x : v) x = dist(rng);
  return v;
}

// A host buffer filled with NaN (for CPU reference outputs).
template <typename T>
std::vector<T> nan_vector(std::int64_t n) {
  return std::vector<T>(static_cast<std::size_t>(n), static_cast<T>(std::nan("")));
}

// A device buffer of n elements, poisoned (NaN / -1 / 255).
template <typename T>
DeviceBuffer<T> poisoned(std::int64_t n) {
  DeviceBuffer<T> buffer(n);
  buffer.poison();
  return buffer;
}

struct Tolerance {
  double atol = 0, rtol = 0;
};

// Every got[i] finite and |got[i] - want[i]| <= atol + rtol * |want[i]|.
template <typename T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, Tolerance tol,
                 const std::string& what) {
  INFO(what << ": atol " << tol.atol << ", rtol " << tol.rtol);
  REQUIRE(got.size() == want.size());
  if (got.empty()) return;
  std::size_t nonfinite = 0, bad = 0, first_bad = 0, worst = 0;
  double worst_ratio = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (!std::isfinite(g) || !std::isfinite(w)) {
      if (nonfinite == 0) first_bad = i;
      ++nonfinite;
      continue;
    }
    const double allowed = tol.atol + tol.rtol * std::fabs(w);
    const double error = std::fabs(g - w);
    if (error > allowed) {
      if (bad == 0 && nonfinite == 0) first_bad = i;
      ++bad;
    }
    const double ratio = allowed > 0 ? error / allowed : (error > 0 ? INFINITY : 0.0);
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  INFO("first offending index " << first_bad << ": got " << static_cast<double>(got[first_bad])
                                << ", want " << static_cast<double>(want[first_bad]));
  INFO("worst index " << worst << ": got " << static_cast<double>(got[worst]) << ", want "
                      << static_cast<double>(want[worst]) << " (error / allowed = " << worst_ratio
                      << ")");
  CHECK_MESSAGE(nonfinite == 0, nonfinite << " of " << got.size() << " values are NaN/Inf");
  CHECK_MESSAGE(bad == 0, bad << " of " << got.size() << " values outside the tolerance");
}

// Same bytes (determinism checks, exact twins).
template <typename T>
void check_identical(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  INFO(what);
  REQUIRE(a.size() == b.size());
  std::size_t differing = 0, first = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      if (differing == 0) first = i;
      ++differing;
    }
  }
  INFO("first differing index " << first);
  CHECK_MESSAGE(differing == 0, differing << " of " << a.size() << " values differ bitwise");
}

}  // namespace sela::test
