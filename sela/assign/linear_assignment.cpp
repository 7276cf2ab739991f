// Shortest-augmenting-path Hungarian method (see linear_assignment.h).
//
// Rows are added one at a time. For the new row, a Dijkstra-like sweep over columns grows
// a tree of tight edges under the reduced costs cost(i, j) - row_potential(i) -
// column_potential(j) (all >= 0), keeping for each column the smallest reduced cost seen
// (`min_slack`) and the tree column it was reached from. When the sweep reaches a free
// column, the path back to the new row is flipped (augmented). Potentials are updated so
// that every edge on the tree stays tight, which keeps the partial assignment optimal.
// A virtual column (index `cols`) is the root of every sweep, as in the classic
// 1-indexed formulation.
#include "sela/assign/linear_assignment.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/error.h"

namespace sela {

std::vector<std::int64_t> solve_linear_assignment(const double* cost, std::int64_t rows,
                                                  std::int64_t cols) {
  const char* op = "solve_linear_assignment";
  SELA_CHECK(rows >= 0 && cols >= 0, op,
             "sizes must be non-negative, got rows " << rows << ", cols " << cols);
  SELA_CHECK(rows <= cols, op,
             "needs rows <= cols, got rows " << rows << ", cols " << cols
                                             << " (pass the transposed cost matrix)");
  if (rows == 0) return {};
  SELA_CHECK(cost != nullptr, op, "cost is null for a " << rows << " x " << cols << " problem");
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    SELA_CHECK(
        std::isfinite(cost[i]), op,
        "cost (" << i / cols << ", " << i % cols << ") is " << cost[i] << "; costs must be finite");
  }

  const double infinity = std::numeric_limits<double>::infinity();
  const std::int64_t root = cols;  // virtual column every sweep starts from
  std::vector<double> row_potential(static_cast<std::size_t>(rows), 0.0);
  std::vector<double> column_potential(static_cast<std::size_t>(cols + 1), 0.0);
  std::vector<std::int64_t> row_of_column(static_cast<std::size_t>(cols + 1), -1);
  std::vector<std::int64_t> tree_parent(static_cast<std::size_t>(cols + 1), root);
  std::vector<double> min_slack(static_cast<std::size_t>(cols + 1));
  std::vector<char> in_tree(static_cast<std::size_t>(cols + 1));

  for (std::int64_t new_row = 0; new_row < rows; ++new_row) {
    row_of_column[root] = new_row;
    std::int64_t current = root;
    std::fill(min_slack.begin(), min_slack.end(), infinity);
    std::fill(in_tree.begin(), in_tree.end(), 0);
    do {
      in_tree[current] = 1;
      const std::int64_t row = row_of_column[current];
      const double* cost_row = cost + row * cols;
      const double potential = row_potential[row];
      double delta = infinity;
      std::int64_t next = -1;
      for (std::int64_t j = 0; j < cols; ++j) {
        if (in_tree[j]) continue;
        const double reduced = cost_row[j] - potential - column_potential[j];
        if (reduced < min_slack[j]) {
          min_slack[j] = reduced;
          tree_parent[j] = current;
        }
        if (min_slack[j] < delta) {
          delta = min_slack[j];
          next = j;
        }
      }
      // rows <= cols and finite costs: some column outside the tree is always reachable.
      SELA_CHECK(next >= 0, op, "no augmenting column found (costs too large to subtract?)");
      for (std::int64_t j = 0; j <= cols; ++j) {
        if (in_tree[j]) {
          row_potential[row_of_column[j]] += delta;
          column_potential[j] -= delta;
        } else {
          min_slack[j] -= delta;
        }
      }
      current = next;
    } while (row_of_column[current] != -1);
    // Flip the path root -> ... -> current: each column takes the row of its parent.
    do {
      const std::int64_t parent = tree_parent[current];
      row_of_column[current] = row_of_column[parent];
      current = parent;
    } while (current != root);
  }

  std::vector<std::int64_t> column_of_row(static_cast<std::size_t>(rows), -1);
  for (std::int64_t j = 0; j < cols; ++j) {
    if (row_of_column[j] >= 0) column_of_row[row_of_column[j]] = j;
  }
  return column_of_row;
}

}  // namespace sela
