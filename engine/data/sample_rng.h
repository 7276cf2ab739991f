// The random numbers of the data pipeline, derived from (seed, epoch, sample index) only.
//
// A counter-based generator (splitmix64 over a hashed key) instead of one shared stream:
// each sample's crop, flip and jitter depend on nothing but the run's seed, the epoch and
// the sample's dataset index, so a batch is the same bytes whatever the number of loader
// threads, the order they run in, or which batch the sample lands in. The epoch's shuffle
// uses the same generator on a separate stream.
#pragma once

#include <cmath>
#include <cstdint>

namespace sela::data {

class SampleRng {
 public:
  // `stream` separates uses that share (seed, epoch, index): 0 = augmentation, 1 = shuffle.
  SampleRng(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index, std::uint64_t stream = 0)
      : state_(mix(mix(mix(seed ^ 0x5E1A5E1A5E1A5E1Aull) ^ epoch) ^ index) ^ (stream << 32)) {}

  std::uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return mix(state_);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n), n >= 1 (multiply-shift; bias below 2^-32 for n < 2^32).
  std::int64_t below(std::int64_t n) {
    return static_cast<std::int64_t>((next() >> 32) * static_cast<std::uint64_t>(n) >> 32);
  }
  bool chance(double p) { return p > 0 && uniform() < p; }

  // The splitmix64 finaliser: a bijection on 64 bits with good avalanche.
  static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

 private:
  std::uint64_t state_;
};

}  // namespace sela::data
