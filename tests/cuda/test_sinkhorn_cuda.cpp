// Tests of the CUDA Sinkhorn kernels (sela/assign/sinkhorn_cuda.cuh) and of the solver's
// CUDA path (SinkhornSolver with options.device cuda) against the CPU fast path
// (sela/assign/sinkhorn_cpu.h, SinkhornSolver on the CPU), on a GPU; skipped by name
// without one.
//
// Inputs are fresh random logits (never zeros); device outputs are poisoned (all-ones
// bytes: NaN for floats, -1 for integers) and host reference outputs filled with NaN before
// each call; every comparison is atol + rtol·|ref| with the reason stated next to it, and
// NaN/Inf in an output fails it. Shapes cover both fused configurations (K ≤ 4096 and
// K ≤ 6144 for 16-bit storage) and the wide fallback (K = 9000; f32 from K = 3073), N < K,
// K = 1 and N = 1.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "sela/assign/sinkhorn.h"
#include "sela/assign/sinkhorn_cpu.h"
#include "sela/assign/sinkhorn_cuda.cuh"
#include "tests/cuda/cuda_test_support.h"
#include "tests/assign/sinkhorn_test_logits.h"

namespace {

namespace kc = sela::assign::cuda;
using sela::assign::BFloat16;
using sela::assign::Half;
using sela::assign::SinkhornOptions;
using sela::assign::SinkhornResult;
using sela::assign::SinkhornSolver;
using sela::assign::SinkhornStorage;
using sela::test::check_close;
using sela::test::check_identical;
using sela::test::DeviceBuffer;
using sela::test::poisoned;
using sela::test::TestStream;
using sela::test::Tolerance;

using sela::test::clustered_logits;
using sela::test::nudged;
using sela::test::random_logits;

// Confident, unbalanced logits like a trained network's (tools/bench/sinkhorn_numpy.py
// --peak): peak·onehot(class) + N(0, 1), the class j drawn ∝ imbalance^(−j/(K−1)).
std::vector<float> peaked_logits(std::int64_t n, std::int64_t k, float peak, double imbalance,
                                 std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<double> weights(static_cast<std::size_t>(k));
  for (std::int64_t j = 0; j < k; ++j)
    weights[static_cast<std::size_t>(j)] = std::pow(
        imbalance, -static_cast<double>(j) / static_cast<double>(std::max<std::int64_t>(k - 1, 1)));
  std::discrete_distribution<std::int64_t> pick(weights.begin(), weights.end());
  std::vector<float> z(static_cast<std::size_t>(n * k));
  for (float& v : z) v = normal(gen);
  for (std::int64_t i = 0; i < n; ++i) z[static_cast<std::size_t>(i * k + pick(gen))] += peak;
  return z;
}

template <typename Store>
const char* store_name() {
  if (std::is_same<Store, float>::value) return "f32";
  if (std::is_same<Store, Half>::value) return "f16";
  return "bf16";
}

template <typename Store>
float load(Store value) {
  return sela::assign::sinkhorn_load(value);
}

// The bit pattern of a stored value, widened (positive values: the distance in ulps).
template <typename Store>
std::int64_t bits_of(Store value) {
  if constexpr (std::is_same<Store, float>::value) {
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return bits;
  } else {
    return value.bits;
  }
}

template <typename Store>
std::vector<Store> nan_store(std::int64_t count) {
  Store poison;
  std::memset(&poison, 0xFF, sizeof(poison));
  return std::vector<Store>(static_cast<std::size_t>(count), poison);
}

// Two stored A (n, stride) agree to `max_ulps` (16-bit: 1, a rounding tie of float32 values
// that differ in their last bit; f32: 4, where the CPU's scalar path uses std::exp instead of
// the shared polynomial); padding exactly 0 in both; every value finite.
template <typename Store>
void check_stored(const std::vector<Store>& got, const std::vector<Store>& want, std::int64_t n,
                  std::int64_t k, std::int64_t stride, std::int64_t max_ulps,
                  const std::string& what) {
  INFO(what << ": A within " << max_ulps << " ulp of the storage");
  REQUIRE(got.size() == want.size());
  std::int64_t bad = 0, nonfinite = 0, worst = 0, first = -1;
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < stride; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * stride + j);
      const float g = load(got[at]), w = load(want[at]);
      if (!std::isfinite(g) || !std::isfinite(w)) {
        ++nonfinite;
        if (first < 0) first = static_cast<std::int64_t>(at);
        continue;
      }
      const std::int64_t ulps = std::llabs(bits_of(got[at]) - bits_of(want[at]));
      const bool padding_ok = j < k || (g == 0.0f && w == 0.0f);
      worst = std::max(worst, ulps);
      if (ulps > max_ulps || !padding_ok) {
        ++bad;
        if (first < 0) first = static_cast<std::int64_t>(at);
      }
    }
  }
  INFO("first offending index " << first << ", worst " << worst << " ulp");
  CHECK_MESSAGE(nonfinite == 0, nonfinite << " values are NaN/Inf");
  CHECK_MESSAGE(bad == 0, bad << " values differ by more than " << max_ulps << " ulp");
}

template <typename Store>
std::int64_t max_store_ulps() {
  return std::is_same<Store, float>::value ? 4 : 1;
}

std::string shape_tag(std::int64_t n, std::int64_t k, const char* storage) {
  return " (n = " + std::to_string(n) + ", k = " + std::to_string(k) + ", " + storage + ")";
}

// ---- store -----------------------------------------------------------------------------------

template <typename Store>
void check_store(std::int64_t n, std::int64_t k, float lambda, float spread, std::uint32_t seed) {
  TestStream stream;
  const std::string tag =
      shape_tag(n, k, store_name<Store>()) + " lambda " + std::to_string(lambda);
  const std::int64_t stride = sela::assign::sinkhorn_row_stride(k);
  const auto z = random_logits(n, k, spread, seed);
  auto want = nan_store<Store>(n * stride);
  auto want_mass = sela::test::nan_vector<float>(n);
  REQUIRE(sela::assign::sinkhorn_store_rows<Store>(z.data(), n, k, lambda, want.data(), stride,
                                                   want_mass.data()) == -1);

  DeviceBuffer<float> dz(z);
  auto da = poisoned<Store>(n * stride);
  auto dmass = poisoned<float>(n);
  auto dbad = poisoned<unsigned long long>(1);  // all ones: ULLONG_MAX, no bad row yet
  kc::sinkhorn_store_rows<Store>(dz.data(), n, k, lambda, da.data(), stride, dmass.data(), 0,
                                 dbad.data(), stream);
  stream.sync();
  check_stored(da.download(), want, n, k, stride, max_store_ulps<Store>(), "store" + tag);
  // log Σ exp(z − max) in float, summed in another order: a few float ulps of a sum of up
  // to k terms ≥ 1.
  check_close(dmass.download(), want_mass, Tolerance{2e-6, 1e-5}, "row log-mass" + tag);
  CHECK(dbad.download()[0] == ULLONG_MAX);
}

SELA_CUDA_TEST("store kernel matches the CPU store for every storage", test_store) {
  for (std::int64_t k : {1, 10, 100, 1000, 3000, 9000}) {
    const std::int64_t n = k >= 3000 ? 64 : 300;
    for (float lambda : {1.0f, 25.0f}) {
      check_store<float>(n, k, lambda, 2.0f, 11);
      check_store<Half>(n, k, lambda, 2.0f, 12);
      check_store<BFloat16>(n, k, lambda, 0.5f, 13);
    }
  }
}

SELA_CUDA_TEST("store kernel reports the first row holding NaN or Inf, over batches",
               test_store_bad_rows) {
  TestStream stream;
  const std::int64_t n = 400, k = 33, stride = sela::assign::sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 1.0f, 21);
  z[static_cast<std::size_t>(250 * k + 5)] = std::nanf("");
  z[static_cast<std::size_t>(130 * k + 32)] = INFINITY;
  z[static_cast<std::size_t>(390 * k)] = -INFINITY;
  DeviceBuffer<float> dz(z);
  auto da = poisoned<BFloat16>(n * stride);
  auto dbad = poisoned<unsigned long long>(1);
  // Two batches, as append_logits makes them: rows [0, 200) and [200, 400).
  kc::sinkhorn_store_rows<BFloat16>(dz.data(), 200, k, 25.0f, da.data(), stride, nullptr, 0,
                                    dbad.data(), stream);
  kc::sinkhorn_store_rows<BFloat16>(dz.data() + 200 * k, 200, k, 25.0f, da.data() + 200 * stride,
                                    stride, nullptr, 200, dbad.data(), stream);
  stream.sync();
  CHECK(dbad.download()[0] == 130);
}

template <typename Store>
void check_store_absorbed(std::int64_t n, std::int64_t k, std::uint32_t seed) {
  TestStream stream;
  const std::string tag = shape_tag(n, k, store_name<Store>());
  const std::int64_t stride = sela::assign::sinkhorn_row_stride(k);
  const auto z = random_logits(n, k, 3.0f, seed);
  std::mt19937 gen(seed + 1);
  std::uniform_real_distribution<float> potential(-40.0f, 0.0f);
  std::vector<float> g(static_cast<std::size_t>(stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j) g[static_cast<std::size_t>(j)] = potential(gen);
  auto want = nan_store<Store>(n * stride);
  auto want_shift = sela::test::nan_vector<double>(n);
  sela::assign::sinkhorn_store_rows_absorbed<Store>(z.data(), n, k, 10.0f, g.data(), want.data(),
                                                    stride, want_shift.data());
  DeviceBuffer<float> dz(z), dg(g);
  auto da = poisoned<Store>(n * stride);
  auto dshift = poisoned<double>(n);
  kc::sinkhorn_store_rows_absorbed<Store>(dz.data(), n, k, 10.0f, dg.data(), da.data(), stride,
                                          dshift.data(), stream);
  stream.sync();
  check_stored(da.download(), want, n, k, stride, max_store_ulps<Store>(), "absorbed store" + tag);
  // The row shift is a maximum of the same float values: exact.
  check_close(dshift.download(), want_shift, Tolerance{0.0, 0.0}, "row shift" + tag);
}

SELA_CUDA_TEST("absorbed store kernel matches the CPU for every storage", test_store_absorbed) {
  for (std::int64_t k : {1, 50, 1000, 7000}) {
    check_store_absorbed<float>(200, k, 31);
    check_store_absorbed<Half>(200, k, 32);
    check_store_absorbed<BFloat16>(200, k, 33);
  }
}

// ---- column sums, pass, labels --------------------------------------------------------------

// A stored A, r_rel, c for one (n, k) and storage, on both sides.
template <typename Store>
struct PassInputs {
  std::int64_t n, k, stride;
  std::vector<Store> a;      // (n, stride)
  std::vector<float> r_rel;  // (stride), padding 0
  std::vector<double> c;     // (n) > 0
  double r_scale;
};

template <typename Store>
PassInputs<Store> make_pass_inputs(std::int64_t n, std::int64_t k, std::uint32_t seed) {
  PassInputs<Store> in;
  in.n = n;
  in.k = k;
  in.stride = sela::assign::sinkhorn_row_stride(k);
  const auto z = random_logits(n, k, 1.0f, seed);
  in.a.resize(static_cast<std::size_t>(n * in.stride));
  REQUIRE(sela::assign::sinkhorn_store_rows<Store>(z.data(), n, k, 4.0f, in.a.data(), in.stride,
                                                   nullptr) == -1);
  std::mt19937 gen(seed + 7);
  std::uniform_real_distribution<float> r(0.25f, 4.0f);
  std::uniform_real_distribution<double> c(0.5, 2.0);
  in.r_rel.assign(static_cast<std::size_t>(in.stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j) in.r_rel[static_cast<std::size_t>(j)] = r(gen);
  in.c.resize(static_cast<std::size_t>(n));
  for (double& v : in.c) v = c(gen) / static_cast<double>(n);
  in.r_scale = 0.37;
  return in;
}

template <typename Store>
void check_column_sums(std::int64_t n, std::int64_t k, std::uint32_t seed) {
  TestStream stream;
  const std::string tag = shape_tag(n, k, store_name<Store>());
  const auto in = make_pass_inputs<Store>(n, k, seed);
  std::vector<double> weights = in.c;
  for (std::int64_t i = 0; i < n; i += 7)
    weights[static_cast<std::size_t>(i)] = 0.0;  // skipped rows
  std::vector<double> cpu_workspace(
      sela::assign::sinkhorn_workspace_bytes(n, in.stride) / sizeof(double) + 1);
  auto want = sela::test::nan_vector<double>(k);
  sela::assign::sinkhorn_column_sums<Store>(in.a.data(), n, k, in.stride, weights.data(),
                                            cpu_workspace.data(),
                                            cpu_workspace.size() * sizeof(double), want.data());
  DeviceBuffer<Store> da(in.a);
  DeviceBuffer<double> dw(weights);
  const std::size_t bytes = kc::sinkhorn_workspace_bytes<Store>(n, k, 0);
  DeviceBuffer<char> workspace(static_cast<std::int64_t>(bytes));
  workspace.poison();
  auto got = poisoned<double>(k);
  kc::sinkhorn_column_sums<Store>(da.data(), n, k, in.stride, dw.data(), workspace.data(), bytes,
                                  got.data(), stream);
  stream.sync();
  // Both sum float values times double weights in double, in different orders: the
  // rounding of a double sum of n terms.
  check_close(got.download(), want, Tolerance{1e-300, 1e-12}, "column sums" + tag);
}

SELA_CUDA_TEST("column sums kernel matches the CPU in float64", test_column_sums) {
  check_column_sums<float>(1, 1, 41);
  check_column_sums<BFloat16>(1000, 100, 42);
  check_column_sums<Half>(517, 1000, 43);
  check_column_sums<float>(300, 3000, 44);
  check_column_sums<BFloat16>(70, 9000, 45);
}

template <typename Store>
void check_pass_and_labels(std::int64_t n, std::int64_t k, double omega, std::uint32_t seed) {
  TestStream stream;
  const std::string tag = shape_tag(n, k, store_name<Store>()) + " omega " + std::to_string(omega);
  const auto in = make_pass_inputs<Store>(n, k, seed);
  const std::int64_t n_total = n + 5;  // a chunk of a larger problem, as the API allows

  // CPU pass.
  std::vector<double> cpu_workspace(
      sela::assign::sinkhorn_workspace_bytes(n, in.stride) / sizeof(double) + 1);
  std::vector<double> want_c = in.c;
  auto want_sums = sela::test::nan_vector<double>(k);
  std::int64_t want_bad = -1;
  const double want_change = sela::assign::sinkhorn_pass<Store>(
      in.a.data(), n, k, in.stride, n_total, in.r_rel.data(), in.r_scale, omega, want_c.data(),
      want_sums.data(), true, cpu_workspace.data(), cpu_workspace.size() * sizeof(double),
      &want_bad);
  REQUIRE(want_bad == 0);

  // GPU pass.
  DeviceBuffer<Store> da(in.a);
  DeviceBuffer<float> dr(in.r_rel);
  DeviceBuffer<double> dscale(std::vector<double>{in.r_scale}), domega(std::vector<double>{omega});
  DeviceBuffer<double> dc(in.c);
  auto dsums = poisoned<double>(k);
  auto dtotals = poisoned<kc::SinkhornPassTotals>(1);
  const std::size_t bytes = kc::sinkhorn_workspace_bytes<Store>(n, k, 0);
  DeviceBuffer<char> workspace(static_cast<std::int64_t>(bytes));
  workspace.poison();
  kc::sinkhorn_pass<Store>(da.data(), n, k, in.stride, n_total, dr.data(), dscale.data(),
                           domega.data(), dc.data(), dsums.data(), true, workspace.data(), bytes,
                           dtotals.data(), nullptr, stream);
  stream.sync();
  const auto got_c = dc.download();
  // Each row's dot is a float sum of k products in another order (a few float ulps): c
  // and the weights follow it; the column sums add n of them.
  check_close(got_c, want_c, Tolerance{0.0, 5e-6}, "pass c" + tag);
  check_close(dsums.download(), want_sums, Tolerance{1e-300, 5e-6}, "pass column sums" + tag);
  const kc::SinkhornPassTotals totals = dtotals.download()[0];
  CHECK(totals.bad_rows == 0);
  // Σ_i |c_i/c_new_i − 1| over terms of order 1: the same relative error.
  check_close(std::vector<double>{totals.change}, std::vector<double>{want_change},
              Tolerance{1e-12, 1e-5}, "pass change" + tag);
  check_close(std::vector<double>{totals.c_max},
              std::vector<double>{*std::max_element(want_c.begin(), want_c.end())},
              Tolerance{0.0, 5e-6}, "pass max c" + tag);

  // Labels with the new c, on both sides.
  std::vector<std::int64_t> want_labels(static_cast<std::size_t>(n), -7);
  double want_floor = std::nan("");
  const double want_row_error = sela::assign::sinkhorn_labels<Store>(
      in.a.data(), n, k, in.stride, n_total, in.r_rel.data(), in.r_scale, want_c.data(),
      want_labels.data(), &want_floor);
  auto dlabels = poisoned<std::int64_t>(n);
  auto dlabel_totals = poisoned<kc::SinkhornLabelTotals>(1);
  DeviceBuffer<double> dc_cpu(want_c);  // the CPU's c, so that the row error compares alone
  kc::sinkhorn_labels<Store>(da.data(), n, k, in.stride, n_total, dr.data(), dscale.data(),
                             dc_cpu.data(), dlabels.data(), workspace.data(), bytes,
                             dlabel_totals.data(), stream);
  stream.sync();
  const auto got_labels = dlabels.download();
  // Labels equal wherever the best A_ik r_k beats the second by more than float rounding.
  std::int64_t clear = 0, differing = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    float best = -1.0f, second = -1.0f;
    for (std::int64_t j = 0; j < k; ++j) {
      const float v = load(in.a[static_cast<std::size_t>(i * in.stride + j)]) *
                      in.r_rel[static_cast<std::size_t>(j)];
      if (v > best) {
        second = best;
        best = v;
      } else if (v > second) {
        second = v;
      }
    }
    if (k == 1 || best - second > 1e-6f * best) {
      ++clear;
      differing +=
          got_labels[static_cast<std::size_t>(i)] != want_labels[static_cast<std::size_t>(i)];
    }
    CHECK(got_labels[static_cast<std::size_t>(i)] >= 0);
    CHECK(got_labels[static_cast<std::size_t>(i)] < k);
  }
  INFO("labels" << tag << ": " << clear << " rows with a clear maximum");
  CHECK(differing == 0);
  const kc::SinkhornLabelTotals label_totals = dlabel_totals.download()[0];
  // |N r_scale c_i dot_i − 1| with the CPU's c: the dots' float rounding, relative to 1 + error.
  check_close(std::vector<double>{label_totals.row_error}, std::vector<double>{want_row_error},
              Tolerance{1e-5, 1e-5}, "row marginal error" + tag);
  check_close(std::vector<double>{label_totals.floor_mass}, std::vector<double>{want_floor},
              Tolerance{1e-30, 1e-4}, "floor mass" + tag);
}

SELA_CUDA_TEST("one pass and the labels match the CPU kernels", test_pass_and_labels) {
  struct Shape {
    std::int64_t n, k;
  };
  for (Shape shape : {Shape{1, 1}, Shape{37, 10}, Shape{1000, 100}, Shape{513, 1000},
                      Shape{300, 3000}, Shape{100, 5000}, Shape{64, 9000}}) {
    for (double omega : {1.0, 1.4}) {
      check_pass_and_labels<float>(shape.n, shape.k, omega, 51);
      check_pass_and_labels<Half>(shape.n, shape.k, omega, 52);
      check_pass_and_labels<BFloat16>(shape.n, shape.k, omega, 53);
    }
  }
}

// ---- the whole solve -------------------------------------------------------------------------

SinkhornOptions quiet(std::ostream* log, SinkhornStorage storage, double lambda) {
  SinkhornOptions options;
  options.log = log;
  options.storage = storage;
  options.lambda = lambda;
  return options;
}

// Fraction of labels equal where the CPU result has a clear margin: best − second best of
// λ z_ik + log r_k (its own r) at least 0.02.
double clear_agreement(const std::vector<float>& z, std::int64_t n, std::int64_t k, double lambda,
                       const SinkhornResult& want, const SinkhornResult& got,
                       std::int64_t* clear_rows) {
  std::int64_t clear = 0, same = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    double best = -1e300, second = -1e300;
    for (std::int64_t j = 0; j < k; ++j) {
      const double g = lambda * z[static_cast<std::size_t>(i * k + j)] +
                       std::log(want.r[static_cast<std::size_t>(j)]);
      if (g > best) {
        second = best;
        best = g;
      } else if (g > second) {
        second = g;
      }
    }
    if (best - second >= 0.02) {
      ++clear;
      same += want.labels[static_cast<std::size_t>(i)] == got.labels[static_cast<std::size_t>(i)];
    }
  }
  *clear_rows = clear;
  return clear > 0 ? static_cast<double>(same) / static_cast<double>(clear) : 1.0;
}

// Largest |log x_i − log y_i − shift| after removing the free scale (mean of the logs).
double log_spread(const std::vector<double>& x, const std::vector<double>& y) {
  double shift = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) shift += std::log(x[i]) - std::log(y[i]);
  shift /= static_cast<double>(x.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::fabs(std::log(x[i]) - std::log(y[i]) - shift));
  return worst;
}

// spread_factor widens the bound on r and c after the same passes (below) for sequences that
// amplify the devices' rounding differences (a diverging over-relaxed start). warm_r: both
// solves start from it (SinkhornSolver::warm_start).
void compare_solves(const std::vector<float>& z, std::int64_t n, std::int64_t k,
                    SinkhornOptions options, const std::string& tag, double spread_factor = 1.0,
                    const std::vector<double>* warm_r = nullptr) {
  INFO(tag);
  SinkhornSolver cpu(options);
  if (warm_r != nullptr) cpu.warm_start(*warm_r);
  const SinkhornResult want = cpu.solve(z.data(), n, k, "h");
  options.device = sela::Device::cuda(0);
  SinkhornSolver gpu(options);
  if (warm_r != nullptr) gpu.warm_start(*warm_r);
  const SinkhornResult got = gpu.solve(z.data(), n, k, "h");
  CHECK(want.warm_started == (warm_r != nullptr));
  CHECK(got.warm_started == (warm_r != nullptr));
  REQUIRE(got.labels.size() == static_cast<std::size_t>(n));
  REQUIRE(got.r.size() == static_cast<std::size_t>(k));
  REQUIRE(got.c.size() == static_cast<std::size_t>(n));
  CHECK(got.device == "cuda:0");
  INFO("iterations cpu " << want.iterations << ", gpu " << got.iterations << "; absorptions cpu "
                         << want.absorptions << ", gpu " << got.absorptions);
  CHECK(got.converged == want.converged);
  // The stopping rule is checked every 10 passes: ±10% or one check apart.
  CHECK(std::llabs(got.iterations - want.iterations) <=
        std::max<std::int64_t>(10, want.iterations / 10));
  std::int64_t clear = 0;
  const double agreement = clear_agreement(z, n, k, options.lambda, want, got, &clear);
  INFO("labels equal on " << 100.0 * agreement << "% of " << clear << " rows with a clear margin");
  CHECK(agreement >= 0.999);
  for (std::int64_t label : got.labels) {
    CHECK(label >= 0);
    CHECK(label < k);
  }
  // Both marginals: rows exact after a plain pass up to float rounding of the dots; with
  // over-relaxation the returned c is the relaxed one, c_new·(c/c_new)^(1−ω), so the row
  // error is |(c/c_new)^(1−ω) − 1| of the last pass — the CPU's (5.6e-4 for the ω = 1.4 case
  // below) up to the rounding of c/c_new. Columns as the CPU's when both stopped at the
  // same pass (the same point of the same sequence, up to float summation order), else
  // within what one check interval can change.
  INFO("row marginal error cpu " << want.row_marginal_error << ", gpu " << got.row_marginal_error);
  INFO("column marginal error cpu " << want.col_marginal_error << ", gpu "
                                    << got.col_marginal_error);
  const bool same_passes = got.iterations == want.iterations && got.absorptions == want.absorptions;
  CHECK(got.row_marginal_error <= (same_passes ? 1e-5 + 1.1 * want.row_marginal_error
                                               : std::max(1e-5, 4.0 * want.row_marginal_error)));
  CHECK(std::isfinite(got.col_marginal_error));
  CHECK(got.col_marginal_error <= (same_passes ? 4.0 * want.col_marginal_error + 1e-6
                                               : std::max(4.0 * want.col_marginal_error, 1e-2)));
  if (same_passes) {
    // Same number of passes: r and c differ by float summation order and by the few 16-bit
    // entries of A that round the other way (exp differs in its last float bit between the
    // devices). At λ = 25 the iteration contracts slowly (hundreds of passes), so these
    // differences add up along its slowest direction: an H100 gave spreads of 2.5e-3 to
    // 4.5e-3 at λ = 25 (with identical labels and marginals equal to 5 digits), under 1e-3
    // at λ ≤ 10. Bound: 1e-3 up to λ = 2.5, growing with λ to 1e-2 at λ = 25. A wrong
    // kernel moves r or c by O(1).
    const double spread_bound = spread_factor * 1e-3 * std::max(1.0, options.lambda / 2.5);
    CHECK(log_spread(got.r, want.r) <= spread_bound);
    CHECK(log_spread(got.c, want.c) <= spread_bound);
  }
  // Cluster sizes from labels that may differ on rows without a clear margin.
  CHECK(std::llabs(got.cluster_min - want.cluster_min) <= 1 + n / 1000);
  CHECK(std::llabs(got.clusters_empty - want.clusters_empty) <= 1 + k / 100);
  CHECK(got.total_seconds > 0.0);
  CHECK(got.bytes_per_iteration > 0);
}

SELA_CUDA_TEST("whole solve agrees with the CPU fast path (labels, iterations, marginals)",
               test_solve_vs_cpu) {
  std::ostringstream log;
  struct Shape {
    std::int64_t n, k;
  };
  for (Shape shape : {Shape{2000, 100}, Shape{500, 200}, Shape{300, 1}, Shape{1, 50},
                      Shape{5000, 1000}, Shape{1000, 5000}, Shape{300, 7000}}) {
    for (double lambda : {1.0, 10.0, 25.0}) {
      for (float spread : {2.0f, 0.05f}) {  // peaked rows, near-uniform rows
        const auto z = random_logits(shape.n, shape.k, spread, 61);
        const std::string tag = shape_tag(shape.n, shape.k, "bf16") + " lambda " +
                                std::to_string(lambda) + " spread " + std::to_string(spread);
        compare_solves(z, shape.n, shape.k, quiet(&log, SinkhornStorage::bf16, lambda), tag);
      }
    }
  }
  // Every storage on two shapes (f32 at K = 5000 takes the wide kernel).
  for (SinkhornStorage storage : {SinkhornStorage::f32, SinkhornStorage::f16}) {
    for (auto [n, k] : {std::pair<std::int64_t, std::int64_t>{3000, 300}, {800, 5000}}) {
      const auto z = random_logits(n, k, 1.0f, 62);
      compare_solves(z, n, k, quiet(&log, storage, 25.0),
                     shape_tag(n, k, sela::assign::storage_name(storage)));
    }
  }
}

SELA_CUDA_TEST("over-relaxation and absorption follow the CPU path", test_relaxation_absorption) {
  std::ostringstream log;
  {
    const auto z = random_logits(4000, 500, 1.0f, 71);
    SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 25.0);
    options.over_relaxation = 1.4;
    compare_solves(z, 4000, 500, options, "omega 1.4");
  }
  {
    // Confident logits at lambda 10: A needs absorbing (the CPU makes several).
    const std::int64_t n = 6000, k = 100;
    const auto z = peaked_logits(n, k, 12.0f, 20.0, 72);
    SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 10.0);
    options.max_iters = 20000;
    SinkhornSolver cpu(options);
    const SinkhornResult want = cpu.solve(z.data(), n, k, "p");
    REQUIRE(want.absorptions >= 1);
    compare_solves(z, n, k, options, "peaked, absorption");
    options.device = sela::Device::cuda(0);
    SinkhornSolver gpu(options);
    const SinkhornResult got = gpu.solve(z.data(), n, k, "p");
    CHECK(got.absorptions >= 1);
    CHECK(got.floor_mass <= sela::assign::kSinkhornFloorMassWarning);
    CHECK(got.warning.empty());
  }
}

SELA_CUDA_TEST("over-relaxation whose r leaves float64's range between checks follows the CPU",
               test_relaxation_out_of_range) {
  // The CPU case of tests/assign/test_sinkhorn.cpp: at omega 1.95 the relaxed r underflows a
  // few passes after a check; both paths return to the last checked r (the same range test
  // on every relaxed r, in the control kernel on the device). Both must end on the same
  // answer, and the GPU must say that it stopped omega.
  std::ostringstream log;
  const std::int64_t n = 10000, k = 300;
  const auto z = random_logits(n, k, 3.0f, 78);
  for (SinkhornStorage storage : {SinkhornStorage::bf16, SinkhornStorage::f32}) {
    SinkhornOptions options = quiet(&log, storage, 10.0);
    options.over_relaxation = 1.95;
    compare_solves(z, n, k, options, "omega 1.95, r out of range");
    options.device = sela::Device::cuda(0);
    SinkhornSolver gpu(options);
    const SinkhornResult got = gpu.solve(z.data(), n, k, "h");
    CHECK(got.converged);
    CHECK(got.over_relaxation_stopped_at >= 0);
  }
}

SELA_CUDA_TEST("over-relaxation diverging through absorptions: the safeguard restores G and "
               "follows the CPU",
               test_relaxation_restores_potentials) {
  // The CPU cases of tests/assign/test_sinkhorn.cpp ("restores the checked potentials too"):
  // a diverging relaxed r sets off absorptions, then the safeguard returns to the checked r
  // and G and has A stored from them again (kSinkhornHalted). Before that, the restored r
  // was rescaled into the diverged A's units, and a full-width GPU run (K = 300, omega 1.8)
  // failed with "60000 rows lost all their mass".
  std::ostringstream log;
  for (const auto& c : sela::test::kDivergingRelaxationCases) {
    const std::int64_t k = 300;
    const auto z = clustered_logits(c.n, k, c.noise, c.bias, c.seed);
    SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 10.0);
    options.tol = 0.01;
    options.max_iters = 20000;
    options.over_relaxation = c.omega;
    // The relaxed passes before the safeguard diverge, and amplify the devices' rounding
    // differences on the way: an H200 took the same passes and absorptions as the CPU, equal
    // labels and column marginal errors equal to 3 digits, but c spread 5.6e-3 to 7.4e-3 from
    // the CPU's (r within the usual 4e-3 at lambda 10). Bound 2e-2; a wrong restore moves
    // them by O(1) or loses rows.
    compare_solves(z, c.n, k, options, "clustered logits, N " + std::to_string(c.n), 5.0);
    options.device = sela::Device::cuda(0);
    SinkhornSolver gpu(options);
    const SinkhornResult got = gpu.solve(z.data(), c.n, k, "h");
    CHECK(got.converged);
    CHECK(got.over_relaxation_stopped_at >= 0);
    CHECK(got.absorptions >= 2);

    // Capped right after the safeguard: the restoring absorption comes at the cap (the host
    // absorbs and stops, kSinkhornHalted with halted_at = cap), as on the CPU.
    options.max_iters = got.over_relaxation_stopped_at + 1;
    SinkhornSolver capped_gpu(options);
    const SinkhornResult capped = capped_gpu.solve(z.data(), c.n, k, "h");
    options.device = sela::Device::cpu();
    SinkhornSolver capped_cpu(options);
    const SinkhornResult capped_want = capped_cpu.solve(z.data(), c.n, k, "h");
    CHECK_FALSE(capped.converged);
    CHECK(capped.iterations == capped_want.iterations);
    CHECK(capped.absorptions == capped_want.absorptions);
    CHECK(capped.last_absorption_at == capped_want.last_absorption_at);
    std::int64_t same = 0;
    for (std::int64_t i = 0; i < c.n; ++i)
      same += capped.labels[static_cast<std::size_t>(i)] ==
              capped_want.labels[static_cast<std::size_t>(i)];
    // r at the check is 10 diverging passes in, where the devices' rounding has grown (c
    // 0.6% apart after the converged solve above): near-tied rows may flip; a wrong restore
    // leaves about 1 in K equal.
    CHECK(same * 100 >= c.n * 95);
  }
}

SELA_CUDA_TEST("warm start follows the CPU's warm start, in fewer passes than a cold solve",
               test_warm_start) {
  // The next label step's logits: the earlier ones nudged by N(0, 0.05²) (as the CPU tests
  // of the warm start, tests/assign/test_sinkhorn.cpp). Two kinds: clustered K = 300 logits
  // with popular columns, and peaked, imbalanced K = 10 logits whose r spans about e^80,
  // folded into A before the first pass. The CPU solver on the same inputs (bf16): cold 71
  // and 61 passes, warm 41 and 41 at K = 300 (omega 1, 1.8); cold 2,391 and 2,401, warm 531
  // and 101 at K = 10; one absorption each, all converged.
  std::ostringstream log;
  struct Case {
    const char* name;
    std::int64_t n, k;
    std::vector<float> before;
    std::int64_t min_absorptions;
  };
  const Case cases[] = {{"clustered K = 300", 4000, 300, clustered_logits(4000, 300, 1.0, 1.0, 5), 0},
                        {"peaked K = 10", 6000, 10, peaked_logits(6000, 10, 12.0f, 20.0, 2024), 1}};
  for (const Case& c : cases) {
    const auto after = nudged(c.before, 0.05f, 77);
    for (double omega : {1.0, 1.8}) {
      const std::string tag = std::string(c.name) + ", omega " + std::to_string(omega);
      SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 10.0);
      options.tol = 1e-5 * static_cast<double>(c.n);
      options.max_iters = 20000;
      options.over_relaxation = omega;
      SinkhornSolver cpu(options);
      const SinkhornResult previous = cpu.solve(c.before.data(), c.n, c.k, "h");
      REQUIRE(previous.converged);
      compare_solves(after, c.n, c.k, options, tag + ", warm", 1.0, &previous.r);
      options.device = sela::Device::cuda(0);
      SinkhornSolver gpu(options);
      const SinkhornResult cold = gpu.solve(after.data(), c.n, c.k, "h");
      gpu.warm_start(previous.r);
      const SinkhornResult warm = gpu.solve(after.data(), c.n, c.k, "h");
      INFO(tag << ": gpu cold " << cold.iterations << " passes, warm " << warm.iterations);
      CHECK_FALSE(cold.warm_started);
      CHECK(warm.warm_started);
      CHECK(warm.converged);
      CHECK(warm.absorptions >= c.min_absorptions);
      CHECK(warm.iterations < cold.iterations);
      // The warm start is consumed: the next solve is the cold one, bit for bit.
      const SinkhornResult again = gpu.solve(after.data(), c.n, c.k, "h");
      CHECK_FALSE(again.warm_started);
      CHECK(again.iterations == cold.iterations);
      CHECK(again.labels == cold.labels);
    }
  }
}

SELA_CUDA_TEST("solves are bit-identical: twice, batches, solve_device, reused buffers",
               test_determinism) {
  std::ostringstream log;
  const std::int64_t n = 20000, k = 1000;
  const auto z = random_logits(n, k, 1.0f, 81);
  SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 25.0);
  options.device = sela::Device::cuda(0);
  SinkhornSolver solver(options);
  const SinkhornResult first = solver.solve(z.data(), n, k, "h");
  const std::uint64_t held = solver.allocated_bytes();
  const SinkhornResult again = solver.solve(z.data(), n, k, "h");
  auto same = [](const SinkhornResult& a, const SinkhornResult& b, const std::string& what) {
    CHECK(a.iterations == b.iterations);
    check_identical(a.labels, b.labels, what + ": labels");
    check_identical(a.r, b.r, what + ": r");
    check_identical(a.c, b.c, what + ": c");
  };
  same(first, again, "twice");
  CHECK(solver.allocated_bytes() == held);

  // In batches through the batch API (with absorb: into the kept device copy).
  solver.begin_head(n, k, "h");
  for (std::int64_t row = 0; row < n; row += 3001)
    solver.append_logits(z.data() + row * k, std::min<std::int64_t>(3001, n - row));
  same(first, solver.solve(), "batches");

  // Logits already on the device.
  DeviceBuffer<float> dz(z);
  same(first, solver.solve_device(dz.data(), n, k, "h"), "solve_device");

  // A smaller head on the same solver reuses the buffers; a fresh solver agrees with it.
  const auto small = random_logits(3000, 300, 1.0f, 82);
  const SinkhornResult reused = solver.solve(small.data(), 3000, 300, "h2");
  CHECK(solver.allocated_bytes() == held);
  SinkhornSolver fresh(options);
  same(reused, fresh.solve(small.data(), 3000, 300, "h2"), "reused buffers");

  // Without absorption, host logits go through the upload chunk: the same bits as long as
  // the solve with absorption made none (these logits need none: the CPU makes none either).
  REQUIRE(first.absorptions == 0);
  options.absorb = false;
  SinkhornSolver plain(options);
  same(first, plain.solve(z.data(), n, k, "h"), "absorb off (no absorption was needed)");
}

SELA_CUDA_TEST("NaN or Inf in the logits is an Error naming the head and the first bad row",
               test_nan) {
  std::ostringstream log;
  const std::int64_t n = 5000, k = 64;
  auto z = random_logits(n, k, 1.0f, 91);
  z[static_cast<std::size_t>(4321 * k + 7)] = std::nanf("");
  z[static_cast<std::size_t>(1234 * k + 63)] = -INFINITY;
  SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 25.0);
  options.device = sela::Device::cuda(0);
  SinkhornSolver solver(options);
  auto expect_error = [&](auto&& call, const std::string& what) {
    INFO(what);
    try {
      call();
      FAIL("no error");
    } catch (const sela::Error& error) {
      const std::string message = error.what();
      INFO(message);
      CHECK(message.find("head 'bad'") != std::string::npos);
      CHECK(message.find("row 1234") != std::string::npos);
    }
  };
  expect_error([&] { solver.solve(z.data(), n, k, "bad"); }, "solve(host logits)");
  DeviceBuffer<float> dz(z);
  expect_error([&] { solver.solve_device(dz.data(), n, k, "bad"); }, "solve_device");
  // The solver is usable afterwards.
  const auto good = random_logits(n, k, 1.0f, 92);
  CHECK(solver.solve(good.data(), n, k, "good").converged);
}

SELA_CUDA_TEST("memory plan, iteration cap and misuse on the GPU", test_plan_cap_misuse) {
  std::ostringstream log;
  SinkhornOptions options = quiet(&log, SinkhornStorage::bf16, 25.0);
  options.device = sela::Device::cuda(0);
  {
    SinkhornOptions tight = options;
    tight.memory_limit_bytes = 4096;
    SinkhornSolver solver(tight);
    const auto plan = solver.plan(100000, 1000);
    CHECK(plan.where == "cuda:0 memory");
    CHECK(plan.matrix_bytes == 100000ull * 1024ull * 2ull);
    try {
      solver.begin_head(100000, 1000, "big");
      FAIL("no error");
    } catch (const sela::Error& error) {
      const std::string message = error.what();
      INFO(message);
      CHECK(message.find("head 'big' does not fit") != std::string::npos);
      CHECK(message.find("cuda:0 memory") != std::string::npos);
      CHECK(message.find("bf16") != std::string::npos);
    }
    CHECK(solver.allocated_bytes() == 0);
  }
  {
    SinkhornOptions capped = options;
    capped.max_iters = 5;
    const auto z = random_logits(3000, 100, 1.0f, 93);
    SinkhornSolver solver(capped);
    const SinkhornResult result = solver.solve(z.data(), 3000, 100, "capped");
    CHECK(result.iterations == 5);
    CHECK(!result.converged);
    CHECK(result.warning.find("iteration cap") != std::string::npos);
    CHECK(log.str().find("capped") != std::string::npos);
  }
  {
    SinkhornSolver solver(options);
    std::vector<float> host(10, 0.5f);
    CHECK_THROWS_AS(solver.solve_device(host.data(), 2, 5, "host pointer"), sela::Error);
    CHECK_THROWS_AS(solver.solve(), sela::Error);
  }
}

}  // namespace
