// The per-device streams (see stream.h). Host code, compiled by the host compiler.
//
// The table of streams is a leaked singleton (never destroyed: a stream destroyed during
// static destruction, after the CUDA runtime has shut down, reports errors). The fast path
// of device_stream() is one atomic load; creation takes a mutex and checks again, so two
// threads asking at once create one stream.
#include "kernels/cuda/stream.h"

#include <atomic>
#include <mutex>
#include <string>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.cuh"

namespace sela::cuda {
namespace {

struct StreamTable {
  std::mutex creation;
  std::atomic<cudaStream_t> streams[kMaxDevices] = {};
};

StreamTable& stream_table() {
  static StreamTable* table = new StreamTable();  // leaked on purpose (see the top)
  return *table;
}

// Devices present, asked once (the count does not change during a process).
int present_devices() {
  static const int count = device_count();
  return count;
}

}  // namespace

void check_device_index(int device, const char* op) {
  const int count = present_devices();
  if (device >= 0 && device < count && device < kMaxDevices) return;
  std::string why = count == 0 ? ": " + no_device_reason() : std::string();
  SELA_FAIL_HINT(op, "no device cuda:" << device << " (" << count << " present" << why << ")",
                 count == 0 ? "run on the CPU (--device cpu) or on a machine with an NVIDIA GPU"
                            : "device indices run from 0 to the number of GPUs - 1");
}

void set_current_device(int device) {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == device) return;
  SELA_CUDA_CHECK(cudaSetDevice(device));
}

cudaStream_t device_stream(int device) {
  check_device_index(device, "device_stream");
  set_current_device(device);
  StreamTable& table = stream_table();
  cudaStream_t stream = table.streams[device].load(std::memory_order_acquire);
  if (stream != nullptr) return stream;
  std::lock_guard<std::mutex> lock(table.creation);
  stream = table.streams[device].load(std::memory_order_acquire);
  if (stream == nullptr) {
    SELA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    table.streams[device].store(stream, std::memory_order_release);
  }
  return stream;
}

cudaStream_t created_device_stream(int device) {
  if (device < 0 || device >= kMaxDevices) return nullptr;
  return stream_table().streams[device].load(std::memory_order_acquire);
}

void synchronize_device_stream(int device) {
  check_device_index(device, "synchronize_device_stream");
  cudaStream_t stream = created_device_stream(device);
  if (stream == nullptr) return;  // nothing was ever queued
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
}

int stream_device(cudaStream_t stream) {
  int device = -1;
  if (stream == nullptr) {
    SELA_CUDA_CHECK(cudaGetDevice(&device));
    return device;
  }
  // The device streams answer without a driver call (the usual case: every engine op).
  for (int d = 0; d < kMaxDevices; ++d) {
    if (created_device_stream(d) == stream) return d;
  }
#if CUDART_VERSION >= 12080
  SELA_CUDA_CHECK(cudaStreamGetDevice(stream, &device));
#else
  // cudaStreamGetDevice is new in CUDA 12.8; an older toolkit (the GPU machine's may be)
  // assumes a foreign stream belongs to the current device, as the caller set it up.
  SELA_CUDA_CHECK(cudaGetDevice(&device));
#endif
  return device;
}

DeviceGuard::DeviceGuard(int device) {
  SELA_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    SELA_CUDA_CHECK(cudaSetDevice(device));
  } else {
    previous_ = -1;  // nothing to restore
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) SELA_CUDA_WARN(cudaSetDevice(previous_));
}

}  // namespace sela::cuda
