// Tests of sela/assign/metrics.h (NMI, AMI, ARI, matched accuracy) and
// sela/assign/linear_assignment.h.
//
// References:
//   - scikit-learn's values on the committed fixtures tests/golden/metrics/clustering_cases.txt
//     (made by tests/golden/make_metrics_golden.py): regular, non-contiguous, identical,
//     independent, one-cluster and all-singleton labelings, n = 1..2000;
//   - an independent naive implementation below (std::map contingency, textbook formulas:
//     ARI from pair binomials, E[MI] from direct std::lgamma calls) on fresh random labelings;
//   - brute force over all matchings / permutations for matched accuracy and the solver.
// Tolerance for metric values: |got - ref| <= 1e-9 + 1e-9 * |ref|, NaN/Inf fail. Matched
// accuracies and assignment costs of integer problems are compared exactly.
// Invariants: a renamed labeling scores 1; NMI, AMI, ARI are symmetric; AMI and ARI of
// independent labelings are near 0 (bound 0.01, about 7 standard deviations at n = 5000,
// K = 10: sd(AMI) ~ sqrt(2 (K-1)^2) / (2 n log K) ~ 6e-4).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "sela/assign/linear_assignment.h"
#include "sela/assign/metrics.h"

namespace {

using Labels = std::vector<std::int64_t>;

constexpr double kAtol = 1e-9;
constexpr double kRtol = 1e-9;

bool close(double got, double ref, double atol = kAtol, double rtol = kRtol) {
  return std::isfinite(got) && std::abs(got - ref) <= atol + rtol * std::abs(ref);
}

// ---- fixture -------------------------------------------------------------------------

struct GoldenCase {
  std::string name;
  Labels labels_true, labels_pred;
  double nmi = 0, ami = 0, ari = 0, accuracy = 0;
};

// The fixture's tokens, with '#' comment lines dropped.
std::istringstream fixture_tokens(const std::string& file) {
  const std::string path = std::string(SELA_SOURCE_DIR) + "/tests/golden/metrics/" + file;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path
                                            << " (regenerate: /usr/bin/python3 "
                                               "tests/golden/make_metrics_golden.py)");
  std::string line, kept;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    kept += line;
    kept += '\n';
  }
  return std::istringstream(kept);
}

std::vector<GoldenCase> load_golden_cases() {
  std::istringstream tokens = fixture_tokens("clustering_cases.txt");
  std::vector<GoldenCase> cases;
  std::string word;
  while (tokens >> word) {
    REQUIRE(word == "case");
    GoldenCase c;
    std::int64_t n = 0;
    tokens >> c.name >> n;
    REQUIRE(n > 0);
    c.labels_true.resize(static_cast<std::size_t>(n));
    c.labels_pred.resize(static_cast<std::size_t>(n));
    for (auto& v : c.labels_true) tokens >> v;
    for (auto& v : c.labels_pred) tokens >> v;
    tokens >> word;
    REQUIRE(word == "expect");
    tokens >> c.nmi >> c.ami >> c.ari >> c.accuracy;
    REQUIRE_FALSE(tokens.fail());
    cases.push_back(std::move(c));
  }
  return cases;
}

// ---- naive independent reference ------------------------------------------------------

struct NaiveTable {
  double n = 0;
  std::map<std::pair<std::int64_t, std::int64_t>, double> cells;
  std::map<std::int64_t, double> rows, cols;
};

NaiveTable naive_table(const Labels& t, const Labels& p) {
  NaiveTable table;
  table.n = static_cast<double>(t.size());
  for (std::size_t i = 0; i < t.size(); ++i) {
    table.cells[{t[i], p[i]}] += 1;
    table.rows[t[i]] += 1;
    table.cols[p[i]] += 1;
  }
  return table;
}

double naive_entropy(const std::map<std::int64_t, double>& sizes, double n) {
  double h = 0;
  for (const auto& kv : sizes) h -= kv.second / n * std::log(kv.second / n);
  return h;
}

double naive_mi(const NaiveTable& t) {
  double mi = 0;
  for (const auto& kv : t.cells) {
    const double pij = kv.second / t.n;
    const double pi = t.rows.at(kv.first.first) / t.n, pj = t.cols.at(kv.first.second) / t.n;
    mi += pij * std::log(pij / (pi * pj));
  }
  return mi;
}

double naive_emi(const NaiveTable& t) {
  const double n = t.n;
  double emi = 0;
  for (const auto& row : t.rows) {
    for (const auto& col : t.cols) {
      const double a = row.second, b = col.second;
      for (double nij = std::max(1.0, a + b - n); nij <= std::min(a, b); nij += 1) {
        const double log_p = std::lgamma(a + 1) + std::lgamma(b + 1) + std::lgamma(n - a + 1) +
                             std::lgamma(n - b + 1) - std::lgamma(n + 1) - std::lgamma(nij + 1) -
                             std::lgamma(a - nij + 1) - std::lgamma(b - nij + 1) -
                             std::lgamma(n - a - b + nij + 1);
        emi += nij / n * std::log(n * nij / (a * b)) * std::exp(log_p);
      }
    }
  }
  return emi;
}

double naive_nmi(const Labels& t, const Labels& p) {
  const NaiveTable table = naive_table(t, p);
  if (table.rows.size() == 1 && table.cols.size() == 1) return 1.0;
  const double mi = naive_mi(table);
  const double mean_h =
      (naive_entropy(table.rows, table.n) + naive_entropy(table.cols, table.n)) / 2;
  return mi <= 0 ? 0.0 : mi / mean_h;
}

double naive_ami(const Labels& t, const Labels& p) {
  const NaiveTable table = naive_table(t, p);
  if (table.rows.size() == 1 && table.cols.size() == 1) return 1.0;
  const double mean_h =
      (naive_entropy(table.rows, table.n) + naive_entropy(table.cols, table.n)) / 2;
  const double emi = naive_emi(table);
  return (naive_mi(table) - emi) / (mean_h - emi);
}

double naive_ari(const Labels& t, const Labels& p) {
  const NaiveTable table = naive_table(t, p);
  auto pairs = [](double x) { return x * (x - 1) / 2; };
  double index = 0, sum_rows = 0, sum_cols = 0;
  for (const auto& kv : table.cells) index += pairs(kv.second);
  for (const auto& kv : table.rows) sum_rows += pairs(kv.second);
  for (const auto& kv : table.cols) sum_cols += pairs(kv.second);
  const double expected = sum_rows * sum_cols / pairs(table.n);
  const double maximum = (sum_rows + sum_cols) / 2;
  if (maximum == expected) return 1.0;
  return (index - expected) / (maximum - expected);
}

// Largest number of samples on the diagonal over all one-to-one class/cluster matchings.
double brute_force_matched_accuracy(const Labels& t, const Labels& p) {
  const NaiveTable table = naive_table(t, p);
  std::vector<std::int64_t> rows, cols;
  for (const auto& kv : table.rows) rows.push_back(kv.first);
  for (const auto& kv : table.cols) cols.push_back(kv.first);
  const bool rows_small = rows.size() <= cols.size();
  const auto& small = rows_small ? rows : cols;
  const auto& large = rows_small ? cols : rows;
  auto count = [&](std::int64_t s, std::int64_t l) {
    const auto it = table.cells.find(rows_small ? std::make_pair(s, l) : std::make_pair(l, s));
    return it == table.cells.end() ? 0.0 : it->second;
  };
  double best = 0;
  std::vector<std::size_t> chosen;
  std::vector<char> used(large.size(), 0);
  // depth-first over injective maps small -> large
  std::function<void(std::size_t, double)> visit = [&](std::size_t depth, double sum) {
    if (depth == small.size()) {
      best = std::max(best, sum);
      return;
    }
    for (std::size_t j = 0; j < large.size(); ++j) {
      if (used[j]) continue;
      used[j] = 1;
      visit(depth + 1, sum + count(small[depth], large[j]));
      used[j] = 0;
    }
  };
  visit(0, 0.0);
  return best / table.n;
}

// ---- random labelings -----------------------------------------------------------------

// n labels drawn uniformly from `k` values spread over a wide non-contiguous range.
Labels random_labels(std::mt19937_64& rng, std::int64_t n, std::int64_t k) {
  std::vector<std::int64_t> values(static_cast<std::size_t>(k));
  std::uniform_int_distribution<std::int64_t> value(0, std::int64_t{1} << 45);
  for (auto& v : values) v = value(rng);
  std::uniform_int_distribution<std::int64_t> pick(0, k - 1);
  Labels labels(static_cast<std::size_t>(n));
  for (auto& l : labels) l = values[pick(rng)];
  return labels;
}

// Copy of `labels` where a fraction `noise` is redrawn from k_noise fresh values.
Labels noisy_copy(std::mt19937_64& rng, const Labels& labels, double noise, std::int64_t k_noise) {
  Labels out = labels;
  std::uniform_real_distribution<double> unit(0, 1);
  std::uniform_int_distribution<std::int64_t> pick(0, k_noise - 1);
  for (auto& l : out) {
    if (unit(rng) < noise) l = 7 + 3 * pick(rng);
  }
  return out;
}

double nmi(const Labels& t, const Labels& p) {
  return sela::normalized_mutual_info(t.data(), p.data(), static_cast<std::int64_t>(t.size()));
}
double ami(const Labels& t, const Labels& p) {
  return sela::adjusted_mutual_info(t.data(), p.data(), static_cast<std::int64_t>(t.size()));
}
double ari(const Labels& t, const Labels& p) {
  return sela::adjusted_rand_index(t.data(), p.data(), static_cast<std::int64_t>(t.size()));
}
double accuracy(const Labels& t, const Labels& p) {
  return sela::matched_accuracy(t.data(), p.data(), static_cast<std::int64_t>(t.size()));
}

}  // namespace

TEST_CASE("metrics match scikit-learn on the golden cases (tol 1e-9 + 1e-9|ref|)") {
  const std::vector<GoldenCase> cases = load_golden_cases();
  REQUIRE(cases.size() >= 20);
  for (const GoldenCase& c : cases) {
    CAPTURE(c.name);
    CHECK(close(nmi(c.labels_true, c.labels_pred), c.nmi));
    CHECK(close(ami(c.labels_true, c.labels_pred), c.ami));
    CHECK(close(ari(c.labels_true, c.labels_pred), c.ari));
    CHECK(accuracy(c.labels_true, c.labels_pred) == c.accuracy);  // count / n, exact
  }
}

TEST_CASE("metrics match a naive reference on fresh random labelings") {
  std::mt19937_64 rng(12345);
  struct Shape {
    std::int64_t n, k_true, k_pred;
    double noise;
  };
  const Shape shapes[] = {{2, 2, 2, 1.0},     {3, 2, 3, 1.0},     {7, 3, 4, 0.5},
                          {50, 4, 9, 0.7},    {333, 10, 10, 0.3}, {1000, 7, 25, 0.5},
                          {1000, 30, 5, 1.0}, {1500, 12, 40, 0.0}};
  for (const Shape& s : shapes) {
    for (int trial = 0; trial < 3; ++trial) {
      CAPTURE(s.n);
      CAPTURE(s.k_true);
      CAPTURE(s.k_pred);
      CAPTURE(trial);
      const Labels t = random_labels(rng, s.n, s.k_true);
      // noise 1: independent labelings; otherwise a copy of t with a fraction redrawn
      const Labels p = s.noise >= 1.0 ? random_labels(rng, s.n, s.k_pred)
                                      : noisy_copy(rng, t, s.noise, s.k_pred);
      CHECK(close(nmi(t, p), naive_nmi(t, p)));
      CHECK(close(ari(t, p), naive_ari(t, p)));
      const NaiveTable table = naive_table(t, p);
      const bool all_singletons = static_cast<std::int64_t>(table.rows.size()) == s.n &&
                                  static_cast<std::int64_t>(table.cols.size()) == s.n;
      if (!all_singletons) CHECK(close(ami(t, p), naive_ami(t, p)));  // else 0/0, see below
      if (std::min(table.rows.size(), table.cols.size()) <= 5) {
        CHECK(accuracy(t, p) == brute_force_matched_accuracy(t, p));
      }
    }
  }
}

TEST_CASE("a renamed labeling scores 1 on every metric") {
  std::mt19937_64 rng(99);
  for (std::int64_t k : {2, 10, 57}) {
    const Labels t = random_labels(rng, 1200, k);
    // rename through a random injective map to other large values
    std::map<std::int64_t, std::int64_t> rename;
    std::uniform_int_distribution<std::int64_t> value(0, std::int64_t{1} << 50);
    for (auto l : t) rename.emplace(l, 0);
    for (auto& kv : rename) kv.second = value(rng);
    Labels p = t;
    for (auto& l : p) l = rename[l];
    CAPTURE(k);
    CHECK(close(nmi(t, p), 1.0, 1e-12, 0));
    CHECK(close(ami(t, p), 1.0, 1e-12, 0));
    CHECK(ari(t, p) == 1.0);
    CHECK(accuracy(t, p) == 1.0);
  }
}

TEST_CASE("NMI, AMI and ARI are symmetric") {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 5; ++trial) {
    const Labels t = random_labels(rng, 800, 3 + trial * 4);
    const Labels p = noisy_copy(rng, t, 0.4 + 0.1 * trial, 6 + trial);
    CAPTURE(trial);
    CHECK(close(nmi(t, p), nmi(p, t), 1e-14, 1e-14));
    CHECK(close(ari(t, p), ari(p, t), 1e-14, 1e-14));
    CHECK(close(ami(t, p), ami(p, t), 1e-12, 1e-12));
    CHECK(accuracy(t, p) == accuracy(p, t));
  }
}

TEST_CASE("AMI and ARI of independent labelings are near 0 (|x| < 0.01)") {
  std::mt19937_64 rng(2024);
  for (int trial = 0; trial < 4; ++trial) {
    const Labels t = random_labels(rng, 5000, 10);
    const Labels p = random_labels(rng, 5000, 7 + trial);
    CAPTURE(trial);
    const double adjusted_mi = ami(t, p);
    const double adjusted_rand = ari(t, p);
    CHECK(std::isfinite(adjusted_mi));
    CHECK(std::abs(adjusted_mi) < 0.01);
    CHECK(std::abs(adjusted_rand) < 0.01);
    CHECK(nmi(t, p) > 0.0);  // unadjusted NMI is biased upwards: the reason for AMI
  }
}

TEST_CASE("large n: AMI stays exact and finite (n = 200000 against the naive sum, 1e6 bounds)") {
  std::mt19937_64 rng(77);
  {
    const Labels t = random_labels(rng, 200000, 6);
    const Labels p = noisy_copy(rng, t, 0.6, 8);
    CHECK(close(ami(t, p), naive_ami(t, p)));
    CHECK(close(nmi(t, p), naive_nmi(t, p)));
    CHECK(close(ari(t, p), naive_ari(t, p)));
  }
  {
    const Labels t = random_labels(rng, 1000000, 10);
    const Labels independent = random_labels(rng, 1000000, 10);
    CHECK(close(ami(t, t), 1.0, 1e-12, 0));
    const double adjusted_mi = ami(t, independent);
    CHECK(std::isfinite(adjusted_mi));
    CHECK(std::abs(adjusted_mi) < 1e-3);
    CHECK(std::abs(ari(t, independent)) < 1e-3);
  }
}

TEST_CASE("degenerate labelings behave as in scikit-learn") {
  const Labels one = {4};
  CHECK(nmi(one, one) == 1.0);
  CHECK(ami(one, one) == 1.0);
  CHECK(ari(one, one) == 1.0);
  CHECK(accuracy(one, one) == 1.0);

  const Labels same_a(40, 3), same_b(40, 8);
  CHECK(nmi(same_a, same_b) == 1.0);
  CHECK(ami(same_a, same_b) == 1.0);
  CHECK(ari(same_a, same_b) == 1.0);
  CHECK(accuracy(same_a, same_b) == 1.0);

  const Labels split = {0, 1, 1, 2, 2, 2, 5, 5, 5, 5};  // 4 clusters, largest holds 4
  const Labels joined(10, 1);
  for (int side = 0; side < 2; ++side) {
    const Labels& t = side == 0 ? split : joined;
    const Labels& p = side == 0 ? joined : split;
    CAPTURE(side);
    CHECK(nmi(t, p) == 0.0);
    CHECK(ami(t, p) == 0.0);
    CHECK(ari(t, p) == 0.0);
    CHECK(accuracy(t, p) == 0.4);
  }

  // Both labelings all singletons: AMI is 0/0; we return 1 (scikit-learn's rounding gives 1
  // for most n, 0 for n = 2 and 4; see metrics.h).
  for (std::int64_t n : {2, 4, 30}) {
    Labels t(static_cast<std::size_t>(n)), p(static_cast<std::size_t>(n));
    std::iota(t.begin(), t.end(), 0);
    for (std::int64_t i = 0; i < n; ++i) p[i] = 1000 - 3 * t[i];
    CAPTURE(n);
    CHECK(ami(t, p) == 1.0);
    CHECK(close(nmi(t, p), 1.0, 1e-12, 0));
    CHECK(ari(t, p) == 1.0);
    CHECK(accuracy(t, p) == 1.0);
  }

  // scikit-learn documentation examples
  CHECK(close(ari({0, 0, 1, 1}, {0, 1, 0, 1}), -0.5));
  CHECK(close(ari({0, 0, 0, 0}, {0, 1, 2, 3}), 0.0));
  CHECK(close(ari({0, 0, 1, 2}, {0, 0, 1, 1}), 4.0 / 7.0));
}

TEST_CASE("metrics reject empty input and negative labels") {
  const Labels ok = {0, 1, 1};
  const Labels bad_true = {0, -1, 1};
  const Labels bad_pred = {0, 1, -5};
  for (auto metric : {&sela::normalized_mutual_info, &sela::adjusted_mutual_info,
                      &sela::adjusted_rand_index, &sela::matched_accuracy}) {
    CHECK_THROWS_AS(metric(ok.data(), ok.data(), 0), sela::Error);
    CHECK_THROWS_AS(metric(nullptr, ok.data(), 3), sela::Error);
    CHECK_THROWS_WITH_AS(metric(bad_true.data(), ok.data(), 3),
                         doctest::Contains("filter those samples out"), sela::Error);
    CHECK_THROWS_AS(metric(ok.data(), bad_pred.data(), 3), sela::Error);
  }
}

TEST_CASE("matched accuracy: many labels on one side, against brute force and a dense solve") {
  std::mt19937_64 rng(31);
  // few classes, many clusters (and the reverse): the candidate-column reduction is used
  for (int trial = 0; trial < 4; ++trial) {
    const Labels t = random_labels(rng, 400, 3);
    const Labels p = noisy_copy(rng, t, 0.5 + 0.1 * trial, 60);
    CAPTURE(trial);
    const double brute = brute_force_matched_accuracy(t, p);
    CHECK(accuracy(t, p) == brute);
    CHECK(accuracy(p, t) == brute);
  }
  // medium: compare with the solver on the full dense contingency table
  const Labels t = random_labels(rng, 3000, 30);
  const Labels p = noisy_copy(rng, t, 0.6, 500);
  const NaiveTable table = naive_table(t, p);
  std::map<std::int64_t, std::int64_t> row_id, col_id;
  for (const auto& kv : table.rows)
    row_id.emplace(kv.first, static_cast<std::int64_t>(row_id.size()));
  for (const auto& kv : table.cols)
    col_id.emplace(kv.first, static_cast<std::int64_t>(col_id.size()));
  const std::int64_t rows = static_cast<std::int64_t>(row_id.size());
  const std::int64_t cols = static_cast<std::int64_t>(col_id.size());
  REQUIRE(rows <= cols);
  std::vector<double> cost(static_cast<std::size_t>(rows * cols), 0.0);  // (rows, cols)
  for (const auto& kv : table.cells) {
    cost[row_id[kv.first.first] * cols + col_id[kv.first.second]] = -kv.second;
  }
  const std::vector<std::int64_t> match = sela::solve_linear_assignment(cost.data(), rows, cols);
  double matched = 0;
  for (std::int64_t r = 0; r < rows; ++r) matched -= cost[r * cols + match[r]];
  CHECK(accuracy(t, p) == matched / 3000.0);
}

// ---- solve_linear_assignment -----------------------------------------------------------

namespace {

double assignment_cost(const std::vector<double>& cost, std::int64_t cols,
                       const std::vector<std::int64_t>& column_of_row) {
  double total = 0;
  for (std::size_t r = 0; r < column_of_row.size(); ++r) total += cost[r * cols + column_of_row[r]];
  return total;
}

bool is_injective(const std::vector<std::int64_t>& column_of_row, std::int64_t cols) {
  std::vector<char> used(static_cast<std::size_t>(cols), 0);
  for (std::int64_t c : column_of_row) {
    if (c < 0 || c >= cols || used[c]) return false;
    used[c] = 1;
  }
  return true;
}

double brute_force_min_cost(const std::vector<double>& cost, std::int64_t rows, std::int64_t cols) {
  std::vector<std::int64_t> columns(static_cast<std::size_t>(cols));
  std::iota(columns.begin(), columns.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  // every ordering of the columns; the first `rows` form the assignment
  do {
    double total = 0;
    for (std::int64_t r = 0; r < rows; ++r) total += cost[r * cols + columns[r]];
    best = std::min(best, total);
  } while (std::next_permutation(columns.begin(), columns.end()));
  return best;
}

}  // namespace

TEST_CASE("solve_linear_assignment equals brute force for rows <= 7") {
  std::mt19937_64 rng(8);
  std::uniform_real_distribution<double> real_cost(-5.0, 5.0);
  std::uniform_int_distribution<int> small_int(0, 3);  // many ties
  int checked = 0;
  for (std::int64_t rows = 1; rows <= 7; ++rows) {
    for (std::int64_t cols = rows; cols <= std::min<std::int64_t>(8, rows + 2); ++cols) {
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<double> cost(static_cast<std::size_t>(rows * cols));
        for (auto& c : cost) c = trial % 2 == 0 ? real_cost(rng) : small_int(rng);
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(trial);
        const auto match = sela::solve_linear_assignment(cost.data(), rows, cols);
        REQUIRE(static_cast<std::int64_t>(match.size()) == rows);
        CHECK(is_injective(match, cols));
        const double best = brute_force_min_cost(cost, rows, cols);
        CHECK(close(assignment_cost(cost, cols, match), best, 1e-9, 1e-12));
        ++checked;
      }
    }
  }
  CHECK(checked == 4 * (7 * 3 - 1));  // (7,9) is skipped by the cols <= 8 cap
}

TEST_CASE("solve_linear_assignment finds a planted unique optimum (300 x 400)") {
  std::mt19937_64 rng(3);
  const std::int64_t rows = 300, cols = 400;
  std::vector<std::int64_t> planted(static_cast<std::size_t>(cols));
  std::iota(planted.begin(), planted.end(), 0);
  std::shuffle(planted.begin(), planted.end(), rng);
  std::uniform_real_distribution<double> positive(1.0, 2.0);
  std::vector<double> cost(static_cast<std::size_t>(rows * cols));  // (rows, cols)
  for (auto& c : cost) c = positive(rng);
  for (std::int64_t r = 0; r < rows; ++r) cost[r * cols + planted[r]] = 0.0;
  const auto match = sela::solve_linear_assignment(cost.data(), rows, cols);
  REQUIRE(static_cast<std::int64_t>(match.size()) == rows);
  for (std::int64_t r = 0; r < rows; ++r) CHECK(match[r] == planted[r]);
}

TEST_CASE("solve_linear_assignment argument errors and empty problem") {
  const std::vector<double> cost = {1, 2, 3, 4, 5, 6};  // (2, 3)
  CHECK(sela::solve_linear_assignment(cost.data(), 0, 3).empty());
  CHECK_THROWS_AS(sela::solve_linear_assignment(cost.data(), 3, 2), sela::Error);
  CHECK_THROWS_AS(sela::solve_linear_assignment(nullptr, 2, 3), sela::Error);
  CHECK_THROWS_AS(sela::solve_linear_assignment(cost.data(), -1, 3), sela::Error);
  for (double bad :
       {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    std::vector<double> poisoned = cost;
    poisoned[4] = bad;
    CHECK_THROWS_AS(sela::solve_linear_assignment(poisoned.data(), 2, 3), sela::Error);
  }
}
