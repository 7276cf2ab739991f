// Tests of kernels/cpu/dropout.h: the generator against Random123's published Philox-4x32-10
// known-answer vectors; the mask is a pure function of (seed, offset + i): identical with 1
// and 2 threads and for a split call (two calls with offsets) versus one call; the keep rate
// on 1e6 elements within 4 sigma of 1 - p; kept values scaled by 1 / (1 - p), dropped ones
// exactly 0; the backward pass against the closed form and central finite differences in
// float64; the p == 0 copy and the p range check.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/parallel.h"
#include "tests/kernels/kernel_test_util.h"

namespace {

using sela::test::as;
using sela::test::central_differences;
using sela::test::poisoned;
using sela::test::random_values;
using sela::test::within_tolerance;

}  // namespace

TEST_CASE("philox4x32_10 reproduces Random123's known-answer vectors") {
  using Words = std::array<std::uint32_t, 4>;
  CHECK(sela::cpu::philox4x32_10({0, 0, 0, 0}, {0, 0}) ==
        Words{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(sela::cpu::philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                 {0xffffffffu, 0xffffffffu}) ==
        Words{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(sela::cpu::philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                 {0xa4093822u, 0x299f31d0u}) ==
        Words{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("dropout_uniform is the top 24 bits of the Philox word of (seed, counter)") {
  const std::uint64_t seed = 0x0123456789abcdefULL;
  for (std::uint64_t counter : {0ULL, 1ULL, 2ULL, 3ULL, 4ULL, 1001ULL, 0x1234567890ULL, ~0ULL}) {
    CAPTURE(counter);
    const std::uint64_t block = counter / 4;
    const auto words = sela::cpu::philox4x32_10(
        {static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32), 0, 0},
        {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
    const double want = static_cast<double>(words[counter % 4] >> 8) / 16777216.0;
    const float got = sela::cpu::dropout_uniform(seed, counter);
    CHECK(static_cast<double>(got) == want);
    CHECK(got >= 0.0f);
    CHECK(got < 1.0f);
  }
}

TEST_CASE(
    "dropout mask: same with 1 and 2 threads, same for a split call, keep rate within 4 sigma") {
  const std::int64_t n = 1000000;
  const std::uint64_t seed = 20240607, offset = 77;
  const float p = 0.3f;
  const auto x = as<float>(random_values(n, 1, -2.0, 2.0));

  sela::cpu::set_num_threads(1);
  auto y1 = poisoned<float>(n);
  std::vector<std::uint8_t> mask1(static_cast<std::size_t>(n), 7);
  sela::cpu::dropout_forward<float>(n, x.data(), p, seed, offset, y1.data(), mask1.data());

  sela::cpu::set_num_threads(2);
  auto y2 = poisoned<float>(n);
  std::vector<std::uint8_t> mask2(static_cast<std::size_t>(n), 7);
  sela::cpu::dropout_forward<float>(n, x.data(), p, seed, offset, y2.data(), mask2.data());
  CHECK(mask1 == mask2);
  CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);

  // Split at a point that is not a multiple of 4 (mid Philox block): two calls with offsets.
  const std::int64_t split = 333335;
  auto y3 = poisoned<float>(n);
  std::vector<std::uint8_t> mask3(static_cast<std::size_t>(n), 7);
  sela::cpu::dropout_forward<float>(split, x.data(), p, seed, offset, y3.data(), mask3.data());
  sela::cpu::dropout_forward<float>(n - split, x.data() + split, p, seed, offset + split,
                                    y3.data() + split, mask3.data() + split);
  CHECK(mask1 == mask3);
  CHECK(std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float)) == 0);
  sela::cpu::set_num_threads(0);

  // Every mask byte is 0/1 and agrees with dropout_uniform; kept values are scaled, dropped 0.
  std::int64_t kept = 0, bad_mask = 0, bad_value = 0;
  const double keep_scale = 1.0 / (1.0 - static_cast<double>(p));
  for (std::int64_t i = 0; i < n; ++i) {
    const bool keep = sela::cpu::dropout_uniform(seed, offset + static_cast<std::uint64_t>(i)) >= p;
    if (mask1[i] != (keep ? 1 : 0)) ++bad_mask;
    kept += mask1[i] == 1 ? 1 : 0;
    const double want = keep ? static_cast<double>(x[i]) * keep_scale : 0.0;
    if (!within_tolerance(y1[i], want, 1e-30, 2e-7)) ++bad_value;
    if (!keep && y1[i] != 0.0f) ++bad_value;
  }
  CHECK(bad_mask == 0);
  CHECK(bad_value == 0);
  const double rate = static_cast<double>(kept) / static_cast<double>(n);
  const double sigma = std::sqrt(0.3 * 0.7 / static_cast<double>(n));
  CAPTURE(rate);
  CHECK(std::abs(rate - 0.7) <= 4 * sigma);
}

TEST_CASE("dropout: different seeds and offsets give different masks; float and double share one") {
  const std::int64_t n = 4096;
  const auto x = random_values(n, 2, -2.0, 2.0);
  const auto x_f = as<float>(x);
  std::vector<std::uint8_t> a(n), b(n), c(n), d(n);
  std::vector<double> y(n);
  std::vector<float> y_f(n);
  sela::cpu::dropout_forward<double>(n, x.data(), 0.5, 1, 0, y.data(), a.data());
  sela::cpu::dropout_forward<double>(n, x.data(), 0.5, 2, 0, y.data(), b.data());
  sela::cpu::dropout_forward<double>(n, x.data(), 0.5, 1, 4096, y.data(), c.data());
  sela::cpu::dropout_forward<float>(n, x_f.data(), 0.5f, 1, 0, y_f.data(), d.data());
  CHECK(a != b);
  CHECK(a != c);
  CHECK(a == d);
  for (std::int64_t i = 0; i < n; ++i) {
    REQUIRE(y_f[i] == static_cast<float>(a[i] ? 2.0 * x_f[i] : 0.0));
  }
}

TEST_CASE("dropout keep rule at the boundary: kept when u == p, dropped when u < p") {
  const std::uint64_t seed = 31337;
  std::int64_t checked = 0;
  for (std::uint64_t counter = 0; counter < 64; ++counter) {
    const float u = sela::cpu::dropout_uniform(seed, counter);
    if (u == 0.0f) continue;
    const double x = 1.5;
    double y = -1;
    std::uint8_t mask = 9;
    // p == u: kept (u >= p), value scaled by 1 / (1 - p).
    sela::cpu::dropout_forward<double>(1, &x, static_cast<double>(u), seed, counter, &y, &mask);
    CHECK(mask == 1);
    const double want = 1.5 / (1.0 - static_cast<double>(u));
    CHECK(std::abs(y - want) <= 1e-15 * want);  // x * (1 / (1 - p)): two roundings
    // p just above u: dropped.
    sela::cpu::dropout_forward<double>(1, &x, std::nextafter(static_cast<double>(u), 1.0), seed,
                                       counter, &y, &mask);
    CHECK(mask == 0);
    CHECK(y == 0.0);
    ++checked;
  }
  CHECK(checked > 60);
}

TEST_CASE("dropout with p == 0 copies x and keeps every element") {
  const std::int64_t n = 1001;
  const auto x = as<float>(random_values(n, 3, -2.0, 2.0));
  auto y = poisoned<float>(n);
  std::vector<std::uint8_t> mask(n, 9);
  sela::cpu::dropout_forward<float>(n, x.data(), 0.0f, 5, 0, y.data(), mask.data());
  CHECK(y == x);
  CHECK(mask == std::vector<std::uint8_t>(n, 1));
}

TEST_CASE("dropout rejects p outside [0, 1)") {
  float x = 1, y = 0;
  std::uint8_t mask = 0;
  CHECK_THROWS_AS(sela::cpu::dropout_forward<float>(1, &x, 1.0f, 0, 0, &y, &mask), sela::Error);
  CHECK_THROWS_AS(sela::cpu::dropout_forward<float>(1, &x, -0.1f, 0, 0, &y, &mask), sela::Error);
  CHECK_THROWS_AS(sela::cpu::dropout_forward<float>(1, &x, std::nanf(""), 0, 0, &y, &mask),
                  sela::Error);
  CHECK_THROWS_AS(sela::cpu::dropout_backward<float>(1, &x, &mask, 1.5f, &y), sela::Error);
}

TEST_CASE("dropout_backward matches the closed form and finite differences in float64") {
  const std::int64_t n = 333;
  const double p = 0.4;
  const std::uint64_t seed = 99, offset = 5;
  auto x = random_values(n, 4, -2.0, 2.0);
  const auto weight = random_values(n, 5, -2.0, 2.0);  // loss = sum(weight * dropout(x)), same mask
  std::vector<double> y(n);
  std::vector<std::uint8_t> mask(n);
  sela::cpu::dropout_forward<double>(n, x.data(), p, seed, offset, y.data(), mask.data());
  auto grad = poisoned<double>(n);
  sela::cpu::dropout_backward<double>(n, weight.data(), mask.data(), p, grad.data());

  std::vector<double> out(n);
  std::vector<std::uint8_t> scratch(n);
  auto loss = [&] {
    sela::cpu::dropout_forward<double>(n, x.data(), p, seed, offset, out.data(), scratch.data());
    double total = 0;
    for (std::int64_t i = 0; i < n; ++i) total += weight[i] * out[i];
    return total;
  };
  const auto numeric = central_differences(&x, loss, 1e-6);
  std::int64_t bad = 0, bad_closed = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!within_tolerance(grad[i], numeric[i], 1e-7, 1e-6)) ++bad;
    const double closed = mask[i] ? weight[i] / (1 - p) : 0.0;
    if (!within_tolerance(grad[i], closed, 1e-15, 1e-15)) ++bad_closed;
  }
  CHECK(bad == 0);
  CHECK(bad_closed == 0);

  // float agrees with double.
  const auto w_f = as<float>(weight);
  auto grad_f = poisoned<float>(n);
  sela::cpu::dropout_backward<float>(n, w_f.data(), mask.data(), static_cast<float>(p),
                                     grad_f.data());
  std::int64_t bad_f = 0;
  for (std::int64_t i = 0; i < n; ++i)
    if (!within_tolerance(grad_f[i], grad[i], 1e-7, 3e-7)) ++bad_f;
  CHECK(bad_f == 0);
}
