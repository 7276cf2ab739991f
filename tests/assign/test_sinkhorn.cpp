// Tests of the SeLa label assignment (sela/assign/sinkhorn.h):
//  * the fast solver against the float64 reference on random logits (several N, K,
//    λ ∈ {1, 10, 25}, peaked and near-uniform rows, every storage): labels, r, c, marginals;
//  * both against the exact equipartitioned assignment (Hungarian on replicated columns)
//    on small problems at large λ, on the objective Σ_i log p(y_i | x_i);
//  * robustness: NaN/Inf, the iteration cap, N < K, K = 1, N = 1, absurd sizes, the memory
//    limit, CUDA asked without CUDA, misuse of the batch API;
//  * batches vs all at once, reuse across heads, determinism for a thread count;
//  * the warm start: from the previous answer, the reference's answer in fewer passes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/linear_assignment.h"
#include "sela/assign/sinkhorn.h"
#include "tests/assign/sinkhorn_test_logits.h"

using namespace sela::assign;

namespace {

using sela::test::random_logits;

// log p_ik = z_ik − logsumexp_k z_ik in float64.
std::vector<double> log_softmax(const std::vector<float>& z, std::int64_t n, std::int64_t k) {
  std::vector<double> out(z.size());
  for (std::int64_t i = 0; i < n; ++i) {
    double m = -1e300, total = 0.0;
    for (std::int64_t j = 0; j < k; ++j)
      m = std::max(m, static_cast<double>(z[static_cast<std::size_t>(i * k + j)]));
    for (std::int64_t j = 0; j < k; ++j)
      total += std::exp(static_cast<double>(z[static_cast<std::size_t>(i * k + j)]) - m);
    for (std::int64_t j = 0; j < k; ++j) {
      out[static_cast<std::size_t>(i * k + j)] =
          static_cast<double>(z[static_cast<std::size_t>(i * k + j)]) - m - std::log(total);
    }
  }
  return out;
}

double mean_log(const std::vector<double>& values) {
  double total = 0.0;
  for (double v : values) total += std::log(v);
  return total / static_cast<double>(values.size());
}

SinkhornOptions quiet_options(std::ostream* log) {
  SinkhornOptions options;
  options.log = log;
  return options;
}

struct Comparison {
  std::int64_t clear_rows = 0, clear_agree = 0, all_agree = 0;
  double r_log_error = 0.0, c_log_error = 0.0;
};

// Compares a fast result with the reference result for the same logits. r is compared
// after removing the free scale (mean of log r); c after converting it to the reference's
// row scaling: c_ref_i = c_i · storage_scale · exp(λ (L_i − m_i)) / β, L = logsumexp, m = max.
Comparison compare(const std::vector<float>& z, std::int64_t n, std::int64_t k, double lambda,
                   const SinkhornResult& fast, const SinkhornResult& ref, double margin) {
  Comparison out;
  const std::vector<double> log_p = log_softmax(z, n, k);
  const double log_beta = mean_log(ref.r) - mean_log(fast.r);
  for (std::int64_t j = 0; j < k; ++j) {
    const double a = std::log(fast.r[static_cast<std::size_t>(j)]) + log_beta;
    out.r_log_error =
        std::max(out.r_log_error, std::fabs(a - std::log(ref.r[static_cast<std::size_t>(j)])));
  }
  for (std::int64_t i = 0; i < n; ++i) {
    double m = -1e300;
    for (std::int64_t j = 0; j < k; ++j)
      m = std::max(m, static_cast<double>(z[static_cast<std::size_t>(i * k + j)]));
    // log_p_ik = z_ik − L_i, so L_i − m_i = z_i0 − log_p_i0 − m_i.
    const double l_minus_m = static_cast<double>(z[static_cast<std::size_t>(i * k)]) -
                             log_p[static_cast<std::size_t>(i * k)] - m;
    const double converted = std::log(fast.c[static_cast<std::size_t>(i)]) +
                             std::log(fast.storage_scale) + lambda * l_minus_m - log_beta;
    out.c_log_error = std::max(out.c_log_error,
                               std::fabs(converted - std::log(ref.c[static_cast<std::size_t>(i)])));
    // The reference's margin: gap between its best and second-best λ log p_ik + log r_k.
    double best = -1e300, second = -1e300;
    for (std::int64_t j = 0; j < k; ++j) {
      double g = lambda * log_p[static_cast<std::size_t>(i * k + j)] +
                 std::log(ref.r[static_cast<std::size_t>(j)]);
      if (g > best) {
        second = best;
        best = g;
      } else if (g > second) {
        second = g;
      }
    }
    const bool same =
        fast.labels[static_cast<std::size_t>(i)] == ref.labels[static_cast<std::size_t>(i)];
    out.all_agree += same ? 1 : 0;
    if (best - second >= margin) {
      ++out.clear_rows;
      out.clear_agree += same ? 1 : 0;
    }
  }
  return out;
}

// Σ_i log p(y_i | x_i) of a labelling.
double objective(const std::vector<double>& log_p, std::int64_t k,
                 const std::vector<std::int64_t>& labels) {
  double total = 0.0;
  for (std::size_t i = 0; i < labels.size(); ++i)
    total += log_p[i * static_cast<std::size_t>(k) + static_cast<std::size_t>(labels[i])];
  return total;
}

}  // namespace

TEST_CASE("fast solver agrees with the float64 reference (labels, r, c, marginals)") {
  std::ostringstream log;
  // Tolerances on log r and log c (≈ relative errors) after normalising the free scale:
  // they are set by the storage's rounding of A (f32 2^-24, f16 2^-11, bf16 2^-8
  // relative), which moves the fixed point, plus the convergence tolerance.
  struct StorageCase {
    SinkhornStorage storage;
    double log_tol;
  };
  const StorageCase storages[] = {
      {SinkhornStorage::f32, 1e-4}, {SinkhornStorage::f16, 2e-3}, {SinkhornStorage::bf16, 1e-2}};
  const double margin = 0.02;  // "clear margin": best − second best of λ log p + log r ≥ 0.02
  struct Shape {
    std::int64_t n, k;
  };
  for (Shape shape : {Shape{1200, 10}, Shape{2000, 100}, Shape{500, 200}}) {
    for (double lambda : {1.0, 10.0, 25.0}) {
      for (float spread : {2.0f, 0.05f}) {  // peaked rows, near-uniform rows
        const std::int64_t n = shape.n, k = shape.k;
        auto z =
            random_logits(n, k, spread,
                          static_cast<std::uint32_t>(n * 31 + k + static_cast<int>(lambda * 7) +
                                                     (spread > 1 ? 1 : 0)));
        SinkhornOptions options = quiet_options(&log);
        options.lambda = lambda;
        options.tol = 1e-5 * static_cast<double>(n);  // mean |c/c_new − 1| of 1e-5 per row
        options.max_iters = 20000;
        SinkhornResult ref = sinkhorn_reference(z.data(), n, k, options);
        REQUIRE(ref.converged);
        for (const StorageCase& sc : storages) {
          options.storage = sc.storage;
          SinkhornSolver solver(options);
          SinkhornResult fast = solver.solve(z.data(), n, k);
          CAPTURE(n);
          CAPTURE(k);
          CAPTURE(lambda);
          CAPTURE(spread);
          CAPTURE(storage_name(sc.storage));
          REQUIRE(fast.converged);
          REQUIRE(fast.labels.size() == static_cast<std::size_t>(n));
          Comparison cmp = compare(z, n, k, lambda, fast, ref, margin);
          MESSAGE("N=" << n << " K=" << k << " lambda=" << lambda << " spread=" << spread << " "
                       << storage_name(sc.storage) << ": iters " << fast.iterations << " (ref "
                       << ref.iterations << "), clear " << cmp.clear_rows << " agree "
                       << cmp.clear_agree << ", all agree " << cmp.all_agree << ", log r err "
                       << cmp.r_log_error << ", log c err " << cmp.c_log_error << ", col err "
                       << fast.col_marginal_error << " ref " << ref.col_marginal_error
                       << ", floor mass " << fast.floor_mass);
          // f16 keeps A only down to e^-27 below the row maximum: where the plan needs smaller
          // entries (peaked rows at large λ) its answer is storage-limited, and it must say so.
          // f32 and bf16 (range e^-69) must never be in that regime on these logits.
          if (fast.floor_mass > kSinkhornFloorMassWarning) {
            CHECK(sc.storage == SinkhornStorage::f16);
            CHECK(fast.warning.find("below the range of storage f16") != std::string::npos);
            continue;
          }
          CHECK(fast.warning.empty());
          // Same start, same updates, same stopping rule: the same iteration count, give or
          // take one check where the stopping value sits at the tolerance within rounding.
          CHECK(std::llabs(fast.iterations - ref.iterations) <= options.check_every);
          // The test must have rows to judge: at least a fifth of them with a clear margin.
          CHECK(cmp.clear_rows * 5 >= n);
          CHECK(cmp.clear_agree * 1000 >= cmp.clear_rows * 999);
          CHECK_MESSAGE(cmp.r_log_error <= sc.log_tol,
                        "max |log r - log r_ref| = " << cmp.r_log_error);
          CHECK_MESSAGE(cmp.c_log_error <= sc.log_tol,
                        "max |log c - log c_ref| = " << cmp.c_log_error);
          // Marginals of the plan: rows are exact by construction (float32 dot rounding),
          // columns within what the stopping rule allows (mean row change 1e-6).
          CHECK(fast.row_marginal_error <= 1e-5);
          CHECK(fast.col_marginal_error <= 1e-3);
          CHECK(ref.row_marginal_error <= 1e-12);
          CHECK(ref.col_marginal_error <= 1e-3);
        }
      }
    }
  }
}

TEST_CASE("at large lambda the labels approach the exact equipartitioned assignment") {
  // N = 60 samples, K clusters, each used N/K times in the exact solution: a 60 x 60
  // assignment problem with cost −log p_ik and every cluster's column replicated N/K times.
  std::ostringstream log;
  for (std::int64_t k : {3, 4, 6, 10, 12}) {
    for (std::uint32_t seed = 1; seed <= 4; ++seed) {
      const std::int64_t n = 60, copies = n / k;
      auto z = random_logits(n, k, 1.0f, seed * 1000 + static_cast<std::uint32_t>(k));
      const std::vector<double> log_p = log_softmax(z, n, k);
      std::vector<double> cost(static_cast<std::size_t>(n * n));
      for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t col = 0; col < n; ++col) {
          cost[static_cast<std::size_t>(i * n + col)] =
              -log_p[static_cast<std::size_t>(i * k + col / copies)];
        }
      }
      std::vector<std::int64_t> columns = sela::solve_linear_assignment(cost.data(), n, n);
      double optimum_cost = 0.0;
      for (std::int64_t i = 0; i < n; ++i) {
        optimum_cost += cost[static_cast<std::size_t>(i * n + columns[static_cast<std::size_t>(i)])];
      }
      const double optimum = -optimum_cost;

      SinkhornOptions options = quiet_options(&log);
      options.lambda = 50.0;
      options.tol = 1e-4;
      options.max_iters = 200000;
      options.storage = SinkhornStorage::f32;
      SinkhornSolver solver(options);
      SinkhornResult fast = solver.solve(z.data(), n, k);
      SinkhornResult ref = sinkhorn_reference(z.data(), n, k, options);
      CAPTURE(k);
      CAPTURE(seed);
      CHECK(fast.converged);
      const double ours = objective(log_p, k, fast.labels);
      const double theirs = objective(log_p, k, ref.labels);
      // Tolerance: N log K / λ, the bound on how far the entropy term (1/λ)·H(Q) ≤ (N log K)/λ
      // in sample units can move the regularised optimum from the exact one (3 nats for
      // K = 12 against optima of −35 to −80 nats); the argmax rounding must stay inside it.
      // And the labels must be (nearly) equipartitioned: every cluster within ±2 of N/K.
      const double bound =
          static_cast<double>(n) * std::log(static_cast<double>(k)) / options.lambda;
      CHECK_MESSAGE(std::fabs(ours - optimum) <= bound, "ours " << ours << " optimum " << optimum);
      CHECK_MESSAGE(std::fabs(theirs - optimum) <= bound, "reference " << theirs);
      CHECK(fast.cluster_min >= copies - 2);
      CHECK(fast.cluster_max <= copies + 2);
      MESSAGE("K=" << k << " seed " << seed << ": optimum " << optimum << ", sinkhorn " << ours
                   << " (reference " << theirs << "), clusters " << fast.cluster_min << ".."
                   << fast.cluster_max << ", iterations " << fast.iterations);
      (void)columns;
    }
  }
}

TEST_CASE("NaN or Inf in the logits is an Error naming the head and the first bad row") {
  const std::int64_t n = 1000, k = 20;
  auto z = random_logits(n, k, 1.0f, 3);
  z[static_cast<std::size_t>(777 * k + 5)] = std::numeric_limits<float>::quiet_NaN();
  z[static_cast<std::size_t>(901 * k)] = std::numeric_limits<float>::infinity();
  std::ostringstream log;
  SinkhornSolver solver(quiet_options(&log));
  // In batches: the bad row is reported with its index in the whole data set.
  solver.begin_head(n, k, "head3");
  solver.append_logits(z.data(), 500);
  try {
    solver.append_logits(z.data() + 500 * k, 500);
    FAIL("no error for NaN");
  } catch (const sela::Error& e) {
    std::string what = e.what();
    CHECK(what.find("head3") != std::string::npos);
    CHECK(what.find("row 777") != std::string::npos);
  }
  CHECK_THROWS_AS(solver.solve(), sela::Error);  // the failed head cannot be solved
  z[static_cast<std::size_t>(777 * k + 5)] = 0.0f;
  try {
    solver.solve(z.data(), n, k, "head4");
    FAIL("no error for Inf");
  } catch (const sela::Error& e) {
    CHECK(std::string(e.what()).find("row 901") != std::string::npos);
    CHECK(std::string(e.what()).find("head4") != std::string::npos);
  }
  try {
    sinkhorn_reference(z.data(), n, k, quiet_options(&log), "head5");
    FAIL("no error in the reference");
  } catch (const sela::Error& e) {
    CHECK(std::string(e.what()).find("row 901") != std::string::npos);
  }
}

TEST_CASE("reaching the iteration cap is a warning with both marginal errors, never silent") {
  const std::int64_t n = 2000, k = 50;
  auto z = random_logits(n, k, 2.0f, 8);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.max_iters = 7;
  SinkhornSolver solver(options);
  SinkhornResult result = solver.solve(z.data(), n, k, "capped");
  CHECK_FALSE(result.converged);
  CHECK(result.iterations == 7);
  CHECK(result.warning.find("iteration cap") != std::string::npos);
  CHECK(result.warning.find("row marginal error") != std::string::npos);
  CHECK(result.warning.find("column marginal error") != std::string::npos);
  CHECK(result.warning.find("capped") != std::string::npos);
  CHECK(log.str().find(result.warning) != std::string::npos);  // also written to the log stream
  CHECK(result.col_marginal_error > 0.0);
  SinkhornResult ref = sinkhorn_reference(z.data(), n, k, options, "capped");
  CHECK_FALSE(ref.converged);
  CHECK(ref.iterations == 7);
  CHECK_FALSE(ref.warning.empty());
}

TEST_CASE("N < K, K = 1 and N = 1 are solved") {
  std::ostringstream log;
  for (SinkhornStorage storage :
       {SinkhornStorage::f32, SinkhornStorage::f16, SinkhornStorage::bf16}) {
    SinkhornOptions options = quiet_options(&log);
    options.storage = storage;
    SinkhornSolver solver(options);
    CAPTURE(storage_name(storage));
    {  // N < K: the plan spreads each row over about K/N clusters; most clusters stay empty.
      const std::int64_t n = 7, k = 40;
      auto z = random_logits(n, k, 1.0f, 21);
      SinkhornResult result = solver.solve(z.data(), n, k, "few");
      CHECK(result.converged);
      CHECK(result.clusters_empty >= k - n);
      for (std::int64_t label : result.labels) CHECK((label >= 0 && label < k));
      CHECK(result.row_marginal_error <= 1e-5);
      CHECK(result.col_marginal_error <= 0.1);  // tol 0.1 over only 7 rows is a loose rule
    }
    {  // K = 1: one cluster takes everything at once.
      const std::int64_t n = 33, k = 1;
      auto z = random_logits(n, k, 1.0f, 22);
      SinkhornResult result = solver.solve(z.data(), n, k, "one-cluster");
      CHECK(result.converged);
      CHECK(result.iterations == 1);
      CHECK(result.cluster_min == n);
      for (std::int64_t label : result.labels) CHECK(label == 0);
    }
    {  // N = 1: the single sample's plan is uniform over clusters; its label is a valid index.
      const std::int64_t n = 1, k = 9;
      auto z = random_logits(n, k, 1.0f, 23);
      SinkhornResult result = solver.solve(z.data(), n, k, "one-sample");
      CHECK(result.converged);
      REQUIRE(result.labels.size() == 1);
      CHECK(result.labels[0] >= 0);
      CHECK(result.labels[0] < k);
      CHECK(result.clusters_empty == k - 1);
    }
  }
}

TEST_CASE("memory plan: absurd sizes and the memory limit are clear Errors before allocating") {
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.verbose = 1;
  SinkhornSolver solver(options);
  CHECK_THROWS_AS(solver.begin_head(std::int64_t{1} << 40, std::int64_t{1} << 30), sela::Error);
  try {
    solver.begin_head(std::int64_t{4} << 30, 3000, "imagenet-ish");  // 4G x 3000 x 2 bytes: 24 TiB
    FAIL("no error");
  } catch (const sela::Error& e) {
    CHECK(std::string(e.what()).find("does not fit") != std::string::npos);
    CHECK(std::string(e.what()).find("imagenet-ish") != std::string::npos);
  }
  CHECK(log.str().find("memory plan") != std::string::npos);  // printed at verbose level
  options.memory_limit_bytes = 1 << 20;
  solver.set_options(options);
  CHECK_THROWS_AS(solver.begin_head(10000, 100), sela::Error);  // 2 MB of A > 1 MiB limit
  SinkhornMemoryPlan plan = solver.plan(1281167, 3000);
  CHECK(plan.matrix_bytes == 1281167ull * 3008ull * 2ull);
  CHECK(plan.describe().find("host memory") != std::string::npos);
  CHECK_THROWS_AS(sinkhorn_reference(nullptr, 0, 5, options), sela::Error);
}

// --device cuda without a GPU or a CUDA build: tests/assign/test_sinkhorn_device.cpp.

TEST_CASE("misuse of the batch API is an Error") {
  std::ostringstream log;
  SinkhornSolver solver(quiet_options(&log));
  auto z = random_logits(10, 4, 1.0f, 1);
  CHECK_THROWS_AS(solver.append_logits(z.data(), 10), sela::Error);  // no head begun
  CHECK_THROWS_AS(solver.solve(), sela::Error);
  solver.begin_head(10, 4, "h");
  solver.append_logits(z.data(), 6);
  CHECK_THROWS_AS(solver.solve(), sela::Error);                         // 6 of 10 rows
  CHECK_THROWS_AS(solver.append_logits(z.data(), 5), sela::Error);      // 11 > 10 rows
  CHECK_THROWS_AS(solver.set_options(SinkhornOptions{}), sela::Error);  // while filling
  solver.append_logits(z.data() + 24, 4);
  CHECK(solver.solve().labels.size() == 10);
  CHECK_THROWS_AS(solver.begin_head(0, 4), sela::Error);
  CHECK_THROWS_AS(solver.begin_head(4, 0), sela::Error);
  SinkhornOptions bad;
  bad.lambda = -1.0;
  CHECK_THROWS_AS(SinkhornSolver{bad}, sela::Error);
  CHECK_THROWS_AS(parse_storage("fp8"), sela::Error);
}

TEST_CASE("batches, at once, head reuse and repeated runs give bit-identical results") {
  const std::int64_t n = 5003, k = 70;
  auto z = random_logits(n, k, 1.0f, 77);
  auto other = random_logits(300, 1000, 1.0f, 78);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.storage = SinkhornStorage::bf16;
  SinkhornSolver solver(options);
  SinkhornResult at_once = solver.solve(z.data(), n, k, "h0");
  solver.solve(other.data(), 300, 1000, "h1");  // a head of another shape in between
  solver.begin_head(n, k, "h0");
  for (std::int64_t start = 0; start < n; start += 256)
    solver.append_logits(z.data() + start * k, std::min<std::int64_t>(256, n - start));
  SinkhornResult batched = solver.solve();
  SinkhornSolver fresh(options);
  SinkhornResult again = fresh.solve(z.data(), n, k, "h0");
  for (const SinkhornResult* other_result : {&batched, &again}) {
    CHECK(other_result->iterations == at_once.iterations);
    CHECK(other_result->labels == at_once.labels);
    CHECK(std::memcmp(other_result->r.data(), at_once.r.data(),
                      at_once.r.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(other_result->c.data(), at_once.c.data(),
                      at_once.c.size() * sizeof(double)) == 0);
  }
  // Another thread count changes the summation order only: same labels, r within 1e-6.
  const int saved = sela::cpu::num_threads();
  sela::cpu::set_num_threads(saved == 1 ? 2 : 1);
  SinkhornSolver single(options);
  SinkhornResult other_threads = single.solve(z.data(), n, k, "h0");
  sela::cpu::set_num_threads(saved);
  std::int64_t same = 0;
  for (std::int64_t i = 0; i < n; ++i)
    same += other_threads.labels[static_cast<std::size_t>(i)] ==
            at_once.labels[static_cast<std::size_t>(i)];
  CHECK(same * 1000 >= n * 999);
  for (std::int64_t j = 0; j < k; ++j) {
    CHECK(std::fabs(other_threads.r[static_cast<std::size_t>(j)] /
                        at_once.r[static_cast<std::size_t>(j)] -
                    1.0) <= 1e-5);
  }
}

TEST_CASE(
    "over-relaxation: fewer iterations, the same labels, and a safeguard that is never silent") {
  const std::int64_t n = 3000, k = 100;
  auto z = random_logits(n, k, 1.0f, 31);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.storage = SinkhornStorage::f32;
  options.tol = 1e-3;
  SinkhornSolver solver(options);
  SinkhornResult plain = solver.solve(z.data(), n, k);
  REQUIRE(plain.converged);
  options.over_relaxation = 1.4;
  solver.set_options(options);
  SinkhornResult relaxed = solver.solve(z.data(), n, k);
  CHECK(relaxed.converged);
  CHECK(relaxed.over_relaxation == 1.4);
  CHECK(relaxed.over_relaxation_stopped_at == -1);
  CHECK(relaxed.warning.empty());
  CHECK(relaxed.iterations < plain.iterations);
  // Both stop within the same tolerance of the same fixed point: the same labels.
  std::int64_t same = 0;
  for (std::int64_t i = 0; i < n; ++i)
    same +=
        relaxed.labels[static_cast<std::size_t>(i)] == plain.labels[static_cast<std::size_t>(i)];
  CHECK(same * 1000 >= n * 999);
  CHECK(relaxed.col_marginal_error <= 1e-3);
  CHECK(relaxed.row_marginal_error <= 1e-3);
  MESSAGE("plain " << plain.iterations << " iterations, omega 1.4: " << relaxed.iterations
                   << ", labels equal " << same << "/" << n);

  // Too large an omega diverges; the safeguard returns to plain steps and says so.
  options.over_relaxation = 1.95;
  solver.set_options(options);
  SinkhornResult unstable = solver.solve(z.data(), n, k);
  CHECK(unstable.converged);
  CHECK(unstable.over_relaxation_stopped_at >= 0);
  CHECK(unstable.warning.find("over-relaxation") != std::string::npos);
  CHECK(log.str().find("over-relaxation") != std::string::npos);
  same = 0;
  for (std::int64_t i = 0; i < n; ++i)
    same +=
        unstable.labels[static_cast<std::size_t>(i)] == plain.labels[static_cast<std::size_t>(i)];
  CHECK(same * 1000 >= n * 999);
  MESSAGE("omega 1.95: stopped at " << unstable.over_relaxation_stopped_at << ", "
                                    << unstable.iterations << " iterations");

  options.over_relaxation = 2.0;
  CHECK_THROWS_AS(solver.set_options(options), sela::Error);
  options.over_relaxation = 0.9;
  CHECK_THROWS_AS(solver.set_options(options), sela::Error);
}

TEST_CASE("over-relaxation whose r leaves float64's range between two checks: plain steps, "
          "the reference's answer") {
  // Spread-3 logits at K = 300 and omega 1.95 (found by a scan of spreads, seeds and
  // omegas): the relaxed r underflows to 0 a few passes after a check, before the next check
  // could see the error rise. Without the range test on every relaxed r (sinkhorn.cpp,
  // stop_relaxation) this solve threw "r_scale must be positive, got 0" (checked by
  // disabling it); with it the solve returns to the last checked r, goes on with plain
  // steps, and must give the float64 reference's answer.
  const std::int64_t n = 10000, k = 300;
  const auto z = random_logits(n, k, 3.0f, 78);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.lambda = 10.0;
  SinkhornResult ref = sinkhorn_reference(z.data(), n, k, options);
  REQUIRE(ref.converged);
  for (SinkhornStorage storage : {SinkhornStorage::bf16, SinkhornStorage::f32}) {
    CAPTURE(storage_name(storage));
    options.storage = storage;
    options.over_relaxation = 1.95;
    SinkhornSolver solver(options);
    const SinkhornResult result = solver.solve(z.data(), n, k, "h0");
    MESSAGE(std::string(storage_name(storage)) << ": stopped at " << result.over_relaxation_stopped_at
            << ", " << result.iterations << " iterations (reference " << ref.iterations << ")");
    CHECK(result.converged);
    CHECK(result.over_relaxation_stopped_at >= 0);
    CHECK(result.warning.find("over-relaxation") != std::string::npos);
    const Comparison cmp = compare(z, n, k, options.lambda, result, ref, 0.02);
    CHECK(cmp.clear_rows * 2 >= n);
    CHECK(cmp.clear_agree * 1000 >= cmp.clear_rows * 999);
    CHECK(result.col_marginal_error <= 1e-3);
    CHECK(result.row_marginal_error <= 1e-3);
  }
}

TEST_CASE("over-relaxation diverging through absorptions: the safeguard restores the checked "
          "potentials too, the reference's answer") {
  // A diverging relaxed r widens its range, which sets off absorptions (every other pass
  // here); when the safeguard then went back to the checked r, that r was rescaled into the
  // new A's units, r_check / r_now, a range as wide as the divergence (e^182 in one case),
  // and the next plain pass lost every row: "N rows lost all their mass". Seen on a GPU run
  // (K = 300, omega 1.8, cold start); the cases below are from a scan of clustered logits
  // (biases 2-6, seeds 1-30, omega 1.8-1.9): each threw that Error before the fix (checked
  // by reverting it), none of the 1,080 solves of the scan does after.
  for (const auto& c : sela::test::kDivergingRelaxationCases) {
    const std::int64_t k = 300;
    CAPTURE(c.n);
    CAPTURE(c.seed);
    const auto z = sela::test::clustered_logits(c.n, k, c.noise, c.bias, c.seed);
    std::ostringstream log;
    SinkhornOptions options = quiet_options(&log);
    options.lambda = 10.0;
    options.tol = 0.01;  // a tenth of the default, so that both marginals are within 1e-3
    options.max_iters = 20000;
    const SinkhornResult ref = sinkhorn_reference(z.data(), c.n, k, options);
    REQUIRE(ref.converged);
    options.over_relaxation = c.omega;
    SinkhornSolver solver(options);
    const SinkhornResult result = solver.solve(z.data(), c.n, k, "h0");
    MESSAGE("N " << c.n << ": stopped at " << result.over_relaxation_stopped_at << ", "
                 << result.absorptions << " absorptions, " << result.iterations
                 << " iterations (reference " << ref.iterations << "), column marginal error "
                 << result.col_marginal_error << " (reference " << ref.col_marginal_error << ")");
    CHECK(result.converged);
    CHECK(result.over_relaxation_stopped_at >= 0);
    CHECK(result.absorptions >= 2);  // the divergence's absorptions, then the restoring one
    const Comparison cmp = compare(z, c.n, k, options.lambda, result, ref, 0.02);
    CHECK(cmp.clear_rows * 2 >= c.n);
    CHECK(cmp.clear_agree * 1000 >= cmp.clear_rows * 999);
    CHECK(result.col_marginal_error <= 1e-3);
    CHECK(result.row_marginal_error <= 1e-3);

    // The same solve capped right after the safeguard: it stops there (the restored r and,
    // after an absorption since the check, G folded into A with no pass after them), not
    // converged, with a warning that says so, and labels of every row in range.
    options.max_iters = result.over_relaxation_stopped_at + 1;
    SinkhornSolver capped_solver(options);
    const SinkhornResult capped = capped_solver.solve(z.data(), c.n, k, "h0");
    MESSAGE("capped at " << options.max_iters << ": " << capped.absorptions
                         << " absorptions, the last at " << capped.last_absorption_at);
    CHECK_FALSE(capped.converged);
    CHECK(capped.iterations == options.max_iters);
    CHECK(capped.last_absorption_at == options.max_iters);  // the restoring one, at the cap
    CHECK(capped.over_relaxation_stopped_at == result.over_relaxation_stopped_at);
    CHECK(capped.warning.find("cap") != std::string::npos);
    REQUIRE(capped.labels.size() == static_cast<std::size_t>(c.n));
    for (std::int64_t label : capped.labels) CHECK((label >= 0 && label < k));
  }
}

namespace {

// N(0, 1) logits plus `lean` on one cluster per sample, drawn with weights decay^j.
std::vector<float> leaning_logits(std::int64_t n, std::int64_t k, double decay, float lean,
                                  std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<double> weights(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j) weights[static_cast<std::size_t>(j)] = std::pow(decay, j);
  std::discrete_distribution<std::int64_t> pick(weights.begin(), weights.end());
  std::vector<float> z(static_cast<std::size_t>(n * k));  // (N, K)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t cluster = pick(gen);
    for (std::int64_t j = 0; j < k; ++j)
      z[static_cast<std::size_t>(i * k + j)] = noise(gen) + (j == cluster ? lean : 0.0f);
  }
  return z;
}

// Confident logits like a trained network's: 12·onehot(class) + N(0, 1) noise, with an
// imbalanced class distribution (class j drawn with probability ∝ 0.7^j), so that the
// unpopular clusters need r_k ~ e^80 to attract their N/K samples while λ(z − max) of
// most entries lies below float32's range.
std::vector<float> peaked_logits(std::int64_t n, std::int64_t k, float peak, std::uint32_t seed) {
  return leaning_logits(n, k, 0.7, peak, seed);
}

}  // namespace

namespace {

// Fast path vs reference on peaked logits, every storage.
void check_peaked(const std::vector<float>& z, std::int64_t n, std::int64_t k, double lambda,
                  std::int64_t min_absorptions) {
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.lambda = lambda;
  options.max_iters = 20000;  // the scaling travels far: more iterations than usual
  SinkhornResult ref = sinkhorn_reference(z.data(), n, k, options);
  MESSAGE("reference: " << ref.iterations << " iterations, converged " << ref.converged
                        << ", col err " << ref.col_marginal_error << ", clusters "
                        << ref.cluster_min << "/" << ref.cluster_max);
  REQUIRE(ref.converged);
  REQUIRE(ref.warning.empty());
  for (SinkhornStorage storage :
       {SinkhornStorage::f32, SinkhornStorage::bf16, SinkhornStorage::f16}) {
    options.storage = storage;
    SinkhornSolver solver(options);
    SinkhornResult fast = solver.solve(z.data(), n, k);
    Comparison cmp = compare(z, n, k, lambda, fast, ref, 0.02);
    const std::string name = storage_name(storage);
    CAPTURE(name);
    MESSAGE(name << ": " << fast.iterations << " iterations (ref " << ref.iterations
                 << "), converged " << fast.converged << ", absorptions " << fast.absorptions
                 << " (last before iteration " << fast.last_absorption_at << "), clear "
                 << cmp.clear_rows << " agree " << cmp.clear_agree << ", all agree "
                 << cmp.all_agree << ", col err " << fast.col_marginal_error << ", floor mass "
                 << fast.floor_mass << ", log r err " << cmp.r_log_error);
    CHECK(fast.converged);  // no cap reached
    CHECK(fast.warning.empty());
    CHECK(fast.absorptions >= min_absorptions);
    CHECK(fast.floor_mass <= kSinkhornFloorMassWarning);
    CHECK(cmp.clear_rows * 2 >= n);  // the test has rows to judge
    CHECK(cmp.clear_agree * 1000 >= cmp.clear_rows * 999);
    // Both marginals: rows exact by construction, columns within what tol allows (as the
    // reference's own error, 1e-4 here).
    CHECK(fast.row_marginal_error <= 1e-5);
    CHECK(fast.col_marginal_error <= 1e-3);
    CHECK(ref.col_marginal_error <= 1e-3);
  }
}

}  // namespace

TEST_CASE("peaked logits: without absorption the storage floor limits the answer, and says so") {
  // The problem as met in training: λ(z − max) below float32's range for most entries.
  const std::int64_t n = 6000, k = 10;
  const double lambda = 10.0;
  auto z = peaked_logits(n, k, 12.0f, 2024);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.lambda = lambda;
  options.absorb = false;
  SinkhornResult ref = sinkhorn_reference(z.data(), n, k, options);
  REQUIRE(ref.converged);
  SinkhornSolver solver(options);
  SinkhornResult plain = solver.solve(z.data(), n, k);
  Comparison cmp = compare(z, n, k, lambda, plain, ref, 0.02);
  MESSAGE("absorb off, bf16: floor mass " << plain.floor_mass << ", clear " << cmp.clear_rows
                                          << " agree " << cmp.clear_agree);
  CHECK(plain.absorptions == 0);
  CHECK(plain.floor_mass > kSinkhornFloorMassWarning);
  CHECK(plain.warning.find("below the range of storage bf16") != std::string::npos);
  CHECK(plain.warning.find("enable absorption") != std::string::npos);
  CHECK(log.str().find("below the range of storage") != std::string::npos);
  CHECK(cmp.clear_agree * 10 < cmp.clear_rows * 9);  // far from the reference's labels
}

TEST_CASE("peaked logits: with absorption the fast path matches the float64 reference") {
  // 12·onehot: the unpopular clusters need r ~ e^80: one or two absorptions.
  check_peaked(peaked_logits(6000, 10, 12.0f, 2024), 6000, 10, 10.0, 1);
}

TEST_CASE("very peaked logits need several absorptions and still match the reference") {
  // 30·onehot at λ = 10: p^λ spans e^-300 (float64 still holds it); the scaling has to
  // travel e^200 or more, a few times the e^69 that one stored A can hold.
  check_peaked(peaked_logits(4000, 12, 30.0f, 7), 4000, 12, 10.0, 3);
}

TEST_CASE("absorption: batches, at once and repeated runs give bit-identical results") {
  const std::int64_t n = 3001, k = 10;
  auto z = peaked_logits(n, k, 12.0f, 99);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.lambda = 10.0;
  SinkhornSolver solver(options);
  SinkhornResult at_once = solver.solve(z.data(), n, k, "h0");  // reads the caller's logits
  REQUIRE(at_once.absorptions >= 1);
  CHECK(at_once.warning.empty());
  solver.begin_head(n, k, "h0");  // the batch API keeps its own copy of the logits
  std::vector<float> batch;
  for (std::int64_t start = 0; start < n; start += 256) {
    const std::int64_t rows = std::min<std::int64_t>(256, n - start);
    batch.assign(z.begin() + start * k, z.begin() + (start + rows) * k);
    solver.append_logits(batch.data(), rows);
    std::fill(batch.begin(), batch.end(), std::nanf(""));  // the caller reuses its buffer
  }
  SinkhornResult batched = solver.solve();
  SinkhornSolver fresh(options);
  SinkhornResult again = fresh.solve(z.data(), n, k, "h0");
  for (const SinkhornResult* other : {&batched, &again}) {
    CHECK(other->absorptions == at_once.absorptions);
    CHECK(other->iterations == at_once.iterations);
    CHECK(other->labels == at_once.labels);
    CHECK(std::memcmp(other->r.data(), at_once.r.data(), at_once.r.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(other->c.data(), at_once.c.data(), at_once.c.size() * sizeof(double)) == 0);
  }
  // The memory plan counts the copy the batch API keeps (and nothing without absorption).
  SinkhornMemoryPlan plan = solver.plan(n, k);
  CHECK(plan.logits_bytes >= static_cast<std::uint64_t>(n * k) * sizeof(float));
  CHECK(plan.total_bytes ==
        plan.matrix_bytes + plan.vector_bytes + plan.workspace_bytes + plan.logits_bytes);
  CHECK(plan.describe().find("copy of the logits") != std::string::npos);
  options.absorb = false;
  solver.set_options(options);
  CHECK(solver.plan(n, k).logits_bytes == 0);
}

// ---- warm start (SinkhornSolver::warm_start) --------------------------------------------------

namespace {

using sela::test::nudged;

// Solves `before`, then `after` cold and warm-started from the first answer's r, and checks
// the warm answer against the float64 reference on `after` (labels on clear rows, r, both
// marginals). Returns {cold, warm} iteration counts.
std::pair<std::int64_t, std::int64_t> check_warm_start(const std::vector<float>& before,
                                                       const std::vector<float>& after,
                                                       std::int64_t n, std::int64_t k,
                                                       SinkhornStorage storage, double omega,
                                                       std::int64_t min_absorptions,
                                                       double r_log_tol) {
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.lambda = 10.0;
  options.tol = 1e-5 * static_cast<double>(n);  // tight, so that r can be compared
  options.max_iters = 20000;
  SinkhornResult ref = sinkhorn_reference(after.data(), n, k, options);
  REQUIRE(ref.converged);
  options.storage = storage;
  options.over_relaxation = omega;
  SinkhornSolver solver(options);
  const SinkhornResult previous = solver.solve(before.data(), n, k, "h0");
  REQUIRE(previous.converged);
  const SinkhornResult cold = solver.solve(after.data(), n, k, "h0");
  solver.warm_start(previous.r);
  const SinkhornResult warm = solver.solve(after.data(), n, k, "h0");
  Comparison cmp = compare(after, n, k, options.lambda, warm, ref, 0.02);
  MESSAGE("N=" << n << " K=" << k << " " << std::string(storage_name(storage)) << " omega " << omega
               << ": cold " << cold.iterations << " iterations, warm " << warm.iterations
               << " (absorptions " << warm.absorptions << "), clear " << cmp.clear_rows
               << " agree " << cmp.clear_agree << ", log r err " << cmp.r_log_error
               << ", col err " << warm.col_marginal_error);
  CHECK_FALSE(cold.warm_started);
  CHECK(warm.warm_started);
  CHECK(warm.converged);
  CHECK(warm.warning.empty());
  CHECK(warm.absorptions >= min_absorptions);
  CHECK(cmp.clear_rows * 2 >= n);
  CHECK(cmp.clear_agree * 1000 >= cmp.clear_rows * 999);
  // Another path to the same stopping rule: r within the convergence error (the cold
  // solve's path is the reference's, which the first test case compares to 1e-4). Where
  // clusters hold a dozen samples (K = 300 here) r is loosely determined: no bound.
  if (r_log_tol > 0) CHECK(cmp.r_log_error <= r_log_tol);
  // Rows exact by construction without over-relaxation (with it, c is a relaxed step's).
  CHECK(warm.row_marginal_error <= (omega == 1.0 ? 1e-5 : 1e-3));
  CHECK(warm.col_marginal_error <= 1e-3);
  // The warm start is consumed: the next solve starts cold again, bit for bit.
  const SinkhornResult again = solver.solve(after.data(), n, k, "h0");
  CHECK_FALSE(again.warm_started);
  CHECK(again.iterations == cold.iterations);
  CHECK(again.labels == cold.labels);
  CHECK(std::memcmp(again.r.data(), cold.r.data(), cold.r.size() * sizeof(double)) == 0);
  return {cold.iterations, warm.iterations};
}

}  // namespace

TEST_CASE("warm start from the previous answer: the reference's answer in fewer passes") {
  // Logits like a trained head's (K = 300, the large heads' size): each sample leans to a
  // cluster, drawn with weights 0.99^j (the last cluster e^-3 as likely as the first), so
  // the scaling has far to travel from the reference's start; the next step nudged by 0.05
  // (λ · 0.05 = 0.5 nats per entry: a noise of 0.2 leaves nothing to gain, 251 / 241).
  const std::int64_t n = 4000, k = 300;
  const auto before = leaning_logits(n, k, 0.99, 5.0f, 4242);
  const auto after = nudged(before, 0.05f, 4243);
  for (SinkhornStorage storage : {SinkhornStorage::f32, SinkhornStorage::bf16}) {
    for (double omega : {1.0, 1.4, 1.8}) {
      CAPTURE(storage_name(storage));
      CAPTURE(omega);
      const auto [cold, warm] = check_warm_start(before, after, n, k, storage, omega, 0, -1.0);
      // At least a quarter fewer (measured: 171 / 261, 81 / 151, 41 / 71 for omega 1, 1.4, 1.8).
      CHECK(warm * 4 <= cold * 3);
    }
  }
}

TEST_CASE("warm start with a scaling spanning e^80: absorbed at once, the reference's answer") {
  // Peaked, imbalanced logits (the first absorption case above): r spans about e^80, beyond
  // what a stored A holds, so the warm r must be folded into A before the first pass.
  const std::int64_t n = 6000, k = 10;
  const auto before = peaked_logits(n, k, 12.0f, 2024);
  const auto after = nudged(before, 0.3f, 2025);
  for (double omega : {1.0, 1.4, 1.8}) {
    CAPTURE(omega);
    const auto [cold, warm] =
        check_warm_start(before, after, n, k, SinkhornStorage::f32, omega, 1, 2e-2);
    CHECK(warm * 2 <= cold);  // measured: 541 / 1201, 251 / 1211, 61 / 1211 (omega 1, 1.4, 1.8)
  }
}

TEST_CASE("warm start from a converged r of the same logits stops at the first check") {
  const std::int64_t n = 3000, k = 50;
  const auto z = random_logits(n, k, 2.0f, 515);
  std::ostringstream log;
  SinkhornOptions options = quiet_options(&log);
  options.lambda = 10.0;
  options.tol = 1e-4 * static_cast<double>(n);
  SinkhornSolver solver(options);
  const SinkhornResult first = solver.solve(z.data(), n, k);
  REQUIRE(first.converged);
  REQUIRE(first.iterations > 2 * options.check_every);
  solver.warm_start(first.r);
  const SinkhornResult warm = solver.solve(z.data(), n, k);
  CHECK(warm.converged);
  // Iteration 0 is not measured (c_0 is a placeholder), so the first check is at 10.
  CHECK(warm.iterations == options.check_every + 1);
  std::int64_t same = 0;
  for (std::int64_t i = 0; i < n; ++i)
    same += warm.labels[static_cast<std::size_t>(i)] == first.labels[static_cast<std::size_t>(i)];
  CHECK(same * 1000 >= n * 999);
}

TEST_CASE("warm start misuse is an Error that names what is wrong, and the solver recovers") {
  const std::int64_t n = 500, k = 20;
  const auto z = random_logits(n, k, 1.0f, 9);
  std::ostringstream log;
  SinkhornSolver solver(quiet_options(&log));
  const SinkhornResult cold = solver.solve(z.data(), n, k, "h7");
  auto message_of = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const sela::Error& e) {
      return e.what();
    }
    return "";
  };
  std::vector<double> wrong_size(static_cast<std::size_t>(k + 1), 1.0);
  solver.warm_start(wrong_size);
  const std::string size_error = message_of([&] { solver.solve(z.data(), n, k, "h7"); });
  CHECK(size_error.find("head 'h7'") != std::string::npos);
  CHECK(size_error.find("21 values") != std::string::npos);
  CHECK(size_error.find("K = 20") != std::string::npos);
  std::vector<double> bad = cold.r;
  bad[3] = -1.0;
  CHECK(message_of([&] { solver.warm_start(bad); }).find("r[3]") != std::string::npos);
  bad[3] = std::numeric_limits<double>::quiet_NaN();
  CHECK(message_of([&] { solver.warm_start(bad); }).find("r[3]") != std::string::npos);
  // After the errors nothing is pending: the next solve is the cold one, bit for bit.
  const SinkhornResult after = solver.solve(z.data(), n, k, "h7");
  CHECK_FALSE(after.warm_started);
  CHECK(after.labels == cold.labels);
  CHECK(after.iterations == cold.iterations);
  // An empty r cancels a pending warm start.
  solver.warm_start(cold.r);
  solver.warm_start({});
  CHECK_FALSE(solver.solve(z.data(), n, k, "h7").warm_started);
  // With the batch API a warm start may also come between begin_head and solve.
  solver.begin_head(n, k, "h7");
  solver.append_logits(z.data(), n);
  solver.warm_start(cold.r);
  const SinkhornResult batch_warm = solver.solve();
  CHECK(batch_warm.warm_started);
  CHECK(batch_warm.converged);
  // A solve that fails before iterating (NaN logits) drops its warm start with it.
  std::vector<float> broken = z;
  broken[5] = std::nanf("");
  solver.warm_start(cold.r);
  CHECK(message_of([&] { solver.solve(broken.data(), n, k, "h7"); }).find("NaN") !=
        std::string::npos);
  CHECK_FALSE(solver.solve(z.data(), n, k, "h7").warm_started);
  // Without absorption an r beyond float32's range cannot be used.
  SinkhornOptions plain = quiet_options(&log);
  plain.absorb = false;
  SinkhornSolver plain_solver(plain);
  std::vector<double> wide(static_cast<std::size_t>(k), 1.0);
  wide[0] = std::exp(-100.0);
  wide[1] = std::exp(100.0);
  plain_solver.warm_start(wide);
  const std::string range_error = message_of([&] { plain_solver.solve(z.data(), n, k, "h8"); });
  CHECK(range_error.find("head 'h8'") != std::string::npos);
  CHECK(range_error.find("absorption") != std::string::npos);
  CHECK(plain_solver.solve(z.data(), n, k, "h8").converged);  // nothing left pending
}
