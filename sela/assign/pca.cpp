// PCA of feature rows (see pca.h): float64 covariance by row blocks, randomized subspace
// iteration with Rayleigh-Ritz, cyclic Jacobi for the small eigenproblems.
//
// Shapes: x (n, d); the covariance S (d, d); the subspace block Q (l, d) with orthonormal
// rows, so that one pass is the row-major product Q S (S is symmetric: (S Q^T)^T = Q S).
#include "sela/assign/pca.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"
#include "engine/random.h"
#include "kernels/cpu/gemm.h"

namespace sela {
namespace {

constexpr std::int64_t kRowBlock = 512;       // rows of x converted to float64 at a time
constexpr std::int64_t kCheckEvery = 4;       // passes between Rayleigh-Ritz checks
constexpr double kResidualTolerance = 1e-9;   // max ||S u - θ u|| / θ_1 to stop
constexpr std::uint64_t kSeed = 0x5E1A0CA11ull;

// out (rows, cols) = a (rows, k) . b (k, cols), all row-major float64.
void matmul(const double* a, const double* b, double* out, std::int64_t rows, std::int64_t k,
            std::int64_t cols, bool transpose_b = false) {
  cpu::gemm<double>(false, transpose_b, rows, cols, k, 1.0, a, k, b, transpose_b ? k : cols, 0.0,
                    out, cols);
}

// Orthonormalises the rows of q (l, d) in place by modified Gram-Schmidt, applied twice
// ("twice is enough", Giraud et al. 2005). A row that loses almost all of its norm to the
// rows before it (the block is wider than the covariance's rank) is replaced by a fresh
// Gaussian row, orthonormalised the same way.
void orthonormalise_rows(std::vector<double>& q, std::int64_t l, std::int64_t d, Rng& rng) {
  for (std::int64_t i = 0; i < l; ++i) {
    double* row = q.data() + i * d;
    for (int attempt = 0;; ++attempt) {
      double before = 0;
      for (std::int64_t k = 0; k < d; ++k) before += row[k] * row[k];
      for (int round = 0; round < 2; ++round) {
        for (std::int64_t j = 0; j < i; ++j) {
          const double* other = q.data() + j * d;
          double dot = 0;
          for (std::int64_t k = 0; k < d; ++k) dot += row[k] * other[k];
          for (std::int64_t k = 0; k < d; ++k) row[k] -= dot * other[k];
        }
      }
      double after = 0;
      for (std::int64_t k = 0; k < d; ++k) after += row[k] * row[k];
      if (after > 1e-20 * before && after > 0) {
        const double inverse = 1.0 / std::sqrt(after);
        for (std::int64_t k = 0; k < d; ++k) row[k] *= inverse;
        break;
      }
      SELA_CHECK(attempt < 8, "fit_pca",
                 "could not extend the basis past " << i << " of " << l << " rows (d = " << d
                                                    << ")");
      for (std::int64_t k = 0; k < d; ++k) row[k] = rng.normal();
    }
  }
}

// max_i ||S u_i - θ_i u_i|| / |θ_0| for the rows u_i of axes (c, d), s_axes = rows S u_i.
double worst_residual(const std::vector<double>& s_axes, const std::vector<double>& axes,
                      const std::vector<double>& values, std::int64_t c, std::int64_t d) {
  const double scale = std::max(std::abs(values[0]), 1e-300);
  double worst = 0;
  for (std::int64_t i = 0; i < c; ++i) {
    double sum = 0;
    for (std::int64_t k = 0; k < d; ++k) {
      const double r = s_axes[i * d + k] - values[i] * axes[i * d + k];
      sum += r * r;
    }
    worst = std::max(worst, std::sqrt(sum) / scale);
  }
  return worst;
}

// Rayleigh-Ritz on the span of q's rows: the c leading Ritz vectors as rows of axes (c, d),
// their values, and max_i ||S u_i - θ_i u_i|| / θ_1. qs = q S (l, d).
double rayleigh_ritz(const std::vector<double>& q, const std::vector<double>& qs, std::int64_t l,
                     std::int64_t d, std::int64_t c, std::vector<double>& axes,
                     std::vector<double>& values) {
  std::vector<double> small(static_cast<std::size_t>(l * l));  // (l, l) = q S q^T
  matmul(qs.data(), q.data(), small.data(), l, d, l, /*transpose_b=*/true);
  std::vector<double> small_values, small_vectors;  // (l), (l, l) rows
  symmetric_eigen(small, l, small_values, small_vectors);
  axes.assign(static_cast<std::size_t>(c * d), 0.0);
  std::vector<double> s_axes(static_cast<std::size_t>(c * d));  // (c, d) = S u_i as rows
  matmul(small_vectors.data(), q.data(), axes.data(), c, l, d);
  matmul(small_vectors.data(), qs.data(), s_axes.data(), c, l, d);
  values.assign(small_values.begin(), small_values.begin() + c);
  return worst_residual(s_axes, axes, values, c, d);
}

}  // namespace

void symmetric_eigen(const std::vector<double>& a_in, std::int64_t n, std::vector<double>& values,
                     std::vector<double>& vectors) {
  SELA_CHECK(n >= 1 && a_in.size() == static_cast<std::size_t>(n * n), "symmetric_eigen",
             "needs an (n, n) matrix, got " << a_in.size() << " values for n = " << n);
  // Scaled by the largest magnitude, so that sums of squares cannot overflow; scaled back at
  // the end.
  double largest = 0;
  for (std::size_t i = 0; i < a_in.size(); ++i) {
    SELA_CHECK(std::isfinite(a_in[i]), "symmetric_eigen",
               "entry [" << i / n << ", " << i % n << "] = " << a_in[i] << " is not finite");
    largest = std::max(largest, std::abs(a_in[i]));
  }
  const double unit = largest > 0 ? largest : 1.0;
  std::vector<double> a(a_in.size());  // (n, n), symmetrised, divided by unit
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      a[i * n + j] = 0.5 * (a_in[i * n + j] / unit + a_in[j * n + i] / unit);
    }
  }
  std::vector<double> v(static_cast<std::size_t>(n * n), 0.0);  // (n, n), eigenvectors as columns
  for (std::int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;

  double total = 0;
  for (double x : a) total += x * x;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = i + 1; j < n; ++j) off += 2 * a[i * n + j] * a[i * n + j];
    }
    if (off <= 1e-30 * total || off == 0) break;
    for (std::int64_t p = 0; p < n; ++p) {
      for (std::int64_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0) continue;
        // The symmetric Schur decomposition of the (p, q) block (Golub and Van Loan 8.5.2).
        const double tau = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const double t = (tau >= 0 ? 1.0 : -1.0) / (std::abs(tau) + std::sqrt(1 + tau * tau));
        const double cs = 1 / std::sqrt(1 + t * t);
        const double sn = t * cs;
        for (std::int64_t k = 0; k < n; ++k) {  // columns p and q: A J
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = cs * akp - sn * akq;
          a[k * n + q] = sn * akp + cs * akq;
        }
        for (std::int64_t k = 0; k < n; ++k) {  // rows p and q: J^T (A J)
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = cs * apk - sn * aqk;
          a[q * n + k] = sn * apk + cs * aqk;
        }
        a[p * n + q] = a[q * n + p] = 0.0;
        for (std::int64_t k = 0; k < n; ++k) {  // V J
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = cs * vkp - sn * vkq;
          v[k * n + q] = sn * vkp + cs * vkq;
        }
      }
    }
  }
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t x, std::int64_t y) { return a[x * n + x] > a[y * n + y]; });
  values.resize(static_cast<std::size_t>(n));
  vectors.resize(static_cast<std::size_t>(n * n));
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t col = order[r];
    values[r] = a[col * n + col] * unit;
    for (std::int64_t k = 0; k < n; ++k) vectors[r * n + k] = v[k * n + col];
  }
}

PcaBasis fit_pca(const float* x, std::int64_t n, std::int64_t d, std::int64_t components,
                 std::int64_t max_passes) {
  SELA_CHECK(x != nullptr, "fit_pca", "no feature rows given");
  SELA_CHECK(max_passes >= 1, "fit_pca", "max_passes must be >= 1, got " << max_passes);
  SELA_CHECK(n >= 2 && d >= 1, "fit_pca",
             "needs at least 2 rows of width >= 1, got (" << n << ", " << d << ")");
  SELA_CHECK(components >= 1 && components <= std::min(n - 1, d), "fit_pca",
             components << " components asked of (" << n << ", " << d
                        << ") features; ask for 1 to min(n - 1, d) = " << std::min(n - 1, d));
  PcaBasis basis;
  basis.dim = d;
  basis.components = components;
  basis.mean.assign(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < d; ++k) {
      const double value = x[i * d + k];
      SELA_CHECK(std::isfinite(value), "fit_pca",
                 "feature [" << i << ", " << k << "] = " << value << " is not finite");
      basis.mean[k] += value;
    }
  }
  for (double& m : basis.mean) m /= static_cast<double>(n);

  // S = (x - mean)^T (x - mean) / (n - 1), in blocks of rows.
  std::vector<double> covariance(static_cast<std::size_t>(d * d));  // (d, d)
  std::vector<double> block(static_cast<std::size_t>(std::min(n, kRowBlock) * d));
  for (std::int64_t start = 0; start < n; start += kRowBlock) {
    const std::int64_t rows = std::min(kRowBlock, n - start);
    for (std::int64_t i = 0; i < rows; ++i) {
      for (std::int64_t k = 0; k < d; ++k) {
        block[i * d + k] = x[(start + i) * d + k] - basis.mean[k];
      }
    }
    cpu::gemm<double>(true, false, d, d, rows, 1.0 / static_cast<double>(n - 1), block.data(), d,
                      block.data(), d, start == 0 ? 0.0 : 1.0, covariance.data(), d);
  }

  const std::int64_t c = components;
  const std::int64_t l = std::min(d, 2 * c);
  if (l == d) {  // small enough: the whole covariance
    std::vector<double> values, vectors;
    symmetric_eigen(covariance, d, values, vectors);
    basis.axes.assign(vectors.begin(), vectors.begin() + c * d);
    basis.variances.assign(values.begin(), values.begin() + c);
    std::vector<double> s_axes(static_cast<std::size_t>(c * d));  // (c, d) rows S u_i
    matmul(basis.axes.data(), covariance.data(), s_axes.data(), c, d, d);
    basis.residual = worst_residual(s_axes, basis.axes, basis.variances, c, d);
  } else {
    Rng rng(kSeed);
    std::vector<double> q(static_cast<std::size_t>(l * d));   // (l, d) orthonormal rows
    std::vector<double> qs(static_cast<std::size_t>(l * d));  // (l, d) = q S
    for (double& value : q) value = rng.normal();
    orthonormalise_rows(q, l, d, rng);
    for (std::int64_t pass = 1; pass <= max_passes; ++pass) {
      matmul(q.data(), covariance.data(), qs.data(), l, d, d);
      if (pass % kCheckEvery == 0 || pass == max_passes) {
        basis.residual = rayleigh_ritz(q, qs, l, d, c, basis.axes, basis.variances);
        basis.passes = pass;
        if (basis.residual <= kResidualTolerance) break;
      }
      q = qs;
      orthonormalise_rows(q, l, d, rng);
    }
  }
  basis.converged = basis.residual <= kResidualTolerance;  // the direct solve is checked too
  for (std::int64_t i = 0; i < c; ++i) {  // a deterministic sign per axis
    double* axis = basis.axes.data() + i * d;
    std::int64_t largest = 0;
    for (std::int64_t k = 1; k < d; ++k) {
      if (std::abs(axis[k]) > std::abs(axis[largest])) largest = k;
    }
    if (axis[largest] < 0) {
      for (std::int64_t k = 0; k < d; ++k) axis[k] = -axis[k];
    }
  }
  return basis;
}

std::vector<float> project_pca(const PcaBasis& basis, const float* x, std::int64_t n) {
  SELA_CHECK(x != nullptr || n == 0, "project_pca", "no feature rows given");
  const std::int64_t d = basis.dim, c = basis.components;
  SELA_CHECK(n >= 0 && d >= 1 && c >= 1 && basis.mean.size() == static_cast<std::size_t>(d) &&
                 basis.axes.size() == static_cast<std::size_t>(c * d),
             "project_pca", "needs a basis from fit_pca and n >= 0, got n = " << n);
  std::vector<float> out(static_cast<std::size_t>(n * c));  // (n, c)
  const std::int64_t block_rows = std::min<std::int64_t>(std::max<std::int64_t>(n, 1), kRowBlock);
  std::vector<double> block(static_cast<std::size_t>(block_rows * d));      // (rows, d)
  std::vector<double> projected(static_cast<std::size_t>(block_rows * c));  // (rows, c)
  for (std::int64_t start = 0; start < n; start += kRowBlock) {
    const std::int64_t rows = std::min(kRowBlock, n - start);
    for (std::int64_t i = 0; i < rows; ++i) {
      for (std::int64_t k = 0; k < d; ++k) {
        const double value = x[(start + i) * d + k];
        SELA_CHECK(std::isfinite(value), "project_pca",
                   "feature [" << start + i << ", " << k << "] = " << value << " is not finite");
        block[i * d + k] = value - basis.mean[k];
      }
    }
    matmul(block.data(), basis.axes.data(), projected.data(), rows, d, c, /*transpose_b=*/true);
    for (std::int64_t i = 0; i < rows * c; ++i) {
      out[start * c + i] = static_cast<float>(projected[i]);
    }
  }
  return out;
}

std::vector<KnnResult> weighted_knn_top1_after_pca(
    const float* memory, const std::int64_t* memory_classes, std::int64_t m, const float* queries,
    const std::int64_t* query_classes, std::int64_t q, std::int64_t d, std::int64_t components,
    const std::vector<std::int64_t>& ks, double sigma, std::int64_t num_classes, PcaBasis* fitted) {
  SELA_CHECK(components >= 1, "weighted_knn_after_pca",
             "needs components >= 1, got " << components);
  const PcaBasis basis = fit_pca(memory, m, d, std::min({components, m - 1, d}));
  if (fitted) *fitted = basis;
  const std::vector<float> projected_memory = project_pca(basis, memory, m);   // (m, c)
  const std::vector<float> projected_queries = project_pca(basis, queries, q);  // (q, c)
  return weighted_knn_top1(projected_memory.data(), memory_classes, m, projected_queries.data(),
                           query_classes, q, basis.components, ks, sigma, num_classes);
}

}  // namespace sela
