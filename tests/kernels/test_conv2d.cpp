// Tests of kernels/cpu/conv2d.h: the shipped entry points (conv2d_forward / _backward_input /
// _backward_weight), and the im2col and oneDNN implementations each on their own.
//
// References:
//   forward          a naive 7-loop cross-correlation in double;
//   backward         central finite differences of the double forward of the scalar loss
//                    L = sum(R * conv(x, w, b)) with a random projection R (L is linear in
//                    x, w and b, so the difference quotient is exact up to rounding:
//                    h = 1e-2, tolerance 1e-9 + 1e-7*|ref|) on every element for small
//                    shapes and on a random sample for the larger ones;
//   float            float results against the double ones with tolerance
//                    atol + rtol*|ref|, atol = 2e-5*sqrt(terms)*scale, rtol = 1e-4, where terms
//                    is the number of products summed per element and scale the largest
//                    |reference| (values are N(0,1), errors grow like sqrt(terms)).
// Shapes: strides 1, 2, 4; padding 0, 1, 2; kernels 1, 3, 5, 11; square and non-square
// inputs; batch 1 and 3; 1 and 3 input channels; a right padding that comes out negative
// for oneDNN (stride 4, kernel 1); the five alexnet-32 layers at batch 2. Outputs are
// poisoned with NaN before each call (so "overwritten, not accumulated" is checked) and
// NaN/Inf fail every comparison.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/parallel.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::cpu::Conv2dShape;
using sela::test::as;
using sela::test::central_differences;
using sela::test::check_close;
using sela::test::poisoned;

Conv2dShape make_shape(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w,
                       std::int64_t o, std::int64_t kh, std::int64_t kw, std::int64_t stride_h,
                       std::int64_t stride_w, std::int64_t pad_h, std::int64_t pad_w) {
  Conv2dShape s{n, c, h, w, o, kh, kw};
  s.stride_h = stride_h, s.stride_w = stride_w, s.pad_h = pad_h, s.pad_w = pad_w;
  return s;
}

std::int64_t input_size(const Conv2dShape& s) {
  return s.batch * s.in_channels * s.in_height * s.in_width;
}
std::int64_t weight_size(const Conv2dShape& s) {
  return s.out_channels * s.in_channels * s.kernel_h * s.kernel_w;
}
std::int64_t output_size(const Conv2dShape& s) {
  return s.batch * s.out_channels * s.out_height() * s.out_width();
}

// Small shapes covering the strides, paddings, kernels, aspect ratios, batch and channels.
std::vector<Conv2dShape> small_shapes() {
  return {
      make_shape(1, 1, 5, 5, 1, 1, 1, 1, 1, 0, 0),      // 1x1, the "direct" im2col path
      make_shape(3, 3, 6, 9, 4, 1, 1, 1, 1, 0, 0),      // 1x1 over a batch
      make_shape(3, 3, 7, 5, 2, 3, 3, 1, 1, 1, 1),      // 3x3 same padding, non-square
      make_shape(1, 3, 8, 11, 5, 3, 3, 2, 2, 0, 0),     // stride 2, no padding
      make_shape(3, 1, 9, 7, 3, 5, 5, 1, 1, 2, 2),      // 5x5 pad 2, one input channel
      make_shape(1, 3, 13, 10, 2, 5, 3, 2, 1, 1, 2),    // rectangular kernel, mixed stride/pad
      make_shape(3, 3, 23, 19, 4, 11, 11, 4, 4, 2, 2),  // AlexNet's first-layer geometry
      make_shape(1, 3, 10, 9, 3, 1, 1, 4, 4, 0, 0),     // stride 4, kernel 1: negative right pad
      make_shape(3, 1, 4, 3, 2, 5, 5, 1, 1, 2, 2),      // kernel larger than the input
      make_shape(1, 3, 12, 12, 7, 3, 3, 4, 2, 2, 1),    // stride 4 x 2
  };
}

std::vector<std::pair<std::string, Conv2dShape>> alexnet32_batch2() {
  return {{"conv1", make_shape(2, 3, 32, 32, 64, 5, 5, 1, 1, 2, 2)},
          {"conv2", make_shape(2, 64, 15, 15, 192, 5, 5, 1, 1, 2, 2)},
          {"conv3", make_shape(2, 192, 7, 7, 384, 3, 3, 1, 1, 1, 1)},
          {"conv4", make_shape(2, 384, 7, 7, 256, 3, 3, 1, 1, 1, 1)},
          {"conv5", make_shape(2, 256, 7, 7, 256, 3, 3, 1, 1, 1, 1)}};
}

std::vector<double> random_vector(std::int64_t size, std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(static_cast<std::size_t>(size));
  for (double& x : v) x = normal(rng);
  return v;
}

// Naive cross-correlation in double: 7 loops (n, o, y, x, c, i, j).
std::vector<double> reference_forward(const Conv2dShape& s, const std::vector<double>& input,
                                      const std::vector<double>& weight, const double* bias) {
  const std::int64_t oh = s.out_height(), ow = s.out_width();
  std::vector<double> out(static_cast<std::size_t>(output_size(s)));
  for (std::int64_t n = 0; n < s.batch; ++n)
    for (std::int64_t o = 0; o < s.out_channels; ++o)
      for (std::int64_t y = 0; y < oh; ++y)
        for (std::int64_t x = 0; x < ow; ++x) {
          double sum = bias ? bias[o] : 0.0;
          for (std::int64_t c = 0; c < s.in_channels; ++c)
            for (std::int64_t i = 0; i < s.kernel_h; ++i)
              for (std::int64_t j = 0; j < s.kernel_w; ++j) {
                std::int64_t ih = y * s.stride_h - s.pad_h + i, iw = x * s.stride_w - s.pad_w + j;
                if (ih < 0 || ih >= s.in_height || iw < 0 || iw >= s.in_width) continue;
                sum += input[((n * s.in_channels + c) * s.in_height + ih) * s.in_width + iw] *
                       weight[((o * s.in_channels + c) * s.kernel_h + i) * s.kernel_w + j];
              }
          out[((n * s.out_channels + o) * oh + y) * ow + x] = sum;
        }
  return out;
}

// One implementation of the three directions, for a given element type.
template <typename T>
struct Conv {
  std::string name;
  std::function<void(const Conv2dShape&, const T*, const T*, const T*, T*)> forward;
  std::function<void(const Conv2dShape&, const T*, const T*, T*)> backward_input;
  std::function<void(const Conv2dShape&, const T*, const T*, T*, T*)> backward_weight;
};

template <typename T>
std::vector<Conv<T>> implementations() {
  std::vector<Conv<T>> out = {
      {"shipped", sela::cpu::conv2d_forward<T>, sela::cpu::conv2d_backward_input<T>,
       sela::cpu::conv2d_backward_weight<T>},
      {"im2col", sela::cpu::conv2d_forward_im2col<T>, sela::cpu::conv2d_backward_input_im2col<T>,
       sela::cpu::conv2d_backward_weight_im2col<T>}};
  if constexpr (std::is_same_v<T, float>) {
    if (std::string(sela::cpu::conv2d_backend_name()) == "dnnl") {
      // The oneDNN functions on their own; a declined shape is a failure here (it would
      // silently fall back to im2col in the shipped entry points).
      out.push_back(
          {"dnnl",
           [](const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
             REQUIRE(sela::cpu::conv2d_forward_dnnl(s, x, w, b, y));
           },
           [](const Conv2dShape& s, const float* dy, const float* w, float* dx) {
             REQUIRE(sela::cpu::conv2d_backward_input_dnnl(s, dy, w, dx));
           },
           [](const Conv2dShape& s, const float* x, const float* dy, float* dw, float* db) {
             REQUIRE(sela::cpu::conv2d_backward_weight_dnnl(s, x, dy, dw, db));
           }});
    }
  }
  return out;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Float tolerance for sums of `terms` products of N(0,1)-sized values (see the header).
double float_atol(double terms, double scale) { return 2e-5 * std::sqrt(terms) * scale; }

template <typename T>
void check_forward_against(const Conv<T>& conv, const Conv2dShape& s, const std::vector<double>& x,
                           const std::vector<double>& w, const std::vector<double>* b,
                           const std::vector<double>& want) {
  std::vector<T> xt = as<T>(x), wt = as<T>(w), bt = b ? as<T>(*b) : std::vector<T>();
  std::vector<T> y = poisoned<T>(output_size(s));
  conv.forward(s, xt.data(), wt.data(), b ? bt.data() : nullptr, y.data());
  double terms = double(s.in_channels * s.kernel_h * s.kernel_w);
  bool is_float = std::is_same_v<T, float>;
  double atol =
      is_float ? float_atol(terms, max_abs(want)) : 1e-12 * std::sqrt(terms) * max_abs(want);
  check_close(y, want, atol, is_float ? 1e-4 : 1e-12, conv.name + " forward");
}

// Every implementation, float and double, against one naive reference.
void check_forward(const Conv2dShape& s, std::mt19937& rng, bool use_bias) {
  std::vector<double> x = random_vector(input_size(s), rng);
  std::vector<double> w = random_vector(weight_size(s), rng);
  std::vector<double> b = random_vector(s.out_channels, rng);
  const std::vector<double>* bias = use_bias ? &b : nullptr;
  std::vector<double> want = reference_forward(s, x, w, use_bias ? b.data() : nullptr);
  for (const auto& conv : implementations<double>())
    check_forward_against(conv, s, x, w, bias, want);
  for (const auto& conv : implementations<float>())
    check_forward_against(conv, s, x, w, bias, want);
}

// L(x, w, b) = sum(R * forward(x, w, b)) in double through the double im2col forward.
double projected_loss(const Conv2dShape& s, const std::vector<double>& x,
                      const std::vector<double>& w, const std::vector<double>& b,
                      const std::vector<double>& r) {
  std::vector<double> y(static_cast<std::size_t>(output_size(s)));
  sela::cpu::conv2d_forward_im2col<double>(s, x.data(), w.data(), b.data(), y.data());
  double total = 0;
  for (std::size_t i = 0; i < y.size(); ++i) total += r[i] * y[i];
  return total;
}

// The indices checked by finite differences: all, or `limit` distinct random ones.
std::vector<std::size_t> sample_indices(std::size_t size, std::size_t limit, std::mt19937& rng) {
  std::vector<std::size_t> all(size);
  for (std::size_t i = 0; i < size; ++i) all[i] = i;
  if (size <= limit) return all;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(limit);
  return all;
}

// Backward of every double implementation against finite differences, and of every float
// implementation against the double im2col backward.
void check_backward(const Conv2dShape& s, std::mt19937& rng, std::size_t sample_limit) {
  std::vector<double> x = random_vector(input_size(s), rng);
  std::vector<double> w = random_vector(weight_size(s), rng);
  std::vector<double> b = random_vector(s.out_channels, rng);
  std::vector<double> r = random_vector(output_size(s), rng);  // dL/dy
  auto loss = [&] { return projected_loss(s, x, w, b, r); };
  auto x_idx = sample_indices(x.size(), sample_limit, rng);
  auto w_idx = sample_indices(w.size(), sample_limit, rng);
  auto b_idx = sample_indices(b.size(), sample_limit, rng);
  std::vector<double> fd_x = central_differences(&x, x_idx, loss, 1e-2);
  std::vector<double> fd_w = central_differences(&w, w_idx, loss, 1e-2);
  std::vector<double> fd_b = central_differences(&b, b_idx, loss, 1e-2);
  auto pick = [](const std::vector<double>& v, const std::vector<std::size_t>& idx) {
    std::vector<double> out;
    for (std::size_t i : idx) out.push_back(v[i]);
    return out;
  };

  std::vector<double> grad_x_double, grad_w_double, grad_b_double;
  for (const Conv<double>& conv : implementations<double>()) {
    std::vector<double> gx = poisoned<double>(input_size(s));
    std::vector<double> gw = poisoned<double>(weight_size(s));
    std::vector<double> gb = poisoned<double>(s.out_channels);
    conv.backward_input(s, r.data(), w.data(), gx.data());
    conv.backward_weight(s, x.data(), r.data(), gw.data(), gb.data());
    check_close(pick(gx, x_idx), fd_x, 1e-9, 1e-7, conv.name + " double grad_input vs FD");
    check_close(pick(gw, w_idx), fd_w, 1e-9, 1e-7, conv.name + " double grad_weight vs FD");
    check_close(pick(gb, b_idx), fd_b, 1e-9, 1e-7, conv.name + " double grad_bias vs FD");
    // Without a bias gradient the weight gradient is the same.
    std::vector<double> gw2 = poisoned<double>(weight_size(s));
    conv.backward_weight(s, x.data(), r.data(), gw2.data(), nullptr);
    check_close(gw2, gw, 0.0, 0.0, conv.name + " double grad_weight without bias");
    if (conv.name == "im2col") grad_x_double = gx, grad_w_double = gw, grad_b_double = gb;
  }

  std::vector<float> xf = as<float>(x), wf = as<float>(w), rf = as<float>(r);
  double oh_ow = double(s.out_height() * s.out_width());
  for (const Conv<float>& conv : implementations<float>()) {
    std::vector<float> gx = poisoned<float>(input_size(s));
    std::vector<float> gw = poisoned<float>(weight_size(s));
    std::vector<float> gb = poisoned<float>(s.out_channels);
    conv.backward_input(s, rf.data(), wf.data(), gx.data());
    conv.backward_weight(s, xf.data(), rf.data(), gw.data(), gb.data());
    check_close(
        gx, grad_x_double,
        float_atol(double(s.out_channels * s.kernel_h * s.kernel_w), max_abs(grad_x_double)), 1e-4,
        conv.name + " float grad_input vs double");
    check_close(gw, grad_w_double, float_atol(double(s.batch) * oh_ow, max_abs(grad_w_double)),
                1e-4, conv.name + " float grad_weight vs double");
    check_close(gb, grad_b_double, float_atol(double(s.batch) * oh_ow, max_abs(grad_b_double)),
                1e-4, conv.name + " float grad_bias vs double");
  }
}

}  // namespace

TEST_CASE("conv2d forward matches a naive double loop on small shapes, float and double") {
  MESSAGE("conv2d backend: " << std::string(sela::cpu::conv2d_backend_name()));
  std::mt19937 rng(11);
  for (const Conv2dShape& s : small_shapes()) {
    INFO(sela::cpu::conv2d_shape_text(s));
    for (bool use_bias : {true, false}) check_forward(s, rng, use_bias);
  }
}

TEST_CASE("conv2d backward matches finite differences on small shapes, float and double") {
  std::mt19937 rng(12);
  for (const Conv2dShape& s : small_shapes()) {
    INFO(sela::cpu::conv2d_shape_text(s));
    check_backward(s, rng, 200);
  }
}

TEST_CASE("conv2d on the alexnet-32 layers at batch 2") {
  std::mt19937 rng(13);
  for (const auto& [name, s] : alexnet32_batch2()) {
    INFO(name << ": " << sela::cpu::conv2d_shape_text(s));
    check_forward(s, rng, true);
    check_backward(s, rng, 6);
  }
}

TEST_CASE("conv2d gives the same result on repeated and interleaved calls (cached plans)") {
  std::mt19937 rng(14);
  Conv2dShape a = make_shape(2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1);
  Conv2dShape b = make_shape(1, 2, 6, 5, 3, 3, 3, 2, 2, 0, 0);
  auto run = [&](const Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w) {
    std::vector<float> y = poisoned<float>(output_size(s));
    sela::cpu::conv2d_forward<float>(s, x.data(), w.data(), nullptr, y.data());
    return y;
  };
  std::vector<float> xa = as<float>(random_vector(input_size(a), rng));
  std::vector<float> wa = as<float>(random_vector(weight_size(a), rng));
  std::vector<float> xb = as<float>(random_vector(input_size(b), rng));
  std::vector<float> wb = as<float>(random_vector(weight_size(b), rng));
  std::vector<float> first = run(a, xa, wa);
  std::vector<float> other = run(b, xb, wb);
  CHECK(run(a, xa, wa) == first);
  CHECK(run(b, xb, wb) == other);
}

TEST_CASE("conv2d rejects bad shapes with an error naming conv2d and the shape") {
  std::vector<float> buffer(4096, 1.0f);
  float* p = buffer.data();
  auto expect_error = [&](const Conv2dShape& s) {
    try {
      sela::cpu::conv2d_forward<float>(s, p, p, nullptr, p);
      FAIL("expected sela::Error for " << sela::cpu::conv2d_shape_text(s));
    } catch (const sela::Error& e) {
      std::string message = e.what();
      CHECK(message.find("conv2d") != std::string::npos);
      CHECK(message.find("N=") != std::string::npos);
    }
  };
  expect_error(make_shape(1, 3, 4, 4, 2, 7, 3, 1, 1, 1, 1));   // kernel taller than padded input
  expect_error(make_shape(1, 0, 4, 4, 2, 3, 3, 1, 1, 0, 0));   // no input channels
  expect_error(make_shape(0, 3, 4, 4, 2, 3, 3, 1, 1, 0, 0));   // empty batch
  expect_error(make_shape(1, 3, 4, 4, 2, 3, 3, 0, 1, 0, 0));   // zero stride
  expect_error(make_shape(1, 3, 4, 4, 2, 3, 3, 1, 1, -1, 0));  // negative padding
  CHECK_THROWS_AS(
      sela::cpu::conv2d_backward_weight<double>(make_shape(1, 3, 4, 4, 2, 3, 3, 1, 1, 0, 0),
                                                nullptr, nullptr, nullptr, nullptr),
      sela::Error);
}

TEST_CASE(
    "conv2d float at batch 32, where oneDNN takes Winograd, on aligned and unaligned "
    "buffers, agrees with double im2col") {
  using sela::cpu::Conv2dDirection;
  std::mt19937 rng(15);
  Conv2dShape s = make_shape(32, 256, 7, 7, 256, 3, 3, 1, 1, 1, 1);  // alexnet-32's conv5
  MESSAGE("forward: " << sela::cpu::conv2d_implementation(s, Conv2dDirection::forward)
                      << ", backward input: "
                      << sela::cpu::conv2d_implementation(s, Conv2dDirection::backward_input)
                      << ", backward weight: "
                      << sela::cpu::conv2d_implementation(s, Conv2dDirection::backward_weight));
  std::vector<double> x = random_vector(input_size(s), rng);
  std::vector<double> w = random_vector(weight_size(s), rng);
  std::vector<double> b = random_vector(s.out_channels, rng);
  std::vector<double> dy = random_vector(output_size(s), rng);
  std::vector<double> y_ref(static_cast<std::size_t>(output_size(s)));
  std::vector<double> dx_ref(static_cast<std::size_t>(input_size(s)));
  std::vector<double> dw_ref(static_cast<std::size_t>(weight_size(s)));
  std::vector<double> db_ref(static_cast<std::size_t>(s.out_channels));
  sela::cpu::conv2d_forward_im2col<double>(s, x.data(), w.data(), b.data(), y_ref.data());
  sela::cpu::conv2d_backward_input_im2col<double>(s, dy.data(), w.data(), dx_ref.data());
  sela::cpu::conv2d_backward_weight_im2col<double>(s, x.data(), dy.data(), dw_ref.data(),
                                                   db_ref.data());
  const double pixels = double(s.batch * s.out_height() * s.out_width());
  for (std::size_t offset : {0, 1}) {  // 1: every buffer starts 4 bytes past an alignment
    INFO("buffers offset by " << offset << " floats");
    // Each tensor lives at `offset` inside a larger vector; poisoned where it is an output.
    auto place = [&](const std::vector<double>& v) {
      std::vector<float> out(v.size() + offset + 16, std::numeric_limits<float>::quiet_NaN());
      std::copy(v.begin(), v.end(), out.begin() + static_cast<std::ptrdiff_t>(offset));
      return out;
    };
    auto poisoned_at = [&](std::size_t size) {
      return std::vector<float>(size + offset + 16, std::numeric_limits<float>::quiet_NaN());
    };
    auto view = [&](const std::vector<float>& v, std::size_t size) {
      return std::vector<float>(v.begin() + static_cast<std::ptrdiff_t>(offset),
                                v.begin() + static_cast<std::ptrdiff_t>(offset + size));
    };
    std::vector<float> xf = place(x), wf = place(w), bf = place(b), dyf = place(dy);
    std::vector<float> y = poisoned_at(y_ref.size()), dx = poisoned_at(dx_ref.size());
    std::vector<float> dw = poisoned_at(dw_ref.size()), db = poisoned_at(db_ref.size());
    sela::cpu::conv2d_forward<float>(s, xf.data() + offset, wf.data() + offset, bf.data() + offset,
                                     y.data() + offset);
    sela::cpu::conv2d_backward_input<float>(s, dyf.data() + offset, wf.data() + offset,
                                            dx.data() + offset);
    sela::cpu::conv2d_backward_weight<float>(s, xf.data() + offset, dyf.data() + offset,
                                             dw.data() + offset, db.data() + offset);
    check_close(view(y, y_ref.size()), y_ref, float_atol(256 * 9, max_abs(y_ref)), 1e-4, "forward");
    check_close(view(dx, dx_ref.size()), dx_ref, float_atol(256 * 9, max_abs(dx_ref)), 1e-4,
                "grad_input");
    check_close(view(dw, dw_ref.size()), dw_ref, float_atol(pixels, max_abs(dw_ref)), 1e-4,
                "grad_weight");
    check_close(view(db, db_ref.size()), db_ref, float_atol(pixels, max_abs(db_ref)), 1e-4,
                "grad_bias");
    // Nothing written outside the tensors.
    CHECK(std::isnan(y[offset + y_ref.size()]));
    CHECK(std::isnan(dw[offset + dw_ref.size()]));
    if (offset > 0) CHECK(std::isnan(dx[0]));
  }
}

TEST_CASE("conv2d im2col splits the batch between threads without changing the result") {
  // With 2 threads the images are split in two ranges and the weight gradient is summed from
  // two parts; with 1 thread everything runs in one range. Both must agree (double).
  std::mt19937 rng(16);
  Conv2dShape s = make_shape(5, 16, 11, 9, 24, 3, 3, 1, 1, 1, 1);
  std::vector<double> x = random_vector(input_size(s), rng);
  std::vector<double> w = random_vector(weight_size(s), rng);
  std::vector<double> b = random_vector(s.out_channels, rng);
  std::vector<double> dy = random_vector(output_size(s), rng);
  auto run = [&](int threads) {
    int before = sela::cpu::num_threads();
    sela::cpu::set_num_threads(threads);
    std::vector<double> y = poisoned<double>(output_size(s)), dx = poisoned<double>(input_size(s));
    std::vector<double> dw = poisoned<double>(weight_size(s)),
                        db = poisoned<double>(s.out_channels);
    sela::cpu::conv2d_forward_im2col<double>(s, x.data(), w.data(), b.data(), y.data());
    sela::cpu::conv2d_backward_input_im2col<double>(s, dy.data(), w.data(), dx.data());
    sela::cpu::conv2d_backward_weight_im2col<double>(s, x.data(), dy.data(), dw.data(), db.data());
    sela::cpu::set_num_threads(before);
    return std::vector<std::vector<double>>{y, dx, dw, db};
  };
  auto one = run(1), two = run(2);
  const char* names[] = {"output", "grad_input", "grad_weight", "grad_bias"};
  for (int i = 0; i < 4; ++i) check_close(two[i], one[i], 1e-12 * max_abs(one[i]), 1e-12, names[i]);
}
