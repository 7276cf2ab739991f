// Clustering metrics (see metrics.h) computed from a sparse contingency table.
//
// Every metric starts from the same table: labels are renamed to dense ids by sorting the
// distinct values, then (class id, cluster id) pairs are sorted and run-length counted into
// the nonzero cells, in row-major order. The formulas then follow scikit-learn's
// expressions term by term (same grouping of the logarithms, same epsilon rules), so the
// results agree with scikit-learn to rounding (tests use 1e-9).
#include "sela/assign/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela {
namespace {

// The contingency table of two labelings, stored sparsely.
struct Contingency {
  std::int64_t samples = 0;
  std::vector<std::int64_t> class_sizes;    // (classes)  samples per true class, a_i
  std::vector<std::int64_t> cluster_sizes;  // (clusters) samples per predicted cluster, b_j
  // Nonzero cells in row-major order (by class, then cluster): (cells) each.
  std::vector<std::int64_t> cell_class;
  std::vector<std::int64_t> cell_cluster;
  std::vector<std::int64_t> cell_count;

  std::int64_t classes() const { return static_cast<std::int64_t>(class_sizes.size()); }
  std::int64_t clusters() const { return static_cast<std::int64_t>(cluster_sizes.size()); }
  std::int64_t cells() const { return static_cast<std::int64_t>(cell_count.size()); }
};

constexpr std::int64_t kMaxSamples = 3'000'000'000;  // n^2 < 2^63

void check_labels(const char* op, const std::int64_t* labels_true, const std::int64_t* labels_pred,
                  std::int64_t n) {
  SELA_CHECK(n > 0, op, "needs at least one sample, got n = " << n);
  SELA_CHECK(n <= kMaxSamples, op,
             "n = " << n << " is above " << kMaxSamples << " (int64 pair counts need n^2)");
  SELA_CHECK(labels_true != nullptr && labels_pred != nullptr, op,
             "label pointers must not be null (n = " << n << ")");
  for (std::int64_t i = 0; i < n; ++i) {
    if (labels_true[i] < 0) {
      SELA_FAIL_HINT(op, "labels_true[" << i << "] = " << labels_true[i] << " is negative",
                     "a negative true label marks a sample without class: filter those "
                     "samples out before computing the metric");
    }
    SELA_CHECK(labels_pred[i] >= 0, op,
               "labels_pred[" << i << "] = " << labels_pred[i]
                              << " is negative; cluster labels must be >= 0");
  }
}

// Renames labels to 0..distinct-1 in increasing label order; returns the ids (n).
std::vector<std::int64_t> dense_ids(const std::int64_t* labels, std::int64_t n,
                                    std::int64_t* distinct) {
  std::vector<std::int64_t> values(labels, labels + n);
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    ids[i] = std::lower_bound(values.begin(), values.end(), labels[i]) - values.begin();
  }
  *distinct = static_cast<std::int64_t>(values.size());
  return ids;
}

Contingency build_contingency(const char* op, const std::int64_t* labels_true,
                              const std::int64_t* labels_pred, std::int64_t n) {
  check_labels(op, labels_true, labels_pred, n);
  Contingency table;
  table.samples = n;
  std::int64_t classes = 0, clusters = 0;
  const std::vector<std::int64_t> class_id = dense_ids(labels_true, n, &classes);
  const std::vector<std::int64_t> cluster_id = dense_ids(labels_pred, n, &clusters);
  table.class_sizes.assign(static_cast<std::size_t>(classes), 0);
  table.cluster_sizes.assign(static_cast<std::size_t>(clusters), 0);
  // classes, clusters <= n, so class * clusters + cluster < n^2 fits int64 for n < 3e9.
  std::vector<std::int64_t> keys(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    keys[i] = class_id[i] * clusters + cluster_id[i];
    ++table.class_sizes[class_id[i]];
    ++table.cluster_sizes[cluster_id[i]];
  }
  std::sort(keys.begin(), keys.end());
  for (std::int64_t begin = 0; begin < n;) {
    std::int64_t end = begin + 1;
    while (end < n && keys[end] == keys[begin]) ++end;
    table.cell_class.push_back(keys[begin] / clusters);
    table.cell_cluster.push_back(keys[begin] % clusters);
    table.cell_count.push_back(end - begin);
    begin = end;
  }
  return table;
}

// Entropy (nats) of a labeling from its label sizes, as sklearn.metrics.cluster.entropy.
double entropy_of_sizes(const std::vector<std::int64_t>& sizes, std::int64_t samples) {
  if (sizes.size() == 1) return 0.0;
  const double total = static_cast<double>(samples);
  const double log_total = std::log(total);
  double sum = 0.0;
  for (std::int64_t size : sizes) {
    const double count = static_cast<double>(size);
    sum += count / total * (std::log(count) - log_total);
  }
  return -sum;
}

// Mutual information (nats), as sklearn's mutual_info_score: terms below machine epsilon in
// magnitude are dropped and the sum is clipped at 0.
double mutual_information(const Contingency& table) {
  if (table.classes() == 1 || table.clusters() == 1) return 0.0;
  const double total = static_cast<double>(table.samples);
  const double log_total = std::log(total);
  const double epsilon = std::numeric_limits<double>::epsilon();
  double sum = 0.0;
  for (std::int64_t c = 0; c < table.cells(); ++c) {
    const double count = static_cast<double>(table.cell_count[c]);
    const std::int64_t outer =
        table.class_sizes[table.cell_class[c]] * table.cluster_sizes[table.cell_cluster[c]];
    const double fraction = count / total;
    const double log_outer = -std::log(static_cast<double>(outer)) + log_total + log_total;
    const double term = fraction * (std::log(count) - log_total) + fraction * log_outer;
    if (std::abs(term) >= epsilon) sum += term;
  }
  return std::max(sum, 0.0);
}

// Expected mutual information of two labelings with the table's marginals under random
// permutation (hypergeometric cell counts), Vinh, Epps & Bailey 2010, as scikit-learn's
// expected_mutual_information:
//   E[MI] = sum_ij sum_{nij} nij/N log(N nij / (a_i b_j)) P(nij | a_i, b_j, N),
//   P = a! b! (N-a)! (N-b)! / (N! nij! (a-nij)! (b-nij)! (N-a-b+nij)!),
//   nij from max(1, a+b-N) to min(a, b); terms whose probability underflows are skipped.
// Cost: about sum_ij min(a_i, b_j, width of the pmf above 1e-330) terms.
double expected_mutual_information(const Contingency& table) {
  const std::int64_t classes = table.classes();
  const std::int64_t clusters = table.clusters();
  if (classes == 1 || clusters == 1) return 0.0;
  const std::int64_t samples = table.samples;
  const double total = static_cast<double>(samples);

  // log(k!) for k = 0..N. Serial: std::lgamma may write the global signgam.
  std::vector<double> log_factorial(static_cast<std::size_t>(samples + 1));  // (N + 1)
  for (std::int64_t k = 0; k <= samples; ++k) {
    log_factorial[k] = std::lgamma(static_cast<double>(k) + 1.0);
  }
  const std::int64_t largest =
      std::max(*std::max_element(table.class_sizes.begin(), table.class_sizes.end()),
               *std::max_element(table.cluster_sizes.begin(), table.cluster_sizes.end()));
  std::vector<double> log_total_times_nij(static_cast<std::size_t>(largest + 1), 0.0);
  std::vector<double> nij_over_total(static_cast<std::size_t>(largest + 1), 0.0);
  for (std::int64_t nij = 1; nij <= largest; ++nij) {
    log_total_times_nij[nij] = std::log(total) + std::log(static_cast<double>(nij));
    nij_over_total[nij] = static_cast<double>(nij) / total;
  }
  std::vector<double> log_cluster_size(static_cast<std::size_t>(clusters));
  for (std::int64_t j = 0; j < clusters; ++j) {
    log_cluster_size[j] = std::log(static_cast<double>(table.cluster_sizes[j]));
  }

  // exp(x) is exactly 0 in double below about -745.13; the margin covers the rounding
  // error of a log-probability (a few ulps of log(N!)).
  constexpr double kLogUnderflow = -760.0;
  // One partial sum per class, summed in class order afterwards: the result does not depend
  // on the number of threads.
  std::vector<double> per_class(static_cast<std::size_t>(classes), 0.0);  // (classes)
  cpu::parallel_for(0, classes, 1, [&](std::int64_t class_begin, std::int64_t class_end) {
    for (std::int64_t i = class_begin; i < class_end; ++i) {
      const std::int64_t a = table.class_sizes[i];
      const double log_a = std::log(static_cast<double>(a));
      double sum = 0.0;
      for (std::int64_t j = 0; j < clusters; ++j) {
        const std::int64_t b = table.cluster_sizes[j];
        const std::int64_t first = std::max<std::int64_t>(1, a + b - samples);
        const std::int64_t last = std::min(a, b);
        const double log_marginals = log_factorial[a] + log_factorial[b] +
                                     log_factorial[samples - a] + log_factorial[samples - b] -
                                     log_factorial[samples];
        const double log_b = log_cluster_size[j];
        // Adds the nij term; returns false once its probability underflows to exactly 0.
        auto add_term = [&](std::int64_t nij) {
          const double log_probability = log_marginals - log_factorial[nij] -
                                         log_factorial[a - nij] - log_factorial[b - nij] -
                                         log_factorial[samples - a - b + nij];
          if (log_probability < kLogUnderflow) return false;
          const double log_ratio = log_total_times_nij[nij] - log_a - log_b;
          sum += nij_over_total[nij] * log_ratio * std::exp(log_probability);
          return true;
        };
        // The hypergeometric pmf is unimodal: walk out from its mode in both directions and
        // stop where exp() gives exactly 0 -- every term further out is 0 too, in scikit-
        // learn's full sum as well, so the result is unchanged (only the summation order).
        const double mode_estimate =
            std::floor(static_cast<double>(a + 1) * static_cast<double>(b + 1) / (total + 2.0));
        const std::int64_t mode = std::clamp(static_cast<std::int64_t>(mode_estimate), first, last);
        for (std::int64_t nij = mode; nij <= last && add_term(nij); ++nij) {
        }
        for (std::int64_t nij = mode - 1; nij >= first && add_term(nij); --nij) {
        }
      }
      per_class[i] = sum;
    }
  });
  double expected = 0.0;
  for (double value : per_class) expected += value;
  return expected;
}

}  // namespace

double normalized_mutual_info(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                              std::int64_t n) {
  const Contingency table =
      build_contingency("normalized_mutual_info", labels_true, labels_pred, n);
  if (table.classes() == 1 && table.clusters() == 1) return 1.0;  // no split: perfect match
  const double mi = mutual_information(table);
  if (mi == 0.0) return 0.0;
  const double h_true = entropy_of_sizes(table.class_sizes, table.samples);
  const double h_pred = entropy_of_sizes(table.cluster_sizes, table.samples);
  return mi / ((h_true + h_pred) / 2.0);
}

double adjusted_mutual_info(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                            std::int64_t n) {
  const Contingency table = build_contingency("adjusted_mutual_info", labels_true, labels_pred, n);
  if (table.classes() == 1 && table.clusters() == 1) return 1.0;
  // Both labelings all singletons: MI = E[MI] = H, 0/0 (see metrics.h).
  if (table.classes() == n && table.clusters() == n) return 1.0;
  const double mi = mutual_information(table);
  const double expected = expected_mutual_information(table);
  const double h_true = entropy_of_sizes(table.class_sizes, table.samples);
  const double h_pred = entropy_of_sizes(table.cluster_sizes, table.samples);
  const double epsilon = std::numeric_limits<double>::epsilon();
  double denominator = (h_true + h_pred) / 2.0 - expected;
  denominator =
      denominator < 0.0 ? std::min(denominator, -epsilon) : std::max(denominator, epsilon);
  return (mi - expected) / denominator;
}

double adjusted_rand_index(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                           std::int64_t n) {
  const Contingency table = build_contingency("adjusted_rand_index", labels_true, labels_pred, n);
  // Pair confusion matrix in exact int64 (every count <= n^2), as sklearn's
  // pair_confusion_matrix: ordered pairs of distinct samples.
  std::int64_t sum_squares = 0, cells_times_cluster = 0, cells_times_class = 0;
  for (std::int64_t c = 0; c < table.cells(); ++c) {
    const std::int64_t count = table.cell_count[c];
    sum_squares += count * count;
    cells_times_cluster += count * table.cluster_sizes[table.cell_cluster[c]];
    cells_times_class += count * table.class_sizes[table.cell_class[c]];
  }
  const std::int64_t together_both = sum_squares - n;                         // tp
  const std::int64_t together_pred_only = cells_times_cluster - sum_squares;  // fp
  const std::int64_t together_true_only = cells_times_class - sum_squares;    // fn
  const std::int64_t apart_both = n * n - together_pred_only - together_true_only - sum_squares;
  if (together_true_only == 0 && together_pred_only == 0) return 1.0;
  // Products may exceed int64 (n^4): double keeps ARI's error at a few ulps, because each
  // product is at most the denominator.
  const double tp = static_cast<double>(together_both);
  const double fp = static_cast<double>(together_pred_only);
  const double fn = static_cast<double>(together_true_only);
  const double tn = static_cast<double>(apart_both);
  return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn));
}

double matched_accuracy(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                        std::int64_t n) {
  const char* op = "matched_accuracy";
  const Contingency table = build_contingency(op, labels_true, labels_pred, n);
  // The assignment's rows are the smaller side (classes or clusters), its columns the other.
  const bool rows_are_classes = table.classes() <= table.clusters();
  const std::int64_t rows = rows_are_classes ? table.classes() : table.clusters();
  const std::int64_t side_columns = rows_are_classes ? table.clusters() : table.classes();

  struct Cell {
    std::int64_t row, column, count;
  };
  std::vector<Cell> cells(static_cast<std::size_t>(table.cells()));
  for (std::int64_t c = 0; c < table.cells(); ++c) {
    const std::int64_t cls = table.cell_class[c], cluster = table.cell_cluster[c];
    cells[c] = rows_are_classes ? Cell{cls, cluster, table.cell_count[c]}
                                : Cell{cluster, cls, table.cell_count[c]};
  }
  std::sort(cells.begin(), cells.end(), [](const Cell& x, const Cell& y) {
    if (x.row != y.row) return x.row < y.row;
    if (x.count != y.count) return x.count > y.count;
    return x.column < y.column;
  });

  // Candidate columns: each row's `rows` largest counts. Some optimal matching uses only
  // these (a row matched elsewhere can move to one of its candidates left free, at no
  // loss), plus any columns when fewer than `rows` candidates exist (zero-count fillers).
  std::vector<char> is_candidate(static_cast<std::size_t>(side_columns), 0);
  for (std::int64_t begin = 0; begin < table.cells();) {
    std::int64_t end = begin;
    while (end < table.cells() && cells[end].row == cells[begin].row) ++end;
    for (std::int64_t c = begin; c < std::min(end, begin + rows); ++c) {
      is_candidate[cells[c].column] = 1;
    }
    begin = end;
  }
  std::int64_t candidates = std::count(is_candidate.begin(), is_candidate.end(), 1);
  for (std::int64_t j = 0; j < side_columns && candidates < rows; ++j) {
    if (!is_candidate[j]) {
      is_candidate[j] = 1;
      ++candidates;
    }
  }
  constexpr std::int64_t kMaxDenseEntries = std::int64_t{1} << 27;  // 1 GiB of doubles
  if (rows > kMaxDenseEntries / candidates) {
    SELA_FAIL_HINT(op,
                   "the matching problem is " << rows << " x " << candidates << " (classes "
                                              << table.classes() << ", clusters "
                                              << table.clusters()
                                              << "): too large for the dense Hungarian solver",
                   "matched accuracy is meant for up to a few thousand classes and clusters");
  }
  std::vector<std::int64_t> local_column(static_cast<std::size_t>(side_columns), -1);
  std::vector<std::int64_t> global_column;  // (candidates)
  for (std::int64_t j = 0; j < side_columns; ++j) {
    if (is_candidate[j]) {
      local_column[j] = static_cast<std::int64_t>(global_column.size());
      global_column.push_back(j);
    }
  }
  // Minimise minus the matched count. (rows, candidates)
  std::vector<double> cost(static_cast<std::size_t>(rows * candidates), 0.0);
  for (const Cell& cell : cells) {
    const std::int64_t local = local_column[cell.column];
    if (local >= 0) cost[cell.row * candidates + local] = -static_cast<double>(cell.count);
  }
  const std::vector<std::int64_t> column_of_row =
      solve_linear_assignment(cost.data(), rows, candidates);
  double matched = 0.0;  // a sum of integers below 2^53: exact
  for (std::int64_t r = 0; r < rows; ++r) matched -= cost[r * candidates + column_of_row[r]];
  return matched / static_cast<double>(n);
}

}  // namespace sela
