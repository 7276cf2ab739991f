// Tests of the cuDNN convolution (kernels/cuda/cudnn_conv.h) against the CPU kernels
// (kernels/cpu/conv2d.h) computed in double on the same inputs.
//
// Shapes: AlexNet's first layer on a 3x67x67 input (11x11, stride 4, pad 2) at batch 1 and 3;
// 5x5 pad 2; 3x3 pad 1 at batch 1 and 3; a 3x2 kernel with strides 2x1 and padding 0x1
// (input rows no window covers get a zero gradient); 1x1. Forward with and without bias,
// backward to the input, backward to the weight with and without the bias gradient; float with
// TF32 off and on, double; the heuristic and the timed (benchmark) algorithm search, the
// deterministic-only mode, the device's own stream (workspace from the caching allocator) and a
// separate test stream. Outputs are poisoned with NaN first (so "overwritten, not
// accumulated" is checked too) and must be finite.
//
// Tolerance, per element: |got - want| <= rtol * (M + M_max / 20), where M is the same CPU
// kernel applied to absolute values (|x|, |w|, |bias|, |grad_y|: the scale of the dot
// product's error bound) and M_max its largest element. The M_max term is there because FFT
// and Winograd algorithms spread rounding error across elements (it also covers the exact
// zeros of uncovered input pixels).
//   float, TF32 off  rtol 1e-4: fp32 arithmetic (u = 6e-8) with FFT/Winograd transforms, whose
//                    error grows by one to two orders of magnitude over a direct sum.
//   float, TF32 on   rtol 3e-3: each product within 2^-9 |x||w| (inputs truncated to 10
//                    mantissa bits), so the sum within ~1.95e-3 M, plus fp32 accumulation.
//   double           rtol 1e-11.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/stream.h"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::cpu::Conv2dShape;
using sela::test::DeviceBuffer;
using sela::test::TestStream;

Conv2dShape shape(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, std::int64_t o,
                  std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw,
                  std::int64_t ph, std::int64_t pw) {
  Conv2dShape s{};
  s.batch = n;
  s.in_channels = c;
  s.in_height = h;
  s.in_width = w;
  s.out_channels = o;
  s.kernel_h = kh;
  s.kernel_w = kw;
  s.stride_h = sh;
  s.stride_w = sw;
  s.pad_h = ph;
  s.pad_w = pw;
  return s;
}

const Conv2dShape kShapes[] = {
    shape(1, 3, 67, 67, 16, 11, 11, 4, 4, 2, 2),  // AlexNet conv1-like, batch 1
    shape(3, 3, 67, 67, 16, 11, 11, 4, 4, 2, 2),  // ... batch 3
    shape(3, 7, 15, 13, 10, 5, 5, 1, 1, 2, 2),    // 5x5 pad 2
    shape(1, 16, 9, 11, 24, 3, 3, 1, 1, 1, 1),    // 3x3 pad 1, batch 1
    shape(3, 16, 9, 11, 24, 3, 3, 1, 1, 1, 1),    // 3x3 pad 1, batch 3
    shape(2, 5, 8, 6, 3, 3, 2, 2, 1, 0, 1),       // odd kernel, strides and padding
    shape(3, 32, 7, 7, 17, 1, 1, 1, 1, 0, 0),     // 1x1
};

struct Precision {
  double rtol;
  const char* name;
};

// Sets the process-wide conv flags for a test and restores them at its end.
struct ConvFlags {
  ConvFlags(bool tf32, bool benchmark, bool deterministic)
      : saved_tf32(sela::cuda::conv_tf32()),
        saved_benchmark(sela::cuda::conv_benchmark()),
        saved_deterministic(sela::cuda::conv_deterministic()) {
    sela::cuda::set_conv_tf32(tf32);
    sela::cuda::set_conv_benchmark(benchmark);
    sela::cuda::set_conv_deterministic(deterministic);
  }
  ~ConvFlags() {
    sela::cuda::set_conv_tf32(saved_tf32);
    sela::cuda::set_conv_benchmark(saved_benchmark);
    sela::cuda::set_conv_deterministic(saved_deterministic);
  }
  bool saved_tf32, saved_benchmark, saved_deterministic;
};

std::int64_t input_size(const Conv2dShape& s) {
  return s.batch * s.in_channels * s.in_height * s.in_width;
}
std::int64_t output_size(const Conv2dShape& s) {
  return s.batch * s.out_channels * s.out_height() * s.out_width();
}
std::int64_t weight_size(const Conv2dShape& s) {
  return s.out_channels * s.in_channels * s.kernel_h * s.kernel_w;
}

template <typename T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}
std::vector<double> absolute(const std::vector<double>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::fabs(v[i]);
  return out;
}

// Every got[i] finite and within rtol * (magnitude[i] + max(magnitude) / 20) of want[i].
template <typename T>
void check_against(const std::vector<T>& got, const std::vector<double>& want,
                   const std::vector<double>& magnitude, double rtol, const std::string& what) {
  REQUIRE(got.size() == want.size());
  const double floor = *std::max_element(magnitude.begin(), magnitude.end()) / 20.0;
  std::size_t bad = 0, nonfinite = 0, worst = 0;
  double worst_ratio = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double value = static_cast<double>(got[i]);
    if (!std::isfinite(value)) {
      ++nonfinite;
      continue;
    }
    const double allowed = rtol * (magnitude[i] + floor);
    const double error = std::fabs(value - want[i]);
    if (error > allowed) ++bad;
    const double ratio = allowed > 0 ? error / allowed : (error > 0 ? INFINITY : 0.0);
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  INFO(what << ": rtol " << rtol << " of (M + max M / 20), max M " << floor * 20);
  INFO("worst element " << worst << ": got " << static_cast<double>(got[worst]) << ", want "
                        << want[worst] << ", M " << magnitude[worst] << " (error / allowed "
                        << worst_ratio << ")");
  CHECK_MESSAGE(nonfinite == 0, nonfinite << " of " << got.size() << " values are NaN/Inf");
  CHECK_MESSAGE(bad == 0, bad << " of " << got.size() << " values are outside the tolerance");
}

// All three directions for one shape on `stream`. `on_device_stream`: device_stream() does not
// order with DeviceBuffer's synchronous copies, so the device is synchronised around the calls.
template <typename T>
void check_conv(const Conv2dShape& s, const Precision& precision, cudaStream_t stream,
                bool on_device_stream, std::uint64_t seed) {
  const std::string what = std::string(precision.name) + " " + sela::cpu::conv2d_shape_text(s);
  const auto x = sela::test::random_vector<T>(input_size(s), seed);
  const auto w = sela::test::random_vector<T>(weight_size(s), seed + 1, -0.5, 0.5);
  const auto bias = sela::test::random_vector<T>(s.out_channels, seed + 2);
  const auto gy = sela::test::random_vector<T>(output_size(s), seed + 3);

  // References in double (the CPU im2col path), and magnitudes from absolute values.
  const auto x64 = to_double(x), w64 = to_double(w), b64 = to_double(bias), gy64 = to_double(gy);
  const auto ax = absolute(x64), aw = absolute(w64), ab = absolute(b64), agy = absolute(gy64);
  std::vector<double> want_y(output_size(s)), mag_y(output_size(s)), want_y_nobias(output_size(s));
  std::vector<double> mag_y_nobias(output_size(s));
  std::vector<double> want_gx(input_size(s)), mag_gx(input_size(s));
  std::vector<double> want_gw(weight_size(s)), mag_gw(weight_size(s));
  std::vector<double> want_gb(s.out_channels), mag_gb(s.out_channels);
  sela::cpu::conv2d_forward<double>(s, x64.data(), w64.data(), b64.data(), want_y.data());
  sela::cpu::conv2d_forward<double>(s, ax.data(), aw.data(), ab.data(), mag_y.data());
  sela::cpu::conv2d_forward<double>(s, x64.data(), w64.data(), nullptr, want_y_nobias.data());
  sela::cpu::conv2d_forward<double>(s, ax.data(), aw.data(), nullptr, mag_y_nobias.data());
  sela::cpu::conv2d_backward_input<double>(s, gy64.data(), w64.data(), want_gx.data());
  sela::cpu::conv2d_backward_input<double>(s, agy.data(), aw.data(), mag_gx.data());
  sela::cpu::conv2d_backward_weight<double>(s, x64.data(), gy64.data(), want_gw.data(),
                                            want_gb.data());
  sela::cpu::conv2d_backward_weight<double>(s, ax.data(), agy.data(), mag_gw.data(), mag_gb.data());

  DeviceBuffer<T> dx(x), dw(w), dbias(bias), dgy(gy);
  auto y = sela::test::poisoned<T>(output_size(s));
  auto y_nobias = sela::test::poisoned<T>(output_size(s));
  auto gx = sela::test::poisoned<T>(input_size(s));
  auto gw = sela::test::poisoned<T>(weight_size(s));
  auto gw_only = sela::test::poisoned<T>(weight_size(s));
  auto gb = sela::test::poisoned<T>(s.out_channels);
  if (on_device_stream) SELA_CUDA_CHECK(cudaDeviceSynchronize());
  sela::cuda::conv2d_forward<T>(s, dx.data(), dw.data(), dbias.data(), y.data(), stream);
  sela::cuda::conv2d_forward<T>(s, dx.data(), dw.data(), nullptr, y_nobias.data(), stream);
  sela::cuda::conv2d_backward_input<T>(s, dgy.data(), dw.data(), gx.data(), stream);
  sela::cuda::conv2d_backward_weight<T>(s, dx.data(), dgy.data(), gw.data(), gb.data(), stream);
  sela::cuda::conv2d_backward_weight<T>(s, dx.data(), dgy.data(), gw_only.data(), nullptr, stream);
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));

  const double rtol = precision.rtol;
  check_against(y.download(), want_y, mag_y, rtol, "conv2d_forward " + what);
  check_against(y_nobias.download(), want_y_nobias, mag_y_nobias, rtol,
                "conv2d_forward without bias " + what);
  check_against(gx.download(), want_gx, mag_gx, rtol, "conv2d_backward_input " + what);
  check_against(gw.download(), want_gw, mag_gw, rtol, "conv2d_backward_weight " + what);
  check_against(gb.download(), want_gb, mag_gb, rtol, "conv2d grad_bias " + what);
  check_against(gw_only.download(), want_gw, mag_gw, rtol,
                "conv2d_backward_weight without grad_bias " + what);
  for (int direction = 0; direction < 3; ++direction)
    CHECK_MESSAGE(!sela::cuda::conv2d_algorithm(s, direction).empty(),
                  "no algorithm recorded for direction " << direction << " of " << what);
}

constexpr Precision kStrictFloat{1e-4, "float fp32"};
constexpr Precision kTf32Float{3e-3, "float tf32"};
constexpr Precision kDouble{1e-11, "double"};

}  // namespace

// --- without a GPU ---------------------------------------------------------------------------

TEST_CASE("cuDNN conv checks shapes and buffers before any CUDA call") {
  float* none = nullptr;
  Conv2dShape bad = shape(1, 3, 8, 8, 4, 3, 3, 0, 1, 1, 1);  // stride 0
  CHECK_THROWS_AS(sela::cuda::conv2d_forward<float>(bad, none, none, none, none, nullptr),
                  sela::Error);
  Conv2dShape too_big_kernel = shape(1, 3, 4, 4, 4, 9, 9, 1, 1, 0, 0);
  CHECK_THROWS_AS(
      sela::cuda::conv2d_backward_input<double>(too_big_kernel, nullptr, nullptr, nullptr, nullptr),
      sela::Error);
  if (!sela::cuda::have_cudnn()) {
    MESSAGE("this build has no cuDNN: the conv functions must say how to get it");
    CHECK_THROWS_WITH_AS(sela::cuda::conv2d_forward<float>(shape(1, 1, 4, 4, 1, 3, 3, 1, 1, 0, 0),
                                                           none, none, none, none, nullptr),
                         doctest::Contains("CUDNN_ROOT"), sela::Error);
    return;
  }
  const Conv2dShape good = shape(1, 3, 8, 8, 4, 3, 3, 1, 1, 1, 1);
  CHECK_THROWS_WITH_AS(sela::cuda::conv2d_forward<float>(good, none, none, none, none, nullptr),
                       doctest::Contains("null"), sela::Error);
  // 2^32 input elements: beyond cuDNN's 4-d descriptors, refused with the shape named.
  const Conv2dShape huge = shape(1 << 16, 256, 256, 256, 4, 3, 3, 1, 1, 1, 1);
  float dummy = 0;
  CHECK_THROWS_WITH_AS(
      sela::cuda::conv2d_forward<float>(huge, &dummy, &dummy, nullptr, &dummy, nullptr),
      doctest::Contains("2^31"), sela::Error);
  CHECK_THROWS_AS((void)sela::cuda::conv2d_algorithm(good, 3), sela::Error);
}

TEST_CASE("conv flags default to PyTorch's and cuDNN reports its version without a GPU") {
  CHECK(sela::cuda::conv_tf32());
  CHECK_FALSE(sela::cuda::conv_benchmark());
  CHECK_FALSE(sela::cuda::conv_deterministic());
  CHECK(sela::cuda::conv2d_algorithm(shape(1, 2, 3, 4, 5, 1, 1, 1, 1, 0, 0), 0).empty());
  const std::string version = sela::cuda::cudnn_version_text();
  MESSAGE(version);
  CHECK(version.rfind("cuDNN ", 0) == 0);
}

// --- on a GPU ----------------------------------------------------------------------------------

SELA_CUDA_TEST("cuDNN conv equals the CPU kernels in double (float, TF32 off)", conv_float) {
  ConvFlags flags(false, false, false);
  TestStream stream;
  std::uint64_t seed = 300;
  for (const Conv2dShape& s : kShapes)
    check_conv<float>(s, kStrictFloat, stream, false, seed += 10);
}

SELA_CUDA_TEST("cuDNN conv equals the CPU kernels within the TF32 bound (float, TF32 on)",
               conv_tf32) {
  ConvFlags flags(true, false, false);
  TestStream stream;
  std::uint64_t seed = 500;
  for (const Conv2dShape& s : kShapes) check_conv<float>(s, kTf32Float, stream, false, seed += 10);
}

SELA_CUDA_TEST("cuDNN conv equals the CPU kernels (double)", conv_double) {
  ConvFlags flags(true, false, false);  // TF32 does not apply to double
  TestStream stream;
  std::uint64_t seed = 700;
  for (const Conv2dShape& s : kShapes) check_conv<double>(s, kDouble, stream, false, seed += 10);
}

SELA_CUDA_TEST("cuDNN conv on the device stream, timed search and deterministic mode", conv_modes) {
  const int device = sela::cuda::current_device();
  cudaStream_t stream = sela::cuda::device_stream(device);
  {
    ConvFlags flags(false, false, false);
    check_conv<float>(kShapes[1], kStrictFloat, stream, true, 901);
    check_conv<float>(kShapes[4], kStrictFloat, stream, true, 902);
  }
  {
    ConvFlags flags(true, true, false);  // benchmark: cudnnFind*Ex on the call's buffers
    check_conv<float>(kShapes[2], kTf32Float, stream, true, 903);
    const std::string text = sela::cuda::conv2d_algorithm(kShapes[2], 0);
    MESSAGE("timed search, forward " << sela::cpu::conv2d_shape_text(kShapes[2]) << ": " << text);
    CHECK(text.find("(timed)") != std::string::npos);
  }
  {
    ConvFlags flags(false, false, true);  // deterministic algorithms only
    check_conv<float>(kShapes[0], kStrictFloat, stream, true, 904);
    for (int direction = 0; direction < 3; ++direction) {
      const std::string text = sela::cuda::conv2d_algorithm(kShapes[0], direction);
      CHECK_MESSAGE(text.find(", deterministic") != std::string::npos, text);
    }
  }
  sela::cuda::synchronize_device_stream(device);
}

SELA_CUDA_TEST("the algorithm is chosen once per shape: the same text twice",
               conv_algorithm_cache) {
  TestStream stream;
  const Conv2dShape s = kShapes[3];
  std::string first[3], second[3];
  {
    ConvFlags flags(false, false, false);
    check_conv<float>(s, kStrictFloat, stream, false, 1001);
    for (int d = 0; d < 3; ++d) first[d] = sela::cuda::conv2d_algorithm(s, d);
    check_conv<float>(s, kStrictFloat, stream, false, 1002);
    for (int d = 0; d < 3; ++d) second[d] = sela::cuda::conv2d_algorithm(s, d);
  }
  for (int d = 0; d < 3; ++d) {
    MESSAGE("direction " << d << ": " << first[d]);
    CHECK(!first[d].empty());
    CHECK(first[d] == second[d]);
    CHECK(first[d].find("float fp32") == 0);
  }
  {
    ConvFlags flags(true, false, false);  // another math mode: another plan
    check_conv<float>(s, kTf32Float, stream, false, 1003);
    CHECK(sela::cuda::conv2d_algorithm(s, 0).find("float tf32") == 0);
  }
}
