// Tensor and autograd semantics: views share storage, clones do not, errors name the op and
// the shapes, gradients accumulate like PyTorch's, NoGradGuard records nothing, and leaf
// gradients never alias each other. Device handling seen from the CPU: a cuda:N tensor is a
// clear error in a CPU-only build and on a machine without a GPU (whichever applies here; on
// a GPU machine, asking for a device that does not exist), and the device-independent calls
// (to(Device), pinned tensors, copy_from_host, Module::to) work on the CPU.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/random.h"

#if defined(SELA_HAVE_CUDA)
#include "kernels/cuda/device.cuh"
#endif

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
  std::string concat_error =
      error_of([&] { concat_rows({Tensor::zeros({2, 3}), Tensor::zeros({2, 4})}); });
  CHECK(concat_error.find("concat_rows") != std::string::npos);
  CHECK(concat_error.find("(2, 4)") != std::string::npos);
  std::string slice_error = error_of([&] { slice_rows(Tensor::zeros({5, 2}), 3, 6); });
  CHECK(slice_error.find("[3, 6)") != std::string::npos);
  CHECK(slice_error.find("(5, 2)") != std::string::npos);
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

TEST_CASE("a CUDA tensor where none can exist is an error that says why and what to do") {
  bool gpu_present = false;
#if defined(SELA_HAVE_CUDA)
  gpu_present = sela::cuda::device_count() > 0;
#endif
  if (gpu_present) {
    // A GPU machine: the device index is checked against the devices present.
    std::string missing = error_of([] { Tensor::empty({2}, DType::f32, Device::cuda(999)); });
    CHECK(missing.find("cuda:999") != std::string::npos);
    CHECK(missing.find("does not exist") != std::string::npos);
    return;
  }
  std::string error = error_of([] { Tensor::zeros({2, 3}, DType::f32, Device::cuda(0)); });
  INFO(error);
  CHECK(error.find("cuda:0") != std::string::npos);
#if defined(SELA_HAVE_CUDA)
  // A CUDA build on a machine without a usable GPU (this development box, CI).
  CHECK(error.find("no CUDA device is usable") != std::string::npos);
  CHECK(error.find("NVIDIA GPU") != std::string::npos);
#else
  CHECK(error.find("no CUDA backend") != std::string::npos);
  CHECK(error.find("-DSELA_CUDA=ON") != std::string::npos);
#endif
  // Every way of reaching the device reports the same: moving a tensor, a module, syncing.
  Tensor host = Tensor::from_vector<float>({1, 2, 3}, {3});
  CHECK(error_of([&] { host.to(Device::cuda(0)); }).find("cuda:0") != std::string::npos);
  Linear layer(3, 2);
  CHECK(error_of([&] { layer.to(Device::cuda(0)); }).find("cuda:0") != std::string::npos);
  CHECK(layer.weight.device() == Device::cpu());  // a failed move leaves the module usable
  CHECK_FALSE(error_of([] { synchronize(Device::cuda(0)); }).empty());
  CHECK(error_of([] { synchronize(Device::cpu()); }).empty());
}

TEST_CASE("device-independent copies on the CPU: to(Device), pinned tensors, copy_from_host") {
  Tensor t = Tensor::from_vector<double>({1.5, -2, 3.25, 4}, {2, 2});
  Tensor same = t.to(Device::cpu());
  CHECK_FALSE(same.same_storage(t));  // to(Device) always copies, like to(DType)
  CHECK(same.to_vector<double>() == t.to_vector<double>());

  Tensor pinned = Tensor::pinned({2, 2}, DType::f64);
  CHECK(pinned.device() == Device::cpu());
  CHECK(pinned.is_pinned() == pinned_memory_available());  // page-locked only where a GPU is
  void* batch = pinned_allocate(3 * sizeof(float));  // what the loader's ImageAllocator uses
  REQUIRE(batch != nullptr);
  static_cast<float*>(batch)[2] = 1.5f;
  pinned_free(batch, 3 * sizeof(float));
  pinned.fill_(std::nan(""));
  pinned.copy_from(t);
  CHECK(pinned.to_vector<double>() == t.to_vector<double>());

  std::vector<float> host{0.5f, 7, -1, 2, 9, 11};
  Tensor target = Tensor::full({3, 2}, std::nan(""));
  target.copy_from_host(host.data());
  CHECK(target.to_vector<float>() == host);
  CHECK(error_of([&] { target.raw_device_data(); }).find("on the host") != std::string::npos);

  // Module::to(Device) on the device the module is on changes nothing and keeps handles.
  Linear layer(3, 2);
  Tensor weight = layer.weight;
  layer.to(Device::cpu());
  CHECK(weight.same_storage(layer.weight));
  CHECK(layer.weight.requires_grad());
}

TEST_CASE("move_ changes the storage seen by every handle and keeps requires_grad and grad") {
  Tensor p = Tensor::from_vector<float>({1, 2}, {2}).set_requires_grad();
  sum(scale(p, 3)).backward();
  Tensor alias = p;
  p.move_(Device::cpu());  // same device: nothing happens
  CHECK(alias.same_storage(p));
  CHECK(p.grad().to_vector<float>() == std::vector<float>{3, 3});
  CHECK(p.requires_grad());
}
