// Reductions on CPU (see reduce.h).
//
// Sums accumulate in double through a fixed set of independent lanes: the lanes let the
// compiler vectorise the loop without reassociating it (no -ffast-math needed), and the
// fixed lane/chunk structure makes the result bitwise reproducible for a thread count.
#include "kernels/cpu/reduce.h"

#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

// Items per thread below which a reduction is not split.
constexpr std::int64_t kReduceGrain = 1 << 16;

// Columns summed together by one task of sum_rows (a double accumulator per column kept
// on the stack: 2 KiB).
constexpr std::int64_t kColumnBlock = 256;

// Sum of x[0..n) in double, through kLanes independent accumulators combined in a fixed
// order at the end.
template <typename T>
double sum_in_double(std::int64_t n, const T* x) {
  constexpr int kLanes = 16;
  double lanes[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(x[i + l]);
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] += static_cast<double>(x[i]);
  // Pairwise combination of the lanes (fixed tree).
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0];
}

}  // namespace

template <typename T>
T sum(std::int64_t n, const T* x) {
  SELA_CHECK(n >= 0, "sum", "element count must be >= 0, got " << n);
  std::int64_t chunks = parallel_chunk_count(0, n, kReduceGrain);
  if (chunks <= 1) return static_cast<T>(sum_in_double(n, x));
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);  // (chunks)
  parallel_chunks(
      0, n, kReduceGrain, [&](std::int64_t chunk, std::int64_t begin, std::int64_t end) {
        partial[static_cast<std::size_t>(chunk)] = sum_in_double(end - begin, x + begin);
      });
  double total = 0.0;
  for (double p : partial) total += p;  // chunk order
  return static_cast<T>(total);
}

template <typename T>
void sum_rows(std::int64_t rows, std::int64_t cols, const T* x, T* out) {
  SELA_CHECK(rows >= 0 && cols >= 0, "sum_rows",
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
  if (cols == 0) return;
  std::int64_t column_blocks = (cols + kColumnBlock - 1) / kColumnBlock;
  std::int64_t tall_chunks = parallel_chunk_count(0, rows, kReduceGrain / cols + 1);

  if (column_blocks >= tall_chunks) {
    // Split by blocks of columns: every column is summed over all rows in row order.
    std::int64_t block_grain = kReduceGrain / (kColumnBlock * (rows + 1)) + 1;
    parallel_for(0, column_blocks, block_grain,
                 [&](std::int64_t block_begin, std::int64_t block_end) {
                   for (std::int64_t block = block_begin; block < block_end; ++block) {
                     std::int64_t c0 = block * kColumnBlock;
                     std::int64_t width = cols - c0 < kColumnBlock ? cols - c0 : kColumnBlock;
                     double acc[kColumnBlock] = {};  // (width) running column sums
                     for (std::int64_t r = 0; r < rows; ++r) {
                       const T* row = x + r * cols + c0;  // (width)
                       for (std::int64_t c = 0; c < width; ++c)
                         acc[c] += static_cast<double>(row[c]);
                     }
                     for (std::int64_t c = 0; c < width; ++c) out[c0 + c] = static_cast<T>(acc[c]);
                   }
                 });
    return;
  }

  // Narrow and tall: each chunk of rows sums into its own partial row, then the partial
  // rows are added in chunk order.
  std::vector<double> partial(static_cast<std::size_t>(tall_chunks * cols), 0.0);  // (chunks, cols)
  parallel_chunks(0, rows, kReduceGrain / cols + 1,
                  [&](std::int64_t chunk, std::int64_t row_begin, std::int64_t row_end) {
                    double* acc = partial.data() + chunk * cols;  // (cols)
                    for (std::int64_t r = row_begin; r < row_end; ++r) {
                      const T* row = x + r * cols;  // (cols)
                      for (std::int64_t c = 0; c < cols; ++c) acc[c] += static_cast<double>(row[c]);
                    }
                  });
  for (std::int64_t c = 0; c < cols; ++c) {
    double total = 0.0;
    for (std::int64_t chunk = 0; chunk < tall_chunks; ++chunk) total += partial[chunk * cols + c];
    out[c] = static_cast<T>(total);
  }
}

template <typename T>
void argmax_rows(std::int64_t rows, std::int64_t cols, const T* x, std::int64_t* out) {
  SELA_CHECK(rows >= 0 && cols >= 0, "argmax_rows",
             "rows and cols must be >= 0, got (" << rows << ", " << cols << ")");
  SELA_CHECK(rows == 0 || cols > 0, "argmax_rows",
             "a row of " << rows << " x 0 has no largest element");
  parallel_for(0, rows, kReduceGrain / (cols + 1) + 1,
               [&](std::int64_t row_begin, std::int64_t row_end) {
                 for (std::int64_t r = row_begin; r < row_end; ++r) {
                   const T* row = x + r * cols;  // (cols)
                   T best = row[0];
                   std::int64_t best_index = 0;
                   if (best == best) {  // a NaN in column 0 already wins
                     for (std::int64_t c = 1; c < cols; ++c) {
                       T v = row[c];
                       if (v != v) {  // the first NaN wins and ends the search
                         best_index = c;
                         break;
                       }
                       if (v > best) {  // strict: the first maximum wins on ties
                         best = v;
                         best_index = c;
                       }
                     }
                   }
                   out[r] = best_index;
                 }
               });
}

template float sum<float>(std::int64_t, const float*);
template double sum<double>(std::int64_t, const double*);
template void sum_rows<float>(std::int64_t, std::int64_t, const float*, float*);
template void sum_rows<double>(std::int64_t, std::int64_t, const double*, double*);
template void argmax_rows<float>(std::int64_t, std::int64_t, const float*, std::int64_t*);
template void argmax_rows<double>(std::int64_t, std::int64_t, const double*, std::int64_t*);

}  // namespace sela::cpu
