// Tests of sela/assign/pca.h (PCA for the reference's final kNN protocol).
//
// References:
//   - tests/golden/metrics/knn_pca_case.txt, made by tests/golden/make_metrics_golden.py
//     with scikit-learn's exact PCA (m = 400, d = 40, c = 6, a clear variance gap after the
//     6th component) and a float64 NumPy kNN: variances within 1e-9 relative, the projector
//     onto the components (sign- and order-free) within 1e-9, kNN predictions exactly (the
//     queries were kept only where a 1e-4 similarity change cannot alter them);
//   - on fresh random features (iterative and direct paths, a rank-deficient case): checks
//     written here from the definitions, with a naive float64 covariance: the axes are
//     orthonormal (1e-10), each is an eigenvector (||S u - θ u|| <= 1e-7 θ_1, θ = u^T S u
//     within 1e-9 relative), the variances decrease, and no direction orthogonal to the
//     axes has more variance than the last axis (the largest eigenvalue of the deflated
//     covariance, by a plain power iteration here, <= θ_c (1 + 1e-6));
//   - the same axes for 1 and 2 threads (bitwise), and clear errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/random.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/knn.h"
#include "sela/assign/pca.h"

namespace {

// Naive float64 covariance (1 / (n - 1)) of x (n, d).
std::vector<double> naive_covariance(const std::vector<float>& x, std::int64_t n, std::int64_t d) {
  std::vector<double> mean(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < d; ++k) mean[k] += x[i * d + k];
  }
  for (double& m : mean) m /= static_cast<double>(n);
  std::vector<double> s(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t a = 0; a < d; ++a) {
      const double xa = x[i * d + a] - mean[a];
      for (std::int64_t b = 0; b < d; ++b) s[a * d + b] += xa * (x[i * d + b] - mean[b]);
    }
  }
  for (double& v : s) v /= static_cast<double>(n - 1);
  return s;
}

std::vector<double> multiply(const std::vector<double>& s, std::int64_t d, const double* v) {
  std::vector<double> out(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t a = 0; a < d; ++a) {
    for (std::int64_t b = 0; b < d; ++b) out[a] += s[a * d + b] * v[b];
  }
  return out;
}

// Checks a basis against the covariance of x from the definitions (see the file comment).
void check_basis_from_definitions(const sela::PcaBasis& basis, const std::vector<float>& x,
                                  std::int64_t n, std::int64_t d) {
  const std::int64_t c = basis.components;
  REQUIRE(basis.dim == d);
  REQUIRE(basis.axes.size() == static_cast<std::size_t>(c * d));
  REQUIRE(basis.variances.size() == static_cast<std::size_t>(c));
  const std::vector<double> s = naive_covariance(x, n, d);
  for (std::int64_t k = 0; k < d; ++k) {  // the stored mean, from a naive sum
    double mean = 0;
    for (std::int64_t i = 0; i < n; ++i) mean += x[i * d + k];
    mean /= static_cast<double>(n);
    CHECK(std::abs(basis.mean[k] - mean) <= 1e-12 * (1 + std::abs(mean)));
  }
  for (std::int64_t i = 0; i < c; ++i) {  // the sign rule: largest-magnitude entry positive
    const double* axis = basis.axes.data() + i * d;
    std::int64_t largest = 0;
    for (std::int64_t k = 1; k < d; ++k) {
      if (std::abs(axis[k]) > std::abs(axis[largest])) largest = k;
    }
    CHECK(axis[largest] > 0);
  }
  CHECK(basis.residual <= 1e-9);  // the stopping rule of pca.h
  CHECK(basis.converged);
  for (std::int64_t i = 0; i < c; ++i) {
    for (std::int64_t j = 0; j < c; ++j) {
      double dot = 0;
      for (std::int64_t k = 0; k < d; ++k) dot += basis.axes[i * d + k] * basis.axes[j * d + k];
      CHECK(std::abs(dot - (i == j ? 1.0 : 0.0)) < 1e-10);
    }
  }
  const double top = basis.variances[0];
  REQUIRE(top > 0);
  for (std::int64_t i = 0; i < c; ++i) {
    const double* u = basis.axes.data() + i * d;
    const std::vector<double> su = multiply(s, d, u);
    double rayleigh = 0, residual = 0;
    for (std::int64_t k = 0; k < d; ++k) rayleigh += u[k] * su[k];
    for (std::int64_t k = 0; k < d; ++k) {
      const double r = su[k] - basis.variances[i] * u[k];
      residual += r * r;
    }
    CHECK(std::sqrt(residual) <= 1e-7 * top);
    CHECK(std::abs(rayleigh - basis.variances[i]) <= 1e-9 * top);
    if (i > 0) CHECK(basis.variances[i] <= basis.variances[i - 1] * (1 + 1e-12));
  }
  // The largest variance orthogonal to the axes, by power iteration on (I - P) S (I - P).
  auto deflate = [&](std::vector<double>& v) {
    for (std::int64_t i = 0; i < c; ++i) {
      const double* u = basis.axes.data() + i * d;
      double dot = 0;
      for (std::int64_t k = 0; k < d; ++k) dot += u[k] * v[k];
      for (std::int64_t k = 0; k < d; ++k) v[k] -= dot * u[k];
    }
  };
  sela::Rng rng(99);
  std::vector<double> v(static_cast<std::size_t>(d));
  for (double& value : v) value = rng.normal();
  double outside = 0;
  for (int it = 0; it < 3000; ++it) {
    deflate(v);
    double norm = 0;
    for (double value : v) norm += value * value;
    norm = std::sqrt(norm);
    if (norm == 0) break;
    for (double& value : v) value /= norm;
    std::vector<double> sv = multiply(s, d, v.data());
    deflate(sv);
    double next = 0;
    for (std::int64_t k = 0; k < d; ++k) next += v[k] * sv[k];
    v = sv;
    if (std::abs(next - outside) <= 1e-12 * top) {
      outside = next;
      break;
    }
    outside = next;
  }
  CHECK(outside <= basis.variances[c - 1] * (1 + 1e-6) + 1e-12 * top);
}

// Features with a decaying planted spectrum: (n, d) = z (n, d) diag(scale) R + offset,
// R a random orthogonal-ish mix (Gaussian, not orthogonalised), an offset per column.
std::vector<float> planted_features(std::int64_t n, std::int64_t d, std::int64_t rank,
                                    std::uint64_t seed) {
  sela::Rng rng(seed);
  std::vector<double> mix(static_cast<std::size_t>(rank * d));
  for (double& value : mix) value = rng.normal() / std::sqrt(static_cast<double>(d));
  std::vector<double> offset(static_cast<std::size_t>(d));
  for (double& value : offset) value = 3 * rng.uniform();
  std::vector<float> x(static_cast<std::size_t>(n * d));
  std::vector<double> z(static_cast<std::size_t>(rank));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t r = 0; r < rank; ++r) z[r] = rng.normal() * 4.0 / (1.0 + 0.15 * r);
    for (std::int64_t k = 0; k < d; ++k) {
      double value = offset[k];
      for (std::int64_t r = 0; r < rank; ++r) value += z[r] * mix[r * d + k];
      x[i * d + k] = static_cast<float>(value);
    }
  }
  return x;
}

struct GoldenCase {
  std::int64_t m = 0, q = 0, d = 0, num_classes = 0, components = 0;
  double sigma = 0;
  std::vector<std::int64_t> ks;
  std::vector<float> memory, queries;
  std::vector<std::int64_t> memory_classes, query_classes;
  std::vector<double> variances, components_rows, expect_top1;
  std::vector<std::int64_t> predictions;  // (ks, q)
};

GoldenCase read_golden() {
  const std::string path = std::string(SELA_SOURCE_DIR) + "/tests/golden/metrics/knn_pca_case.txt";
  std::ifstream file(path);
  REQUIRE_MESSAGE(file.good(), "cannot open " << path);
  std::stringstream text;
  std::string line;
  while (std::getline(file, line)) {
    if (!line.empty() && line[0] == '#') continue;
    text << line << '\n';
  }
  GoldenCase g;
  std::string word;
  std::int64_t nks = 0;
  text >> word >> g.m >> g.q >> g.d >> g.num_classes >> g.sigma >> g.components >> nks;
  REQUIRE(word == "knn_pca");
  g.ks.resize(static_cast<std::size_t>(nks));
  for (auto& k : g.ks) text >> k;
  auto read_floats = [&](std::vector<float>& v, std::int64_t count) {
    v.resize(static_cast<std::size_t>(count));
    for (auto& x : v) text >> x;
  };
  auto read_ints = [&](std::vector<std::int64_t>& v, std::int64_t count) {
    v.resize(static_cast<std::size_t>(count));
    for (auto& x : v) text >> x;
  };
  auto read_doubles = [&](std::vector<double>& v, std::int64_t count) {
    v.resize(static_cast<std::size_t>(count));
    for (auto& x : v) text >> x;
  };
  read_floats(g.memory, g.m * g.d);
  read_ints(g.memory_classes, g.m);
  read_floats(g.queries, g.q * g.d);
  read_ints(g.query_classes, g.q);
  text >> word;
  REQUIRE(word == "variances");
  read_doubles(g.variances, g.components);
  read_doubles(g.components_rows, g.components * g.d);
  text >> word;
  REQUIRE(word == "expect_top1");
  read_doubles(g.expect_top1, nks);
  read_ints(g.predictions, nks * g.q);
  REQUIRE(text.good());
  return g;
}

}  // namespace

TEST_CASE("PCA and kNN after PCA match scikit-learn on the golden case") {
  const GoldenCase g = read_golden();
  const sela::PcaBasis basis = sela::fit_pca(g.memory.data(), g.m, g.d, g.components);
  REQUIRE(basis.components == g.components);
  for (std::int64_t i = 0; i < g.components; ++i) {
    CHECK(std::abs(basis.variances[i] - g.variances[i]) <= 1e-9 * g.variances[i]);
  }
  double worst = 0;  // projectors U^T U, (d, d)
  for (std::int64_t a = 0; a < g.d; ++a) {
    for (std::int64_t b = 0; b < g.d; ++b) {
      double ours = 0, theirs = 0;
      for (std::int64_t i = 0; i < g.components; ++i) {
        ours += basis.axes[i * g.d + a] * basis.axes[i * g.d + b];
        theirs += g.components_rows[i * g.d + a] * g.components_rows[i * g.d + b];
      }
      worst = std::max(worst, std::abs(ours - theirs));
    }
  }
  CHECK(worst <= 1e-9);
  check_basis_from_definitions(basis, g.memory, g.m, g.d);

  const std::vector<float> memory = sela::project_pca(basis, g.memory.data(), g.m);
  const std::vector<float> queries = sela::project_pca(basis, g.queries.data(), g.q);
  std::vector<std::int64_t> predictions(g.ks.size() * static_cast<std::size_t>(g.q), -777);
  sela::weighted_knn_predict(memory.data(), g.memory_classes.data(), g.m, queries.data(), g.q,
                             g.components, g.ks, g.sigma, g.num_classes, predictions.data());
  CHECK(predictions == g.predictions);

  const std::vector<sela::KnnResult> top1 = sela::weighted_knn_top1_after_pca(
      g.memory.data(), g.memory_classes.data(), g.m, g.queries.data(), g.query_classes.data(),
      g.q, g.d, g.components, g.ks, g.sigma, g.num_classes);
  REQUIRE(top1.size() == g.ks.size());
  for (std::size_t r = 0; r < g.ks.size(); ++r) {
    CHECK(std::abs(top1[r].top1 - g.expect_top1[r]) < 1e-12);
    CHECK(top1[r].queries == g.q);
  }
  // Without PCA the same case scores lower at k = 10 (the common offset dominates the
  // cosine): the protocol changes the figure, which is why eval reports both.
  const std::vector<sela::KnnResult> plain = sela::weighted_knn_top1(
      g.memory.data(), g.memory_classes.data(), g.m, g.queries.data(), g.query_classes.data(),
      g.q, g.d, g.ks, g.sigma, g.num_classes);
  CHECK(plain[1].top1 < top1[1].top1);
}

TEST_CASE("PCA on fresh random features: iterative, direct and rank-deficient paths") {
  struct Shape {
    std::int64_t n, d, rank, c;
    bool iterative;
  };
  // The last two are rank-deficient: float32 rounding leaves a tiny spread past the rank in
  // the first; in the second n - 1 = 9 < l = 18, so the covariance is exactly singular and
  // the block's extra rows must be drawn again.
  for (const Shape& shape : {Shape{3000, 200, 200, 30, true}, Shape{400, 24, 24, 12, false},
                             Shape{1500, 120, 25, 40, true}, Shape{10, 100, 100, 9, true}}) {
    CAPTURE(shape.n);
    CAPTURE(shape.d);
    CAPTURE(shape.rank);
    CAPTURE(shape.c);
    const std::vector<float> x = planted_features(shape.n, shape.d, shape.rank, 1234 + shape.d);
    const sela::PcaBasis basis = sela::fit_pca(x.data(), shape.n, shape.d, shape.c);
    CHECK((basis.passes > 0) == shape.iterative);
    check_basis_from_definitions(basis, x, shape.n, shape.d);
    if (shape.rank < shape.c) {  // the components past the rank carry no variance
      for (std::int64_t i = shape.rank; i < shape.c; ++i) CHECK(basis.variances[i] < 1e-9 * basis.variances[0]);
    }
    // The projection is (x - mean) . axes^T: check one row against a naive sum.
    const std::vector<float> projected = sela::project_pca(basis, x.data(), shape.n);
    REQUIRE(projected.size() == static_cast<std::size_t>(shape.n * shape.c));
    const std::int64_t row = shape.n / 3;
    for (std::int64_t i = 0; i < shape.c; ++i) {
      double expected = 0;
      for (std::int64_t k = 0; k < shape.d; ++k) {
        expected += (x[row * shape.d + k] - basis.mean[k]) * basis.axes[i * shape.d + k];
      }
      CHECK(std::abs(projected[row * shape.c + i] - expected) <= 1e-5 * (1 + std::abs(expected)));
    }
  }
}

TEST_CASE("PCA of identical rows: zero variances, orthonormal axes, a zero projection") {
  const std::int64_t n = 20, d = 50;
  std::vector<float> x(static_cast<std::size_t>(n * d));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < d; ++k) x[i * d + k] = 0.25f * static_cast<float>(k);
  }
  for (std::int64_t c : {3, 19}) {  // the iterative path, then the direct one (2c >= d)
    CAPTURE(c);
    const sela::PcaBasis basis = sela::fit_pca(x.data(), n, d, c);
    for (double v : basis.variances) CHECK(v == 0.0);
    for (std::int64_t i = 0; i < c; ++i) {
      for (std::int64_t j = 0; j < c; ++j) {
        double dot = 0;
        for (std::int64_t k = 0; k < d; ++k) dot += basis.axes[i * d + k] * basis.axes[j * d + k];
        CHECK(std::abs(dot - (i == j ? 1.0 : 0.0)) < 1e-10);
      }
    }
    for (float v : sela::project_pca(basis, x.data(), n)) CHECK(v == 0.0f);
  }
}

TEST_CASE("kNN after PCA caps the components at min(m - 1, d)") {
  const GoldenCase g = read_golden();
  const std::vector<sela::KnnResult> capped = sela::weighted_knn_top1_after_pca(
      g.memory.data(), g.memory_classes.data(), g.m, g.queries.data(), g.query_classes.data(),
      g.q, g.d, 500, g.ks, g.sigma, g.num_classes);  // 500 > d = 40: a PCA to all 40
  const sela::PcaBasis basis = sela::fit_pca(g.memory.data(), g.m, g.d, g.d);
  const std::vector<float> memory = sela::project_pca(basis, g.memory.data(), g.m);
  const std::vector<float> queries = sela::project_pca(basis, g.queries.data(), g.q);
  const std::vector<sela::KnnResult> full =
      sela::weighted_knn_top1(memory.data(), g.memory_classes.data(), g.m, queries.data(),
                              g.query_classes.data(), g.q, g.d, g.ks, g.sigma, g.num_classes);
  REQUIRE(capped.size() == full.size());
  for (std::size_t r = 0; r < full.size(); ++r) CHECK(capped[r].top1 == full[r].top1);
}

TEST_CASE("PCA gives the same axes for 1 and 2 threads") {
  const std::vector<float> x = planted_features(2000, 150, 150, 77);
  const int saved = sela::cpu::num_threads();
  sela::cpu::set_num_threads(1);
  const sela::PcaBasis one = sela::fit_pca(x.data(), 2000, 150, 20);
  sela::cpu::set_num_threads(2);
  const sela::PcaBasis two = sela::fit_pca(x.data(), 2000, 150, 20);
  sela::cpu::set_num_threads(saved);
  CHECK(one.axes == two.axes);
  CHECK(one.variances == two.variances);
}

TEST_CASE("symmetric_eigen on a random symmetric matrix") {
  const std::int64_t n = 30;
  sela::Rng rng(5);
  std::vector<double> a(static_cast<std::size_t>(n * n));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j <= i; ++j) a[i * n + j] = a[j * n + i] = rng.normal();
  }
  std::vector<double> values, vectors;
  sela::symmetric_eigen(a, n, values, vectors);
  double scale = 0;
  for (double v : values) scale = std::max(scale, std::abs(v));
  for (std::int64_t r = 0; r < n; ++r) {
    if (r > 0) CHECK(values[r] <= values[r - 1]);
    const std::vector<double> av = multiply(a, n, vectors.data() + r * n);
    for (std::int64_t k = 0; k < n; ++k) CHECK(std::abs(av[k] - values[r] * vectors[r * n + k]) < 1e-11 * scale);
    for (std::int64_t s = 0; s < n; ++s) {
      double dot = 0;
      for (std::int64_t k = 0; k < n; ++k) dot += vectors[r * n + k] * vectors[s * n + k];
      CHECK(std::abs(dot - (r == s ? 1.0 : 0.0)) < 1e-12);
    }
  }
  // 2 x 2 closed form: [[2, 1], [1, 2]] has eigenvalues 3 and 1; scaled by 1e200 (sums of
  // squares would overflow without the solver's scaling) 3e200 and 1e200.
  sela::symmetric_eigen({2, 1, 1, 2}, 2, values, vectors);
  CHECK(values[0] == doctest::Approx(3.0).epsilon(1e-15));
  CHECK(values[1] == doctest::Approx(1.0).epsilon(1e-15));
  sela::symmetric_eigen({2e200, 1e200, 1e200, 2e200}, 2, values, vectors);
  CHECK(values[0] == doctest::Approx(3e200).epsilon(1e-14));
  CHECK(values[1] == doctest::Approx(1e200).epsilon(1e-14));
  CHECK_THROWS_WITH_AS(sela::symmetric_eigen({1, std::nan(""), 0, 1}, 2, values, vectors),
                       doctest::Contains("entry [0, 1]"), sela::Error);
}

// A cap on the passes below what the solve needs: the basis says it did not converge, with
// the passes it took and a residual above the tolerance; the same features with the default
// cap converge.
TEST_CASE("PCA stopped by its pass cap reports that it did not converge") {
  const std::vector<float> x = planted_features(3000, 200, 200, 99);  // a slowly decaying spectrum
  const sela::PcaBasis capped = sela::fit_pca(x.data(), 3000, 200, 30, 3);
  CHECK(!capped.converged);
  CHECK(capped.passes == 3);
  CHECK(capped.residual > 1e-9);
  const sela::PcaBasis full = sela::fit_pca(x.data(), 3000, 200, 30);
  CHECK(full.converged);
  CHECK(full.passes > 3);
  CHECK(full.passes <= sela::kPcaMaxPasses);
  CHECK(full.residual <= 1e-9);
  // The kNN after PCA hands its basis out for these diagnostics.
  std::vector<std::int64_t> classes(3000);
  for (std::size_t i = 0; i < classes.size(); ++i) classes[i] = static_cast<std::int64_t>(i % 3);
  sela::PcaBasis fitted;
  sela::weighted_knn_top1_after_pca(x.data(), classes.data(), 3000, x.data(), classes.data(), 50,
                                    200, 30, {10}, 0.1, 3, &fitted);
  CHECK(fitted.passes == full.passes);
  CHECK(fitted.residual == full.residual);
}

TEST_CASE("PCA rejects bad input with a clear message") {
  std::vector<float> x(20 * 5, 1.0f);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
  auto message = [&](auto&& call) {
    try {
      call();
    } catch (const sela::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto says = [&](auto&& call, const char* text) {
    const std::string what = message(call);
    INFO(what);
    CHECK(what.find(text) != std::string::npos);
  };
  says([&] { sela::fit_pca(x.data(), 20, 5, 0); }, "0 components");
  says([&] { sela::fit_pca(x.data(), 20, 5, 6); }, "ask for 1 to min(n - 1, d) = 5");
  says([&] { sela::fit_pca(x.data(), 1, 5, 1); }, "at least 2 rows");
  says([&] { sela::fit_pca(nullptr, 20, 5, 1); }, "no feature rows");
  says([&] { sela::fit_pca(x.data(), 20, 5, 1, 0); }, "max_passes must be >= 1, got 0");
  const sela::PcaBasis basis = sela::fit_pca(x.data(), 20, 5, 2);
  x[3 * 5 + 2] = std::numeric_limits<float>::quiet_NaN();
  says([&] { sela::fit_pca(x.data(), 20, 5, 2); }, "fit_pca: feature [3, 2]");
  says([&] { sela::project_pca(basis, x.data(), 20); }, "project_pca: feature [3, 2]");
}
