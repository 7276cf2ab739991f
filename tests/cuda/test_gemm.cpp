// Tests of the cuBLAS GEMM (kernels/cuda/cublas_gemm.h) against the CPU gemm
// (kernels/cpu/gemm.h) computed in double on the same inputs.
//
// Cases: the four transpose combinations; sizes 1, 7, 33, 63-65, 129 and K = 1000; row
// strides with padding (3 extra elements per row) and without; alpha/beta = (1, 0) and
// (-0.75, 0.5); float with TF32 off and on, double; k = 0; the device's own stream (cuBLAS
// on our workspace) and a separate test stream (cuBLAS's default workspace pool).
// C is poisoned with NaN when beta = 0 (and must not be read); padding elements of C hold a
// sentinel that must survive bit for bit.
//
// Tolerance, per element: |got - want| <= rtol * M, where M = |alpha| * (|A| |B|) + |beta| * |C|
// (the CPU gemm on absolute values), the scale of the standard error bound of a dot product.
//   float, TF32 off  rtol 1e-5: fp32 accumulation of K <= 1000 terms in any order stays
//                    within ~1.3 sqrt(K) u M ~ 2.5e-6 M for random signs (u = 2^-24), and a
//                    TF32 product error (~2^-10 per product, ~4e-5 M at K = 1000) would not
//                    pass: the test also shows the default math mode is true fp32.
//   float, TF32 on   rtol 2.5e-3: each input keeps 10 mantissa bits (relative error <= 2^-10
//                    when truncated), so each product is off by <= 2^-9 |a||b| and the sum by
//                    <= 2^-9 M ~ 1.95e-3 M, plus the fp32 accumulation: a rigorous bound
//                    (about 1e-3 relative for K ~ 1000 as PyTorch documents it).
//   double           rtol 5e-13: both sides are double sums of K <= 1000 terms, each within
//                    gamma_K M ~ 1.1e-13 M.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/stream.h"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::test::DeviceBuffer;
using sela::test::TestStream;

struct GemmCase {
  bool transpose_a, transpose_b;
  std::int64_t m, n, k;
  double alpha, beta;
  std::int64_t pad;  // extra elements per row of A, B and C
};

constexpr float kSentinel = 777.25f;

// Restores the matmul math mode when a test ends, whatever happened.
struct Tf32Scope {
  explicit Tf32Scope(bool allow) : saved(sela::cuda::matmul_tf32()) {
    sela::cuda::set_matmul_tf32(allow);
  }
  ~Tf32Scope() { sela::cuda::set_matmul_tf32(saved); }
  bool saved;
};

std::string describe(const GemmCase& g, const char* type) {
  return std::string(type) + (g.transpose_a ? " A^T" : " A") + (g.transpose_b ? " B^T" : " B") +
         " m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
         " alpha=" + std::to_string(g.alpha) + " beta=" + std::to_string(g.beta) +
         " pad=" + std::to_string(g.pad);
}

// Runs one case on `stream` (synchronising as needed) and compares it with the CPU gemm in
// double. `on_device_stream`: the stream is device_stream(), which does not order with the
// synchronous copies of DeviceBuffer, so the device is synchronised around the call.
template <typename T>
void check_gemm(const GemmCase& g, double rtol, cudaStream_t stream, bool on_device_stream,
                std::uint64_t seed) {
  const std::string what = describe(g, sizeof(T) == 4 ? "float" : "double");
  const std::int64_t a_rows = g.transpose_a ? g.k : g.m, a_cols = g.transpose_a ? g.m : g.k;
  const std::int64_t b_rows = g.transpose_b ? g.n : g.k, b_cols = g.transpose_b ? g.k : g.n;
  const std::int64_t lda = a_cols + g.pad, ldb = b_cols + g.pad, ldc = g.n + g.pad;
  const auto a = sela::test::random_vector<T>(std::max<std::int64_t>(a_rows * lda, 1), seed, -1, 1);
  const auto b =
      sela::test::random_vector<T>(std::max<std::int64_t>(b_rows * ldb, 1), seed + 1, -1, 1);
  auto c = sela::test::random_vector<T>(g.m * ldc, seed + 2, -1, 1);
  for (std::int64_t i = 0; i < g.m; ++i)
    for (std::int64_t j = 0; j < ldc; ++j) {
      T& x = c[static_cast<std::size_t>(i * ldc + j)];
      if (j >= g.n)
        x = static_cast<T>(kSentinel);  // padding: must stay
      else if (g.beta == 0)
        x = static_cast<T>(std::nan(""));  // must not be read
    }

  // Reference and magnitude in double with the CPU gemm.
  std::vector<double> a64(a.begin(), a.end()), b64(b.begin(), b.end()), c64(c.begin(), c.end());
  std::vector<double> abs_a(a64.size()), abs_b(b64.size()), abs_c(c64.size());
  for (std::size_t i = 0; i < a64.size(); ++i) abs_a[i] = std::fabs(a64[i]);
  for (std::size_t i = 0; i < b64.size(); ++i) abs_b[i] = std::fabs(b64[i]);
  for (std::size_t i = 0; i < c64.size(); ++i)
    abs_c[i] = std::isnan(c64[i]) ? 0.0 : std::fabs(c64[i]);
  std::vector<double> want = c64, magnitude = abs_c;
  sela::cpu::gemm<double>(g.transpose_a, g.transpose_b, g.m, g.n, g.k, g.alpha, a64.data(), lda,
                          b64.data(), ldb, g.beta, want.data(), ldc);
  sela::cpu::gemm<double>(g.transpose_a, g.transpose_b, g.m, g.n, g.k, std::fabs(g.alpha),
                          abs_a.data(), lda, abs_b.data(), ldb, std::fabs(g.beta), magnitude.data(),
                          ldc);

  DeviceBuffer<T> da(a), db(b), dc(c);
  if (on_device_stream) SELA_CUDA_CHECK(cudaDeviceSynchronize());
  sela::cuda::gemm<T>(g.transpose_a, g.transpose_b, g.m, g.n, g.k, static_cast<T>(g.alpha),
                      da.data(), lda, db.data(), ldb, static_cast<T>(g.beta), dc.data(), ldc,
                      stream);
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<T> got = dc.download();

  INFO(what << ", rtol " << rtol << " of M = |alpha| |A||B| + |beta| |C|");
  std::size_t bad = 0, nonfinite = 0, padding_changed = 0, worst = 0;
  double worst_ratio = 0;
  for (std::int64_t i = 0; i < g.m; ++i)
    for (std::int64_t j = 0; j < ldc; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * ldc + j);
      if (j >= g.n) {
        const T sentinel = static_cast<T>(kSentinel);
        if (std::memcmp(&got[at], &sentinel, sizeof(T)) != 0) ++padding_changed;
        continue;
      }
      const double value = static_cast<double>(got[at]);
      if (!std::isfinite(value)) {
        ++nonfinite;
        continue;
      }
      const double allowed = rtol * magnitude[at];
      const double error = std::fabs(value - want[at]);
      if (error > allowed) ++bad;
      const double ratio = allowed > 0 ? error / allowed : (error > 0 ? INFINITY : 0.0);
      if (ratio > worst_ratio) {
        worst_ratio = ratio;
        worst = at;
      }
    }
  INFO("worst element " << worst << ": got " << static_cast<double>(got[worst]) << ", want "
                        << want[worst] << ", M " << magnitude[worst] << " (error / allowed "
                        << worst_ratio << ")");
  CHECK_MESSAGE(nonfinite == 0, nonfinite << " values are NaN/Inf");
  CHECK_MESSAGE(bad == 0, bad << " values are outside the tolerance");
  CHECK_MESSAGE(padding_changed == 0, padding_changed << " padding elements of C were written");
}

std::vector<GemmCase> all_cases() {
  struct Size {
    std::int64_t m, n, k;
  };
  const Size sizes[] = {{1, 1, 1},    {7, 33, 129}, {129, 7, 33},
                        {33, 129, 7}, {64, 65, 63}, {17, 23, 1000}};
  const double scalars[][2] = {{1.0, 0.0}, {-0.75, 0.5}};
  std::vector<GemmCase> cases;
  int index = 0;
  for (const Size& size : sizes)
    for (int t = 0; t < 4; ++t)
      for (const auto& scalar : scalars)
        cases.push_back(GemmCase{(t & 1) != 0, (t & 2) != 0, size.m, size.n, size.k, scalar[0],
                                 scalar[1], (index++ % 2) * 3});
  return cases;
}

}  // namespace

// --- without a GPU ---------------------------------------------------------------------------

TEST_CASE("cuBLAS gemm checks its arguments like the CPU gemm, before any CUDA call") {
  float* none = nullptr;
  CHECK_THROWS_AS(sela::cuda::gemm<float>(false, false, -1, 2, 2, 1.0f, none, 2, none, 2, 0.0f,
                                          none, 2, nullptr),
                  sela::Error);
  CHECK_THROWS_WITH_AS(sela::cuda::gemm<float>(false, false, 2, 3, 4, 1.0f, none, 4, none, 3, 0.0f,
                                               none, 2, nullptr),
                       doctest::Contains("ldc=2"), sela::Error);
  CHECK_THROWS_AS(sela::cuda::gemm<double>(true, false, 2, 3, 4, 1.0, nullptr, 2, nullptr, 3, 0.0,
                                           nullptr, 3, nullptr),
                  sela::Error);  // C null
  // An empty C is a no-op that touches nothing.
  sela::cuda::gemm<float>(false, false, 0, 3, 4, 1.0f, none, 4, none, 3, 0.0f, none, 3, nullptr);
}

TEST_CASE("matmul TF32 is off by default and cuBLAS reports its version without a GPU") {
  CHECK_FALSE(sela::cuda::matmul_tf32());
  const std::string version = sela::cuda::cublas_version_text();
  MESSAGE(version);
  CHECK(version.rfind("cuBLAS ", 0) == 0);
  CHECK(version.find('.') != std::string::npos);
}

// --- on a GPU ----------------------------------------------------------------------------------

SELA_CUDA_TEST("cuBLAS gemm equals the CPU gemm in double (float, TF32 off)", gemm_float) {
  Tf32Scope strict(false);
  TestStream stream;
  std::uint64_t seed = 100;
  for (const GemmCase& g : all_cases()) check_gemm<float>(g, 1e-5, stream, false, seed += 10);
}

SELA_CUDA_TEST("cuBLAS gemm equals the CPU gemm within the TF32 bound (float, TF32 on)",
               gemm_tf32) {
  Tf32Scope tf32(true);
  TestStream stream;
  std::uint64_t seed = 2000;
  for (const GemmCase& g : all_cases()) check_gemm<float>(g, 2.5e-3, stream, false, seed += 10);
}

SELA_CUDA_TEST("cuBLAS gemm equals the CPU gemm in double (double)", gemm_double) {
  TestStream stream;
  std::uint64_t seed = 4000;
  for (const GemmCase& g : all_cases()) check_gemm<double>(g, 5e-13, stream, false, seed += 10);
}

SELA_CUDA_TEST("cuBLAS gemm on the device stream (its own workspace) and with k = 0",
               gemm_device_stream) {
  const int device = sela::cuda::current_device();
  cudaStream_t stream = sela::cuda::device_stream(device);
  {
    Tf32Scope strict(false);
    check_gemm<float>(GemmCase{false, true, 129, 257, 1000, 1.0, 0.0, 0}, 1e-5, stream, true, 61);
    check_gemm<float>(GemmCase{true, false, 65, 33, 511, -0.75, 0.5, 3}, 1e-5, stream, true, 62);
  }
  {
    Tf32Scope tf32(true);  // a mode change on the same handle
    check_gemm<float>(GemmCase{false, false, 256, 256, 1000, 1.0, 0.0, 0}, 2.5e-3, stream, true,
                      63);
  }
  check_gemm<double>(GemmCase{true, true, 33, 65, 129, 1.5, -0.25, 3}, 5e-13, stream, true, 64);
  // k = 0: C = beta * C (zeros, without reading the NaN poison, when beta = 0).
  check_gemm<float>(GemmCase{false, false, 5, 6, 0, 1.0, 0.0, 3}, 1e-6, stream, true, 65);
  check_gemm<float>(GemmCase{false, false, 5, 6, 0, 1.0, 0.5, 3}, 1e-6, stream, true, 66);
  check_gemm<double>(GemmCase{true, false, 7, 4, 0, 2.0, -1.5, 0}, 1e-15, stream, true, 67);
  sela::cuda::synchronize_device_stream(device);
}
