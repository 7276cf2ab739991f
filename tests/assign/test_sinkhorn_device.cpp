// Tests of the device dispatch of the SeLa label assignment (sela/assign/sinkhorn.h) that
// run on any machine:
//  * where the device cannot be used — a build without CUDA, or a CUDA build without a
//    usable GPU (this development machine) — every entry point (begin_head, solve(logits),
//    solve_device, plan) with options.device cuda is a sela::Error that names the head, the
//    device and why, and a hint; nothing is allocated and the solver stays usable on the CPU;
//  * solve_device with options.device cpu is an Error;
//  * on a machine with a GPU (CUDA build), a small solve on cuda:0 agrees with the CPU fast
//    path (the thorough comparisons are tests/cuda/test_sinkhorn_cuda.cpp).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/error.h"
#include "sela/assign/sinkhorn.h"
#include "tests/assign/sinkhorn_test_logits.h"

#if defined(SELA_HAVE_CUDA)
#include "kernels/cuda/device.cuh"
#endif

using namespace sela::assign;

namespace {

bool gpu_usable() {
#if defined(SELA_HAVE_CUDA)
  return sela::cuda::device_count() > 0;
#else
  return false;
#endif
}

std::vector<float> random_logits(std::int64_t n, std::int64_t k, std::uint32_t seed) {
  return sela::test::random_logits(n, k, 1.5f, seed);
}

// Runs `call`, which must throw sela::Error; returns the message ("" if it did not throw).
template <typename Call>
std::string error_of(Call&& call) {
  try {
    call();
  } catch (const sela::Error& error) {
    return error.what();
  }
  return "";
}

// `who`: "head 'h1'" for the head entry points, "memory plan" for plan().
void check_device_error(const std::string& message, const std::string& who) {
  INFO("message: " << message);
  REQUIRE(!message.empty());
  CHECK(message.find(who) != std::string::npos);
  CHECK(message.find("cuda:0") != std::string::npos);
  CHECK(message.find("hint:") != std::string::npos);
#if defined(SELA_HAVE_CUDA)
  CHECK(message.find("no CUDA device is usable") != std::string::npos);
#else
  CHECK(message.find("this build has no CUDA") != std::string::npos);
#endif
}

}  // namespace

TEST_CASE("device cuda where no GPU can be used is a clear Error from every entry point") {
  if (gpu_usable()) {
    MESSAGE("a GPU is usable here: the error paths are not reachable (see the next case)");
    return;
  }
  std::ostringstream log;
  SinkhornOptions options;
  options.device = sela::Device::cuda(0);
  options.log = &log;
  SinkhornSolver solver(options);
  const std::int64_t n = 50, k = 7;
  const auto z = random_logits(n, k, 3);

  check_device_error(error_of([&] { solver.begin_head(n, k, "h1"); }), "head 'h1'");
  check_device_error(error_of([&] { solver.solve(z.data(), n, k, "h2"); }), "head 'h2'");
  check_device_error(error_of([&] { solver.solve_device(z.data(), n, k, "h3"); }), "head 'h3'");
  check_device_error(error_of([&] { solver.plan(n, k); }), "memory plan");
  CHECK(solver.allocated_bytes() == 0);
  // The batch API stays closed after the failed begin_head.
  CHECK_THROWS_AS(solver.append_logits(z.data(), n), sela::Error);
  CHECK_THROWS_AS(solver.solve(), sela::Error);

  // The same solver works again on the CPU.
  options.device = sela::Device::cpu();
  solver.set_options(options);
  const SinkhornResult result = solver.solve(z.data(), n, k, "h4");
  CHECK(result.device == "cpu");
  CHECK(result.converged);
  CHECK(result.labels.size() == static_cast<std::size_t>(n));
}

TEST_CASE("solve_device with device cpu is an Error that says what to use") {
  SinkhornOptions options;
  SinkhornSolver solver(options);
  const auto z = random_logits(10, 3, 4);
  const std::string message = error_of([&] { solver.solve_device(z.data(), 10, 3, "hx"); });
  INFO("message: " << message);
  CHECK(message.find("solve_device needs options.device cuda") != std::string::npos);
  CHECK(message.find("head 'hx'") != std::string::npos);
}

TEST_CASE("on a GPU a small solve on cuda:0 agrees with the CPU fast path") {
  if (!gpu_usable()) {
    MESSAGE("SKIPPED (no CUDA device): the GPU half of this case");
    return;
  }
  std::ostringstream log;
  SinkhornOptions options;
  options.log = &log;
  const std::int64_t n = 3000, k = 40;
  const auto z = random_logits(n, k, 5);
  SinkhornSolver cpu(options);
  const SinkhornResult want = cpu.solve(z.data(), n, k, "h");
  options.device = sela::Device::cuda(0);
  SinkhornSolver gpu(options);
  const SinkhornResult got = gpu.solve(z.data(), n, k, "h");
  CHECK(got.device == "cuda:0");
  CHECK(got.converged);
  CHECK(std::llabs(got.iterations - want.iterations) <= 10);
  std::int64_t same = 0;
  for (std::size_t i = 0; i < got.labels.size(); ++i) same += got.labels[i] == want.labels[i];
  CHECK(static_cast<double>(same) >= 0.99 * static_cast<double>(n));
  CHECK(got.row_marginal_error < 1e-5);
}
