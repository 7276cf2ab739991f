// The CPU emulation of the bf16 mixed-precision mode (engine/ops.h, set_autocast_bfloat16):
// the readable reference that the GPU's bf16 training step is tested against
// (tests/cuda/test_bfloat16.cpp), so it is checked here first, on the CPU, in CI:
//   - sela::linear and sela::conv2d under autocast, in float64, against the plain float64 ops
//     applied to operands rounded by the test itself (kernels/cpu/bfloat16.h): the forward,
//     the input, weight and bias gradients; what the GPU rounds (the operands, the incoming
//     gradient of the products, the convolutions' results) and what it does not (the bias,
//     the bias gradient, linear's float32 results) — equal to 1e-12 relative, since the same
//     kernels run on the same values;
//   - the small alexnet-32 (width 0.125, batch 16) in evaluation mode with a random gradient
//     at fc7, on 4 seeds: the emulation in float32 within 3% (relative L2, per parameter) of
//     the emulation in float64, the bound the GPU's float32 arithmetic is held to, and the
//     emulation far from exact float64 (why evaluation mode: see the comment before it);
//   - a training step of it with 10 heads x 13: the loss within 1% of exact float64, and the
//     mode in effect (conv1's and fc6's weight gradients change by more than 1e-3).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "doctest/doctest.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/cpu/bfloat16.h"
#include "tests/models/small_model.h"

namespace {

using sela::Tensor;

struct Autocast {  // the bf16 mode for one scope, off again whatever happens
  Autocast() { sela::set_autocast_bfloat16(true); }
  ~Autocast() { sela::set_autocast_bfloat16(false); }
};

// A float64 copy of t with every value rounded to bfloat16 by the test's own hand.
Tensor rounded(const Tensor& t) {
  std::vector<double> v = t.to_vector<double>();
  for (double& x : v) x = sela::cpu::round_to_bfloat16(x);
  return Tensor::from_vector(v, t.shape());
}

Tensor leaf(const Tensor& t) {
  Tensor out = t.clone();
  out.set_requires_grad(true);
  return out;
}

// max |a - b| <= tolerance * max |b|
bool close(const Tensor& a, const Tensor& b, double tolerance = 1e-12) {
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
  REQUIRE(av.size() == bv.size());
  double worst = 0, largest = 0;
  for (std::size_t i = 0; i < av.size(); ++i) {
    worst = std::max(worst, std::fabs(av[i] - bv[i]));
    largest = std::max(largest, std::fabs(bv[i]));
  }
  return worst <= tolerance * largest;
}

}  // namespace

TEST_CASE("bf16 emulation: linear rounds its operands and the products' gradient, not the bias") {
  sela::Rng rng(5);
  const Tensor x = sela::randn({24, 40}, rng, sela::DType::f64);
  const Tensor w = sela::randn({30, 40}, rng, sela::DType::f64);
  const Tensor b = sela::randn({30}, rng, sela::DType::f64);
  const Tensor g = sela::randn({24, 30}, rng, sela::DType::f64);
  Tensor xl = leaf(x), wl = leaf(w), bl = leaf(b), out;
  {
    Autocast autocast;
    out = sela::linear(xl, wl, bl);
  }
  out.backward(g);
  // The reference: plain float64 ops on rounded copies, fed the rounded gradient.
  Tensor xr = leaf(rounded(x)), wr = leaf(rounded(w)), br = leaf(b);
  Tensor want = sela::linear(xr, wr, br);
  want.backward(rounded(g));
  CHECK(close(out, want));
  CHECK(close(xl.grad(), xr.grad()));
  CHECK(close(wl.grad(), wr.grad()));
  // The bias gradient: column sums of the exact gradient.
  const std::vector<double> gv = g.to_vector<double>(), db = bl.grad().to_vector<double>();
  for (std::int64_t o = 0; o < 30; ++o) {
    double total = 0;
    for (std::int64_t n = 0; n < 24; ++n) total += gv[static_cast<std::size_t>(n * 30 + o)];
    CHECK(db[static_cast<std::size_t>(o)] == doctest::Approx(total).epsilon(1e-12));
  }
  // And the mode is off again outside the scope: the same op is the exact one.
  CHECK(!sela::autocast_bfloat16());
  CHECK(!close(sela::linear(x, w, b), want, 1e-6));
}

TEST_CASE("bf16 emulation: conv2d rounds its operands, results and gradients, not the bias") {
  sela::Rng rng(6);
  const Tensor x = sela::randn({3, 5, 9, 8}, rng, sela::DType::f64);
  const Tensor w = sela::randn({6, 5, 3, 3}, rng, sela::DType::f64);
  const Tensor b = sela::randn({6}, rng, sela::DType::f64);
  const Tensor g = sela::randn({3, 6, 5, 4}, rng, sela::DType::f64);  // stride 2, padding 1
  Tensor xl = leaf(x), wl = leaf(w), bl = leaf(b), out;
  {
    Autocast autocast;
    out = sela::conv2d(xl, wl, bl, 2, 1);
  }
  REQUIRE(out.shape() == g.shape());
  out.backward(g);
  Tensor xr = leaf(rounded(x)), wr = leaf(rounded(w));
  Tensor raw = sela::conv2d(xr, wr, Tensor(), 2, 1);  // the convolution before rounding
  raw.backward(rounded(g));
  // out = round(conv) + bias, per channel
  std::vector<double> want = rounded(raw).to_vector<double>();
  const std::vector<double> bv = b.to_vector<double>();
  for (std::size_t i = 0; i < want.size(); ++i) want[i] += bv[(i / 20) % 6];
  CHECK(close(out, Tensor::from_vector(want, out.shape())));
  CHECK(close(xl.grad(), rounded(xr.grad())));
  CHECK(close(wl.grad(), rounded(wr.grad())));
  const std::vector<double> gv = g.to_vector<double>(), db = bl.grad().to_vector<double>();
  for (std::size_t o = 0; o < 6; ++o) {
    double total = 0;
    for (std::size_t i = 0; i < gv.size(); ++i) {
      if ((i / 20) % 6 == o) total += gv[i];
    }
    CHECK(db[o] == doctest::Approx(total).epsilon(1e-12));
  }
  // The rounding is real: the results differ from the exact convolution's.
  CHECK(!close(out, sela::conv2d(x, w, b, 2, 1), 1e-6));
}

// Why the whole-network comparisons below are built as they are (measured when written, on
// this test's inputs): bfloat16 changes this ReLU network's gradients by far more than its
// 2^-9 rounding. Forward activations drift by 0.3% (conv1) to 1.7% (conv5) in training mode,
// but every ReLU unit near zero that the rounding flips moves a whole term in or out of a
// batch-16 gradient sum, so parameter gradients move by 5-60% (relative L2) against exact
// float64. In training mode BatchNorm couples a whole channel: one rounding that the float32
// and float64 emulations decide differently shifts the channel's statistics, which moves
// further roundings and ReLU decisions; over 12 seeds at batch 16 (and 12 at batch 64) the
// float32 and float64 emulations of one step differ by up to 15% (19%) in some parameter,
// as much as some parameters differ from exact float64 (5-20% at the least). Evaluation mode (BatchNorm a fixed affine map) with a fixed random gradient at
// fc7 has no such cascade: over 10 seeds float32 vs float64 emulation was at most 1.2% in
// any parameter, while the emulation vs exact float64 was at least 2.7% and its median over
// the parameters 7.9-17%. So the composition of the mode through the network is checked in
// evaluation mode (here and against the GPU in tests/cuda/test_bfloat16.cpp), and the
// training step only for its loss and for the mode being in effect.
namespace {

constexpr double kEmulationAgreement = 0.03;  // float32 vs float64 emulation, per parameter

Tensor fc7_upstream(std::uint64_t seed) {
  sela::Rng rng(seed);
  return sela::randn({16, sela::test::kSmallFcWidth}, rng, sela::DType::f64);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

TEST_CASE("bf16 emulation: the network in evaluation mode, float32 against float64") {
  const sela::Device cpu = sela::Device::cpu();
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    CAPTURE(seed);
    const sela::ModelConfig config = sela::test::small_alexnet32(seed, 0.0);
    const sela::test::SmallBatch batch = sela::test::small_batch(16, seed + 100);
    const Tensor upstream = fc7_upstream(seed + 7);
    const auto exact =
        sela::test::step_gradients(config, batch, cpu, sela::DType::f64, false, false, upstream);
    const auto emulated =
        sela::test::step_gradients(config, batch, cpu, sela::DType::f64, true, false, upstream);
    const auto emulated32 =
        sela::test::step_gradients(config, batch, cpu, sela::DType::f32, true, false, upstream);
    REQUIRE(exact.names == emulated32.names);
    REQUIRE(exact.names.size() == 24);  // weight and bias of 5 convs, 5 BatchNorms, fc6, fc7
    const std::vector<bool> zero = sela::test::zero_in_exact_arithmetic(exact);
    std::vector<double> vs_exact;
    double worst = 0;
    for (std::size_t i = 0; i < exact.grads.size(); ++i) {
      if (zero[i]) continue;
      CAPTURE(exact.names[i]);
      const double error = sela::test::relative_l2(emulated32.grads[i], emulated.grads[i]);
      CHECK(error <= kEmulationAgreement);
      worst = std::max(worst, error);
      vs_exact.push_back(sela::test::relative_l2(emulated.grads[i], exact.grads[i]));
    }
    CHECK(vs_exact.size() >= 10);
    // The emulation rounds for real: far from exact float64 (the median, measured 7.9-17%).
    CHECK(median(vs_exact) >= 0.03);
    MESSAGE("seed " << seed << ": float32 vs float64 emulation at most " << worst
                    << ", emulation vs exact: median " << median(vs_exact));
  }
}

TEST_CASE("bf16 emulation: a training step keeps its loss, and the mode is in effect") {
  const sela::ModelConfig config = sela::test::small_alexnet32(3, 0.0);
  const sela::test::SmallBatch batch = sela::test::small_batch(16, 31);
  const sela::Device cpu = sela::Device::cpu();
  const auto exact = sela::test::step_gradients(config, batch, cpu, sela::DType::f64, false);
  const auto emulated = sela::test::step_gradients(config, batch, cpu, sela::DType::f64, true);
  REQUIRE(exact.names == emulated.names);
  CHECK(std::fabs(emulated.loss - exact.loss) <= 0.01 * std::fabs(exact.loss));
  const std::vector<bool> zero = sela::test::zero_in_exact_arithmetic(exact);
  double conv1_change = -1, fc6_change = -1, worst = 0;
  for (std::size_t i = 0; i < exact.grads.size(); ++i) {
    if (zero[i]) continue;
    const double change = sela::test::relative_l2(emulated.grads[i], exact.grads[i]);
    worst = std::max(worst, change);
    if (exact.names[i] == "features.0.weight") conv1_change = change;
    if (exact.names[i] == "classifier.1.weight") fc6_change = change;
  }
  CHECK(conv1_change > 1e-3);
  CHECK(fc6_change > 1e-3);
  MESSAGE("training step: emulation vs exact float64: conv1 " << conv1_change << ", fc6 "
                                                              << fc6_change << ", worst " << worst
                                                              << "; loss " << emulated.loss
                                                              << " vs " << exact.loss);
}
