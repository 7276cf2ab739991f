// The host bfloat16 conversions (kernels/cpu/bfloat16.h) against a reference that knows
// nothing of bit tricks: the candidates are the two bfloat16 values around x (x's top 16
// bits, truncated, and the next one away from zero), compared in double; the nearer wins,
// a tie goes to the even one (lowest mantissa bit 0). Checked on every float whose low 16
// bits take a few patterns (all exponents and signs, ties and near-ties included), on 10^6
// random floats, and on the special values.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/cpu/bfloat16.h"

namespace {

float float_of(std::uint32_t bits) {
  float x = 0;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// The bfloat16 nearest to a finite x (ties to even), by comparing the two candidates.
std::uint16_t reference_round(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  const auto truncated = static_cast<std::uint16_t>(bits >> 16);
  const auto next = static_cast<std::uint16_t>(truncated + 1);  // away from zero (same sign)
  const double low = sela::cpu::float_from_bfloat16(truncated);
  // The next one up may be infinity (past the largest finite bfloat16).
  const double high = (next & 0x7FFFu) == 0x7F80u
                          ? std::copysign(std::ldexp(1.0, 128), static_cast<double>(x))
                          : static_cast<double>(sela::cpu::float_from_bfloat16(next));
  const double distance_low = std::fabs(static_cast<double>(x) - low);
  const double distance_high = std::fabs(static_cast<double>(x) - high);
  if (distance_low < distance_high) return truncated;
  if (distance_high < distance_low) return next;
  return (truncated & 1u) == 0 ? truncated : next;
}

}  // namespace

TEST_CASE("bfloat16_from_float rounds to nearest, ties to even, on structured and random floats") {
  const std::uint32_t low_patterns[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000};
  long checked = 0, mismatches = 0;
  for (std::uint32_t high = 0; high < 0x10000u; ++high) {
    for (std::uint32_t low : low_patterns) {
      const std::uint32_t bits = (high << 16) | low;
      if ((bits & 0x7F800000u) == 0x7F800000u) continue;  // inf / NaN: below
      const float x = float_of(bits);
      mismatches += sela::cpu::bfloat16_from_float(x) != reference_round(x);
      ++checked;
    }
  }
  std::mt19937 rng(2026);
  for (int i = 0; i < 1000000; ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(rng());
    if ((bits & 0x7F800000u) == 0x7F800000u) continue;
    const float x = float_of(bits);
    mismatches += sela::cpu::bfloat16_from_float(x) != reference_round(x);
    ++checked;
  }
  INFO(mismatches << " mismatches in " << checked << " floats");
  CHECK(checked > 1400000);
  CHECK(mismatches == 0);
}

TEST_CASE("bfloat16 special values and round trips") {
  using sela::cpu::bfloat16_from_float;
  using sela::cpu::float_from_bfloat16;
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(bfloat16_from_float(0.0f) == 0x0000);
  CHECK(bfloat16_from_float(-0.0f) == 0x8000);
  CHECK(bfloat16_from_float(1.0f) == 0x3F80);
  CHECK(bfloat16_from_float(inf) == 0x7F80);
  CHECK(bfloat16_from_float(-inf) == 0xFF80);
  CHECK(bfloat16_from_float(std::numeric_limits<float>::max()) == 0x7F80);  // rounds up to inf
  const std::uint16_t nan = bfloat16_from_float(std::numeric_limits<float>::quiet_NaN());
  CHECK(std::isnan(float_from_bfloat16(nan)));
  // A NaN whose payload lies only in the dropped bits stays a NaN (not infinity).
  CHECK(std::isnan(float_from_bfloat16(bfloat16_from_float(float_of(0x7F800001u)))));
  CHECK(std::isnan(float_from_bfloat16(bfloat16_from_float(float_of(0xFF800001u)))));
  // Every bfloat16 converts to float and back unchanged (NaNs: to a NaN).
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const float x = float_from_bfloat16(static_cast<std::uint16_t>(b));
    if (std::isnan(x)) {
      CHECK(std::isnan(float_from_bfloat16(bfloat16_from_float(x))));
    } else if (bfloat16_from_float(x) != b) {
      FAIL("bfloat16 " << b << " did not survive a round trip");
    }
  }
  CHECK(sela::cpu::round_to_bfloat16(1.0f + 1.0f / 256) == 1.0f);  // a tie: to even
  CHECK(sela::cpu::round_to_bfloat16(1.0f + 3.0f / 256) == 1.0f + 4.0f / 256);  // tie: to even
}

// The double overload (the bf16 mode's float64 emulation) rounds once: every float's double
// rounds as the float does; a double just above a tie between two bfloat16s, whose float
// rounding would create that tie and then go to even, rounds up; subnormal spacing 2^-133
// and ties to even there; overflow to infinity as for floats.
TEST_CASE("round_to_bfloat16 of a double: one rounding, to nearest, ties to even") {
  std::mt19937 gen(11);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const float x = float_of(bits(gen));
    if (std::isnan(x)) continue;
    const double want = sela::cpu::round_to_bfloat16(x);
    if (sela::cpu::round_to_bfloat16(static_cast<double>(x)) != want) {
      FAIL("double " << static_cast<double>(x) << " rounded differently from its float");
    }
  }
  using sela::cpu::round_to_bfloat16;
  const double above_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  CHECK(round_to_bfloat16(static_cast<float>(above_tie)) == 1.0f);  // through float: 1
  CHECK(round_to_bfloat16(above_tie) == 1.0 + std::ldexp(1.0, -7));  // directly: up
  CHECK(round_to_bfloat16(-above_tie) == -(1.0 + std::ldexp(1.0, -7)));
  CHECK(round_to_bfloat16(std::ldexp(1.0, -133)) == std::ldexp(1.0, -133));  // smallest
  CHECK(round_to_bfloat16(std::ldexp(1.0, -134)) == 0.0);                    // tie: to even 0
  CHECK(round_to_bfloat16(std::ldexp(3.0, -134)) == std::ldexp(1.0, -132));  // tie: to even
  CHECK(round_to_bfloat16(std::ldexp(1.2, -134)) == std::ldexp(1.0, -133));
  const double largest = std::ldexp(255.0, 120);
  CHECK(round_to_bfloat16(largest) == largest);
  CHECK(round_to_bfloat16(std::ldexp(255.49, 120)) == largest);
  CHECK(std::isinf(round_to_bfloat16(std::ldexp(255.5, 120))));  // tie: to even, 2^128
  CHECK(round_to_bfloat16(-std::ldexp(1e5, 300)) == -HUGE_VAL);
  CHECK(round_to_bfloat16(0.0) == 0.0);
  CHECK(std::isnan(round_to_bfloat16(std::nan(""))));
}
