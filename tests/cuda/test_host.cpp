// Tests of the CUDA backend that need no GPU, so they run (and must pass) everywhere:
// the error template of kernels/cuda/cuda_check.h (status name, statement, file, device
// hint), device_count() without a device, and the launchers' host-side argument checks,
// which must throw sela::Error before anything is launched (nothing here touches device
// memory: the pointers are null or never dereferenced). This binary never prints the
// skip marker, so CTest reports it as passed or failed like any CPU test.
#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "engine/error.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/dropout.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/pool.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/sgd.cuh"
#include "kernels/cuda/softmax.cuh"

namespace {

// The message of the sela::Error that `body` throws ("" if it throws none).
template <typename Body>
std::string error_of(const Body& body) {
  try {
    body();
  } catch (const sela::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A non-null address that is never dereferenced: the checks below fail before any launch.
template <typename T>
T* fake() {
  static T storage[4];
  return storage;
}

}  // namespace

TEST_CASE("SELA_CUDA_CHECK throws sela::Error with status, statement and source location") {
  const std::string message = error_of([] { SELA_CUDA_CHECK(cudaErrorInvalidValue); });
  INFO(message);
  CHECK(contains(message, "cudaErrorInvalidValue"));
  CHECK(contains(message, "CUDA error"));
  CHECK(contains(message, "`cudaErrorInvalidValue`"));  // the statement as written
  CHECK(contains(message, "test_host.cpp"));
  CHECK_NOTHROW(SELA_CUDA_CHECK(cudaSuccess));

  const std::string no_device = error_of([] { SELA_CUDA_CHECK(cudaErrorNoDevice); });
  CHECK(contains(no_device, "hint: no usable GPU"));
  const std::string memory = error_of([] { SELA_CUDA_CHECK(cudaErrorMemoryAllocation); });
  CHECK(contains(memory, "reduce the batch size"));
}

TEST_CASE("SELA_CUDA_CHECK_LAUNCH names the op; SELA_CUDA_WARN never throws") {
  try {
    ::sela::cuda::check_status(cudaErrorInvalidConfiguration, "relu_forward", "kernel launch",
                               __FILE__, __LINE__);
    FAIL("no exception");
  } catch (const sela::Error& e) {
    CHECK(e.op() == "relu_forward");
    CHECK(contains(e.message(), "cudaErrorInvalidConfiguration"));
  }
  CHECK_NOTHROW(SELA_CUDA_WARN(cudaErrorInvalidValue));  // prints a warning to stderr
}

TEST_CASE("device_count is 0 with a reason, or positive with a banner") {
  const int count = sela::cuda::device_count();
  REQUIRE(count >= 0);
  if (count == 0) {
    MESSAGE("no CUDA device here: " << sela::cuda::no_device_reason());
    CHECK(!sela::cuda::no_device_reason().empty());
    CHECK_THROWS_AS(sela::cuda::device_banner(0), sela::Error);
  } else {
    CHECK(sela::cuda::no_device_reason().empty());
    MESSAGE(sela::cuda::device_banner(0));
    CHECK(contains(sela::cuda::device_banner(0), "compute capability"));
  }
  CHECK_THROWS_AS(sela::cuda::device_banner(-1), sela::Error);
  CHECK_THROWS_AS(sela::cuda::device_banner(count), sela::Error);
}

TEST_CASE("elementwise launchers reject bad sizes and null pointers before launching") {
  cudaStream_t s = nullptr;
  CHECK_THROWS_AS(sela::cuda::add<float>(-1, fake<float>(), fake<float>(), fake<float>(), s),
                  sela::Error);
  CHECK(contains(
      error_of([&] { sela::cuda::mul<float>(5, nullptr, fake<float>(), fake<float>(), s); }),
      "pointer argument 0 is null"));
  CHECK_THROWS_AS(sela::cuda::relu_forward<double>(-3, fake<double>(), fake<double>(), s),
                  sela::Error);
  CHECK_THROWS_AS(sela::cuda::add_row_bias<float>(2, -1, fake<float>(), fake<float>(), s),
                  sela::Error);
  CHECK_THROWS_AS((sela::cuda::cast<float, double>(-1, fake<float>(), fake<double>(), s)),
                  sela::Error);
  // Empty work returns before touching CUDA, even with null pointers and no device.
  CHECK_NOTHROW(sela::cuda::add<float>(0, nullptr, nullptr, nullptr, s));
  CHECK_NOTHROW(sela::cuda::add_row_bias<float>(0, 5, nullptr, nullptr, s));
}

TEST_CASE("reduction launchers check their sizes") {
  cudaStream_t s = nullptr;
  CHECK_THROWS_AS(sela::cuda::sum_rows<float>(-1, 3, fake<float>(), fake<float>(), s), sela::Error);
  CHECK(contains(error_of([&] {
                   sela::cuda::argmax_rows<float>(3, 0, fake<float>(), fake<std::int64_t>(), s);
                 }),
                 "has no largest element"));
  CHECK_THROWS_AS(sela::cuda::sum<float>(-2, fake<float>(), s), sela::Error);
  CHECK(sela::cuda::sum_workspace_size(0) >= 1);
  CHECK(sela::cuda::sum_workspace_size(1 << 30) <= 4096);
}

TEST_CASE("max-pool launchers use the CPU shape check") {
  cudaStream_t s = nullptr;
  sela::cuda::Pool2dShape bad{1, 1, 5, 5, 3, 3, 2, 2, 2, 2};  // padding 2 > kernel 3 / 2
  CHECK(contains(error_of([&] {
                   sela::cuda::max_pool2d_forward<float>(bad, fake<float>(), fake<float>(),
                                                         fake<std::int32_t>(), s);
                 }),
                 "at most half the kernel"));
  CHECK_THROWS_AS(sela::cuda::max_pool2d_backward<float>(bad, fake<float>(), fake<std::int32_t>(),
                                                         fake<float>(), s),
                  sela::Error);
}

TEST_CASE("batch-norm launchers check sizes, eps and running statistics") {
  cudaStream_t s = nullptr;
  float* p = fake<float>();
  double* w = fake<double>();
  CHECK(contains(error_of([&] {
                   sela::cuda::batch_norm_forward_train<float>(1, 3, 1, p, p, p, 1e-5f, 0.1f, p, p,
                                                               p, p, p, w, s);
                 }),
                 "more than 1 value per channel"));
  CHECK_THROWS_AS(sela::cuda::batch_norm_forward_train<float>(2, 3, 4, p, p, p, -1.0f, 0.1f, p, p,
                                                              p, p, p, w, s),
                  sela::Error);
  CHECK(contains(error_of([&] {
                   sela::cuda::batch_norm_forward_train<float>(2, 3, 4, p, p, p, 1e-5f, 0.1f, p,
                                                               nullptr, p, p, p, w, s);
                 }),
                 "both be given"));
  CHECK(contains(error_of([&] {
                   sela::cuda::batch_norm_forward_train<float>(2, 3, 4, p, p, p, 1e-5f, 0.1f, p, p,
                                                               p, p, p, nullptr, s);
                 }),
                 "is null"));
  CHECK(sela::cuda::batch_norm_workspace_size(256, 96, 3025) == 96 * (95 * 2 + 3));
  CHECK(sela::cuda::batch_norm_workspace_size(2, 1, 4500001) == 1024 * 2 + 3);
  CHECK_THROWS_AS(sela::cuda::batch_norm_forward_eval<float>(2, -3, 4, p, p, p, p, p, 1e-5f, p, s),
                  sela::Error);
  CHECK_THROWS_AS(
      sela::cuda::batch_norm_backward_train<float>(0, 3, 4, p, p, p, p, p, p, p, p, w, s),
      sela::Error);
}

TEST_CASE("dropout launchers check p and the counter range") {
  cudaStream_t s = nullptr;
  float* p = fake<float>();
  CHECK_THROWS_AS(sela::cuda::dropout_forward<float>(4, p, 1.0f, 1, 0, p, fake<std::uint8_t>(), s),
                  sela::Error);
  CHECK_THROWS_AS(sela::cuda::dropout_forward<float>(4, p, -0.1f, 1, 0, p, fake<std::uint8_t>(), s),
                  sela::Error);
  CHECK(contains(error_of([&] {
                   sela::cuda::dropout_forward<float>(4, p, 0.5f, 1, ~std::uint64_t{0} - 1, p,
                                                      fake<std::uint8_t>(), s);
                 }),
                 "passes 2^64"));
  CHECK_THROWS_AS(sela::cuda::dropout_backward<float>(4, p, fake<std::uint8_t>(), 1.5f, p, s),
                  sela::Error);
}

TEST_CASE("softmax and cross-entropy launchers check their sizes") {
  cudaStream_t s = nullptr;
  float* p = fake<float>();
  std::int64_t* t = fake<std::int64_t>();
  CHECK_THROWS_AS(sela::cuda::log_softmax_forward<float>(-1, 4, p, p, s), sela::Error);
  CHECK(contains(error_of([&] { sela::cuda::cross_entropy_forward<float>(0, 4, p, t, p, s); }),
                 "at least one row and one class"));
  CHECK_THROWS_AS(sela::cuda::cross_entropy_backward<float>(3, 0, p, t, 1.0f, p, s), sela::Error);
  CHECK_THROWS_AS(sela::cuda::cross_entropy_forward_into<float>(3, 4, p, t, p, nullptr, t, s),
                  sela::Error);
}

TEST_CASE("sgd launchers check the configuration as torch.optim.SGD") {
  cudaStream_t s = nullptr;
  float* p = fake<float>();
  sela::cuda::SgdConfig nesterov_without_momentum;
  nesterov_without_momentum.nesterov = true;
  CHECK(contains(error_of([&] {
                   sela::cuda::sgd_update<float>(4, p, p, p, nesterov_without_momentum, false, s);
                 }),
                 "nesterov"));
  sela::cuda::SgdConfig momentum;
  momentum.momentum = 0.9;
  CHECK(contains(
      error_of([&] { sela::cuda::sgd_update<float>(4, p, p, nullptr, momentum, true, s); }),
      "needs a momentum buffer"));
  CHECK_THROWS_AS(
      sela::cuda::sgd_update_multi<float>(2, fake<float*>(), fake<const float*>(), nullptr,
                                          fake<std::int64_t>(), momentum, false, s),
      sela::Error);
  sela::cuda::SgdConfig negative_lr;
  negative_lr.lr = -1;
  CHECK_THROWS_AS(sela::cuda::sgd_update_multi<float>(0, nullptr, nullptr, nullptr, nullptr,
                                                      negative_lr, false, s),
                  sela::Error);
}
