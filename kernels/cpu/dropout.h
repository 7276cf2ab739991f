// Dropout on CPU with a counter-based random mask.
//
// The mask bit of element i depends only on (seed, offset + i): it never depends on the
// thread count, the chunking or the launch shape, so a CUDA twin (same signatures) can
// reproduce it bit for bit, and one call over n elements equals two calls over a split
// with offsets. The generator is Philox-4x32-10 (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC'11; the generator of Random123, cuRAND and PyTorch's CUDA RNG),
// written here from its definition and checked against Random123's known-answer vectors:
//   key     = (seed & 0xffffffff, seed >> 32)
//   block   = counter / 4, lane = counter % 4
//   words   = Philox4x32-10(key, (block & 0xffffffff, block >> 32, 0, 0))
//   u       = (words[lane] >> 8) * 2^-24          (top 24 bits: exact in float, in [0, 1))
// Element i is kept when u(seed, offset + i) >= p (compared exactly, as integers:
// top24 >= ceil(p * 2^24)); kept values are scaled by 1 / (1 - p) computed in T. The mask
// byte is 1 for kept, 0 for dropped; a dropped output is exactly 0, also where x is NaN or
// Inf (PyTorch's x * mask * scale would give NaN there). Instantiated for float and double.
#pragma once

#include <array>
#include <cstdint>

namespace sela::cpu {

// Philox-4x32-10 block function: 10 rounds on `counter` under `key`.
std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter,
                                           std::array<std::uint32_t, 2> key);

// u(seed, counter) in [0, 1) as described above.
float dropout_uniform(std::uint64_t seed, std::uint64_t counter);

// y = mask ? x / (1 - p) : 0, mask[i] = u(seed, offset + i) >= p. p must be in [0, 1);
// p == 0 copies x and keeps everything. y may be x (in place).
template <typename T>
void dropout_forward(std::int64_t n, const T* x, T p, std::uint64_t seed, std::uint64_t offset,
                     T* y, std::uint8_t* mask);

// grad_x = mask ? grad_y / (1 - p) : 0, overwrites grad_x. grad_x may be grad_y.
template <typename T>
void dropout_backward(std::int64_t n, const T* grad_y, const std::uint8_t* mask, T p, T* grad_x);

}  // namespace sela::cpu
