// CUDA device plumbing that the kernels, their tests and the start-up banner share: how
// many devices there are (0, not an exception, where there is no GPU or driver), a
// one-line description of a device, its cached multiprocessor count (launchers size
// persistent grids with it), and DeviceBuffer, a typed RAII device allocation with
// synchronous upload/download for tests and tools.
//
// DeviceBuffer calls cudaMalloc/cudaFree directly: it is for tests, benchmarks and one-off
// buffers, not for the steady state of a training step (that is the caching allocator's job).
//
// Plain host header (no device code): usable from .cpp files compiled by the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"

namespace sela::cuda {

// Number of CUDA devices; 0 when there is no device or no usable driver. Never throws.
int device_count();

// Why device_count() is 0, as "<status name>: <status text>" (e.g. "cudaErrorNoDevice: no
// CUDA-capable device is detected"); "" when there are devices.
std::string no_device_reason();

// The device the calling host thread uses (cudaGetDevice).
int current_device();

// One line, e.g. "cuda:0 NVIDIA H100 80GB HBM3, compute capability 9.0, 132 SMs, 79.1 GiB,
// CUDA runtime 13.0, driver 13.0, cuDNN 9.19.0, cuBLAS 13.0.2". Throws sela::Error for a
// device that does not exist.
std::string device_banner(int device);

// Streaming multiprocessors of `device`, asked once per device and then cached.
int multiprocessor_count(int device);

// A device allocation of `size` elements of T (move-only). Sizes are element counts.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;

  explicit DeviceBuffer(std::int64_t size) : size_(size) {
    SELA_CHECK(size >= 0, "DeviceBuffer", "size must be >= 0, got " << size);
    if (size > 0) {
      void* memory = nullptr;
      SELA_CUDA_CHECK(cudaMalloc(&memory, bytes()));
      data_ = static_cast<T*>(memory);
    }
  }

  // Allocates host.size() elements and copies `host` in.
  explicit DeviceBuffer(const std::vector<T>& host)
      : DeviceBuffer(static_cast<std::int64_t>(host.size())) {
    upload(host);
  }

  ~DeviceBuffer() { release(); }

  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = other.data_;
      size_ = other.size_;
      other.data_ = nullptr;
      other.size_ = 0;
    }
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::int64_t size() const { return size_; }
  std::size_t bytes() const { return static_cast<std::size_t>(size_) * sizeof(T); }

  // Synchronous copies (cudaMemcpy): the host waits for the copy, and the legacy default
  // stream orders it after work queued on blocking streams.
  void upload(const std::vector<T>& host) {
    SELA_CHECK(static_cast<std::int64_t>(host.size()) == size_, "DeviceBuffer::upload",
               "host vector has " << host.size() << " elements, the buffer " << size_);
    if (size_ > 0) SELA_CUDA_CHECK(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(static_cast<std::size_t>(size_));
    if (size_ > 0) SELA_CUDA_CHECK(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

  // Every byte 0xFF: NaN for float and double, -1 for signed integers, 255 for bytes. Tests
  // poison outputs with it so that an element a kernel forgets to write cannot pass.
  void poison() {
    if (size_ > 0) SELA_CUDA_CHECK(cudaMemset(data_, 0xFF, bytes()));
  }

 private:
  void release() noexcept {
    if (data_ != nullptr) SELA_CUDA_WARN(cudaFree(data_));
    data_ = nullptr;
    size_ = 0;
  }

  T* data_ = nullptr;
  std::int64_t size_ = 0;
};

}  // namespace sela::cuda
