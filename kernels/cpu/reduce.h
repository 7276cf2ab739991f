// Reductions on CPU: the sum of a buffer, column sums of a matrix, row-wise argmax.
//
// CPU reference of each reduction (a CUDA twin gets the same signatures). Deterministic:
// partial results are combined in a fixed order that depends only on the sizes and the
// thread count (sela::cpu::parallel_chunks), never with atomics. argmax_rows does not
// depend on the thread count at all. Instantiated for float and double.
#pragma once

#include <cstdint>

namespace sela::cpu {

// Sum of x[0..n). Accumulates in double (also for float), so a float result is the
// correctly rounded value of a double-precision sum. Bitwise reproducible for a given
// thread count (per-chunk partial sums added in chunk order).
template <typename T>
T sum(std::int64_t n, const T* x);

// out[c] = sum over r of x[r, c] for a (rows, cols) row-major x; overwrites out (cols).
// The bias gradient of a linear layer. Accumulates in double. Wide matrices are split by
// columns (each column summed in row order, independent of the thread count); narrow tall
// ones by rows, with per-chunk partial columns added in chunk order.
template <typename T>
void sum_rows(std::int64_t rows, std::int64_t cols, const T* x, T* out);

// out[r] = index of the largest x[r, :] (rows). The first one wins on ties; NaN counts as
// larger than any number (the first NaN of a row wins), as torch.argmax. cols must be > 0
// when rows > 0.
template <typename T>
void argmax_rows(std::int64_t rows, std::int64_t cols, const T* x, std::int64_t* out);

}  // namespace sela::cpu
