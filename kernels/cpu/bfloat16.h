// bfloat16 on the host: the reference of the GPU's conversions, for the bf16 mixed-precision
// mode's tests and for host code that reads or writes bf16 tensors.
//
// A bfloat16 is the top half of an IEEE float32: sign, the same 8-bit exponent, 7 mantissa
// bits. Stored as std::uint16_t (the bits), so that headers compiled by the host compiler
// need no CUDA type. float -> bfloat16 rounds to nearest, ties to even, as CUDA's
// __float2bfloat16_rn: values beyond the largest bfloat16 (and float's largest, which
// rounds up) become infinity, subnormals are kept (no flush). NaN stays NaN (quiet, sign and
// high payload kept; CUDA returns its canonical NaN instead: the one difference).
// bfloat16 -> float is exact.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace sela::cpu {

inline std::uint16_t bfloat16_from_float(float x) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep it a (quiet) NaN
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry into the
  // exponent is the correct rounding up (to infinity past the largest finite value).
  const std::uint32_t lowest_kept = (bits >> 16) & 1u;
  return static_cast<std::uint16_t>((bits + 0x7FFFu + lowest_kept) >> 16);
}

inline float float_from_bfloat16(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float x = 0;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// x rounded to the nearest bfloat16, as a float.
inline float round_to_bfloat16(float x) { return float_from_bfloat16(bfloat16_from_float(x)); }

// x rounded to the nearest bfloat16, as a double, in one rounding (through float it would be
// two, which can differ at a halfway point): 8 significant bits, ties to even, bfloat16's
// subnormal spacing 2^-133 below 2^-126, infinity past the largest bfloat16. The CPU
// emulation of the bf16 mode in float64 (engine/ops.h, set_autocast_bfloat16).
inline double round_to_bfloat16(double x) {
  if (!std::isfinite(x) || x == 0) return x;
  int exponent = 0;
  std::frexp(x, &exponent);  // |x| = m 2^exponent, 0.5 <= m < 1
  const int quantum = std::max(exponent - 8, -133);  // spacing of bfloat16s near x
  const double rounded = std::ldexp(std::nearbyint(std::ldexp(x, -quantum)), quantum);
  const double largest = std::ldexp(255.0, 120);  // (2 - 2^-7) 2^127
  return std::fabs(rounded) > largest ? std::copysign(HUGE_VAL, x) : rounded;
}

}  // namespace sela::cpu
