// Random logits for the Sinkhorn tests (CPU reference, fast path, kernels, CUDA twins),
// row-major (N, K), reproducible from the seed:
//   random_logits     i.i.d. N(0, spread²);
//   clustered_logits  a network's logits in miniature: samples around K/3 latent centres in
//                     16 dimensions (within-centre noise `noise`), mapped to K logits by a
//                     random linear map, plus a per-column bias N(0, bias²) that makes some
//                     clusters far more popular than others (as a head's logits early in
//                     training). Large biases make over-relaxed Sinkhorn diverge;
//   nudged            z + N(0, step²): the logits of the next label step, a little further
//                     trained (for warm starts).
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

inline std::vector<float> clustered_logits(std::int64_t n, std::int64_t k, double noise,
                                           double bias, std::uint32_t seed) {
  constexpr std::int64_t kLatent = 16;
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const std::int64_t centres = k > 30 ? k / 3 : k;
  std::vector<double> centre(static_cast<std::size_t>(centres * kLatent));
  for (double& v : centre) v = normal(gen);
  std::vector<double> map(static_cast<std::size_t>(kLatent * k));  // (16, K)
  for (double& v : map) v = normal(gen) / 4.0;
  std::vector<double> column_bias(static_cast<std::size_t>(k));
  for (double& v : column_bias) v = bias * normal(gen);
  std::uniform_int_distribution<std::int64_t> pick(0, centres - 1);
  std::vector<float> z(static_cast<std::size_t>(n * k));
  std::vector<double> latent(kLatent);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t c = pick(gen);
    for (std::int64_t d = 0; d < kLatent; ++d)
      latent[static_cast<std::size_t>(d)] =
          centre[static_cast<std::size_t>(c * kLatent + d)] + noise * normal(gen);
    for (std::int64_t j = 0; j < k; ++j) {
      double v = column_bias[static_cast<std::size_t>(j)];
      for (std::int64_t d = 0; d < kLatent; ++d)
        v += latent[static_cast<std::size_t>(d)] * map[static_cast<std::size_t>(d * k + j)];
      z[static_cast<std::size_t>(i * k + j)] = static_cast<float>(v);
    }
  }
  return z;
}

inline std::vector<float> nudged(const std::vector<float>& z, float step, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> noise(0.0f, step);
  std::vector<float> out = z;
  for (float& v : out) v += noise(gen);
  return out;
}

// Clustered logits (K = 300, lambda 10) on which over-relaxation diverges through absorptions
// before the safeguard stops it (tests/assign/test_sinkhorn.cpp says how they were found);
// the CPU test and its CUDA twin solve the same ones.
struct DivergingRelaxationCase {
  std::int64_t n;
  double noise, bias, omega;
  std::uint32_t seed;
};
inline constexpr DivergingRelaxationCase kDivergingRelaxationCases[] = {
    {2000, 1.0, 2.0, 1.9, 3}, {4000, 1.0, 4.0, 1.9, 4}, {6000, 2.0, 6.0, 1.85, 22}};

}  // namespace sela::test
