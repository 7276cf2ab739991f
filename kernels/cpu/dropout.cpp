// Dropout on CPU (see dropout.h for the generator and the mask rule).
//
// The forward pass works in tiles of kTile elements: first the tile's random words are
// generated (one Philox block per four counters), then the mask and the output are written
// by a simple loop over the tile. Keeping the generator out of the output loop lets that
// loop vectorise; the tile lives on the stack. The parallel bodies capture by value: the
// byte stores to the mask could otherwise alias any captured variable and block
// vectorisation.
#include "kernels/cpu/dropout.h"

#include <cmath>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

constexpr std::int64_t kDropoutGrain = 1 << 14;  // elements per thread below which not split
constexpr std::int64_t kTile = 1024;             // elements per generate-then-apply tile

// Philox-4x32 constants (Salmon et al. 2011): round multipliers and Weyl key increments.
constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr std::uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr std::uint32_t kPhiloxW1 = 0xBB67AE85u;

inline void philox_round(std::uint32_t* c, const std::uint32_t* k) {
  const std::uint64_t p0 = static_cast<std::uint64_t>(kPhiloxM0) * c[0];
  const std::uint64_t p1 = static_cast<std::uint64_t>(kPhiloxM1) * c[2];
  const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32),
                      lo0 = static_cast<std::uint32_t>(p0);
  const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32),
                      lo1 = static_cast<std::uint32_t>(p1);
  const std::uint32_t next0 = hi1 ^ c[1] ^ k[0];
  const std::uint32_t next2 = hi0 ^ c[3] ^ k[1];
  c[0] = next0;
  c[1] = lo1;
  c[2] = next2;
  c[3] = lo0;
}

// The words of `blocks` consecutive blocks from first_block, written to words[0..4*blocks):
// Philox4x32-10 of counter (block lo, block hi, 0, 0) under key (seed lo, seed hi) for each
// block (the same rounds as philox_round), kept as one array per counter word so that the
// loop over blocks vectorises (32x32->64 multiplies). The key bump after the last round
// is unused.
constexpr std::int64_t kMaxBlocks = kTile / 4 + 2;  // blocks a tile can touch (unaligned ends)
inline void philox_many_words(std::uint64_t seed, std::uint64_t first_block, std::int64_t blocks,
                              std::uint32_t* words) {
  std::uint32_t c0[kMaxBlocks], c1[kMaxBlocks], c2[kMaxBlocks], c3[kMaxBlocks];
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::uint64_t block = first_block + static_cast<std::uint64_t>(b);
    c0[b] = static_cast<std::uint32_t>(block);
    c1[b] = static_cast<std::uint32_t>(block >> 32);
    c2[b] = 0u;
    c3[b] = 0u;
  }
  std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::uint64_t p0 = static_cast<std::uint64_t>(kPhiloxM0) * c0[b];
      const std::uint64_t p1 = static_cast<std::uint64_t>(kPhiloxM1) * c2[b];
      const std::uint32_t next0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1[b] ^ k0;
      const std::uint32_t next2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3[b] ^ k1;
      c1[b] = static_cast<std::uint32_t>(p1);
      c3[b] = static_cast<std::uint32_t>(p0);
      c0[b] = next0;
      c2[b] = next2;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (std::int64_t b = 0; b < blocks; ++b) {
    words[4 * b + 0] = c0[b];
    words[4 * b + 1] = c1[b];
    words[4 * b + 2] = c2[b];
    words[4 * b + 3] = c3[b];
  }
}

// The smallest 24-bit value t with t * 2^-24 >= p: element kept iff top24 >= t.
// p * 2^24 is exact in double for float and double p, so this equals u >= p.
template <typename T>
std::uint32_t keep_threshold(T p) {
  return static_cast<std::uint32_t>(std::ceil(static_cast<double>(p) * 16777216.0));
}

template <typename T>
void check_probability(const char* op, T p) {
  SELA_CHECK(p >= T(0) && p < T(1), op, "probability p must be in [0, 1), got " << p);
}

}  // namespace

std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter,
                                           std::array<std::uint32_t, 2> key) {
  std::uint32_t* c = counter.data();
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kPhiloxW0;
      key[1] += kPhiloxW1;
    }
    philox_round(c, key.data());
  }
  return counter;
}

float dropout_uniform(std::uint64_t seed, std::uint64_t counter) {
  const std::uint64_t block = counter >> 2;
  const auto words = philox4x32_10(
      {static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32), 0u, 0u},
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
  return static_cast<float>(words[counter & 3u] >> 8) * (1.0f / 16777216.0f);
}

template <typename T>
void dropout_forward(std::int64_t n, const T* x, T p, std::uint64_t seed, std::uint64_t offset,
                     T* y, std::uint8_t* mask) {
  SELA_CHECK(n >= 0, "dropout_forward", "element count must be >= 0, got " << n);
  check_probability("dropout_forward", p);
  const std::uint32_t threshold = keep_threshold(p);
  const T keep_scale = T(1) / (T(1) - p);

  parallel_for(0, n, kDropoutGrain, [=](std::int64_t begin, std::int64_t end) {
    // Random words of the tile, aligned to Philox blocks: word j is counter first_block*4 + j.
    std::uint32_t words[4 * kMaxBlocks];
    for (std::int64_t tile = begin; tile < end; tile += kTile) {
      const std::int64_t tile_end = tile + kTile < end ? tile + kTile : end;
      const std::uint64_t first_counter = offset + static_cast<std::uint64_t>(tile);
      const std::uint64_t last_counter = offset + static_cast<std::uint64_t>(tile_end - 1);
      const std::uint64_t first_block = first_counter >> 2;
      const std::int64_t blocks = static_cast<std::int64_t>((last_counter >> 2) - first_block + 1);
      philox_many_words(seed, first_block, blocks, words);
      const std::uint32_t* tile_words = words + (first_counter & 3u);  // word of element `tile`

      const std::int64_t count = tile_end - tile;
      const T* xs = x + tile;
      T* ys = y + tile;
      std::uint8_t* ms = mask + tile;
      for (std::int64_t i = 0; i < count; ++i) {
        const bool keep = (tile_words[i] >> 8) >= threshold;
        const T scaled = xs[i] * keep_scale;  // read unconditionally: a select, not a branch
        ms[i] = keep ? 1 : 0;
        ys[i] = keep ? scaled : T(0);
      }
    }
  });
}

template <typename T>
void dropout_backward(std::int64_t n, const T* grad_y, const std::uint8_t* mask, T p, T* grad_x) {
  SELA_CHECK(n >= 0, "dropout_backward", "element count must be >= 0, got " << n);
  check_probability("dropout_backward", p);
  const T keep_scale = T(1) / (T(1) - p);
  parallel_for(0, n, kDropoutGrain, [=](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const T scaled = grad_y[i] * keep_scale;
      grad_x[i] = mask[i] != 0 ? scaled : T(0);
    }
  });
}

template void dropout_forward<float>(std::int64_t, const float*, float, std::uint64_t,
                                     std::uint64_t, float*, std::uint8_t*);
template void dropout_forward<double>(std::int64_t, const double*, double, std::uint64_t,
                                      std::uint64_t, double*, std::uint8_t*);
template void dropout_backward<float>(std::int64_t, const float*, const std::uint8_t*, float,
                                      float*);
template void dropout_backward<double>(std::int64_t, const double*, const std::uint8_t*, double,
                                       double*);

}  // namespace sela::cpu
