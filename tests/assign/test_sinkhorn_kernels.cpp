// Tests of the CPU Sinkhorn kernels (sela/assign/sinkhorn_cpu.h) against naive float64
// loops: storage conversions, storing A from logits (plain and with absorbed column
// potentials), column sums, one pass, labels.
// Inputs are fresh random values, outputs are poisoned (NaN) before each call, every
// tolerance is atol + rtol·|ref| with the reason given next to it, and NaN/Inf in an output
// fails the comparison.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/sinkhorn_cpu.h"
#include "tests/assign/sinkhorn_test_logits.h"

using namespace sela::assign;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

bool close(double got, double ref, double atol, double rtol) {
  return std::isfinite(got) && std::fabs(got - ref) <= atol + rtol * std::fabs(ref);
}

using sela::test::random_logits;

template <typename Store>
Store poison_value();
template <>
float poison_value<float>() {
  return kNaN;
}
template <>
Half poison_value<Half>() {
  return Half{0x7E00};
}
template <>
BFloat16 poison_value<BFloat16>() {
  return BFloat16{0x7FC0};
}

template <typename Store>
const char* store_name();
template <>
const char* store_name<float>() {
  return "f32";
}
template <>
const char* store_name<Half>() {
  return "f16";
}
template <>
const char* store_name<BFloat16>() {
  return "bf16";
}

// Relative rounding of one stored value (half an ulp of the significand) plus the float32
// evaluation of λ(z − max) and exp (|v|·2^-23 + 4e-7 relative, |v| <= 88).
template <typename Store>
double storage_rtol();
template <>
double storage_rtol<float>() {
  return 88.0 * 1.2e-7 + 4e-7;
}
template <>
double storage_rtol<Half>() {
  return std::ldexp(1.0, -11) + 88.0 * 1.2e-7 + 4e-7;
}
template <>
double storage_rtol<BFloat16>() {
  return std::ldexp(1.0, -8) + 88.0 * 1.2e-7 + 4e-7;
}

// A stored as Store, then loaded back as double: the exact input the other kernels see.
template <typename Store>
std::vector<Store> stored_matrix(const std::vector<float>& z, std::int64_t n, std::int64_t k,
                                 float lambda) {
  const std::int64_t stride = sinkhorn_row_stride(k);
  std::vector<Store> a(static_cast<std::size_t>(n * stride), poison_value<Store>());
  REQUIRE(sinkhorn_store_rows<Store>(z.data(), n, k, lambda, a.data(), stride, nullptr) == -1);
  return a;
}

template <typename Store>
double loaded(const std::vector<Store>& a, std::int64_t i, std::int64_t j, std::int64_t stride) {
  return static_cast<double>(sinkhorn_load(a[static_cast<std::size_t>(i * stride + j)]));
}

// The value a correctly rounded (to nearest, ties to even) conversion must give: checked by
// comparing with the neighbouring representable values in double.
template <typename Store>
void check_round_to_nearest(float value) {
  Store s = sinkhorn_store<Store>(value);
  std::uint16_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  const double got = sinkhorn_load(s);
  const double err = std::fabs(got - static_cast<double>(value));
  for (int step : {-1, 1}) {
    Store neighbour;
    std::uint16_t nb = static_cast<std::uint16_t>(bits + step);
    std::memcpy(&neighbour, &nb, sizeof(nb));
    const double other = sinkhorn_load(neighbour);
    if (!std::isfinite(other)) continue;
    const double other_err = std::fabs(other - static_cast<double>(value));
    CHECK_MESSAGE(err <= other_err, store_name<Store>()
                                        << " rounding of " << value << " gave " << got);
    if (err == other_err) CHECK_MESSAGE((bits & 1u) == 0, "tie not rounded to even for " << value);
  }
}

}  // namespace

TEST_CASE("storage conversions round to nearest even and round-trip") {
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> exponent(-30.0f, 15.0f);
  for (int t = 0; t < 20000; ++t) {
    float value = std::exp2(exponent(gen)) * (1.0f + 0.5f * static_cast<float>(t % 7) / 7.0f);
    check_round_to_nearest<Half>(value);
    check_round_to_nearest<BFloat16>(value);
  }
  // Exact ties: halfway between two halves, and between two bfloat16 values.
  check_round_to_nearest<Half>(1.0f + std::ldexp(1.0f, -11));
  check_round_to_nearest<Half>(1.0f + 3.0f * std::ldexp(1.0f, -11));
  check_round_to_nearest<BFloat16>(1.0f + std::ldexp(1.0f, -8));
  check_round_to_nearest<BFloat16>(1.0f + 3.0f * std::ldexp(1.0f, -8));
  // Every finite half value survives half -> float -> half.
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    Half h{static_cast<std::uint16_t>(bits)};
    float f = sinkhorn_load(h);
    if (!std::isfinite(f)) continue;
    CHECK(sinkhorn_store<Half>(f).bits == h.bits);
  }
  CHECK(sinkhorn_load(sinkhorn_store<Half>(65520.0f)) == std::numeric_limits<float>::infinity());
  CHECK(sinkhorn_load(sinkhorn_store<Half>(65519.0f)) == 65504.0f);
  CHECK(sinkhorn_load(sinkhorn_store<Half>(std::ldexp(1.0f, -24))) == std::ldexp(1.0f, -24));
  CHECK(sinkhorn_load(sinkhorn_store<Half>(std::ldexp(1.0f, -26))) == 0.0f);
}

template <typename Store>
void check_store_rows() {
  for (float lambda : {1.0f, 10.0f, 25.0f}) {
    for (std::int64_t k : {1, 7, 16, 37, 100}) {
      const std::int64_t n = 53, stride = sinkhorn_row_stride(k);
      auto z =
          random_logits(n, k, 2.0f, static_cast<std::uint32_t>(k * 131 + static_cast<int>(lambda)));
      std::vector<Store> a(static_cast<std::size_t>(n * stride), poison_value<Store>());
      std::vector<float> log_mass(static_cast<std::size_t>(n), kNaN);
      REQUIRE(sinkhorn_store_rows<Store>(z.data(), n, k, lambda, a.data(), stride,
                                         log_mass.data()) == -1);
      const double scale = sinkhorn_storage_scale<Store>();
      std::int64_t failures = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        double row_max = -1e300, mass = 0.0;
        for (std::int64_t j = 0; j < k; ++j)
          row_max = std::max(row_max, static_cast<double>(z[static_cast<std::size_t>(i * k + j)]));
        for (std::int64_t j = 0; j < k; ++j)
          mass += std::exp(static_cast<double>(z[static_cast<std::size_t>(i * k + j)]) - row_max);
        // log Σ exp(z − max) in float32: float sum of k terms (k·2^-24) and the log's rounding.
        CHECK_MESSAGE(close(log_mass[static_cast<std::size_t>(i)], std::log(mass),
                            1e-6 * static_cast<double>(k), 1e-6),
                      "row " << i);
        for (std::int64_t j = 0; j < stride; ++j) {
          const double got = loaded(a, i, j, stride);
          if (j >= k) {
            failures += got == 0.0 ? 0 : 1;  // padding must be exactly 0
            continue;
          }
          const double v = static_cast<double>(lambda) *
                           (static_cast<double>(z[static_cast<std::size_t>(i * k + j)]) - row_max);
          // Never below the storage floor: values under it are stored as the floor.
          const double ref =
              std::max(scale * std::exp(v), static_cast<double>(sinkhorn_storage_floor<Store>()));
          // atol: half of the storage's smallest subnormal step (Half: 2^-25, in scaled units).
          const double atol = std::is_same<Store, Half>::value ? std::ldexp(1.0, -25) : 0.0;
          if (!close(got, ref, atol, storage_rtol<Store>())) {
            if (++failures < 5)
              MESSAGE(store_name<Store>()
                      << " A(" << i << "," << j << ") = " << got << ", ref " << ref);
          }
        }
      }
      CHECK_MESSAGE(failures == 0, store_name<Store>() << " lambda " << lambda << " k " << k);
    }
  }
}

TEST_CASE("sinkhorn_store_rows matches scale * exp(lambda (z - max z)) in float64") {
  check_store_rows<float>();
  check_store_rows<Half>();
  check_store_rows<BFloat16>();
}

// The absorption kernel: A_ik = max(scale·exp(v_ik − M_i), floor) with v_ik = λ(z_ik − max z_i)
// + g_k and M_i = max_k v_ik, against the same formula in float64.
template <typename Store>
void check_store_rows_absorbed() {
  for (float lambda : {1.0f, 10.0f, 25.0f}) {
    for (std::int64_t k : {1, 7, 37, 100}) {
      const std::int64_t n = 53, stride = sinkhorn_row_stride(k);
      const auto seed = static_cast<std::uint32_t>(k * 17 + static_cast<int>(lambda) + 5);
      auto z = random_logits(n, k, 2.0f, seed);
      // Column potentials as the solver makes them: <= 0 with the largest 0, spanning e^-60.
      std::mt19937 gen(seed + 1);
      std::uniform_real_distribution<float> uniform(-60.0f, 0.0f);
      std::vector<float> g(static_cast<std::size_t>(stride), kNaN);
      for (std::int64_t j = 0; j < k; ++j) g[static_cast<std::size_t>(j)] = uniform(gen);
      g[static_cast<std::size_t>(k / 2)] = 0.0f;
      std::vector<Store> a(static_cast<std::size_t>(n * stride), poison_value<Store>());
      std::vector<double> shift(static_cast<std::size_t>(n), std::nan(""));
      sinkhorn_store_rows_absorbed<Store>(z.data(), n, k, lambda, g.data(), a.data(), stride,
                                          shift.data());
      const double scale = sinkhorn_storage_scale<Store>();
      std::int64_t failures = 0, below_row_max = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        double row_max = -1e300, ref_shift = -1e300;
        for (std::int64_t j = 0; j < k; ++j)
          row_max = std::max(row_max, static_cast<double>(z[static_cast<std::size_t>(i * k + j)]));
        std::vector<double> v(static_cast<std::size_t>(k));
        double magnitude = 0.0;  // largest |term| entering a v: sets float32's rounding of v
        for (std::int64_t j = 0; j < k; ++j) {
          const double lz =
              static_cast<double>(lambda) *
              (static_cast<double>(z[static_cast<std::size_t>(i * k + j)]) - row_max);
          v[static_cast<std::size_t>(j)] = lz + static_cast<double>(g[static_cast<std::size_t>(j)]);
          magnitude =
              std::max(magnitude, std::fabs(lz) + std::fabs(g[static_cast<std::size_t>(j)]));
          ref_shift = std::max(ref_shift, v[static_cast<std::size_t>(j)]);
        }
        below_row_max += ref_shift < -1.0 ? 1 : 0;
        // M_i: float32 rounding of λ(z − max) and of the sum with g (2 · 2^-24 relative each).
        if (!close(shift[static_cast<std::size_t>(i)], ref_shift, 4e-7 * magnitude, 0.0))
          ++failures;
        for (std::int64_t j = 0; j < stride; ++j) {
          const double got = loaded(a, i, j, stride);
          if (j >= k) {
            failures += got == 0.0 ? 0 : 1;  // padding must be exactly 0
            continue;
          }
          const double ref =
              std::max(scale * std::exp(v[static_cast<std::size_t>(j)] - ref_shift),
                       static_cast<double>(sinkhorn_storage_floor<Store>()));
          // rtol: the storage's rounding and exp's, plus the argument's float32 rounding
          // (v and v − M: 1.2e-7 · magnitude), which exp turns into a relative error.
          const double atol = std::is_same<Store, Half>::value ? std::ldexp(1.0, -25) : 0.0;
          if (!close(got, ref, atol, storage_rtol<Store>() + 1.2e-7 * magnitude)) {
            if (++failures < 5)
              MESSAGE(store_name<Store>()
                      << " absorbed A(" << i << "," << j << ") = " << got << ", ref " << ref);
          }
        }
      }
      CHECK_MESSAGE(failures == 0, store_name<Store>() << " lambda " << lambda << " k " << k);
      // The test must exercise the shift: rows whose maximum of v is not their own maximum.
      if (k >= 37) CHECK(below_row_max > 0);
    }
  }
}

TEST_CASE("sinkhorn_store_rows_absorbed matches max(scale * exp(v - max v), floor) in float64") {
  check_store_rows_absorbed<float>();
  check_store_rows_absorbed<Half>();
  check_store_rows_absorbed<BFloat16>();
  std::vector<float> z(4, 1.0f), g(32, 0.0f);
  std::vector<float> a(32);
  std::vector<double> shift(1);
  CHECK_THROWS_AS(sinkhorn_store_rows_absorbed<float>(z.data(), 1, 4, 1.0f, g.data(), a.data(), 33,
                                                      shift.data()),
                  sela::Error);
  CHECK_THROWS_AS(sinkhorn_store_rows_absorbed<float>(z.data(), 1, 4, 1.0f, nullptr, a.data(), 32,
                                                      shift.data()),
                  sela::Error);
}

TEST_CASE("sinkhorn_store_rows reports the first row holding NaN or Inf") {
  const std::int64_t n = 600, k = 33, stride = sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 1.0f, 5);
  std::vector<float> a(static_cast<std::size_t>(n * stride));
  CHECK(sinkhorn_store_rows<float>(z.data(), n, k, 10.0f, a.data(), stride, nullptr) == -1);
  z[static_cast<std::size_t>(417 * k + 32)] = std::numeric_limits<float>::infinity();
  z[static_cast<std::size_t>(590 * k + 3)] = kNaN;
  CHECK(sinkhorn_store_rows<float>(z.data(), n, k, 10.0f, a.data(), stride, nullptr) == 417);
  z[static_cast<std::size_t>(2 * k)] = -std::numeric_limits<float>::infinity();
  CHECK(sinkhorn_store_rows<float>(z.data(), n, k, 10.0f, a.data(), stride, nullptr) == 2);
  CHECK_THROWS_AS(sinkhorn_store_rows<float>(z.data(), n, k, 10.0f, a.data(), stride + 1, nullptr),
                  sela::Error);
}

template <typename Store>
void check_pass_kernels(std::int64_t n, std::int64_t k) {
  CAPTURE(n);
  CAPTURE(k);
  const std::int64_t stride = sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 0.3f, static_cast<std::uint32_t>(n + 7 * k));
  std::vector<Store> a = stored_matrix<Store>(z, n, k, 10.0f);
  std::mt19937 gen(static_cast<std::uint32_t>(3 * n + k));
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  std::vector<float> r_rel(static_cast<std::size_t>(stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j) r_rel[static_cast<std::size_t>(j)] = uniform(gen);
  const double r_scale = 3.7;
  std::vector<double> c(static_cast<std::size_t>(n));
  for (double& v : c) v = uniform(gen) / static_cast<double>(n);
  const std::vector<double> c_old = c;
  std::vector<char> workspace(sinkhorn_workspace_bytes(n, stride));

  // Column sums, plain and weighted with weights spanning 1e-80..1: float64 throughout,
  // so only summation-order rounding remains (rtol 1e-12).
  std::vector<double> weights(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    weights[static_cast<std::size_t>(i)] = std::pow(10.0, -80.0 * uniform(gen));
  for (const double* w :
       {static_cast<const double*>(nullptr), static_cast<const double*>(weights.data())}) {
    std::vector<double> sums(static_cast<std::size_t>(k), static_cast<double>(kNaN));
    sinkhorn_column_sums<Store>(a.data(), n, k, stride, w, workspace.data(), workspace.size(),
                                sums.data());
    for (std::int64_t j = 0; j < k; ++j) {
      double ref = 0.0;
      for (std::int64_t i = 0; i < n; ++i) ref += loaded(a, i, j, stride) * (w ? w[i] : 1.0);
      CHECK_MESSAGE(close(sums[static_cast<std::size_t>(j)], ref, 1e-300, 1e-12), "column " << j);
    }
  }

  // One pass: c_new_i = 1/(N r_scale Σ_k A_ik r_rel_k); col_k = Σ_i A_ik c_new_i; change.
  // The float32 dot of k terms in 16 lanes: rtol 2^-24 · (k/16 + 8) covers its rounding.
  const double dot_rtol = std::ldexp(1.0, -24) * (static_cast<double>(k) / 16.0 + 8.0) * 4.0;
  std::vector<double> cols(static_cast<std::size_t>(k), static_cast<double>(kNaN));
  std::int64_t bad = -1;
  const double change =
      sinkhorn_pass<Store>(a.data(), n, k, stride, n, r_rel.data(), r_scale, 1.0, c.data(),
                           cols.data(), true, workspace.data(), workspace.size(), &bad);
  CHECK(bad == 0);
  std::vector<double> c_ref(static_cast<std::size_t>(n));
  double change_ref = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    double dot = 0.0;
    for (std::int64_t j = 0; j < k; ++j)
      dot += loaded(a, i, j, stride) * static_cast<double>(r_rel[static_cast<std::size_t>(j)]);
    c_ref[static_cast<std::size_t>(i)] = 1.0 / (static_cast<double>(n) * r_scale * dot);
    change_ref +=
        std::fabs(c_old[static_cast<std::size_t>(i)] / c_ref[static_cast<std::size_t>(i)] - 1.0);
    CHECK_MESSAGE(
        close(c[static_cast<std::size_t>(i)], c_ref[static_cast<std::size_t>(i)], 0.0, dot_rtol),
        "row " << i);
  }
  CHECK(close(change, change_ref, 1e-12, 1e-4));
  for (std::int64_t j = 0; j < k; ++j) {
    double ref = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      ref += loaded(a, i, j, stride) * c_ref[static_cast<std::size_t>(i)];
    CHECK_MESSAGE(close(cols[static_cast<std::size_t>(j)], ref, 1e-300, dot_rtol + 5e-6),
                  "column " << j);
  }

  // Labels: argmax_k A_ik r_rel_k; a near tie may go either way in float32, so the chosen
  // value must be within 2^-22 (relative) of the best, and exactly the first best otherwise.
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n), -7);
  double floor_mass = -1.0;
  const double row_error = sinkhorn_labels<Store>(a.data(), n, k, stride, n, r_rel.data(), r_scale,
                                                  c.data(), labels.data(), &floor_mass);
  double row_error_ref = 0.0, floor_mass_ref = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    double best = -1.0, dot = 0.0, floor_dot = 0.0;
    std::int64_t best_j = -1;
    for (std::int64_t j = 0; j < k; ++j) {
      double v = loaded(a, i, j, stride) * static_cast<double>(r_rel[static_cast<std::size_t>(j)]);
      dot += v;
      if (loaded(a, i, j, stride) <= sinkhorn_storage_floor<Store>()) floor_dot += v;
      if (v > best) {
        best = v;
        best_j = j;
      }
    }
    const std::int64_t got = labels[static_cast<std::size_t>(i)];
    REQUIRE(got >= 0);
    REQUIRE(got < k);
    const double chosen =
        loaded(a, i, got, stride) * static_cast<double>(r_rel[static_cast<std::size_t>(got)]);
    CHECK_MESSAGE((got == best_j || chosen >= best * (1.0 - std::ldexp(1.0, -22))), "row " << i);
    floor_mass_ref = std::max(floor_mass_ref, floor_dot / dot);
    row_error_ref = std::max(
        row_error_ref,
        std::fabs(static_cast<double>(n) * r_scale * c[static_cast<std::size_t>(i)] * dot - 1.0));
  }
  CHECK(close(row_error, row_error_ref, dot_rtol, 0.0));
  CHECK(close(floor_mass, floor_mass_ref, 1e-30, dot_rtol));
}

TEST_CASE("sinkhorn column sums, pass and labels match float64 loops") {
  // The last shape holds 2.9M values: several chunks (threads) once there are 2+ threads.
  for (auto [n, k] : {std::pair<std::int64_t, std::int64_t>{1, 1},
                      {5, 3},
                      {300, 17},
                      {1027, 64},
                      {2500, 250},
                      {9001, 300}}) {
    check_pass_kernels<float>(n, k);
    check_pass_kernels<Half>(n, k);
    check_pass_kernels<BFloat16>(n, k);
  }
}

TEST_CASE("sinkhorn_pass is deterministic for a thread count and checks its workspace") {
  // 20011 x 160 = 3.2M values: three chunks with three threads (a chunk needs 2^20 values).
  const std::int64_t n = 20011, k = 129, stride = sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 0.5f, 99);
  std::vector<Half> a = stored_matrix<Half>(z, n, k, 25.0f);
  std::vector<float> r_rel(static_cast<std::size_t>(stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j)
    r_rel[static_cast<std::size_t>(j)] = 0.5f + 0.001f * static_cast<float>(j);
  const int saved = sela::cpu::num_threads();
  std::vector<double> one_thread;
  for (int threads : {1, 2, 3}) {
    sela::cpu::set_num_threads(threads);
    std::vector<char> workspace(sinkhorn_workspace_bytes(n, stride));
    std::vector<double> first, second;
    for (std::vector<double>* out : {&first, &second}) {
      std::vector<double> c(static_cast<std::size_t>(n), 1.0 / static_cast<double>(n));
      std::vector<double> cols(static_cast<std::size_t>(k), static_cast<double>(kNaN));
      double change =
          sinkhorn_pass<Half>(a.data(), n, k, stride, n, r_rel.data(), 1.0, 1.0, c.data(),
                              cols.data(), true, workspace.data(), workspace.size(), nullptr);
      *out = cols;
      out->push_back(change);
      out->insert(out->end(), c.begin(), c.end());
    }
    CHECK_MESSAGE(std::memcmp(first.data(), second.data(), first.size() * sizeof(double)) == 0,
                  threads << " threads");
    // Another thread count only regroups the float64 sums of float32 blocks.
    if (threads == 1) {
      one_thread = first;
    } else {
      for (std::size_t e = 0; e < first.size(); ++e)
        CHECK(close(first[e], one_thread[e], 1e-300, 1e-6));
    }
  }
  sela::cpu::set_num_threads(1);
  std::vector<char> small(sinkhorn_workspace_bytes(n, stride));
  sela::cpu::set_num_threads(3);
  std::vector<double> c(static_cast<std::size_t>(n), 1.0), cols(static_cast<std::size_t>(k));
  CHECK_THROWS_AS(sinkhorn_pass<Half>(a.data(), n, k, stride, n, r_rel.data(), 1.0, 1.0, c.data(),
                                      cols.data(), false, small.data(), small.size(), nullptr),
                  sela::Error);
  sela::cpu::set_num_threads(saved);
}

TEST_CASE(
    "entries below the storage range are stored at the floor and the mass on them is measured") {
  // Row 0: A = [1, e^-200, e^-300] → [1, floor, floor]; with r_rel = [1e-35, 1, 0.5] its
  // products are [1e-35, floor, floor/2]: label 1, and the floor holds 1.5 floor / (1e-35 +
  // 1.5 floor) of its mass. Row 1 is ordinary.
  const std::int64_t n = 2, k = 3, stride = sinkhorn_row_stride(k);
  const std::vector<float> z = {0.0f, -200.0f, -300.0f, 0.0f, -0.1f, -0.2f};
  std::vector<float> a(static_cast<std::size_t>(n * stride), kNaN);
  REQUIRE(sinkhorn_store_rows<float>(z.data(), n, k, 1.0f, a.data(), stride, nullptr) == -1);
  CHECK(a[1] == sinkhorn_storage_floor<float>());
  CHECK(a[2] == sinkhorn_storage_floor<float>());
  std::vector<float> r_rel(static_cast<std::size_t>(stride), 0.0f);
  r_rel[0] = 1e-35f;
  r_rel[1] = 1.0f;
  r_rel[2] = 0.5f;
  const std::vector<double> c = {1.0, 1.0};
  std::vector<std::int64_t> labels(2, -1);
  double floor_mass = -1.0;
  sinkhorn_labels<float>(a.data(), n, k, stride, n, r_rel.data(), 1.0, c.data(), labels.data(),
                         &floor_mass);
  CHECK(labels[0] == 1);
  CHECK(labels[1] == 1);
  const double floor = sinkhorn_storage_floor<float>();
  CHECK(close(floor_mass, 1.5 * floor / (1e-35 + 1.5 * floor), 0.0, 1e-6));
}

TEST_CASE("over-relaxed pass: c = c_old^(1-omega) c_new^omega and the column sums use it") {
  // The factor against pow in float64, on both sides of its series/pow switch (|x/y - 1| = 1e-2).
  for (double omega : {0.5, 1.2, 1.5, 1.9}) {
    for (double delta : {-0.3, -2e-2, -1e-2, -9.99e-3, -5e-3, -3e-4, -1e-7, 0.0, 1e-9, 5e-4,
                         3e-3, 9.9e-3, 1e-2, 1.5e-2, 0.7, 5.0}) {
      const double y = 0.37, x = y * (1.0 + delta);
      const double ref = std::pow(x / y, 1.0 - omega);
      CHECK_MESSAGE(close(sinkhorn_relaxation_factor(x, y, omega), ref, 0.0, 1e-12),
                    "omega " << omega << " delta " << delta);
    }
  }
  const std::int64_t n = 203, k = 45, stride = sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 0.5f, 123);
  std::vector<BFloat16> a = stored_matrix<BFloat16>(z, n, k, 10.0f);
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  std::vector<float> r_rel(static_cast<std::size_t>(stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j) r_rel[static_cast<std::size_t>(j)] = uniform(gen);
  std::vector<double> c(static_cast<std::size_t>(n));
  for (double& v : c) v = uniform(gen) / static_cast<double>(n);
  const std::vector<double> c_old = c;
  std::vector<char> workspace(sinkhorn_workspace_bytes(n, stride));
  std::vector<double> cols(static_cast<std::size_t>(k), static_cast<double>(kNaN));
  const double omega = 1.5, r_scale = 0.8;
  const double change =
      sinkhorn_pass<BFloat16>(a.data(), n, k, stride, n, r_rel.data(), r_scale, omega, c.data(),
                              cols.data(), true, workspace.data(), workspace.size(), nullptr);
  const double dot_rtol = std::ldexp(1.0, -24) * (static_cast<double>(k) / 16.0 + 8.0) * 4.0;
  std::vector<double> c_ref(static_cast<std::size_t>(n));
  double change_ref = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    double dot = 0.0;
    for (std::int64_t j = 0; j < k; ++j)
      dot += loaded(a, i, j, stride) * static_cast<double>(r_rel[static_cast<std::size_t>(j)]);
    const double c_new = 1.0 / (static_cast<double>(n) * r_scale * dot);
    const double old = c_old[static_cast<std::size_t>(i)];
    change_ref += std::fabs(old / c_new - 1.0);
    c_ref[static_cast<std::size_t>(i)] = std::pow(old, 1.0 - omega) * std::pow(c_new, omega);
    // c_new carries the dot's float32 rounding (dot_rtol) raised to the power ω.
    CHECK_MESSAGE(close(c[static_cast<std::size_t>(i)], c_ref[static_cast<std::size_t>(i)], 0.0,
                        2.0 * dot_rtol),
                  "row " << i);
  }
  CHECK(close(change, change_ref, 1e-12, 1e-4));
  for (std::int64_t j = 0; j < k; ++j) {
    double ref = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      ref += loaded(a, i, j, stride) * c_ref[static_cast<std::size_t>(i)];
    CHECK_MESSAGE(close(cols[static_cast<std::size_t>(j)], ref, 1e-300, 3.0 * dot_rtol + 5e-6),
                  "column " << j);
  }
  CHECK_THROWS_AS(
      sinkhorn_pass<BFloat16>(a.data(), n, k, stride, n, r_rel.data(), r_scale, 2.0, c.data(),
                              cols.data(), false, workspace.data(), workspace.size(), nullptr),
      sela::Error);
}

TEST_CASE("over-relaxed pass near convergence: each row's c is c_new times the scalar factor") {
  // Near convergence c_old / c_new is within 1e-2 of 1 on most rows, where groups of eight
  // rows take the vector form of the factor's series. Rows 40, 41 and 97 are 2e-2 away
  // (pow for those lanes), row 130 has c = 0 (its group goes row by row), rows 200..202 are
  // the tail after the groups. Every row's c must be c_new * sinkhorn_relaxation_factor(
  // c_old, c_new, omega), bit for bit, with c_new from a plain pass over the same A and r.
  const std::int64_t n = 203, k = 10, stride = sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 0.5f, 321);
  std::vector<float> a = stored_matrix<float>(z, n, k, 10.0f);
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  std::uniform_real_distribution<double> small(-9.9e-3, 9.9e-3);
  std::vector<float> r_rel(static_cast<std::size_t>(stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j) r_rel[static_cast<std::size_t>(j)] = uniform(gen);
  const double omega = 1.4, r_scale = 0.8;
  std::vector<char> workspace(sinkhorn_workspace_bytes(n, stride));
  std::vector<double> c_new(static_cast<std::size_t>(n), 1.0), cols(static_cast<std::size_t>(k));
  sinkhorn_pass<float>(a.data(), n, k, stride, n, r_rel.data(), r_scale, 1.0, c_new.data(),
                       cols.data(), false, workspace.data(), workspace.size(), nullptr);
  std::vector<double> c_old(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const double delta = (i == 40 || i == 41 || i == 97) ? -2e-2 : small(gen);
    c_old[static_cast<std::size_t>(i)] =
        i == 130 ? 0.0 : c_new[static_cast<std::size_t>(i)] * (1.0 + delta);
  }
  std::vector<double> c = c_old;
  const double change =
      sinkhorn_pass<float>(a.data(), n, k, stride, n, r_rel.data(), r_scale, omega, c.data(),
                           cols.data(), true, workspace.data(), workspace.size(), nullptr);
  double change_ref = 0.0;
  std::int64_t mismatches = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::size_t row = static_cast<std::size_t>(i);
    const double old = c_old[row], fresh = c_new[row];
    change_ref += std::fabs(old / fresh - 1.0);
    const double expected =
        old > 0.0 ? fresh * sinkhorn_relaxation_factor(old, fresh, omega) : fresh;
    if (c[row] != expected) {
      ++mismatches;
      MESSAGE("row " << i << ": " << c[row] << " != " << expected);
    }
  }
  CHECK(mismatches == 0);
  CHECK(close(change, change_ref, 0.0, 1e-12));
  // The column sums use the relaxed c: against float64 with that c (float32 weights).
  for (std::int64_t j = 0; j < k; ++j) {
    double ref = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      ref += loaded(a, i, j, stride) * c[static_cast<std::size_t>(i)];
    CHECK_MESSAGE(close(cols[static_cast<std::size_t>(j)], ref, 1e-300, 1e-5), "column " << j);
  }
}

TEST_CASE("sinkhorn_pass: rows without mass inside a group of eight are counted and zeroed") {
  // The pass handles eight rows at a time (their dots, c and weights together) and falls
  // back to one row at a time for a group holding an unusable dot (0, Inf or NaN). Rows 3
  // and 11 (in the first two groups) and row 27 (in the scalar tail of 30 rows) have A = 0,
  // so their dot is 0: they must be counted as bad, get c = 0 and add nothing, while every
  // other row (rows 16-23 through the eight-row path) gets c = 1 / (N r_scale dot), and
  // the change sums |c_old / c_new - 1| over them.
  const std::int64_t n = 30, k = 10, stride = sinkhorn_row_stride(k);
  auto z = random_logits(n, k, 0.3f, 5);
  std::vector<float> a = stored_matrix<float>(z, n, k, 10.0f);
  for (std::int64_t empty : {3, 11, 27})
    for (std::int64_t j = 0; j < stride; ++j)
      a[static_cast<std::size_t>(empty * stride + j)] = 0.0f;
  std::vector<float> r_rel(static_cast<std::size_t>(stride), 0.0f);
  for (std::int64_t j = 0; j < k; ++j) r_rel[static_cast<std::size_t>(j)] = 0.3f + 0.05f * j;
  std::vector<double> c(static_cast<std::size_t>(n)), cols(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < n; ++i) c[static_cast<std::size_t>(i)] = 0.01 * (i + 1);
  const std::vector<double> c_old = c;
  std::vector<char> workspace(sinkhorn_workspace_bytes(n, stride));
  std::int64_t bad = -1;
  const double r_scale = 2.0;
  const double change =
      sinkhorn_pass<float>(a.data(), n, k, stride, n, r_rel.data(), r_scale, 1.0, c.data(),
                           cols.data(), true, workspace.data(), workspace.size(), &bad);
  CHECK(bad == 3);
  std::vector<double> cols_ref(static_cast<std::size_t>(k), 0.0);
  double change_ref = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    CAPTURE(i);
    double dot = 0.0;
    for (std::int64_t j = 0; j < k; ++j)
      dot += loaded(a, i, j, stride) * static_cast<double>(r_rel[static_cast<std::size_t>(j)]);
    if (dot == 0.0) {
      CHECK(c[static_cast<std::size_t>(i)] == 0.0);
      continue;
    }
    const double c_ref = 1.0 / (static_cast<double>(n) * r_scale * dot);
    CHECK(close(c[static_cast<std::size_t>(i)], c_ref, 0.0, 1e-6));
    change_ref += std::fabs(c_old[static_cast<std::size_t>(i)] / c_ref - 1.0);
    for (std::int64_t j = 0; j < k; ++j)
      cols_ref[static_cast<std::size_t>(j)] += loaded(a, i, j, stride) * c_ref;
  }
  for (std::int64_t j = 0; j < k; ++j)
    CHECK(close(cols[static_cast<std::size_t>(j)], cols_ref[static_cast<std::size_t>(j)], 1e-300,
                1e-5));
  CHECK(close(change, change_ref, 1e-12, 1e-5));
}
