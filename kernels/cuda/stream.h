// The one CUDA stream per device that every op of the engine runs on, and the current-device
// plumbing around it.
//
// Why one stream per device: the engine has no concurrency between ops on a device, and a
// single stream makes program order the stream order. That is what lets the caching
// allocator (device_allocator.h) hand a freed block to the next op at once, without events:
// any kernel that used the block was queued before any kernel that reuses it. The stream is
// created on first use with cudaStreamNonBlocking (it does not serialise with the legacy
// default stream) and is never destroyed before exit (destroying it during static
// destruction, after the CUDA runtime may be gone, would fail).
//
// Consequence for callers: a synchronous cudaMemcpy (legacy default stream) is NOT ordered
// after work queued on device_stream(). Copy with cudaMemcpyAsync on device_stream() and wait
// with synchronize_device_stream() where the host needs the data.
//
// Plain host header (no device code): usable from .cpp files compiled by the host compiler.
#pragma once

#include <cuda_runtime_api.h>

namespace sela::cuda {

// Devices this module keeps state for (streams, allocator pools, library handles).
constexpr int kMaxDevices = 64;

// The stream every op on `device` uses (created on first use, cudaStreamNonBlocking, never
// destroyed before exit). Also makes `device` current for the calling host thread, so that a
// kernel launched next on the stream runs where the stream lives. Throws sela::Error for a
// device that does not exist (the message says how many there are and, if none, why).
cudaStream_t device_stream(int device);

// Waits for the device's stream (cudaStreamSynchronize); kernel faults surface here as
// sela::Error. Nothing to wait for (returns at once) when the stream was never created.
void synchronize_device_stream(int device);

// Makes `device` current for the calling host thread (cudaSetDevice, checked). Asks the
// runtime which device is current first (a thread-local read, no driver call) and skips
// cudaSetDevice when it already is, so calling it before every op costs nothing.
void set_current_device(int device);

// --- additions used by the allocator and the library wrappers --------------------------------

// Throws sela::Error naming `op` unless 0 <= device < the number of devices (asked once).
void check_device_index(int device, const char* op);

// The stream of `device` if device_stream() created it already, else nullptr. Never creates
// a stream and never changes the current device (the allocator and the library wrappers use
// it to ask "is this the device's stream?").
cudaStream_t created_device_stream(int device);

// The device a stream belongs to (cudaStreamGetDevice; the legacy default stream, nullptr,
// belongs to the current device).
int stream_device(cudaStream_t stream);

// Makes a device current for a scope and restores the previous one when the scope ends
// (nothing happens when the device is current already).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace sela::cuda
