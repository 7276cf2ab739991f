// Weighted kNN (see knn.h): blocked similarities, per-query top-k selection and voting.
//
// Similarities: kernels/cpu/gemm.h did not exist when this file was written, so the
// (block, m) similarity panel comes from a plain register-tiled dot-product kernel: 4
// memory rows x 16 queries per tile, the queries packed transposed ((d, 16) per tile,
// already L2-normalised) so that the 16 lanes of one memory value vectorise without
// reordering any sum. Each similarity is then one float32 sum over d in index order times
// the memory row's inverse norm: the same arithmetic for every element whatever its
// position in a tile (tails are zero-padded, never handled by a separate loop), so equal
// inputs give bitwise equal similarities and the tie rules are exact. Swapping in
// sela::cpu::gemm means replacing similarity_panel() only.
//
// Selection: per query, for the largest k requested, nth_element on a copy of the
// similarities finds the k-th largest value; items above it, then items equal to it in
// increasing index, are the neighbours, sorted by (similarity desc, memory index asc).
// Votes for all ks are accumulated along the sorted neighbours (ks in increasing order).
#include "sela/assign/knn.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela {
namespace {

constexpr std::int64_t kLanes = 16;                           // queries per register tile
constexpr std::int64_t kRows = 4;                             // memory rows per register tile
constexpr std::int64_t kMaxBlock = 128;                       // queries per block, at most
constexpr std::int64_t kPanelFloats = std::int64_t{1} << 22;  // aim: (block, m) <= 16 MiB

// out (kRows, kLanes) = memory_rows (kRows, d; row stride ld) . query_tile (d, kLanes).
void dot_tile(const float* memory_rows, std::int64_t ld, const float* query_tile, std::int64_t d,
              float* out) {
  float acc[kRows][kLanes] = {};
  const float* row0 = memory_rows;
  const float* row1 = memory_rows + ld;
  const float* row2 = memory_rows + 2 * ld;
  const float* row3 = memory_rows + 3 * ld;
  for (std::int64_t k = 0; k < d; ++k) {
    const float* lanes = query_tile + k * kLanes;
    const float m0 = row0[k], m1 = row1[k], m2 = row2[k], m3 = row3[k];
    for (std::int64_t l = 0; l < kLanes; ++l) {
      acc[0][l] += m0 * lanes[l];
      acc[1][l] += m1 * lanes[l];
      acc[2][l] += m2 * lanes[l];
      acc[3][l] += m3 * lanes[l];
    }
  }
  for (std::int64_t r = 0; r < kRows; ++r) {
    for (std::int64_t l = 0; l < kLanes; ++l) out[r * kLanes + l] = acc[r][l];
  }
}

// Inverse L2 norms of the rows of x (rows, d), norms clamped to 1e-12; rejects NaN/Inf.
std::vector<float> inverse_row_norms(const char* op, const char* name, const float* x,
                                     std::int64_t rows, std::int64_t d) {
  std::vector<float> inverse(static_cast<std::size_t>(rows));  // (rows)
  for (std::int64_t i = 0; i < rows; ++i) {
    double sum_squares = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      const double value = x[i * d + k];
      SELA_CHECK(std::isfinite(value), op,
                 name << "[" << i << ", " << k << "] = " << value << " is not finite");
      sum_squares += value * value;
    }
    inverse[i] = static_cast<float>(1.0 / std::max(std::sqrt(sum_squares), 1e-12));
  }
  return inverse;
}

// Per-thread scratch for a run of query blocks.
struct BlockScratch {
  std::vector<float> query_tiles;   // (block / kLanes, d, kLanes) packed queries
  std::vector<float> panel;         // (block, m) similarities
  std::vector<float> padded_rows;   // (kRows, d) memory tail, zero-padded
  std::vector<float> values;        // (m) similarities of one query, reordered
  std::vector<std::int64_t> order;  // (m) selected memory indices, best first
  std::vector<double> votes;        // (num_classes)
};

// panel (block, m) = cosine similarities of queries [first, first + count) to all memory.
void similarity_panel(const float* memory, const std::vector<float>& memory_inverse_norm,
                      std::int64_t m, const float* queries,
                      const std::vector<float>& query_inverse_norm, std::int64_t first,
                      std::int64_t count, std::int64_t d, BlockScratch& scratch) {
  const std::int64_t tiles = (count + kLanes - 1) / kLanes;
  float* packed = scratch.query_tiles.data();
  for (std::int64_t t = 0; t < tiles; ++t) {
    float* tile = packed + t * d * kLanes;
    for (std::int64_t l = 0; l < kLanes; ++l) {
      const std::int64_t query = t * kLanes + l;
      if (query < count) {
        const float* row = queries + (first + query) * d;
        const float scale = query_inverse_norm[first + query];
        for (std::int64_t k = 0; k < d; ++k) tile[k * kLanes + l] = row[k] * scale;
      } else {
        for (std::int64_t k = 0; k < d; ++k) tile[k * kLanes + l] = 0.0f;
      }
    }
  }
  float out[kRows * kLanes];
  for (std::int64_t row_begin = 0; row_begin < m; row_begin += kRows) {
    const std::int64_t rows = std::min(kRows, m - row_begin);
    const float* rows_ptr = memory + row_begin * d;
    if (rows < kRows) {  // tail: copy into a zero-padded tile, same kernel
      std::fill(scratch.padded_rows.begin(), scratch.padded_rows.end(), 0.0f);
      std::copy(rows_ptr, rows_ptr + rows * d, scratch.padded_rows.begin());
      rows_ptr = scratch.padded_rows.data();
    }
    for (std::int64_t t = 0; t < tiles; ++t) {
      dot_tile(rows_ptr, d, packed + t * d * kLanes, d, out);
      const std::int64_t lanes = std::min(kLanes, count - t * kLanes);
      for (std::int64_t l = 0; l < lanes; ++l) {
        float* panel_row = scratch.panel.data() + (t * kLanes + l) * m + row_begin;
        for (std::int64_t r = 0; r < rows; ++r) {
          panel_row[r] = out[r * kLanes + l] * memory_inverse_norm[row_begin + r];
        }
      }
    }
  }
}

}  // namespace

void weighted_knn_predict(const float* memory, const std::int64_t* memory_classes, std::int64_t m,
                          const float* queries, std::int64_t q, std::int64_t d,
                          const std::vector<std::int64_t>& ks, double sigma,
                          std::int64_t num_classes, std::int64_t* predictions) {
  const char* op = "weighted_knn";
  SELA_CHECK(m >= 1 && q >= 1 && d >= 1, op,
             "needs m, q, d >= 1, got m " << m << ", q " << q << ", d " << d);
  SELA_CHECK(num_classes >= 1, op, "num_classes must be >= 1, got " << num_classes);
  SELA_CHECK(!ks.empty(), op, "ks is empty: give at least one k (e.g. {10, 200})");
  for (std::int64_t k : ks) SELA_CHECK(k >= 1, op, "every k must be >= 1, got " << k);
  SELA_CHECK(std::isfinite(sigma) && sigma > 0.0, op,
             "sigma must be finite and > 0, got " << sigma);
  SELA_CHECK(memory != nullptr && memory_classes != nullptr && queries != nullptr &&
                 predictions != nullptr,
             op, "null pointer argument");
  for (std::int64_t i = 0; i < m; ++i) {
    SELA_CHECK(memory_classes[i] >= 0 && memory_classes[i] < num_classes, op,
               "memory_classes[" << i << "] = " << memory_classes[i] << " is outside [0, "
                                 << num_classes << ")");
  }
  const std::vector<float> memory_inverse_norm = inverse_row_norms(op, "memory", memory, m, d);
  const std::vector<float> query_inverse_norm = inverse_row_norms(op, "queries", queries, q, d);

  // ks visited in increasing order (clamped to m), results written at their given position.
  const std::int64_t num_ks = static_cast<std::int64_t>(ks.size());
  std::vector<std::int64_t> k_order(static_cast<std::size_t>(num_ks));
  std::iota(k_order.begin(), k_order.end(), 0);
  std::stable_sort(k_order.begin(), k_order.end(),
                   [&](std::int64_t x, std::int64_t y) { return ks[x] < ks[y]; });
  const std::int64_t k_max = std::min(m, ks[k_order.back()]);

  std::int64_t block = kPanelFloats / m / kLanes * kLanes;
  block = std::max(kLanes, std::min(kMaxBlock, block));
  const std::int64_t blocks = (q + block - 1) / block;

  cpu::parallel_for(0, blocks, 1, [&](std::int64_t block_begin, std::int64_t block_end) {
    BlockScratch scratch;
    scratch.query_tiles.resize(static_cast<std::size_t>(block * d));
    scratch.panel.resize(static_cast<std::size_t>(block * m));
    scratch.padded_rows.resize(static_cast<std::size_t>(kRows * d));
    scratch.values.resize(static_cast<std::size_t>(m));
    scratch.order.resize(static_cast<std::size_t>(m));
    scratch.votes.resize(static_cast<std::size_t>(num_classes));
    for (std::int64_t b = block_begin; b < block_end; ++b) {
      const std::int64_t first = b * block;
      const std::int64_t count = std::min(block, q - first);
      similarity_panel(memory, memory_inverse_norm, m, queries, query_inverse_norm, first, count, d,
                       scratch);
      for (std::int64_t i = 0; i < count; ++i) {
        const float* sims = scratch.panel.data() + i * m;  // (m)
        auto more_similar = [sims](std::int64_t x, std::int64_t y) {
          return sims[x] > sims[y] || (sims[x] == sims[y] && x < y);
        };
        if (k_max == m) {
          std::iota(scratch.order.begin(), scratch.order.end(), std::int64_t{0});
        } else {
          // threshold = the k_max-th largest similarity; take every item above it, then
          // items equal to it in increasing index until k_max (the tie rule).
          std::copy(sims, sims + m, scratch.values.begin());
          std::nth_element(scratch.values.begin(), scratch.values.begin() + (k_max - 1),
                           scratch.values.end(), std::greater<float>());
          const float threshold = scratch.values[k_max - 1];
          std::int64_t taken = 0;
          for (std::int64_t j = 0; j < m; ++j) {
            if (sims[j] > threshold) scratch.order[taken++] = j;
          }
          for (std::int64_t j = 0; j < m && taken < k_max; ++j) {
            if (sims[j] == threshold) scratch.order[taken++] = j;
          }
        }
        std::sort(scratch.order.begin(), scratch.order.begin() + k_max, more_similar);
        const double top = sims[scratch.order[0]];
        std::fill(scratch.votes.begin(), scratch.votes.end(), 0.0);
        std::int64_t counted = 0;
        for (std::int64_t r : k_order) {
          const std::int64_t k = std::min(m, ks[r]);
          for (; counted < k; ++counted) {
            const std::int64_t item = scratch.order[counted];
            scratch.votes[memory_classes[item]] += std::exp((sims[item] - top) / sigma);
          }
          std::int64_t best = 0;  // strict '>' keeps the lowest class among equal votes
          for (std::int64_t c = 1; c < num_classes; ++c) {
            if (scratch.votes[c] > scratch.votes[best]) best = c;
          }
          predictions[r * q + first + i] = best;
        }
      }
    }
  });
}

std::vector<KnnResult> weighted_knn_top1(const float* memory, const std::int64_t* memory_classes,
                                         std::int64_t m, const float* queries,
                                         const std::int64_t* query_classes, std::int64_t q,
                                         std::int64_t d, const std::vector<std::int64_t>& ks,
                                         double sigma, std::int64_t num_classes) {
  const char* op = "weighted_knn";
  SELA_CHECK(q >= 1, op, "needs at least one query, got q = " << q);
  SELA_CHECK(query_classes != nullptr, op, "query_classes is null");
  SELA_CHECK(num_classes >= 1, op, "num_classes must be >= 1, got " << num_classes);
  for (std::int64_t i = 0; i < q; ++i) {
    SELA_CHECK(query_classes[i] >= 0 && query_classes[i] < num_classes, op,
               "query_classes[" << i << "] = " << query_classes[i] << " is outside [0, "
                                << num_classes << ")");
  }
  std::vector<std::int64_t> predictions(ks.size() * static_cast<std::size_t>(q));  // (ks, q)
  weighted_knn_predict(memory, memory_classes, m, queries, q, d, ks, sigma, num_classes,
                       predictions.data());
  std::vector<KnnResult> results;
  for (std::size_t r = 0; r < ks.size(); ++r) {
    std::int64_t correct = 0;
    for (std::int64_t i = 0; i < q; ++i) {
      correct += predictions[r * q + i] == query_classes[i] ? 1 : 0;
    }
    results.push_back({static_cast<double>(correct) / static_cast<double>(q), q});
  }
  return results;
}

}  // namespace sela
