// Shared helpers of the CPU kernel tests (tests/kernels/test_*.cpp): inputs, poisoned
// outputs, tolerance checks and central finite differences, written once so that every
// kernel test draws its inputs and judges its outputs the same way.
//
// Inputs: random_values(n, seed, lo, hi) draws n doubles uniform in [lo, hi) from an
// mt19937_64 seeded with `seed`, so a (seed, range) pair always gives the same values; the
// range has no default because the tests use different ones. as<T> rounds such a vector to
// the kernel's element type, widen turns the rounded values back into doubles (references
// are computed from what the kernel actually sees). poisoned<T>(n) is an output buffer full
// of quiet NaN: an element the kernel forgets to write fails every comparison below.
//
// Tolerance convention: an element passes when it is finite and
//     |got - ref| <= atol + rtol * |ref|
// with atol and rtol stated by each test next to its reason. NaN and +-Inf always fail,
// whatever the tolerance (a NaN-poisoned output that was never written cannot slip through
// a zero tolerance or an infinite reference). within_tolerance is that predicate for one
// value, count_bad counts the elements of a vector that fail it, check_close asserts that
// none fails and on failure reports how many did and the first few (index, value,
// reference) in one message. count_bad and check_close each REQUIRE equal sizes first.
//
// central_differences(param, loss, h) is the float64 gradient reference
// (loss(p + h e_i) - loss(p - h e_i)) / (2h) for every entry of *param, or for the entries
// listed in `indices`; *param is perturbed in place and restored exactly, so `loss` reads it
// (typically through a lambda capturing it by reference).
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace sela::test {

// n values uniform in [lo, hi), the same for the same (seed, lo, hi).
inline std::vector<double> random_values(std::int64_t n, std::uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> values(static_cast<std::size_t>(n));
  for (double& x : values) x = dist(rng);
  return values;
}

// The values rounded to T.
template <typename T>
std::vector<T> as(const std::vector<double>& values) {
  return std::vector<T>(values.begin(), values.end());
}

// The values converted exactly to double.
template <typename T>
std::vector<double> widen(const std::vector<T>& values) {
  return std::vector<double>(values.begin(), values.end());
}

// n quiet NaNs: an output buffer whose unwritten elements fail every check.
template <typename T>
std::vector<T> poisoned(std::int64_t n) {
  return std::vector<T>(static_cast<std::size_t>(n), std::numeric_limits<T>::quiet_NaN());
}

// got is finite and |got - ref| <= atol + rtol * |ref|.
inline bool within_tolerance(double got, double ref, double atol, double rtol) {
  return std::isfinite(got) && std::abs(got - ref) <= atol + rtol * std::abs(ref);
}

// How many elements of got fail within_tolerance against ref (sizes REQUIREd equal).
template <typename T>
std::int64_t count_bad(const std::vector<T>& got, const std::vector<double>& ref, double atol,
                       double rtol) {
  REQUIRE(got.size() == ref.size());
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!within_tolerance(static_cast<double>(got[i]), ref[i], atol, rtol)) ++bad;
  return bad;
}

// CHECKs that every element of got is within_tolerance of ref (sizes REQUIREd equal); a
// failure names `what`, the number of bad elements and the first three of them.
template <typename T>
void check_close(const std::vector<T>& got, const std::vector<double>& ref, double atol,
                 double rtol, const std::string& what) {
  REQUIRE(got.size() == ref.size());
  std::size_t failures = 0;
  std::ostringstream first_failures;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    if (within_tolerance(g, ref[i], atol, rtol)) continue;
    if (failures++ < 3) first_failures << "\n  [" << i << "] = " << g << ", reference " << ref[i];
  }
  const std::string listed = first_failures.str();
  INFO(what << ": " << failures << " of " << got.size() << " elements outside atol " << atol
            << " + rtol " << rtol << "; first ones:" << listed);
  CHECK(failures == 0);
}

// Central differences of loss() along the entries `indices` of *param, with step h; each
// entry is restored exactly after its two evaluations.
template <typename Loss>
std::vector<double> central_differences(std::vector<double>* param,
                                        const std::vector<std::size_t>& indices, const Loss& loss,
                                        double h) {
  std::vector<double> gradient;
  gradient.reserve(indices.size());
  for (std::size_t i : indices) {
    const double saved = (*param)[i];
    (*param)[i] = saved + h;
    const double up = loss();
    (*param)[i] = saved - h;
    const double down = loss();
    (*param)[i] = saved;
    gradient.push_back((up - down) / (2 * h));
  }
  return gradient;
}

// Central differences of loss() along every entry of *param.
template <typename Loss>
std::vector<double> central_differences(std::vector<double>* param, const Loss& loss, double h) {
  std::vector<std::size_t> every(param->size());
  for (std::size_t i = 0; i < every.size(); ++i) every[i] = i;
  return central_differences(param, every, loss, h);
}

}  // namespace sela::test
