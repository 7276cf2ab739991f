// Tests of kernels/cpu/pool.h: max_pool2d forward against a naive double loop that walks the
// whole padded window (padding as -inf), on the AlexNet shapes (kernel 3 stride 2 on
// 32/15/7 and 55/27/13) and on odd, padded, non-square and stride > kernel shapes; the
// backward pass against central finite differences in float64 and against a reference
// scatter; NaN propagation as in PyTorch; shape errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pool.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::cpu::Pool2dShape;
using sela::test::as;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::widen;
using sela::test::within_tolerance;

Pool2dShape make_shape(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                       std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw,
                       std::int64_t ph = 0, std::int64_t pw = 0) {
  Pool2dShape s{n, c, h, w, kh, kw, sh, sw};
  s.pad_h = ph;
  s.pad_w = pw;
  return s;
}

// The shapes under test: AlexNet's pools, then odd/padded/non-square ones.
std::vector<Pool2dShape> test_shapes() {
  return {
      make_shape(2, 3, 32, 32, 3, 3, 2, 2),      // alexnet-32: 32 -> 15
      make_shape(2, 3, 15, 15, 3, 3, 2, 2),      // 15 -> 7
      make_shape(2, 3, 7, 7, 3, 3, 2, 2),        // 7 -> 3
      make_shape(2, 2, 55, 55, 3, 3, 2, 2),      // alexnet: 55 -> 27
      make_shape(2, 3, 27, 27, 3, 3, 2, 2),      // 27 -> 13
      make_shape(2, 3, 13, 13, 3, 3, 2, 2),      // 13 -> 6
      make_shape(1, 1, 1, 1, 1, 1, 1, 1),        // a single element
      make_shape(3, 1, 8, 9, 3, 3, 2, 2, 1, 1),  // padded
      make_shape(1, 2, 7, 7, 2, 2, 2, 2),        // odd size, kernel 2 drops the last row
      make_shape(2, 1, 10, 11, 2, 2, 3, 3),      // stride > kernel: gaps
      make_shape(1, 3, 5, 5, 3, 3, 1, 1, 1, 1),  // stride 1, "same" size
      make_shape(2, 2, 6, 7, 2, 3, 1, 2, 1, 1),  // non-square kernel, stride and padding
      make_shape(1, 2, 5, 4, 5, 4, 1, 1),        // global pooling
      make_shape(1, 1, 33, 3, 4, 2, 3, 1, 2, 1),
  };
}

// Distinct values spaced 0.01 apart in random order: no ties, and a finite-difference step
// of 1e-6 cannot change which element of a window is the maximum.
std::vector<double> spaced_values(std::int64_t n, std::uint64_t seed) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[i] = 0.01 * static_cast<double>(i - n / 2);
  std::mt19937_64 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

std::int64_t input_size(const Pool2dShape& s) {
  return s.batch * s.channels * s.in_height * s.in_width;
}
std::int64_t output_size(const Pool2dShape& s) {
  return s.batch * s.channels * s.out_height() * s.out_width();
}

// Naive forward over the full padded window, padded positions being -inf; the first
// maximum in scan order wins, and a NaN always wins (the last NaN in scan order stays).
void reference_forward(const Pool2dShape& s, const std::vector<double>& input,
                       std::vector<double>* output, std::vector<std::int64_t>* argmax) {
  const std::int64_t oh_n = s.out_height(), ow_n = s.out_width();
  output->assign(static_cast<std::size_t>(output_size(s)), 0.0);
  argmax->assign(static_cast<std::size_t>(output_size(s)), -1);
  for (std::int64_t p = 0; p < s.batch * s.channels; ++p)
    for (std::int64_t oh = 0; oh < oh_n; ++oh)
      for (std::int64_t ow = 0; ow < ow_n; ++ow) {
        double best = -std::numeric_limits<double>::infinity();
        std::int64_t best_index = -1;
        for (std::int64_t kh = 0; kh < s.kernel_h; ++kh)
          for (std::int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const std::int64_t h = oh * s.stride_h - s.pad_h + kh;
            const std::int64_t w = ow * s.stride_w - s.pad_w + kw;
            const bool inside = h >= 0 && h < s.in_height && w >= 0 && w < s.in_width;
            const double v = inside ? input[(p * s.in_height + h) * s.in_width + w]
                                    : -std::numeric_limits<double>::infinity();
            if (v > best || std::isnan(v)) {
              best = v;
              best_index = h * s.in_width + w;
            }
          }
        const std::int64_t o = (p * oh_n + oh) * ow_n + ow;
        (*output)[o] = best;
        (*argmax)[o] = best_index;
      }
}

template <typename T>
void check_forward(const Pool2dShape& s, std::uint64_t seed) {
  const auto input_d = random_values(input_size(s), seed, -3.0, 3.0);
  const auto input = as<T>(input_d);
  const auto rounded = widen(input);
  std::vector<double> want;
  std::vector<std::int64_t> want_arg;
  reference_forward(s, rounded, &want, &want_arg);

  auto output = poisoned<T>(output_size(s));
  std::vector<std::int32_t> argmax(output.size(), -7);
  sela::cpu::max_pool2d_forward<T>(s, input.data(), output.data(), argmax.data());
  std::int64_t bad = 0;
  for (std::size_t o = 0; o < output.size(); ++o)
    // A max is a copy of an input: exact.
    if (!(static_cast<double>(output[o]) == want[o]) || argmax[o] != want_arg[o]) ++bad;
  CHECK(bad == 0);
}

std::string describe(const Pool2dShape& s) {
  std::ostringstream out;
  out << "(" << s.batch << "," << s.channels << "," << s.in_height << "," << s.in_width << ") k"
      << s.kernel_h << "x" << s.kernel_w << " s" << s.stride_h << "x" << s.stride_w << " p"
      << s.pad_h << "x" << s.pad_w;
  return out.str();
}

}  // namespace

TEST_CASE("max_pool2d output size follows PyTorch (floor mode)") {
  CHECK(make_shape(1, 1, 32, 32, 3, 3, 2, 2).out_height() == 15);
  CHECK(make_shape(1, 1, 15, 15, 3, 3, 2, 2).out_height() == 7);
  CHECK(make_shape(1, 1, 7, 7, 3, 3, 2, 2).out_height() == 3);
  CHECK(make_shape(1, 1, 55, 55, 3, 3, 2, 2).out_height() == 27);
  CHECK(make_shape(1, 1, 27, 27, 3, 3, 2, 2).out_height() == 13);
  CHECK(make_shape(1, 1, 13, 13, 3, 3, 2, 2).out_width() == 6);
  CHECK(make_shape(1, 1, 8, 9, 3, 3, 2, 2, 1, 1).out_width() == 5);
}

TEST_CASE("max_pool2d_forward matches a naive padded-window loop") {
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    std::uint64_t seed = 1;
    for (const auto& s : test_shapes()) {
      CAPTURE(threads);
      CAPTURE(describe(s));
      check_forward<float>(s, ++seed);
      check_forward<double>(s, ++seed);
    }
    // Large enough to be split over threads: 64 planes of 55x55.
    check_forward<float>(make_shape(4, 16, 55, 55, 3, 3, 2, 2), 99);
  }
  sela::cpu::set_num_threads(0);
}

TEST_CASE("max_pool2d ties: the first maximum in scan order wins (also for an all -inf plane)") {
  // A constant plane: every window's first in-plane element is chosen. With -inf no element
  // is ever larger than the start value, so this checks the start index too (PyTorch: the
  // window's first in-plane position).
  const auto s = make_shape(1, 1, 5, 9, 3, 3, 2, 2, 1, 1);
  for (float value : {2.5f, -std::numeric_limits<float>::infinity()}) {
    CAPTURE(value);
    std::vector<float> input(static_cast<std::size_t>(input_size(s)), value);
    auto output = poisoned<float>(output_size(s));
    std::vector<std::int32_t> argmax(output.size(), -7);
    sela::cpu::max_pool2d_forward<float>(s, input.data(), output.data(), argmax.data());
    for (std::int64_t oh = 0; oh < s.out_height(); ++oh)
      for (std::int64_t ow = 0; ow < s.out_width(); ++ow) {
        const std::int64_t h0 = std::max<std::int64_t>(oh * 2 - 1, 0),
                           w0 = std::max<std::int64_t>(ow * 2 - 1, 0);
        CHECK(output[oh * s.out_width() + ow] == value);
        CHECK(argmax[oh * s.out_width() + ow] == h0 * s.in_width + w0);
      }
  }
}

TEST_CASE("max_pool2d propagates NaN as PyTorch (v > max || isnan(v): last NaN recorded)") {
  const auto s = make_shape(1, 1, 4, 4, 2, 2, 2, 2);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> input = {1,   nan, 5, 6,  //
                              2,   3,   7, 8,  //
                              nan, 0,   9, 9,  //
                              4,   nan, 9, -1};
  std::vector<float> output(4, 0.0f);
  std::vector<std::int32_t> argmax(4, -7);
  sela::cpu::max_pool2d_forward<float>(s, input.data(), output.data(), argmax.data());
  CHECK(std::isnan(output[0]));
  CHECK(argmax[0] == 1);
  CHECK(output[1] == 8.0f);
  CHECK(argmax[1] == 7);
  CHECK(std::isnan(output[2]));
  CHECK(argmax[2] == 13);  // two NaNs in the window: the later one
  CHECK(output[3] == 9.0f);
  CHECK(argmax[3] == 10);  // three 9s: the first
}

TEST_CASE("max_pool2d_backward matches central finite differences in float64") {
  std::uint64_t seed = 500;
  for (const auto& s : test_shapes()) {
    // Every shape, the 2x2x55x55 one included (about 0.3 s: two passes per input).
    CAPTURE(describe(s));
    const std::int64_t in_n = input_size(s), out_n = output_size(s);
    const auto x = spaced_values(in_n, ++seed);
    const auto weight = random_values(out_n, ++seed, -3.0, 3.0);  // loss = sum(weight * pool(x))
    std::vector<double> y(static_cast<std::size_t>(out_n));
    std::vector<std::int32_t> argmax(static_cast<std::size_t>(out_n));
    sela::cpu::max_pool2d_forward<double>(s, x.data(), y.data(), argmax.data());
    auto grad = poisoned<double>(in_n);
    sela::cpu::max_pool2d_backward<double>(s, weight.data(), argmax.data(), grad.data());

    // loss(x + h e_i) - loss(x - h e_i), summed per output so that the large common part
    // of the two losses cancels exactly instead of drowning the difference in round-off.
    std::vector<double> up(static_cast<std::size_t>(out_n)), down(up.size());
    std::vector<std::int32_t> arg(up.size());
    const double h = 1e-6;
    std::int64_t bad = 0;
    auto probe = x;
    for (std::int64_t i = 0; i < in_n; ++i) {
      probe[i] = x[i] + h;
      sela::cpu::max_pool2d_forward<double>(s, probe.data(), up.data(), arg.data());
      probe[i] = x[i] - h;
      sela::cpu::max_pool2d_forward<double>(s, probe.data(), down.data(), arg.data());
      probe[i] = x[i];
      double difference = 0;
      for (std::int64_t o = 0; o < out_n; ++o) difference += weight[o] * (up[o] - down[o]);
      const double numeric = difference / (2 * h);
      if (!within_tolerance(grad[i], numeric, 1e-7, 1e-6)) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("max_pool2d_backward (float) matches a reference scatter; overwrites grad_input") {
  for (int threads : {1, 2}) {
    sela::cpu::set_num_threads(threads);
    std::uint64_t seed = 900;
    auto shapes = test_shapes();
    shapes.push_back(make_shape(4, 16, 55, 55, 3, 3, 2, 2));
    for (const auto& s : shapes) {
      CAPTURE(threads);
      CAPTURE(describe(s));
      const auto x_d = random_values(input_size(s), ++seed, -3.0, 3.0);
      const auto x = as<float>(x_d);
      const auto g_d = random_values(output_size(s), ++seed, -3.0, 3.0);
      const auto grad_out = as<float>(g_d);
      std::vector<float> y(grad_out.size());
      std::vector<std::int32_t> argmax(grad_out.size());
      sela::cpu::max_pool2d_forward<float>(s, x.data(), y.data(), argmax.data());

      const std::int64_t plane = s.in_height * s.in_width,
                         out_plane = s.out_height() * s.out_width();
      std::vector<double> want(x.size(), 0.0);
      for (std::int64_t p = 0; p < s.batch * s.channels; ++p)
        for (std::int64_t o = 0; o < out_plane; ++o)
          want[p * plane + argmax[p * out_plane + o]] += grad_out[p * out_plane + o];
      auto grad_in = poisoned<float>(input_size(s));  // must be overwritten
      sela::cpu::max_pool2d_backward<float>(s, grad_out.data(), argmax.data(), grad_in.data());
      std::int64_t bad = 0;
      for (std::size_t i = 0; i < want.size(); ++i)
        if (!within_tolerance(grad_in[i], want[i], 1e-6, 1e-6)) ++bad;
      CHECK(bad == 0);
    }
  }
  sela::cpu::set_num_threads(0);
}

TEST_CASE("max_pool2d rejects bad shapes and bad argmax") {
  float x[64] = {};
  float y[64] = {};
  std::int32_t arg[64] = {};
  // Padding over half the kernel.
  CHECK_THROWS_AS(
      sela::cpu::max_pool2d_forward<float>(make_shape(1, 1, 8, 8, 3, 3, 2, 2, 2, 2), x, y, arg),
      sela::Error);
  // Kernel larger than the padded input.
  CHECK_THROWS_AS(
      sela::cpu::max_pool2d_forward<float>(make_shape(1, 1, 2, 2, 3, 3, 1, 1), x, y, arg),
      sela::Error);
  CHECK_THROWS_AS(
      sela::cpu::max_pool2d_forward<float>(make_shape(1, 1, 4, 4, 2, 2, 0, 2), x, y, arg),
      sela::Error);
  // An argmax outside the 4x4 plane.
  const auto s = make_shape(1, 1, 4, 4, 2, 2, 2, 2);
  std::int32_t bad_arg[4] = {0, 2, 16, 10};
  float grad_out[4] = {1, 2, 3, 4};
  CHECK_THROWS_AS(sela::cpu::max_pool2d_backward<float>(s, grad_out, bad_arg, x), sela::Error);
}

TEST_CASE("max_pool2d, rows wide enough for the 16-column stride-2 form: NaN, ties, threads") {
  // Output rows of 38 and 20 interior columns: two and one 16-column blocks plus a scalar
  // remainder (kernels/cpu/pool.cpp). Expected values from the plain rule, NaN included:
  // a candidate wins when it is larger or NaN (the last NaN in scan order is recorded), and
  // on ties the first maximum in scan order stays.
  for (const auto& s : {make_shape(1, 2, 9, 77, 3, 3, 2, 2), make_shape(2, 3, 6, 41, 2, 3, 2, 2)}) {
    CAPTURE(describe(s));
    std::mt19937_64 rng(5);
    std::uniform_int_distribution<int> level(0, 9);  // ten levels: many ties
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    std::vector<float> input(static_cast<std::size_t>(input_size(s)));
    for (float& v : input)
      v = unit(rng) < 0.03 ? std::numeric_limits<float>::quiet_NaN() : 0.5f * level(rng);
    std::vector<double> want;
    std::vector<std::int64_t> want_arg;
    reference_forward(s, widen(input), &want, &want_arg);
    for (int threads : {1, 2}) {
      sela::cpu::set_num_threads(threads);
      std::vector<float> output(want.size(), 7.0f);
      std::vector<std::int32_t> argmax(want.size(), -7);
      sela::cpu::max_pool2d_forward<float>(s, input.data(), output.data(), argmax.data());
      std::int64_t bad = 0, nan_outputs = 0;
      for (std::size_t o = 0; o < want.size(); ++o) {
        const bool same_value =
            std::isnan(want[o]) ? std::isnan(output[o]) : static_cast<double>(output[o]) == want[o];
        bad += !same_value || argmax[o] != want_arg[o];
        nan_outputs += std::isnan(output[o]);
      }
      CAPTURE(threads);
      CHECK(bad == 0);
      CHECK(nan_outputs > 0);  // the NaN rule was exercised
    }
  }
  sela::cpu::set_num_threads(0);
}
