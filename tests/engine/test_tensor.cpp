// Tensor and autograd semantics: views share storage, clones do not, errors name the op and
// the shapes, gradients accumulate like PyTorch's, NoGradGuard records nothing, and leaf
// gradients never alias each other.
#include <doctest/doctest.h>

#include <functional>
#include <string>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"

using namespace sela;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("views share storage; clone and to() copy") {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor v = t.view({3, -1});
  CHECK(v.shape() == Shape{3, 2});
  v.data<float>()[0] = 42;
  CHECK(t.data<float>()[0] == 42);
  Tensor second_row = t.rows(1, 2);
  CHECK(second_row.shape() == Shape{1, 3});
  CHECK(second_row.data<float>()[0] == 4);
  Tensor c = t.clone();
  c.data<float>()[1] = -1;
  CHECK(t.data<float>()[1] == 2);
  Tensor d = t.to(DType::f64);
  CHECK(d.dtype() == DType::f64);
  CHECK(d.data<double>()[5] == 6.0);
  CHECK(reinterpret_cast<std::uintptr_t>(Tensor::empty({3}).raw_data()) % 64 == 0);
}

TEST_CASE("errors name the op, the shapes and what to do") {
  Tensor t = Tensor::zeros({2, 3});
  std::string view_error = error_of([&] { t.view({4, 2}); });
  CHECK(view_error.find("view") != std::string::npos);
  CHECK(view_error.find("(2, 3)") != std::string::npos);
  std::string linear_error =
      error_of([&] { linear(Tensor::zeros({4, 5}), Tensor::zeros({3, 6}), Tensor()); });
  CHECK(linear_error.find("linear") != std::string::npos);
  CHECK(linear_error.find("(4, 5)") != std::string::npos);
  CHECK(linear_error.find("(3, 6)") != std::string::npos);
  std::string dtype_error = error_of([&] { add(Tensor::zeros({2}), Tensor::zeros({2}, DType::f64)); });
  CHECK(dtype_error.find("float32") != std::string::npos);
  CHECK(dtype_error.find("float64") != std::string::npos);
  std::string target_error = error_of([&] {
    cross_entropy(Tensor::zeros({2, 3}), Tensor::from_vector<std::int64_t>({0, 3}, {2}));
  });
  CHECK(target_error.find("cross_entropy") != std::string::npos);
  std::string target_dtype_error = error_of(
      [&] { cross_entropy(Tensor::zeros({2, 3}), Tensor::from_vector<std::int32_t>({0, 1}, {2})); });
  CHECK(target_dtype_error.find("int64") != std::string::npos);
}

TEST_CASE("gradients accumulate over backward calls and leaf gradients never alias") {
  Tensor a = Tensor::from_vector<double>({1, 2, 3}, {3}).set_requires_grad();
  Tensor b = Tensor::from_vector<double>({4, 5, 6}, {3}).set_requires_grad();
  Tensor loss = sum(add(a, b));
  loss.backward();
  CHECK(a.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
  // add's backward hands the same gradient to both inputs: they must not share storage.
  a.grad().data<double>()[0] = 100;
  CHECK(b.grad().data<double>()[0] == 1);
  sum(mul(a, b)).backward();  // d/da = b, accumulated onto the existing gradient
  CHECK(a.grad().to_vector<double>() == std::vector<double>{104, 6, 7});
  CHECK(b.grad().to_vector<double>() == std::vector<double>{2, 3, 4});
  a.zero_grad();
  CHECK_FALSE(a.grad().defined());
}

TEST_CASE("a tensor used twice receives the sum of both paths") {
  Tensor x = Tensor::from_vector<double>({2, -3}, {2}).set_requires_grad();
  Tensor y = add(scale(x, 3), mul(x, x));  // dy/dx = 3 + 2x
  sum(y).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{7, -3});
}

TEST_CASE("NoGradGuard records nothing; backward without grad is a clear error") {
  Tensor x = Tensor::from_vector<double>({1, 2}, {2}).set_requires_grad();
  {
    NoGradGuard guard;
    Tensor y = scale(x, 2);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
  }
  CHECK(grad_mode_enabled());
  Tensor z = scale(x.detach(), 2);
  CHECK(error_of([&] { sum(z).backward(); }).find("does not require grad") != std::string::npos);
  CHECK(error_of([&] { scale(x, 2).backward(); }).find("scalar") != std::string::npos);
}

TEST_CASE("the host caching allocator reuses blocks and tracks the peak") {
  HostMemoryStats before = host_memory_stats();
  { Tensor big = Tensor::empty({1 << 20}); }  // 4 MiB, freed into the cache
  { Tensor again = Tensor::empty({1 << 20}); }
  HostMemoryStats after = host_memory_stats();
  CHECK(after.cache_hits >= before.cache_hits + 1);
  CHECK(after.peak_bytes >= before.current_bytes + (4u << 20));
}
