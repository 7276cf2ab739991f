// Clustering metrics of the SeLa evaluation: NMI, adjusted MI, adjusted Rand index and
// accuracy after the best one-to-one matching of clusters to classes.
//
// Each takes two label arrays of n int64 (true classes, predicted clusters) and returns one
// double, computed on the sparse contingency table of the two labelings (so labels can be
// any non-negative integers, contiguous or not, and n distinct labels cost O(n log n), not
// O(n^2)). The definitions, and the values in degenerate cases, follow scikit-learn
// (sklearn.metrics.{normalized_mutual_info_score, adjusted_mutual_info_score,
// adjusted_rand_score}, average_method="arithmetic") so that numbers can be compared with
// published ones; tests/golden/metrics/ holds scikit-learn's values. Natural logarithms.
//
// Common rules: n == 0 -> sela::Error; a negative label -> sela::Error (in labels_true a
// negative value usually means "no class": filter those samples out first); n above
// 3e9 -> sela::Error (pair counts are exact int64, up to n^2).
//
// Degenerate cases (as scikit-learn):
//   - both labelings a single cluster (also n == 1): NMI = AMI = ARI = 1.
//   - exactly one labeling a single cluster: NMI = 0, AMI = 0, ARI = 0.
//   - MI == 0 otherwise: NMI = 0.
//   - AMI divides by (mean entropy - expected MI), clamped away from 0 by machine epsilon
//     with its sign kept, as scikit-learn does.
//   - Both labelings all singletons (every label used once on each side, n >= 2): AMI is
//     0/0 in exact arithmetic; scikit-learn's answer is then a rounding accident (1.0 for
//     most n, 0.0 for n = 2 and n = 4 in scikit-learn 1.2). We return 1.0: the labelings
//     are identical up to renaming, as NMI and ARI (both 1) say.
#pragma once

#include <cstdint>

#include "sela/assign/linear_assignment.h"

namespace sela {

// Mutual information divided by the arithmetic mean of the two entropies.
double normalized_mutual_info(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                              std::int64_t n);

// (MI - E[MI]) / (mean entropy - E[MI]), E[MI] under the hypergeometric (permutation) model,
// computed exactly by the Vinh-Epps-Bailey sum with log-factorials. Cost: a table of n + 1
// log-factorials (8 (n + 1) bytes) and, per class/cluster pair (a_i, b_j samples), the
// terms of the hypergeometric pmf that do not underflow to 0 (at most min(a_i, b_j));
// threaded over classes with a fixed (thread-count independent) summation order.
// Measured: n = 50k, 1000 classes x 3000 clusters ~0.5 s; n = 1.28M ~5 s (2 cores).
double adjusted_mutual_info(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                            std::int64_t n);

// Hubert-Arabie adjusted Rand index from exact int64 pair counts.
double adjusted_rand_index(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                           std::int64_t n);

// Fraction of samples whose cluster is matched to their class by the one-to-one matching
// (clusters <-> classes) that maximises the number of such samples (Hungarian on the
// contingency table). With more clusters than classes, samples of unmatched clusters count
// as wrong; with fewer, samples of unmatched classes do. The smaller side s = min(#classes,
// #clusters) is matched against only the columns that can matter (each row's s largest
// counts, plus fillers), so a side with many labels is cheap; s itself should stay in the
// few thousands (O(s^2 * candidates) time). Too large a dense problem -> sela::Error.
double matched_accuracy(const std::int64_t* labels_true, const std::int64_t* labels_pred,
                        std::int64_t n);

}  // namespace sela
