// Tests of the exact assignment solver (sela/assign/hungarian.h) against brute force over
// all permutations on small random cost matrices (square and rectangular, with ties).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "engine/error.h"
#include "sela/assign/hungarian.h"

using namespace sela::assign;

namespace {

// Minimum over injective maps rows → cols by enumerating permutations of the columns.
double brute_force(const std::vector<double>& cost, int rows, int cols) {
  std::vector<int> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  do {
    double total = 0.0;
    for (int i = 0; i < rows; ++i) total += cost[static_cast<std::size_t>(i * cols + perm[static_cast<std::size_t>(i)])];
    best = std::min(best, total);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

}  // namespace

TEST_CASE("min_cost_assignment finds the brute-force optimum") {
  std::mt19937 gen(17);
  std::uniform_real_distribution<double> uniform(-5.0, 5.0);
  std::uniform_int_distribution<int> small_int(0, 3);  // many ties
  for (int trial = 0; trial < 300; ++trial) {
    const int rows = 1 + trial % 6, cols = rows + (trial / 6) % 3;
    std::vector<double> cost(static_cast<std::size_t>(rows * cols));
    for (double& v : cost) v = trial % 2 ? uniform(gen) : static_cast<double>(small_int(gen));
    double total = std::numeric_limits<double>::quiet_NaN();
    std::vector<std::int64_t> assignment = min_cost_assignment(cost.data(), rows, cols, &total);
    REQUIRE(assignment.size() == static_cast<std::size_t>(rows));
    std::vector<char> used(static_cast<std::size_t>(cols), 0);
    double recomputed = 0.0;
    for (int i = 0; i < rows; ++i) {
      const std::int64_t j = assignment[static_cast<std::size_t>(i)];
      REQUIRE(j >= 0);
      REQUIRE(j < cols);
      CHECK_FALSE(used[static_cast<std::size_t>(j)]);
      used[static_cast<std::size_t>(j)] = 1;
      recomputed += cost[static_cast<std::size_t>(i * cols + j)];
    }
    const double optimum = brute_force(cost, rows, cols);
    CHECK(std::fabs(total - recomputed) <= 1e-12);
    CHECK_MESSAGE(std::fabs(total - optimum) <= 1e-9 * (1.0 + std::fabs(optimum)), "trial " << trial);
  }
}

TEST_CASE("min_cost_assignment rejects bad arguments") {
  std::vector<double> cost = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0};
  CHECK_THROWS_AS(min_cost_assignment(cost.data(), 3, 2), sela::Error);
  cost[4] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(min_cost_assignment(cost.data(), 2, 3), sela::Error);
  CHECK(min_cost_assignment(nullptr, 0, 3).empty());
}
