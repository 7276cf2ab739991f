// Finite-difference gradient check shared by the engine tests.
//
// For a function f of several float64 tensors, the scalar L = Σ f(x) ⊙ R with a fixed random
// projection R is differentiated twice: by autograd, and by central differences
// (L(x + h e_j) − L(x − h e_j)) / 2h on every element (or a random subset of `max_probes`).
// The comparison is |analytic − numeric| <= atol + rtol·|numeric| per element, and every
// value must be finite. Central differences in float64 with h = 1e-6 have truncation error
// O(h²·f''') and rounding error O(ε·|L|/h) ≈ 1e-10·|L|, so atol = 1e-6, rtol = 1e-5 leave
// a wide margin for smooth ops; ops with kinks (ReLU, max-pool) are fed inputs whose values
// are at least 1e-3 away from every kink, so no probe crosses one.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace sela::test {

using TensorFunction = std::function<Tensor(const std::vector<Tensor>&)>;

inline double projected(const Tensor& y, const Tensor& projection) {
  const double* a = y.data<double>();
  const double* b = projection.data<double>();
  double total = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i) total += a[i] * b[i];
  return total;
}

// Returns the number of elements that failed (also reported through doctest CHECKs).
inline int gradcheck(const std::string& label, const TensorFunction& f, std::vector<Tensor> inputs,
                     Rng& rng, double atol = 1e-6, double rtol = 1e-5, double step = 1e-6,
                     std::int64_t max_probes = 400) {
  for (auto& x : inputs) {
    REQUIRE(x.dtype() == DType::f64);
    x.set_requires_grad(true);
    x.zero_grad();
  }
  Tensor y = f(inputs);
  Tensor projection = randn(y.shape(), rng, DType::f64);
  Tensor loss = sum(mul(y, projection));
  loss.backward();
  int failures = 0;
  for (std::size_t which = 0; which < inputs.size(); ++which) {
    Tensor x = inputs[which];
    Tensor analytic = x.grad();
    REQUIRE_MESSAGE(analytic.defined(), label << ": no gradient for input " << which);
    double* values = x.data<double>();
    const double* grad = analytic.data<double>();
    std::int64_t n = x.numel();
    std::vector<std::int64_t> probes;
    if (n <= max_probes) {
      for (std::int64_t i = 0; i < n; ++i) probes.push_back(i);
    } else {
      for (std::int64_t i = 0; i < max_probes; ++i) probes.push_back(static_cast<std::int64_t>(rng.below(n)));
    }
    NoGradGuard no_grad;
    for (std::int64_t j : probes) {
      double saved = values[j];
      values[j] = saved + step;
      double plus = projected(f(inputs), projection);
      values[j] = saved - step;
      double minus = projected(f(inputs), projection);
      values[j] = saved;
      double numeric = (plus - minus) / (2 * step);
      bool ok = std::isfinite(grad[j]) && std::isfinite(numeric) &&
                std::fabs(grad[j] - numeric) <= atol + rtol * std::fabs(numeric);
      if (!ok) {
        ++failures;
        if (failures <= 5) {
          FAIL_CHECK(label << ": input " << which << " element " << j << " analytic " << grad[j]
                           << " numeric " << numeric);
        }
      }
    }
  }
  CHECK_MESSAGE(failures == 0, label << ": " << failures << " gradient elements off");
  return failures;
}

// Values spread so that any two differ by >= `gap` and none is within gap/2 of zero:
// a random permutation of ±(gap/2 + gap·k), scaled. Used for ReLU / max-pool inputs.
inline Tensor spaced_values(const Shape& shape, Rng& rng, double gap = 1e-2) {
  std::int64_t n = shape_numel(shape);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    double magnitude = gap / 2 + gap * static_cast<double>(i / 2);
    v[static_cast<std::size_t>(i)] = (i % 2 == 0) ? magnitude : -magnitude;
  }
  for (std::int64_t i = n - 1; i > 0; --i) {
    std::int64_t j = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(i + 1)));
    std::swap(v[static_cast<std::size_t>(i)], v[static_cast<std::size_t>(j)]);
  }
  return Tensor::from_vector(v, shape);
}

}  // namespace sela::test
