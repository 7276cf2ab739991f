// Random logits for the Sinkhorn tests (CPU reference, fast path, kernels, CUDA twins):
// i.i.d. N(0, spread²), row-major (N, K), reproducible from the seed.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace sela::test {

inline std::vector<float> random_logits(std::int64_t n, std::int64_t k, float spread,
                                        std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> z(static_cast<std::size_t>(n * k));
  for (float& v : z) v = normal(gen);
  return z;
}

}  // namespace sela::test
