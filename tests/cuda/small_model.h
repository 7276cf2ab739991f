// The small model of the CUDA whole-step tests: alexnet-32 at width 0.125 (conv widths
// 8-24-48-32-32, fc 512) with 10 heads of 13 clusters.
#pragma once

#include <cstdint>

#include "models/alexnet.h"

namespace sela::test {

inline constexpr std::int64_t kSmallHeads = 10, kSmallClusters = 13;

inline ModelConfig small_alexnet32(std::uint64_t seed, double dropout) {
  ModelConfig config;
  config.arch = "alexnet-32";
  config.width_mult = 0.125;
  config.clusters.assign(kSmallHeads, kSmallClusters);
  config.dropout = dropout;
  config.seed = seed;
  return config;
}

}  // namespace sela::test
