// CUDA device plumbing (see device.cuh). Host code only; it is a .cu file so that the
// kernel library's CUDA-specific pieces live in one place and build with one compiler.
//
// The banner ends with the cuDNN and cuBLAS versions loaded at run time (cudnn_conv.h,
// cublas_gemm.h), so one line says which libraries a benchmark figure came from.
//
// The multiprocessor count is cached per device in atomics: launchers ask for it on every
// call and cudaDeviceGetAttribute, though cheap, is a driver round trip.
#include "kernels/cuda/device.cuh"

#include <atomic>
#include <iomanip>
#include <sstream>

#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cudnn_conv.h"

namespace sela::cuda {
namespace {

// Devices whose multiprocessor count is cached (more are asked every time).
constexpr int kCachedDevices = 64;
std::atomic<int> cached_multiprocessors[kCachedDevices];  // 0 = not asked yet

}  // namespace

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so that it is not reported by a later check
    return 0;
  }
  return count;
}

std::string no_device_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
  }
  return count > 0 ? std::string() : std::string("cudaGetDeviceCount reported 0 devices");
}

int current_device() {
  int device = 0;
  SELA_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

std::string device_banner(int device) {
  const int count = device_count();
  SELA_CHECK(device >= 0 && device < count, "device_banner",
             "no device cuda:" << device << " (" << count << " present"
                               << (count == 0 ? ": " + no_device_reason() : std::string()) << ")");
  cudaDeviceProp properties{};
  SELA_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  int runtime_version = 0, driver_version = 0;
  SELA_CUDA_CHECK(cudaRuntimeGetVersion(&runtime_version));
  SELA_CUDA_CHECK(cudaDriverGetVersion(&driver_version));
  std::ostringstream out;
  out << "cuda:" << device << " " << properties.name << ", compute capability " << properties.major
      << "." << properties.minor << ", " << properties.multiProcessorCount << " SMs, " << std::fixed
      << std::setprecision(1)
      << static_cast<double>(properties.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0) << " GiB"
      << ", CUDA runtime " << runtime_version / 1000 << "." << (runtime_version % 1000) / 10
      << ", driver " << driver_version / 1000 << "." << (driver_version % 1000) / 10 << ", "
      << cudnn_version_text() << ", " << cublas_version_text();
  return out.str();
}

int multiprocessor_count(int device) {
  if (device >= 0 && device < kCachedDevices) {
    const int cached = cached_multiprocessors[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  SELA_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kCachedDevices)
    cached_multiprocessors[device].store(count, std::memory_order_relaxed);
  return count;
}

}  // namespace sela::cuda
