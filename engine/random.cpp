// Implementation of engine/random.h.
#include "engine/random.h"

namespace sela {

namespace {
template <typename Draw>
void fill_with(Tensor& t, const char* op, Draw&& draw) {
  check_cpu_floating(op, t, "tensor");
  std::int64_t n = t.numel();
  if (t.dtype() == DType::f32) {
    float* p = t.data<float>();
    for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(draw());
  } else {
    double* p = t.data<double>();
    for (std::int64_t i = 0; i < n; ++i) p[i] = draw();
  }
}
}  // namespace

void fill_normal(Tensor& t, Rng& rng, double mean, double stddev) {
  fill_with(t, "fill_normal", [&] { return mean + stddev * rng.normal(); });
}

void fill_uniform(Tensor& t, Rng& rng, double low, double high) {
  fill_with(t, "fill_uniform", [&] { return low + (high - low) * rng.uniform(); });
}

Tensor randn(const Shape& shape, Rng& rng, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_normal(t, rng, 0.0, 1.0);
  return t;
}

}  // namespace sela
