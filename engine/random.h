// Reproducible random numbers for initialisation, synthetic data and shuffling.
//
// Rng is SplitMix64 (Steele, Lea, Flood 2014): tiny state (one uint64, so it is trivial to
// checkpoint), good statistical quality, identical on every platform. Normal variates come
// from the Box-Muller transform written here, not std::normal_distribution (whose output is
// implementation-defined), so a seed gives the same weights on every machine.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/tensor.h"

namespace sela {

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) : state_(seed) {}

  std::uint64_t next_u64() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
  // Uniform integer in [0, n), n > 0 (multiply-shift; bias below 2^-32 for n < 2^32).
  std::uint64_t below(std::uint64_t n) {
    __extension__ using Wide = unsigned __int128;  // GCC/Clang extension, silences -pedantic
    return static_cast<std::uint64_t>((static_cast<Wide>(next_u64()) * n) >> 64);
  }
  double normal() {
    double u1 = uniform();
    double u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  std::uint64_t state() const { return state_; }
  void set_state(std::uint64_t state) { state_ = state; }

 private:
  std::uint64_t state_;
};

// Fills a float32/float64 tensor in place.
void fill_normal(Tensor& t, Rng& rng, double mean, double stddev);
void fill_uniform(Tensor& t, Rng& rng, double low, double high);
Tensor randn(const Shape& shape, Rng& rng, DType dtype = DType::f32);

}  // namespace sela
