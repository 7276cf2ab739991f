// Tests of kernels/cuda/device.cuh on a GPU: the banner names the device, its compute
// capability and the cuDNN and cuBLAS versions loaded, the cached multiprocessor count equals
// the device properties', and
// DeviceBuffer round-trips data, poisons to NaN / -1, and moves ownership. Skipped (loudly)
// without a GPU.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cudnn_conv.h"
#include "tests/cuda/cuda_test_support.h"

using sela::cuda::DeviceBuffer;
using sela::test::random_vector;

TEST_CASE("the cuDNN and cuBLAS version texts need no GPU") {
  const std::string cudnn = sela::cuda::cudnn_version_text();
  const std::string cublas = sela::cuda::cublas_version_text();
  MESSAGE(cudnn << ", " << cublas);
  CHECK(cudnn.rfind("cuDNN ", 0) == 0);
  CHECK(cublas.rfind("cuBLAS ", 0) == 0);
}

SELA_CUDA_TEST("device banner names the device, its compute capability and memory", banner) {
  const int device = sela::cuda::current_device();
  cudaDeviceProp properties{};
  SELA_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  const std::string banner = sela::cuda::device_banner(device);
  MESSAGE(banner);
  CHECK(banner.find(properties.name) != std::string::npos);
  CHECK(banner.find("compute capability " + std::to_string(properties.major) + "." +
                    std::to_string(properties.minor)) != std::string::npos);
  CHECK(banner.find("GiB") != std::string::npos);
  CHECK(banner.find("CUDA runtime") != std::string::npos);
  CHECK(banner.find(sela::cuda::cudnn_version_text()) != std::string::npos);
  CHECK(banner.find(sela::cuda::cublas_version_text()) != std::string::npos);
  CHECK(banner.find("cuDNN") != std::string::npos);
  CHECK(banner.find("cuBLAS") != std::string::npos);
  CHECK(sela::cuda::multiprocessor_count(device) == properties.multiProcessorCount);
  CHECK(sela::cuda::multiprocessor_count(device) == properties.multiProcessorCount);  // cached
}

SELA_CUDA_TEST("DeviceBuffer uploads, downloads, poisons and moves", device_buffer) {
  const auto host = random_vector<float>(1001, 11);
  DeviceBuffer<float> buffer(host);
  CHECK(buffer.size() == 1001);
  CHECK(buffer.download() == host);

  buffer.poison();
  for (float v : buffer.download()) REQUIRE(std::isnan(v));
  DeviceBuffer<std::int64_t> indices(5);
  indices.poison();
  for (std::int64_t v : indices.download()) CHECK(v == -1);

  buffer.upload(host);
  DeviceBuffer<float> moved(std::move(buffer));
  CHECK(buffer.data() == nullptr);
  CHECK(buffer.size() == 0);
  CHECK(moved.download() == host);
  CHECK_THROWS_AS(moved.upload(std::vector<float>(3)), sela::Error);

  DeviceBuffer<double> empty(0);
  CHECK(empty.data() == nullptr);
  CHECK(empty.download().empty());
}
