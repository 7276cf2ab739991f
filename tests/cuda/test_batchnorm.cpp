// Tests of kernels/cuda/batchnorm.cuh against the CPU kernels (kernels/cpu/batchnorm.h), on a
// GPU; skipped (loudly) without one.
//
// Shapes (N, C, spatial): 2x1x1 (the smallest legal batch), odd sizes, BatchNorm1d (spatial
// 1), AlexNet-like planes; with and without gamma/beta and running statistics, and inputs
// with a large mean (50 + U(-2, 2)). Inputs are fresh random values; device outputs are
// poisoned with NaN and must be finite. Both sides compute the statistics in double, so
// the remaining differences are the fused multiply-adds of the GPU's elementwise pass:
// float tolerances are
//   y, eval y             atol 2e-6 + rtol 1e-5
//   save_mean, save_invstd, running stats   atol 1e-6 + rtol 1e-6 (save_invstd: rtol only)
//   grad_x                atol 4e-6 * max_c |gamma_c * invstd_c| + rtol 1e-5 (its three
//                         terms scale with gamma * invstd and cancel)
//   grad_gamma, grad_beta atol 1e-10 + rtol 1e-6 (double sums rounded once)
//   eval grad_x           atol 1e-7 + rtol 1e-6
// and a million times tighter in double, except grad_gamma / grad_beta there: atol 1e-14 *
// N * spatial (two double sums in different orders), rtol 1e-12. Training forward and
// backward run twice: identical bits. The fused ReLU variants are compared with the unfused
// kernels on the GPU (see there).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/batchnorm.h"
#include "kernels/cuda/batchnorm.cuh"
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

struct Shape {
  std::int64_t batch, channels, spatial;
};

// The training kernels cut a channel's N * spatial values into chunks of 8192 (at most 1024
// chunks): one chunk ({16, 64, 256}: exactly 4096), two unequal halves ({3, 5, 3025}), 24
// ({64, 3, 3025}), and the 1024-chunk cap ({2, 1, 4500001}).
const Shape kShapes[] = {{2, 1, 1},     {7, 3, 5},    {33, 7, 1},    {4, 33, 49},
                         {16, 64, 256}, {256, 16, 1}, {3, 5, 3025},  {64, 3, 3025},
                         {2, 1, 4500001}};

struct Options {
  bool affine = true;      // gamma and beta given
  bool track = true;       // running statistics given
  double mean_offset = 0;  // added to every input
};

template <typename T>
double scale_of_tolerance() {
  return sizeof(T) == 4 ? 1.0 : 1e-6;  // double: a million times tighter
}

// Device pointer of an optional buffer.
template <typename T>
T* pointer_or_null(DeviceBuffer<T>& buffer, bool present) {
  return present ? buffer.data() : nullptr;
}

template <typename T>
void check_batch_norm(const Shape& s, const Options& options, std::uint64_t seed) {
  TestStream stream;
  const double f = scale_of_tolerance<T>();
  const std::int64_t n = s.batch * s.channels * s.spatial, c = s.channels;
  const std::string tag =
      " (" + std::to_string(s.batch) + ", " + std::to_string(s.channels) + ", " +
      std::to_string(s.spatial) + ")" + (options.affine ? " affine" : " no-affine") +
      (options.track ? " tracked" : " untracked") + " offset " +
      std::to_string(options.mean_offset) + (sizeof(T) == 4 ? " float" : " double");
  const T eps = static_cast<T>(1e-5), momentum = static_cast<T>(0.1);
  const auto x = random_vector<T>(n, seed, options.mean_offset - 2, options.mean_offset + 2);
  const auto gamma = random_vector<T>(c, seed + 1, 0.5, 1.5);
  const auto beta = random_vector<T>(c, seed + 2);
  const auto running_mean0 = random_vector<T>(c, seed + 3);
  const auto running_var0 = random_vector<T>(c, seed + 4, 0.5, 2.0);
  const auto grad_y = random_vector<T>(n, seed + 5);

  // --- CPU reference -----------------------------------------------------------------------
  const T* cpu_gamma = options.affine ? gamma.data() : nullptr;
  const T* cpu_beta = options.affine ? beta.data() : nullptr;
  auto want_rm = running_mean0, want_rv = running_var0;
  auto want_y = nan_vector<T>(n), want_mean = nan_vector<T>(c), want_invstd = nan_vector<T>(c);
  sela::cpu::batch_norm_forward_train<T>(
      s.batch, s.channels, s.spatial, x.data(), cpu_gamma, cpu_beta, eps, momentum,
      options.track ? want_rm.data() : nullptr, options.track ? want_rv.data() : nullptr,
      want_y.data(), want_mean.data(), want_invstd.data());
  auto want_gx = nan_vector<T>(n), want_gg = nan_vector<T>(c), want_gb = nan_vector<T>(c);
  sela::cpu::batch_norm_backward_train<T>(s.batch, s.channels, s.spatial, x.data(), grad_y.data(),
                                          cpu_gamma, want_mean.data(), want_invstd.data(),
                                          want_gx.data(), want_gg.data(), want_gb.data());
  double k_max = 0;  // max over channels of |gamma * invstd|
  for (std::int64_t i = 0; i < c; ++i) {
    const double g = options.affine ? static_cast<double>(gamma[i]) : 1.0;
    k_max = std::max(k_max, std::fabs(g * static_cast<double>(want_invstd[i])));
  }

  // --- GPU ---------------------------------------------------------------------------------
  DeviceBuffer<T> dx(x), dgamma(gamma), dbeta(beta), dgrad_y(grad_y);
  // NaN at first: a kernel reading a chunk sum it did not write fails the comparisons; the
  // "twice" runs below reuse it with the previous call's contents.
  auto workspace =
      poisoned<double>(sela::cuda::batch_norm_workspace_size(s.batch, s.channels, s.spatial));
  auto run_forward = [&](DeviceBuffer<T>& y, DeviceBuffer<T>& mean, DeviceBuffer<T>& invstd,
                         DeviceBuffer<T>& rm, DeviceBuffer<T>& rv) {
    sela::cuda::batch_norm_forward_train<T>(
        s.batch, s.channels, s.spatial, dx.data(), pointer_or_null(dgamma, options.affine),
        pointer_or_null(dbeta, options.affine), eps, momentum, pointer_or_null(rm, options.track),
        pointer_or_null(rv, options.track), y.data(), mean.data(), invstd.data(), workspace.data(),
        stream);
    stream.sync();
  };
  auto y = poisoned<T>(n), mean = poisoned<T>(c), invstd = poisoned<T>(c);
  DeviceBuffer<T> rm(running_mean0), rv(running_var0);
  run_forward(y, mean, invstd, rm, rv);
  const auto got_y = y.download(), got_mean = mean.download(), got_invstd = invstd.download();
  check_close(got_y, want_y, {2e-6 * f, 1e-5 * f}, "batch_norm_forward_train y" + tag);
  check_close(got_mean, want_mean, {1e-6 * f, 1e-6 * f}, "save_mean" + tag);
  check_close(got_invstd, want_invstd, {0, 1e-6 * f}, "save_invstd" + tag);
  if (options.track) {
    check_close(rm.download(), want_rm, {1e-6 * f, 1e-6 * f}, "running_mean" + tag);
    check_close(rv.download(), want_rv, {1e-6 * f, 1e-6 * f}, "running_var" + tag);
  } else {
    CHECK(rm.download() == running_mean0);  // untouched
  }

  auto y2 = poisoned<T>(n), mean2 = poisoned<T>(c), invstd2 = poisoned<T>(c);
  DeviceBuffer<T> rm2(running_mean0), rv2(running_var0);
  run_forward(y2, mean2, invstd2, rm2, rv2);
  check_identical(y2.download(), got_y, "forward twice: y" + tag);
  check_identical(mean2.download(), got_mean, "forward twice: save_mean" + tag);
  check_identical(invstd2.download(), got_invstd, "forward twice: save_invstd" + tag);

  // Backward from the CPU's saved statistics (so that only the backward pass is compared).
  DeviceBuffer<T> dmean(want_mean), dinvstd(want_invstd);
  auto run_backward = [&](DeviceBuffer<T>& gx, DeviceBuffer<T>& gg, DeviceBuffer<T>& gb) {
    sela::cuda::batch_norm_backward_train<T>(
        s.batch, s.channels, s.spatial, dx.data(), dgrad_y.data(),
        pointer_or_null(dgamma, options.affine), dmean.data(), dinvstd.data(), gx.data(), gg.data(),
        gb.data(), workspace.data(), stream);
    stream.sync();
  };
  auto gx = poisoned<T>(n), gg = poisoned<T>(c), gb = poisoned<T>(c);
  run_backward(gx, gg, gb);
  const auto got_gx = gx.download();
  check_close(got_gx, want_gx, {4e-6 * f * k_max, 1e-5 * f},
              "batch_norm_backward_train grad_x" + tag);
  const Tolerance sums = sizeof(T) == 4
                             ? Tolerance{1e-10, 1e-6}
                             : Tolerance{1e-14 * static_cast<double>(s.batch * s.spatial), 1e-12};
  check_close(gg.download(), want_gg, sums, "grad_gamma" + tag);
  check_close(gb.download(), want_gb, sums, "grad_beta" + tag);
  auto gx2 = poisoned<T>(n), gg2 = poisoned<T>(c), gb2 = poisoned<T>(c);
  run_backward(gx2, gg2, gb2);
  check_identical(gx2.download(), got_gx, "backward twice: grad_x" + tag);

  // grad_gamma / grad_beta are optional outputs.
  auto gx3 = poisoned<T>(n);
  sela::cuda::batch_norm_backward_train<T>(s.batch, s.channels, s.spatial, dx.data(),
                                           dgrad_y.data(), pointer_or_null(dgamma, options.affine),
                                           dmean.data(), dinvstd.data(), gx3.data(), nullptr,
                                           nullptr, workspace.data(), stream);
  stream.sync();
  check_identical(gx3.download(), got_gx, "backward without grad_gamma/grad_beta" + tag);

  // --- the fused ReLU variants, against the unfused kernels on the same device -------------
  // Forward: relu(the unfused y) with the same statistics; backward: the unfused backward of
  // the gradient masked where the fused output is not > 0. The GPU's own y is the reference
  // (a CPU y of the other sign at an element within rounding of 0 would flip the mask). The
  // arithmetic is the same, so the tolerance is a few ulps; a wrong mask is off by O(1).
  {
    auto yr = poisoned<T>(n), mean_r = poisoned<T>(c), invstd_r = poisoned<T>(c);
    DeviceBuffer<T> rm_r(running_mean0), rv_r(running_var0);
    sela::cuda::batch_norm_relu_forward_train<T>(
        s.batch, s.channels, s.spatial, dx.data(), pointer_or_null(dgamma, options.affine),
        pointer_or_null(dbeta, options.affine), eps, momentum, pointer_or_null(rm_r, options.track),
        pointer_or_null(rv_r, options.track), yr.data(), mean_r.data(), invstd_r.data(),
        workspace.data(), stream);
    stream.sync();
    std::vector<T> relu_y = got_y;
    for (T& v : relu_y) v = v < T(0) ? T(0) : v;
    const Tolerance ulps{1e-7 * f, 1e-6 * f};
    const std::vector<T> got_yr = yr.download();
    check_close(got_yr, relu_y, ulps, "batch_norm_relu_forward_train y" + tag);
    check_identical(mean_r.download(), got_mean, "fused forward: save_mean" + tag);
    check_identical(invstd_r.download(), got_invstd, "fused forward: save_invstd" + tag);

    std::vector<T> masked = grad_y;
    for (std::size_t i = 0; i < masked.size(); ++i)
      masked[i] = got_yr[i] > T(0) ? grad_y[i] : T(0);
    DeviceBuffer<T> dmasked(masked), dyr(got_yr);
    auto gx_u = poisoned<T>(n), gg_u = poisoned<T>(c), gb_u = poisoned<T>(c);
    sela::cuda::batch_norm_backward_train<T>(
        s.batch, s.channels, s.spatial, dx.data(), dmasked.data(),
        pointer_or_null(dgamma, options.affine), dmean.data(), dinvstd.data(), gx_u.data(),
        gg_u.data(), gb_u.data(), workspace.data(), stream);
    auto gx_f = poisoned<T>(n), gg_f = poisoned<T>(c), gb_f = poisoned<T>(c);
    sela::cuda::batch_norm_relu_backward_train<T>(
        s.batch, s.channels, s.spatial, dx.data(), dgrad_y.data(), dyr.data(),
        pointer_or_null(dgamma, options.affine), dmean.data(), dinvstd.data(), gx_f.data(),
        gg_f.data(), gb_f.data(), workspace.data(), stream);
    stream.sync();
    check_close(gx_f.download(), gx_u.download(), {ulps.atol * k_max, ulps.rtol},
                "batch_norm_relu_backward_train grad_x" + tag);
    check_close(gg_f.download(), gg_u.download(), sums, "fused grad_gamma" + tag);
    check_close(gb_f.download(), gb_u.download(), sums, "fused grad_beta" + tag);
  }

  // --- eval mode, with the running statistics as constants ----------------------------------
  DeviceBuffer<T> drm0(running_mean0), drv0(running_var0);
  auto ye = poisoned<T>(n);
  sela::cuda::batch_norm_forward_eval<T>(
      s.batch, s.channels, s.spatial, dx.data(), pointer_or_null(dgamma, options.affine),
      pointer_or_null(dbeta, options.affine), drm0.data(), drv0.data(), eps, ye.data(), stream);
  stream.sync();
  auto want_ye = nan_vector<T>(n);
  sela::cpu::batch_norm_forward_eval<T>(s.batch, s.channels, s.spatial, x.data(), cpu_gamma,
                                        cpu_beta, running_mean0.data(), running_var0.data(), eps,
                                        want_ye.data());
  check_close(ye.download(), want_ye, {2e-6 * f, 1e-5 * f}, "batch_norm_forward_eval" + tag);

  auto gxe = poisoned<T>(n);
  sela::cuda::batch_norm_backward_eval<T>(s.batch, s.channels, s.spatial, dgrad_y.data(),
                                          pointer_or_null(dgamma, options.affine), drv0.data(), eps,
                                          gxe.data(), stream);
  stream.sync();
  auto want_gxe = nan_vector<T>(n);
  sela::cpu::batch_norm_backward_eval<T>(s.batch, s.channels, s.spatial, grad_y.data(), cpu_gamma,
                                         running_var0.data(), eps, want_gxe.data());
  check_close(gxe.download(), want_gxe, {1e-7 * f, 1e-6 * f}, "batch_norm_backward_eval" + tag);
}

}  // namespace

SELA_CUDA_TEST("batch norm train/eval forward and backward equal the CPU kernels (float)",
               batch_norm_float) {
  std::uint64_t seed = 7000;
  for (const Shape& s : kShapes) {
    check_batch_norm<float>(s, Options{}, seed += 10);
    check_batch_norm<float>(s, Options{false, false, 0}, seed += 10);
  }
}

SELA_CUDA_TEST("batch norm on inputs with a large mean equals the CPU kernels", batch_norm_offset) {
  std::uint64_t seed = 8000;
  for (const Shape& s : kShapes) check_batch_norm<float>(s, Options{true, true, 50.0}, seed += 10);
}

SELA_CUDA_TEST("batch norm in double equals the CPU kernels to 1e-12", batch_norm_double) {
  std::uint64_t seed = 9000;
  for (const Shape& s : kShapes) check_batch_norm<double>(s, Options{}, seed += 10);
}
