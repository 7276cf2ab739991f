// The bfloat16 building blocks of the bf16 mixed-precision mode on the GPU, against the host:
//   - cast_float_to_bfloat16: bit for bit the host's round-to-nearest-even
//     (kernels/cpu/bfloat16.h, itself checked exhaustively in tests/kernels) on 2^20 random
//     floats, every float of a few low-bit patterns (ties and near-ties) and the specials
//     (a NaN only has to stay a NaN: its payload is the implementation's); the cast back
//     exactly on all 65,536 bfloat16 values;
//   - gemm_bfloat16: against a float64 product of the same bfloat16 inputs, the four
//     transpose combinations, odd sizes, K up to 1000, beta 0 (C poisoned) and not.
//     Tolerance |got - want| <= 1e-5 * M + 1e-30 per element, M = |alpha| |A||B| + |beta| |C|:
//     each bfloat16 product is exact in float32, so only the float32 summation of K <= 1000
//     terms differs (about 1.3 sqrt(K) 2^-24 M ~ 2.5e-6 M); a product rounded to bfloat16 or
//     an fp16 accumulation would be off by 2^-9 M or more;
//   - the bfloat16 convolutions of cudnn_conv.h in three directions (see that case);
//   - sela::linear and sela::conv2d under autocast_bfloat16, biases and all gradients;
//   - the whole network with autocast_bfloat16 against the CPU emulation of the mode (see
//     that case).
// Skipped, by name, without a GPU.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/cpu/bfloat16.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/elementwise.cuh"
#include "models/alexnet.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/models/small_model.h"

namespace {

using sela::test::DeviceBuffer;
using sela::test::TestStream;

float float_of(std::uint32_t bits) {
  float x = 0;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

}  // namespace

SELA_CUDA_TEST("cast float -> bfloat16 on the GPU equals the host rounding; back is exact",
               bfloat16_casts) {
  std::vector<float> values;
  std::mt19937 rng(7);
  for (int i = 0; i < (1 << 20); ++i) values.push_back(float_of(static_cast<std::uint32_t>(rng())));
  for (std::uint32_t high = 0; high < 0x10000u; ++high)
    for (std::uint32_t low : {0x0000u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu})
      values.push_back(float_of((high << 16) | low));
  const float inf = std::numeric_limits<float>::infinity();
  for (float special : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::max(),
                        std::numeric_limits<float>::denorm_min()})
    values.push_back(special);

  TestStream stream;
  const auto n = static_cast<std::int64_t>(values.size());
  DeviceBuffer<float> input(values);
  DeviceBuffer<std::uint16_t> bits(n);
  sela::cuda::cast_float_to_bfloat16(n, input.data(), bits.data(), stream);
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<std::uint16_t> got = bits.download();
  long mismatches = 0, nans = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) {
      ++nans;
      mismatches += !std::isnan(sela::cpu::float_from_bfloat16(got[i]));
      continue;
    }
    mismatches += got[i] != sela::cpu::bfloat16_from_float(values[i]);
  }
  INFO(mismatches << " mismatches in " << values.size() << " floats (" << nans << " NaNs)");
  CHECK(nans > 0);
  CHECK(mismatches == 0);

  std::vector<std::uint16_t> every(0x10000);
  for (std::uint32_t b = 0; b < 0x10000u; ++b) every[b] = static_cast<std::uint16_t>(b);
  DeviceBuffer<std::uint16_t> all(every);
  DeviceBuffer<float> back(0x10000);
  sela::cuda::cast_bfloat16_to_float(0x10000, all.data(), back.data(), stream);
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> floats = back.download();
  long wrong = 0;
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const float want = sela::cpu::float_from_bfloat16(static_cast<std::uint16_t>(b));
    wrong += std::isnan(want) ? !std::isnan(floats[b])
                              : std::memcmp(&floats[b], &want, sizeof want) != 0;
  }
  CHECK(wrong == 0);
}

SELA_CUDA_TEST("gemm_bfloat16 equals a float64 product of the same bfloat16 inputs",
               bfloat16_gemm) {
  TestStream stream;
  struct Case {
    std::int64_t m, n, k;
    bool ta, tb;
    float alpha, beta;
  };
  const Case cases[] = {{1, 1, 1, false, false, 1, 0},       {7, 33, 65, false, true, 1, 0},
                        {64, 63, 1000, true, false, 1, 0},    {129, 17, 31, true, true, -0.75f, 0.5f},
                        {256, 300, 512, false, true, 1, 0.5f}};
  std::uint64_t seed = 100;
  for (const Case& c : cases) {
    INFO("m " << c.m << " n " << c.n << " k " << c.k << " ta " << c.ta << " tb " << c.tb);
    // Row-major storage of op(A) (m, k) and op(B) (k, n) as given, without padding.
    const std::int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
    const std::int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
    std::vector<float> a = sela::test::random_vector<float>(a_rows * a_cols, ++seed);
    std::vector<float> b = sela::test::random_vector<float>(b_rows * b_cols, ++seed);
    std::vector<float> c0 = sela::test::random_vector<float>(c.m * c.n, ++seed);
    std::vector<std::uint16_t> a16(a.size()), b16(b.size());
    for (std::size_t i = 0; i < a.size(); ++i) a16[i] = sela::cpu::bfloat16_from_float(a[i]);
    for (std::size_t i = 0; i < b.size(); ++i) b16[i] = sela::cpu::bfloat16_from_float(b[i]);
    auto a_at = [&](std::int64_t i, std::int64_t p) {  // op(A)[i, p]
      return static_cast<double>(sela::cpu::float_from_bfloat16(
          a16[static_cast<std::size_t>(c.ta ? p * a_cols + i : i * a_cols + p)]));
    };
    auto b_at = [&](std::int64_t p, std::int64_t j) {  // op(B)[p, j]
      return static_cast<double>(sela::cpu::float_from_bfloat16(
          b16[static_cast<std::size_t>(c.tb ? j * b_cols + p : p * b_cols + j)]));
    };
    std::vector<double> want(static_cast<std::size_t>(c.m * c.n)), scale(want.size());
    for (std::int64_t i = 0; i < c.m; ++i) {
      for (std::int64_t j = 0; j < c.n; ++j) {
        double sum = 0, magnitude = 0;
        for (std::int64_t p = 0; p < c.k; ++p) {
          sum += a_at(i, p) * b_at(p, j);
          magnitude += std::fabs(a_at(i, p) * b_at(p, j));
        }
        const std::size_t at = static_cast<std::size_t>(i * c.n + j);
        const double old = c.beta != 0 ? c0[at] : 0.0;
        want[at] = c.alpha * sum + c.beta * old;
        scale[at] = std::fabs(c.alpha) * magnitude + std::fabs(c.beta) * std::fabs(old);
      }
    }
    DeviceBuffer<std::uint16_t> da(a16), db(b16);
    DeviceBuffer<float> dc(c.beta != 0 ? c0 : sela::test::nan_vector<float>(c.m * c.n));
    sela::cuda::gemm_bfloat16(c.ta, c.tb, c.m, c.n, c.k, c.alpha, da.data(), a_cols, db.data(),
                              b_cols, c.beta, dc.data(), c.n, stream);
    SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> got = dc.download();
    long bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (!std::isfinite(got[i]) || std::fabs(got[i] - want[i]) > 1e-5 * scale[i] + 1e-30) ++bad;
    }
    CHECK(bad == 0);
  }
}

// cuDNN's bfloat16 convolutions (cudnn_conv.h) against float64 ones (the CPU kernels) on the
// same bfloat16-rounded inputs, in the three directions. Each output is a float sum rounded
// to bfloat16 once: |got - want| <= 2^-8 |want| + 1e-4 (M + max M / 20) per element, M the
// same convolution of the absolute values: the rounding, plus the float summation error with
// the margin tests/cuda/test_conv.cpp gives FFT and Winograd algorithms (they spread error
// across the elements of a tile).
SELA_CUDA_TEST("bfloat16 convolutions equal float64 ones on the same bfloat16 inputs",
               bfloat16_conv) {
  using sela::cpu::Conv2dShape;
  TestStream stream;
  std::vector<Conv2dShape> shapes;
  auto shape = [](std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, std::int64_t o,
                  std::int64_t k, std::int64_t stride, std::int64_t pad) {
    Conv2dShape s{n, c, h, w, o, k, k};
    s.stride_h = s.stride_w = stride;
    s.pad_h = s.pad_w = pad;
    return s;
  };
  shapes.push_back(shape(2, 3, 9, 9, 4, 3, 1, 1));
  shapes.push_back(shape(3, 5, 13, 11, 6, 5, 2, 2));
  shapes.push_back(shape(4, 16, 8, 8, 32, 3, 1, 1));
  std::uint64_t seed = 500;
  for (const Conv2dShape& s : shapes) {
    INFO(sela::cpu::conv2d_shape_text(s));
    const std::int64_t nx = s.batch * s.in_channels * s.in_height * s.in_width;
    const std::int64_t nw = s.out_channels * s.in_channels * s.kernel_h * s.kernel_w;
    const std::int64_t ny = s.batch * s.out_channels * s.out_height() * s.out_width();
    auto rounded = [&](std::int64_t n, std::vector<std::uint16_t>* bits, std::vector<double>* value,
                       std::vector<double>* magnitude) {
      std::vector<float> v = sela::test::random_vector<float>(n, ++seed);
      for (float x : v) {
        bits->push_back(sela::cpu::bfloat16_from_float(x));
        value->push_back(sela::cpu::float_from_bfloat16(bits->back()));
        magnitude->push_back(std::fabs(value->back()));
      }
    };
    std::vector<std::uint16_t> x16, w16, gy16;
    std::vector<double> x, w, gy, ax, aw, agy;
    rounded(nx, &x16, &x, &ax);
    rounded(nw, &w16, &w, &aw);
    rounded(ny, &gy16, &gy, &agy);
    std::vector<double> y(ny), my(ny), gx(nx), mgx(nx), gw(nw), mgw(nw);
    sela::cpu::conv2d_forward<double>(s, x.data(), w.data(), nullptr, y.data());
    sela::cpu::conv2d_forward<double>(s, ax.data(), aw.data(), nullptr, my.data());
    sela::cpu::conv2d_backward_input<double>(s, gy.data(), w.data(), gx.data());
    sela::cpu::conv2d_backward_input<double>(s, agy.data(), aw.data(), mgx.data());
    sela::cpu::conv2d_backward_weight<double>(s, x.data(), gy.data(), gw.data(), nullptr);
    sela::cpu::conv2d_backward_weight<double>(s, ax.data(), agy.data(), mgw.data(), nullptr);

    DeviceBuffer<std::uint16_t> dx(x16), dw(w16), dgy(gy16);
    DeviceBuffer<std::uint16_t> dy(ny), dgx(nx), dgw(nw);
    sela::cuda::conv2d_forward_bfloat16(s, dx.data(), dw.data(), dy.data(), stream);
    sela::cuda::conv2d_backward_input_bfloat16(s, dgy.data(), dw.data(), dgx.data(), stream);
    sela::cuda::conv2d_backward_weight_bfloat16(s, dx.data(), dgy.data(), dgw.data(), stream);
    SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
    auto count_bad = [](const std::vector<std::uint16_t>& got, const std::vector<double>& want,
                        const std::vector<double>& magnitude) {
      double largest = 0;
      for (double m : magnitude) largest = std::max(largest, m);
      long bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        const double value = sela::cpu::float_from_bfloat16(got[i]);
        const double allowed =
            std::ldexp(std::fabs(want[i]), -8) + 1e-4 * (magnitude[i] + largest / 20) + 1e-30;
        if (!std::isfinite(value) || std::fabs(value - want[i]) > allowed) ++bad;
      }
      return bad;
    };
    CHECK(count_bad(dy.download(), y, my) == 0);
    CHECK(count_bad(dgx.download(), gx, mgx) == 0);
    CHECK(count_bad(dgw.download(), gw, mgw) == 0);
  }
}

// The autocast branches of the ops (engine/ops.cpp): sela::linear and sela::conv2d on float32
// GPU tensors with autocast_bfloat16 on, with a non-zero bias and a random upstream gradient
// G (the loss is sum(out * G)), against float64 on the CPU with the operands the mode
// multiplies: x, W and G rounded to bfloat16, the bias not. Per element, with M the same
// product of absolute values and B = the largest M:
//   linear: output, dx, dW are float32 sums of exact products: 1e-5 M; db (column sums of G
//     in double): 1e-6 sum|G|.
//   conv2d: output (a bfloat16-rounded sum, then + bias in float32), dx and dW (bfloat16
//     sums): 2^-8 |want| + 1e-4 (M + B / 20), as the convolution case above; db (channel sums
//     of G in double): 1e-6 sum|G|.
SELA_CUDA_TEST("bf16 autocast: linear and conv2d with bias, forward and all gradients",
               bfloat16_ops) {
  const sela::Device gpu = sela::Device::cuda(0);
  sela::Rng rng(41);
  auto rounded64 = [](const sela::Tensor& t) {  // float64 copy of the bfloat16-rounded values
    std::vector<float> v = t.to_vector<float>();
    std::vector<double> out;
    for (float x : v) out.push_back(sela::cpu::round_to_bfloat16(x));
    return out;
  };
  auto absolute = [](std::vector<double> v) {
    for (double& x : v) x = std::fabs(x);
    return v;
  };
  auto count_bad = [](const std::vector<double>& got, const std::vector<double>& want,
                      const std::vector<double>& magnitude, double relative, double rounding,
                      double spread) {
    double largest = 0;
    for (double m : magnitude) largest = std::max(largest, m);
    long bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double allowed = rounding * std::fabs(want[i]) +
                             relative * (magnitude[i] + spread * largest) + 1e-30;
      if (!std::isfinite(got[i]) || std::fabs(got[i] - want[i]) > allowed) ++bad;
    }
    return bad;
  };
  struct Autocast {
    Autocast() { sela::set_autocast_bfloat16(true); }
    ~Autocast() { sela::set_autocast_bfloat16(false); }
  };
  auto gpu_leaf = [&](const sela::Tensor& t) {  // a GPU copy that collects a gradient
    sela::Tensor leaf = t.to(gpu);
    leaf.set_requires_grad(true);
    return leaf;
  };

  {  // linear: x (24, 40), W (30, 40), b (30)
    sela::Tensor x = sela::randn({24, 40}, rng), w = sela::randn({30, 40}, rng);
    sela::Tensor b = sela::randn({30}, rng), g = sela::randn({24, 30}, rng);
    sela::Tensor xg = gpu_leaf(x), wg = gpu_leaf(w), bg = gpu_leaf(b);
    sela::Tensor out;
    {
      Autocast autocast;
      out = sela::linear(xg, wg, bg);
    }
    sela::sum(sela::mul(out, g.to(gpu))).backward();
    const std::vector<double> xr = rounded64(x), wr = rounded64(w), gr = rounded64(g);
    const std::vector<double> bv = b.to_vector<double>(), gv = g.to_vector<double>();
    // The CPU gemm in double on the rounded operands and on their absolute values.
    auto product = [](bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k,
                      const std::vector<double>& a, const std::vector<double>& b) {
      std::vector<double> c(static_cast<std::size_t>(m * n));
      sela::cpu::gemm<double>(ta, tb, m, n, k, 1.0, a.data(), ta ? m : k, b.data(), tb ? k : n,
                              0.0, c.data(), n);
      return c;
    };
    const std::vector<double> ax = absolute(xr), aw = absolute(wr), ag = absolute(gr);
    std::vector<double> y = product(false, true, 24, 30, 40, xr, wr);  // x W^T
    std::vector<double> my = product(false, true, 24, 30, 40, ax, aw);
    const std::vector<double> dx = product(false, false, 24, 40, 30, gr, wr);  // G W
    const std::vector<double> mdx = product(false, false, 24, 40, 30, ag, aw);
    const std::vector<double> dw = product(true, false, 30, 40, 24, gr, xr);  // G^T x
    const std::vector<double> mdw = product(true, false, 30, 40, 24, ag, ax);
    std::vector<double> db(30, 0.0), mdb(30, 0.0);  // column sums of G (not rounded)
    for (std::size_t i = 0; i < y.size(); ++i) {
      y[i] += bv[i % 30];
      my[i] += std::fabs(bv[i % 30]);
      db[i % 30] += gv[i];
      mdb[i % 30] += std::fabs(gv[i]);
    }
    CHECK(out.dtype() == sela::DType::f32);
    CHECK(count_bad(out.to_vector<double>(), y, my, 1e-5, 0, 0) == 0);
    CHECK(count_bad(xg.grad().to_vector<double>(), dx, mdx, 1e-5, 0, 0) == 0);
    CHECK(count_bad(wg.grad().to_vector<double>(), dw, mdw, 1e-5, 0, 0) == 0);
    CHECK(count_bad(bg.grad().to_vector<double>(), db, mdb, 1e-6, 0, 0) == 0);
  }

  {  // conv2d: x (3, 5, 11, 9), W (6, 5, 3, 3), b (6), stride 2, padding 1
    sela::Tensor x = sela::randn({3, 5, 11, 9}, rng), w = sela::randn({6, 5, 3, 3}, rng);
    sela::Tensor b = sela::randn({6}, rng);
    sela::cpu::Conv2dShape s{3, 5, 11, 9, 6, 3, 3};
    s.stride_h = s.stride_w = 2;
    s.pad_h = s.pad_w = 1;
    sela::Tensor g = sela::randn({3, 6, s.out_height(), s.out_width()}, rng);
    sela::Tensor xg = gpu_leaf(x), wg = gpu_leaf(w), bg = gpu_leaf(b);
    sela::Tensor out;
    {
      Autocast autocast;
      out = sela::conv2d(xg, wg, bg, 2, 1);
    }
    sela::sum(sela::mul(out, g.to(gpu))).backward();
    const std::vector<double> xr = rounded64(x), wr = rounded64(w), gr = rounded64(g);
    const std::vector<double> bv = b.to_vector<double>(), gv = g.to_vector<double>();
    const std::size_t ny = gv.size(), nx = xr.size(), nw = wr.size();
    std::vector<double> y(ny), my(ny), dx(nx), mdx(nx), dw(nw), mdw(nw);
    sela::cpu::conv2d_forward<double>(s, xr.data(), wr.data(), bv.data(), y.data());
    const std::vector<double> axr = absolute(xr), awr = absolute(wr), agr = absolute(gr);
    sela::cpu::conv2d_forward<double>(s, axr.data(), awr.data(), nullptr, my.data());
    sela::cpu::conv2d_backward_input<double>(s, gr.data(), wr.data(), dx.data());
    sela::cpu::conv2d_backward_input<double>(s, agr.data(), awr.data(), mdx.data());
    sela::cpu::conv2d_backward_weight<double>(s, xr.data(), gr.data(), dw.data(), nullptr);
    sela::cpu::conv2d_backward_weight<double>(s, axr.data(), agr.data(), mdw.data(), nullptr);
    std::vector<double> db(6, 0.0), mdb(6, 0.0);
    const std::int64_t spatial = s.out_height() * s.out_width();
    for (std::size_t i = 0; i < ny; ++i) {
      const std::size_t c = (i / static_cast<std::size_t>(spatial)) % 6;
      db[c] += gv[i];
      mdb[c] += std::fabs(gv[i]);
    }
    // The output: the convolution rounded to bfloat16, then the bias added in float32.
    std::vector<double> conv_part(ny);
    for (std::size_t i = 0; i < ny; ++i)
      conv_part[i] = y[i] - bv[(i / static_cast<std::size_t>(spatial)) % 6];
    std::vector<double> got = out.to_vector<double>();
    for (std::size_t i = 0; i < ny; ++i)
      got[i] -= bv[(i / static_cast<std::size_t>(spatial)) % 6];  // exact enough: float32 add
    CHECK(count_bad(got, conv_part, my, 1e-4, std::ldexp(1.0, -8), 0.05) == 0);
    CHECK(count_bad(xg.grad().to_vector<double>(), dx, mdx, 1e-4, std::ldexp(1.0, -8), 0.05) == 0);
    CHECK(count_bad(wg.grad().to_vector<double>(), dw, mdw, 1e-4, std::ldexp(1.0, -8), 0.05) == 0);
    CHECK(count_bad(bg.grad().to_vector<double>(), db, mdb, 1e-6, 0, 0) == 0);
  }
}

// The bf16 mode end to end, against its CPU emulation (engine/ops.h; checked itself in
// tests/models/test_bfloat16_emulation.cpp, whose comment explains the design): the small
// alexnet-32 (width 0.125, batch 16) in evaluation mode with a random gradient at fc7, seeds
// 1-4: every parameter gradient of the GPU's bf16 step within 3% (relative L2) of the
// float64 emulation's, the bound the CPU's float32 emulation meets (measured there: at most
// 1.2% over 10 seeds, while exact float64 is 2.7% or more away and 8-17% in the median).
// Then a training step (10 heads x 13, cross-entropy) with autocast_bfloat16: the loss within
// 1% of exact float64's, and the mode in effect in both kinds of layer: conv1's and fc6's
// weight gradients differ from the float32 GPU step's by more than 1e-3 relative (a float32
// step agrees to ~1e-6). Its gradients against exact float64 and the emulation are printed,
// not bounded: in training mode BatchNorm turns single rounding differences into cascades
// (the first GPU run, 2026-11-26: 13% for fc6 and 54% for a BatchNorm bias against exact
// float64; the CPU emulation gives 13% and 59% for the same step). The ops themselves,
// biases included, are checked tightly by the case before this one.
SELA_CUDA_TEST("bf16 autocast: the network's gradients match the CPU emulation of the mode",
               bfloat16_whole_step) {
  sela::cuda::set_conv_tf32(false);
  sela::cuda::set_matmul_tf32(false);
  const sela::Device gpu = sela::Device::cuda(0), cpu = sela::Device::cpu();
  using sela::test::step_gradients;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    CAPTURE(seed);
    const sela::ModelConfig config = sela::test::small_alexnet32(seed, 0.0);
    const sela::test::SmallBatch batch = sela::test::small_batch(16, seed + 100);
    sela::Rng rng(seed + 7);
    const sela::Tensor upstream =
        sela::randn({16, sela::test::kSmallFcWidth}, rng, sela::DType::f64);
    const auto want = step_gradients(config, batch, cpu, sela::DType::f64, true, false, upstream);
    const auto got = step_gradients(config, batch, gpu, sela::DType::f32, true, false, upstream);
    REQUIRE(got.names == want.names);
    const std::vector<bool> zero = sela::test::zero_in_exact_arithmetic(want);
    double worst = 0;
    int compared = 0;
    for (std::size_t i = 0; i < want.grads.size(); ++i) {
      if (zero[i]) continue;
      CAPTURE(want.names[i]);
      const double error = sela::test::relative_l2(got.grads[i], want.grads[i]);
      CHECK(error <= 0.03);
      worst = std::max(worst, error);
      ++compared;
    }
    CHECK(compared >= 10);
    MESSAGE("seed " << seed << ": GPU bf16 vs float64 emulation, evaluation mode, at most "
                    << worst);
  }

  const sela::ModelConfig config = sela::test::small_alexnet32(3, 0.0);
  const sela::test::SmallBatch batch = sela::test::small_batch(16, 31);
  const auto exact = step_gradients(config, batch, cpu, sela::DType::f64, false);
  const auto emulated = step_gradients(config, batch, cpu, sela::DType::f64, true);
  const auto got = step_gradients(config, batch, gpu, sela::DType::f32, true);
  const auto fp32 = step_gradients(config, batch, gpu, sela::DType::f32, false);
  REQUIRE(got.names == exact.names);
  CHECK(std::fabs(got.loss - exact.loss) <= 0.01 * std::fabs(exact.loss));
  const std::vector<bool> zero = sela::test::zero_in_exact_arithmetic(exact);
  double conv1_vs_fp32 = -1, fc6_vs_fp32 = -1, worst_exact = 0, worst_emulated = 0;
  for (std::size_t i = 0; i < exact.grads.size(); ++i) {
    if (zero[i]) continue;
    worst_exact = std::max(worst_exact, sela::test::relative_l2(got.grads[i], exact.grads[i]));
    worst_emulated =
        std::max(worst_emulated, sela::test::relative_l2(got.grads[i], emulated.grads[i]));
    const double vs_fp32 = sela::test::relative_l2(got.grads[i], fp32.grads[i]);
    if (exact.names[i] == "features.0.weight") conv1_vs_fp32 = vs_fp32;
    if (exact.names[i] == "classifier.1.weight") fc6_vs_fp32 = vs_fp32;
  }
  MESSAGE("bf16 training step: worst relative L2 gradient error " << worst_exact
          << " against exact float64, " << worst_emulated << " against the emulation; loss "
          << got.loss << " vs " << exact.loss);
  CHECK(conv1_vs_fp32 > 1e-3);
  CHECK(fc6_vs_fp32 > 1e-3);
}
