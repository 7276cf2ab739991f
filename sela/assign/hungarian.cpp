// Implementation of sela/assign/hungarian.h.
//
// Rows are added one at a time. For the new row we grow a tree of tight edges by Dijkstra
// on reduced costs cost(i, j) − u_i − v_j (never negative), keeping for every column the
// smallest reduced cost seen (slack) and the column it was reached from (previous). When
// the tree reaches a free column, the assignment is flipped along the path. Potentials are
// updated so that assigned edges stay tight; the invariant u_i + v_j <= cost(i, j) makes
// the final assignment optimal (linear-programming duality).
#include "sela/assign/hungarian.h"

#include <cmath>
#include <algorithm>
#include <limits>

#include "engine/error.h"

namespace sela::assign {

std::vector<std::int64_t> min_cost_assignment(const double* cost, std::int64_t rows, std::int64_t cols,
                                              double* total_cost) {
  const char* op = "min_cost_assignment";
  SELA_CHECK(rows >= 0 && cols >= rows, op, "needs 0 <= rows <= cols, got " << rows << " x " << cols);
  SELA_CHECK(rows == 0 || cost != nullptr, op, "cost pointer is null");
  for (std::int64_t e = 0; e < rows * cols; ++e) {
    SELA_CHECK(std::isfinite(cost[e]), op,
               "cost(" << e / cols << ", " << e % cols << ") = " << cost[e] << " is not finite");
  }
  const double infinity = std::numeric_limits<double>::infinity();
  const std::size_t m = static_cast<std::size_t>(cols);
  // Index 0 of the column arrays is a virtual column where each new row's tree starts;
  // rows are numbered from 1 in owner (0 = free).
  std::vector<double> row_potential(static_cast<std::size_t>(rows) + 1, 0.0);
  std::vector<double> col_potential(m + 1, 0.0);
  std::vector<std::size_t> owner(m + 1, 0);     // owner[j]: the row holding column j
  std::vector<std::size_t> previous(m + 1, 0);  // column before j on the shortest path
  std::vector<double> slack(m + 1);
  std::vector<char> in_tree(m + 1);

  for (std::size_t row = 1; row <= static_cast<std::size_t>(rows); ++row) {
    owner[0] = row;
    std::size_t col = 0;
    std::fill(slack.begin(), slack.end(), infinity);
    std::fill(in_tree.begin(), in_tree.end(), 0);
    do {
      in_tree[col] = 1;
      const std::size_t i = owner[col];
      double delta = infinity;
      std::size_t next = 0;
      for (std::size_t j = 1; j <= m; ++j) {
        if (in_tree[j]) continue;
        double reduced = cost[(i - 1) * m + (j - 1)] - row_potential[i] - col_potential[j];
        if (reduced < slack[j]) {
          slack[j] = reduced;
          previous[j] = col;
        }
        if (slack[j] < delta) {
          delta = slack[j];
          next = j;
        }
      }
      for (std::size_t j = 0; j <= m; ++j) {
        if (in_tree[j]) {
          row_potential[owner[j]] += delta;
          col_potential[j] -= delta;
        } else {
          slack[j] -= delta;
        }
      }
      col = next;
    } while (owner[col] != 0);
    do {  // flip the augmenting path back to the virtual column
      std::size_t before = previous[col];
      owner[col] = owner[before];
      col = before;
    } while (col != 0);
  }

  std::vector<std::int64_t> assignment(static_cast<std::size_t>(rows), -1);
  double total = 0.0;
  for (std::size_t j = 1; j <= m; ++j) {
    if (owner[j] != 0) {
      assignment[owner[j] - 1] = static_cast<std::int64_t>(j - 1);
      total += cost[(owner[j] - 1) * m + (j - 1)];
    }
  }
  if (total_cost != nullptr) *total_cost = total;
  return assignment;
}

}  // namespace sela::assign
