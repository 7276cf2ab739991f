// Principal components of feature rows, for the SeLa reference's final kNN protocol.
//
// The reference's CIFAR code (yukimasano/self-label, cifar.py, its last line) reports
// kNN after `use_pca=True` (cifar_utils.py): scikit-learn's PCA to 128 components, fitted
// on the training (memory) features — centred by their mean, not whitened — and applied to
// memory and queries alike, which are then L2-normalised for the cosine kNN of knn.h.
// Cosine similarity after that projection depends only on the training mean and on the
// span of the leading components, not on the signs or the order of the axes.
//
// fit_pca: the mean and the covariance (1 / (n - 1), scikit-learn's convention) in float64;
// the covariance's leading eigenvectors by randomized subspace iteration (Halko, Martinsson
// and Tropp, "Finding structure with randomness", SIAM Review 2011, Algorithms 4.4 and
// 5.3): a block of l = min(d, 2c) Gaussian vectors multiplied by the covariance and
// re-orthonormalised until the residuals ||S u - θ u|| of the c leading Ritz pairs are below
// 1e-9 · θ_1 (checked every few passes, at most 300 passes), then a Rayleigh-Ritz step
// with a cyclic Jacobi eigensolver on the small (l, l) matrix. When 2c >= d the Jacobi
// solver takes the whole covariance. Axes are returned by decreasing variance, each with
// its largest-magnitude entry positive (a deterministic sign). Everything is float64 and
// seeded: a call gives the same axes on every run and thread count.
//
// Cost at n = 60,000, d = 1,024 (a default run's fc7): the covariance is float64 GEMMs of
// 63 G multiply-adds in all, in row blocks; each pass multiplies (l, d) by (d, d); each
// check solves an (l, l) Jacobi problem (about 1 s on one thread at l = 256). docs/perf.md.
#pragma once

#include <cstdint>
#include <vector>

#include "sela/assign/knn.h"

namespace sela {

struct PcaBasis {
  std::int64_t dim = 0;           // d, the feature width
  std::int64_t components = 0;    // c
  std::vector<double> mean;       // (d) the training mean
  std::vector<double> axes;       // (c, d) orthonormal rows, by decreasing variance
  std::vector<double> variances;  // (c) the covariance's eigenvalues along the axes
  std::int64_t passes = 0;        // subspace-iteration passes taken (0: direct Jacobi)
  double residual = 0;            // max_i ||S u_i - θ_i u_i|| / θ_1 at the end
  bool converged = true;          // residual <= 1e-9 (false: stopped at max_passes above it)
};

constexpr std::int64_t kPcaMaxPasses = 300;  // fit_pca's default cap on passes

// x (n, d) float32 row-major. Errors (sela::Error, op "fit_pca"): n < 2, d < 1, components
// outside [1, min(n - 1, d)], max_passes < 1, a non-finite value (named by row and column),
// null x. Reaching max_passes is no error: the basis says so (converged false).
PcaBasis fit_pca(const float* x, std::int64_t n, std::int64_t d, std::int64_t components,
                 std::int64_t max_passes = kPcaMaxPasses);

// (n, c) float32: (x - mean) . axes^T, computed in float64. x (n, d) must have the basis's d;
// a non-finite value is an Error naming its row and column.
std::vector<float> project_pca(const PcaBasis& basis, const float* x, std::int64_t n);

// The reference's final kNN protocol: fit_pca on the memory rows with min(components, m - 1,
// d) components, memory and queries projected, then weighted_knn_top1 on the projections
// (which L2-normalises them). Arguments and errors as weighted_knn_top1 and fit_pca; the
// fitted basis is kept in *fitted when given (its passes, residual, convergence).
std::vector<KnnResult> weighted_knn_top1_after_pca(
    const float* memory, const std::int64_t* memory_classes, std::int64_t m, const float* queries,
    const std::int64_t* query_classes, std::int64_t q, std::int64_t d, std::int64_t components,
    const std::vector<std::int64_t>& ks, double sigma, std::int64_t num_classes,
    PcaBasis* fitted = nullptr);

// Eigen-decomposition of a symmetric (n, n) float64 matrix by the cyclic Jacobi method
// (Golub and Van Loan, Matrix Computations, section 8.5): eigenvalues in decreasing order,
// vectors as the rows of `vectors` (n, n), in the same order. `a` (n, n) row-major is read
// as the average of itself and its transpose, scaled by its largest magnitude while it is
// solved (so that no sum of squares overflows); a non-finite entry is an Error. Exposed
// for tests; fit_pca uses it for the Rayleigh-Ritz step.
void symmetric_eigen(const std::vector<double>& a, std::int64_t n, std::vector<double>& values,
                     std::vector<double>& vectors);

}  // namespace sela
