// Exact linear assignment (the "Hungarian" problem) on a dense cost matrix.
//
// Used by matched_accuracy (metrics.h) to match predicted clusters to true classes, and
// usable for any min-cost one-to-one matching. The solver is the shortest-augmenting-path
// form of the Hungarian method with row and column potentials (Jonker-Volgenant style,
// O(rows^2 * cols)): one Dijkstra-like sweep per row over all columns, so it needs no
// auxiliary graph and its cost for K = 1000 x 3000 is a few seconds at most.
//
// Shaped on raw pointers and plain vectors like the rest of sela/assign: the callers hold
// contingency tables and cost matrices as flat buffers, not Tensors.
#pragma once

#include <cstdint>
#include <vector>

namespace sela {

// Minimum-cost assignment of every row to a distinct column of `cost` (rows, cols),
// row-major, with rows <= cols. Returns, for each row, the index of its column. Costs must
// be finite (NaN/Inf -> sela::Error); rows > cols -> sela::Error (transpose first);
// rows == 0 -> an empty vector. The optimum is exact up to floating-point rounding of the
// sums (exact for integer costs below 2^53 / rows). Among several optimal assignments the
// one returned is deterministic (depends only on the input) but otherwise unspecified.
std::vector<std::int64_t> solve_linear_assignment(const double* cost, std::int64_t rows,
                                                  std::int64_t cols);

}  // namespace sela
