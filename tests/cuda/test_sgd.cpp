// Tests of kernels/cuda/sgd.cuh against the CPU kernel (kernels/cpu/sgd.h), on a GPU;
// skipped (loudly) without one.
//
// Every update rule of torch.optim.SGD (plain, weight decay, momentum with and without
// dampening, Nesterov), three consecutive steps (the first writes the momentum buffer), on
// fresh random parameters, gradients and buffers; sizes 1 .. 2^20 + 7. The multi-tensor
// form updates seven tensors of different sizes in one launch and must match the CPU
// kernel applied tensor by tensor. nvcc fuses the multiply-adds, so the float tolerance is
// atol 1e-6 + rtol 1e-6 on parameters and momentum buffers (values in [-2, 2), lr 0.1), and
// 1e-14 / 1e-14 in double.
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/sgd.h"
#include "kernels/cuda/sgd.cuh"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::cuda::SgdConfig;
using sela::test::check_close;
using sela::test::DeviceBuffer;
using sela::test::random_vector;
using sela::test::TestStream;
using sela::test::Tolerance;

struct NamedConfig {
  const char* name;
  SgdConfig config;
};

std::vector<NamedConfig> configs() {
  std::vector<NamedConfig> list;
  SgdConfig c;
  c.lr = 0.1;
  list.push_back({"plain", c});
  c.weight_decay = 5e-4;
  list.push_back({"weight decay", c});
  c.momentum = 0.9;
  list.push_back({"momentum + weight decay", c});
  c.dampening = 0.1;
  list.push_back({"momentum + dampening", c});
  c.dampening = 0;
  c.nesterov = true;
  list.push_back({"nesterov + weight decay", c});
  return list;
}

template <typename T>
Tolerance tolerance() {
  return sizeof(T) == 4 ? Tolerance{1e-6, 1e-6} : Tolerance{1e-14, 1e-14};
}

template <typename T>
void check_single(std::int64_t n, const NamedConfig& named, std::uint64_t seed) {
  TestStream stream;
  const std::string tag = std::string(" ") + named.name + " (n = " + std::to_string(n) +
                          (sizeof(T) == 4 ? ", float)" : ", double)");
  auto want_param = random_vector<T>(n, seed);
  auto want_buffer = random_vector<T>(n, seed + 1);  // overwritten on the first step
  DeviceBuffer<T> param(want_param), buffer(want_buffer);
  for (int step = 0; step < 3; ++step) {
    const auto grad = random_vector<T>(n, seed + 2 + static_cast<std::uint64_t>(step));
    DeviceBuffer<T> dgrad(grad);
    sela::cuda::sgd_update<T>(n, param.data(), dgrad.data(), buffer.data(), named.config, step == 0,
                              stream);
    stream.sync();
    sela::cpu::sgd_update<T>(n, want_param.data(), grad.data(), want_buffer.data(), named.config,
                             step == 0);
    const std::string at = tag + " step " + std::to_string(step);
    check_close(param.download(), want_param, tolerance<T>(), "sgd param" + at);
    if (named.config.momentum != 0)
      check_close(buffer.download(), want_buffer, tolerance<T>(), "sgd momentum buffer" + at);
  }
}

template <typename T>
void check_multi(const NamedConfig& named, std::uint64_t seed) {
  TestStream stream;
  const std::int64_t sizes[] = {1, 7, 33, 1000, 4099, (1 << 18) + 3, 64};
  const std::size_t count = sizeof(sizes) / sizeof(sizes[0]);
  const bool momentum = named.config.momentum != 0;
  const std::string tag = std::string(" ") + named.name + (sizeof(T) == 4 ? " float" : " double");

  std::vector<std::vector<T>> want_params, want_buffers;
  std::vector<DeviceBuffer<T>> params, buffers;
  for (std::size_t k = 0; k < count; ++k) {
    want_params.push_back(random_vector<T>(sizes[k], seed + 10 * k));
    want_buffers.push_back(random_vector<T>(sizes[k], seed + 10 * k + 1));
    params.emplace_back(want_params.back());
    buffers.emplace_back(want_buffers.back());
  }
  std::vector<T*> param_pointers, buffer_pointers;
  for (std::size_t k = 0; k < count; ++k) {
    param_pointers.push_back(params[k].data());
    buffer_pointers.push_back(buffers[k].data());
  }
  DeviceBuffer<T*> dparam_pointers(param_pointers), dbuffer_pointers(buffer_pointers);
  DeviceBuffer<std::int64_t> dsizes(std::vector<std::int64_t>(sizes, sizes + count));

  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<T>> grads;
    std::vector<DeviceBuffer<T>> dgrads;
    std::vector<const T*> grad_pointers;
    for (std::size_t k = 0; k < count; ++k) {
      grads.push_back(random_vector<T>(sizes[k], seed + 1000 * (step + 1) + k));
      dgrads.emplace_back(grads.back());
      grad_pointers.push_back(dgrads.back().data());
    }
    DeviceBuffer<const T*> dgrad_pointers(grad_pointers);
    sela::cuda::sgd_update_multi<T>(static_cast<std::int64_t>(count), dparam_pointers.data(),
                                    dgrad_pointers.data(),
                                    momentum ? dbuffer_pointers.data() : nullptr, dsizes.data(),
                                    named.config, step == 0, stream);
    stream.sync();
    for (std::size_t k = 0; k < count; ++k) {
      sela::cpu::sgd_update<T>(sizes[k], want_params[k].data(), grads[k].data(),
                               want_buffers[k].data(), named.config, step == 0);
      const std::string at = tag + " tensor " + std::to_string(k) +
                             " (n = " + std::to_string(sizes[k]) + ") step " + std::to_string(step);
      check_close(params[k].download(), want_params[k], tolerance<T>(),
                  "sgd_update_multi param" + at);
      if (momentum)
        check_close(buffers[k].download(), want_buffers[k], tolerance<T>(),
                    "sgd_update_multi momentum buffer" + at);
    }
  }
}

}  // namespace

SELA_CUDA_TEST("sgd_update equals the CPU kernel for every update rule over three steps",
               sgd_single) {
  const std::int64_t sizes[] = {1, 7, 33, 1000, (1 << 20) + 7};
  std::uint64_t seed = 14000;
  for (const NamedConfig& named : configs()) {
    for (std::int64_t n : sizes) {
      check_single<float>(n, named, seed += 10);
      check_single<double>(n, named, seed += 10);
    }
  }
}

SELA_CUDA_TEST("sgd_update_multi (one launch, seven tensors) equals the CPU kernel per tensor",
               sgd_multi) {
  std::uint64_t seed = 15000;
  for (const NamedConfig& named : configs()) {
    check_multi<float>(named, seed += 100000);
    check_multi<double>(named, seed += 100000);
  }
}
