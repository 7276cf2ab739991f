// Exact minimum-cost assignment (the Hungarian algorithm, shortest augmenting paths with
// row and column potentials), O(rows² · cols).
//
// Why it is here: it is the exact solver the Sinkhorn tests compare with — at large λ the
// Sinkhorn-Knopp labels approach the optimal equipartitioned assignment, which on a small
// problem is a square assignment problem with each cluster's column replicated N/K times
// — and it is the matching step of clustering accuracy (clusters to classes).
#pragma once

#include <cstdint>
#include <vector>

namespace sela::assign {

// Assigns every row of cost (rows, cols), rows <= cols, to a distinct column so that the
// total cost is minimal. Returns the column of each row; *total_cost (if given) receives
// the sum. Non-finite costs are an Error.
std::vector<std::int64_t> min_cost_assignment(const double* cost, std::int64_t rows, std::int64_t cols,
                                              double* total_cost = nullptr);

}  // namespace sela::assign
