// Tests of the caching allocator (kernels/cuda/device_allocator.h) and of the per-device
// stream it relies on (kernels/cuda/stream.h).
//
// Without a GPU: the size classes (rounding, idempotence, at most 1/8 waste above 4 KiB),
// human-readable sizes, and argument checks that must fail before any CUDA call.
// On a GPU (skipped loudly by name without one): a freed block is handed out again for the
// same size class without cudaMalloc; current/peak/cached/reserved counters; release of the
// cache; the out-of-memory error for 1 PiB (what was asked, "free", the op's name) leaves no
// CUDA error behind; bad frees are refused; pinned host memory round-trips through the
// device, is reused, and is NOT reused while a copy queued on the device stream may still
// read it (the stream is held by a host function until the test lets it go); the census of
// the blocks in use at the peak; device_free_to_driver gives a block back to the driver.
#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/device_allocator.h"
#include "kernels/cuda/stream.h"
#include "tests/cuda/cuda_test_support.h"

namespace {

using sela::cuda::allocation_size_class;
using sela::cuda::DeviceMemoryStats;

constexpr std::size_t kMiB = std::size_t(1) << 20;

// Waits for every stream of the current device (the tests mix device_stream, which does not
// synchronise with the legacy default stream, and synchronous cudaMemcpy).
void settle() { SELA_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace

// --- without a GPU ---------------------------------------------------------------------------

TEST_CASE("size classes: 512 B steps to 1 MiB, 128 KiB to 16 MiB, 2 MiB above") {
  CHECK(allocation_size_class(0) == 0);
  CHECK(allocation_size_class(1) == 512);
  CHECK(allocation_size_class(512) == 512);
  CHECK(allocation_size_class(513) == 1024);
  CHECK(allocation_size_class(kMiB) == kMiB);
  CHECK(allocation_size_class(kMiB + 1) == kMiB + 128 * 1024);
  CHECK(allocation_size_class(16 * kMiB) == 16 * kMiB);
  CHECK(allocation_size_class(16 * kMiB + 1) == 18 * kMiB);
  CHECK(allocation_size_class(300 * kMiB + 5) == 302 * kMiB);
  std::mt19937_64 rng(41);
  std::uniform_int_distribution<std::size_t> any_size(1, std::size_t(1) << 36);
  for (int i = 0; i < 10000; ++i) {
    const std::size_t bytes = any_size(rng) >> (i % 28);  // all magnitudes
    if (bytes == 0) continue;
    const std::size_t block = allocation_size_class(bytes);
    INFO("bytes " << bytes << " -> class " << block);
    REQUIRE(block >= bytes);
    REQUIRE(allocation_size_class(block) == block);  // a class is its own class
    REQUIRE(block % 512 == 0);
    if (bytes > 4096) REQUIRE(block - bytes <= bytes / 8);
  }
}

TEST_CASE("human_bytes writes sizes as people read them") {
  CHECK(sela::cuda::human_bytes(0) == "0 B");
  CHECK(sela::cuda::human_bytes(512) == "512 B");
  CHECK(sela::cuda::human_bytes(1536) == "1.50 KiB");
  CHECK(sela::cuda::human_bytes(2 * kMiB) == "2.00 MiB");
  CHECK(sela::cuda::human_bytes(std::uint64_t(1) << 50) == "1.00 PiB");
}

TEST_CASE("allocator and stream calls check the device before any CUDA work") {
  CHECK_THROWS_AS(sela::cuda::device_allocate(16, -1, "test"), sela::Error);
  CHECK_THROWS_WITH_AS(sela::cuda::device_stream(sela::cuda::kMaxDevices + 3),
                       doctest::Contains("no device cuda:67"), sela::Error);
  CHECK_THROWS_AS(sela::cuda::device_memory_stats(-2), sela::Error);
  CHECK_THROWS_AS(sela::cuda::device_memory_stats(sela::cuda::kMaxDevices), sela::Error);
  // A device never used has all-zero counters, read without CUDA.
  const DeviceMemoryStats unused = sela::cuda::device_memory_stats(sela::cuda::kMaxDevices - 1);
  CHECK(unused.current_bytes == 0);
  CHECK(unused.reserved_bytes == 0);
  CHECK(unused.allocations == 0);
  CHECK(sela::cuda::pinned_host_allocate(0) == nullptr);
  sela::cuda::pinned_host_free(nullptr, 0);  // no-op
}

// --- on a GPU ----------------------------------------------------------------------------------

SELA_CUDA_TEST("a freed block is reused for the same size class without cudaMalloc", reuse) {
  const int device = sela::cuda::current_device();
  CHECK(sela::cuda::device_allocate(0, device, "empty") == nullptr);
  sela::cuda::device_free(nullptr, 0, device);  // no-op

  const DeviceMemoryStats before = sela::cuda::device_memory_stats(device);
  void* block = sela::cuda::device_allocate(1000, device, "reuse test");
  REQUIRE(block != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(block) % 256 == 0);
  const DeviceMemoryStats held = sela::cuda::device_memory_stats(device);
  CHECK(held.current_bytes == before.current_bytes + 1024);
  CHECK(held.allocations == before.allocations + 1);

  // The block is usable on the device stream.
  std::vector<std::uint8_t> pattern(1000), back(1000, 0);
  for (std::size_t i = 0; i < pattern.size(); ++i)
    pattern[i] = static_cast<std::uint8_t>(i * 7 + 3);
  cudaStream_t stream = sela::cuda::device_stream(device);
  SELA_CUDA_CHECK(cudaMemcpyAsync(block, pattern.data(), 1000, cudaMemcpyHostToDevice, stream));
  SELA_CUDA_CHECK(cudaMemcpyAsync(back.data(), block, 1000, cudaMemcpyDeviceToHost, stream));
  sela::cuda::synchronize_device_stream(device);
  CHECK(back == pattern);

  sela::cuda::device_free(block, 1000, device);
  const DeviceMemoryStats freed = sela::cuda::device_memory_stats(device);
  CHECK(freed.current_bytes == before.current_bytes);
  CHECK(freed.cached_bytes >= 1024);

  // 700 bytes fall in the same 1024-byte class: the same block comes back.
  void* again = sela::cuda::device_allocate(700, device, "reuse test");
  const DeviceMemoryStats reused = sela::cuda::device_memory_stats(device);
  CHECK(again == block);
  CHECK(reused.device_mallocs == held.device_mallocs);
  CHECK(reused.cache_hits == held.cache_hits + 1);
  CHECK(reused.cached_bytes == freed.cached_bytes - 1024);
  sela::cuda::device_free(again, 700, device);
}

SELA_CUDA_TEST("current, peak, cached and reserved bytes follow allocations", stats) {
  const int device = sela::cuda::current_device();
  sela::cuda::reset_device_peak(device);
  const DeviceMemoryStats start = sela::cuda::device_memory_stats(device);
  CHECK(start.peak_bytes == start.current_bytes);
  CHECK(start.reserved_bytes == start.current_bytes + start.cached_bytes);

  const std::size_t small = 3 * kMiB, large = 20 * kMiB + 1;  // classes 3 MiB and 22 MiB
  void* a = sela::cuda::device_allocate(small, device, "stats test a");
  void* b = sela::cuda::device_allocate(large, device, "stats test b");
  const DeviceMemoryStats both = sela::cuda::device_memory_stats(device);
  CHECK(both.current_bytes == start.current_bytes + 3 * kMiB + 22 * kMiB);
  CHECK(both.peak_bytes == both.current_bytes);
  CHECK(both.reserved_bytes == both.current_bytes + both.cached_bytes);

  sela::cuda::device_free(b, large, device);
  const DeviceMemoryStats one = sela::cuda::device_memory_stats(device);
  CHECK(one.current_bytes == start.current_bytes + 3 * kMiB);
  CHECK(one.peak_bytes == both.peak_bytes);  // the peak stays
  sela::cuda::reset_device_peak(device);
  CHECK(sela::cuda::device_memory_stats(device).peak_bytes == one.current_bytes);
  sela::cuda::device_free(a, small, device);
}

SELA_CUDA_TEST("device_free_to_driver returns a block to the driver, not to the cache",
               free_to_driver) {
  const int device = sela::cuda::current_device();
  const std::size_t bytes = 37 * kMiB + 5;  // class 38 MiB, asked for by no other test here
  void* block = sela::cuda::device_allocate(bytes, device, "to-driver test");
  const DeviceMemoryStats held = sela::cuda::device_memory_stats(device);
  sela::cuda::device_free_to_driver(block, bytes, device);
  const DeviceMemoryStats released = sela::cuda::device_memory_stats(device);
  CHECK(released.current_bytes == held.current_bytes - 38 * kMiB);
  CHECK(released.cached_bytes == held.cached_bytes);
  CHECK(released.reserved_bytes == held.reserved_bytes - 38 * kMiB);
  // The next request of that class needs a new cudaMalloc: nothing was cached.
  void* next = sela::cuda::device_allocate(bytes, device, "to-driver test");
  CHECK(sela::cuda::device_memory_stats(device).device_mallocs == released.device_mallocs + 1);
  sela::cuda::device_free(next, bytes, device);
  CHECK_THROWS_AS(sela::cuda::device_free_to_driver(block, bytes, device), sela::Error);
}

SELA_CUDA_TEST("the census names what was in use at the peak", census) {
  const int device = sela::cuda::current_device();
  CHECK(sela::cuda::device_memory_census_at_peak(device).empty());  // off by default
  sela::cuda::set_device_memory_census(device, true);
  sela::cuda::reset_device_peak(device);
  const std::size_t before = sela::cuda::device_memory_stats(device).current_bytes;
  void* a = sela::cuda::device_allocate(3 * kMiB, device, "census a");
  void* b1 = sela::cuda::device_allocate(kMiB, device, "census b");
  void* b2 = sela::cuda::device_allocate(kMiB, device, "census b");  // the peak: a + 2 b
  sela::cuda::device_free(b2, kMiB, device);
  void* c = sela::cuda::device_allocate(kMiB / 2, device, "census c");  // below the peak
  const auto census = sela::cuda::device_memory_census_at_peak(device);
  std::size_t total = 0, a_bytes = 0, b_bytes = 0, b_blocks = 0, c_bytes = 0;
  for (const auto& entry : census) {
    total += entry.bytes;
    if (entry.what == "census a") a_bytes = entry.bytes;
    if (entry.what == "census b") b_bytes = entry.bytes, b_blocks = entry.blocks;
    if (entry.what == "census c") c_bytes = entry.bytes;
  }
  CHECK(a_bytes == 3 * kMiB);
  CHECK(b_bytes == 2 * kMiB);
  CHECK(b_blocks == 2);
  CHECK(c_bytes == 0);  // allocated after the peak
  CHECK(total == before + 5 * kMiB);  // the census accounts for the whole peak
  CHECK(total == sela::cuda::device_memory_stats(device).peak_bytes);
  for (std::size_t i = 1; i < census.size(); ++i) CHECK(census[i - 1].bytes >= census[i].bytes);
  sela::cuda::device_free(a, 3 * kMiB, device);
  sela::cuda::device_free(b1, kMiB, device);
  sela::cuda::device_free(c, kMiB / 2, device);
  sela::cuda::set_device_memory_census(device, false);
  CHECK(sela::cuda::device_memory_census_at_peak(device).empty());
}

SELA_CUDA_TEST("release_cached_device_memory returns every cached block", release) {
  const int device = sela::cuda::current_device();
  void* a = sela::cuda::device_allocate(5 * kMiB, device, "release test");
  void* b = sela::cuda::device_allocate(4096, device, "release test");
  sela::cuda::device_free(a, 5 * kMiB, device);
  REQUIRE(sela::cuda::device_memory_stats(device).cached_bytes >= 5 * kMiB);
  sela::cuda::release_cached_device_memory(device);
  const DeviceMemoryStats after = sela::cuda::device_memory_stats(device);
  CHECK(after.cached_bytes == 0);
  CHECK(after.reserved_bytes == after.current_bytes);
  CHECK(after.current_bytes >= 4096);  // b is still held
  const std::uint64_t mallocs = after.device_mallocs;
  void* c = sela::cuda::device_allocate(5 * kMiB, device, "release test");
  CHECK(sela::cuda::device_memory_stats(device).device_mallocs == mallocs + 1);  // not cached now
  sela::cuda::device_free(c, 5 * kMiB, device);
  sela::cuda::device_free(b, 4096, device);
}

SELA_CUDA_TEST("asking for 1 PiB gives an error that says what, how much and what is free", oom) {
  const int device = sela::cuda::current_device();
  const std::size_t pebibyte = std::size_t(1) << 50;
  std::string message;
  try {
    (void)sela::cuda::device_allocate(pebibyte, device, "conv9 activations (test)");
  } catch (const sela::Error& error) {
    message = error.what();
  }
  MESSAGE("out-of-memory message: " << message);
  CHECK(message.find(std::to_string(pebibyte)) != std::string::npos);
  CHECK(message.find("1.00 PiB") != std::string::npos);
  CHECK(message.find("free") != std::string::npos);
  CHECK(message.find("conv9 activations (test)") != std::string::npos);
  CHECK(message.find("batch size") != std::string::npos);
  // No error is left behind for a later launch check, and memory is still usable.
  CHECK(cudaGetLastError() == cudaSuccess);
  void* small = sela::cuda::device_allocate(256, device, "after oom");
  CHECK(small != nullptr);
  sela::cuda::device_free(small, 256, device);
}

SELA_CUDA_TEST("device_free refuses unknown pointers, double frees and wrong sizes", bad_free) {
  const int device = sela::cuda::current_device();
  int host_object = 0;
  CHECK_THROWS_AS(sela::cuda::device_free(&host_object, sizeof(host_object), device), sela::Error);
  void* block = sela::cuda::device_allocate(2048, device, "bad free test");
  CHECK_THROWS_AS(sela::cuda::device_free(block, 5 * kMiB, device), sela::Error);  // other class
  sela::cuda::device_free(block, 2048, device);
  CHECK_THROWS_AS(sela::cuda::device_free(block, 2048, device), sela::Error);  // twice
}

SELA_CUDA_TEST("device_stream is one non-null stream per device and makes it current", streams) {
  const int device = sela::cuda::current_device();
  cudaStream_t first = sela::cuda::device_stream(device);
  CHECK(first != nullptr);
  CHECK(sela::cuda::device_stream(device) == first);
  CHECK(sela::cuda::created_device_stream(device) == first);
  CHECK(sela::cuda::stream_device(first) == device);
  CHECK(sela::cuda::current_device() == device);
  unsigned flags = 0;
  SELA_CUDA_CHECK(cudaStreamGetFlags(first, &flags));
  CHECK((flags & cudaStreamNonBlocking) != 0);
  sela::cuda::set_current_device(device);
  {
    sela::cuda::DeviceGuard guard(device);
    CHECK(sela::cuda::current_device() == device);
  }
  CHECK(sela::cuda::current_device() == device);
  sela::cuda::synchronize_device_stream(device);
}

SELA_CUDA_TEST("pinned host memory round-trips through the device and is reused", pinned) {
  const int device = sela::cuda::current_device();
  constexpr std::size_t count = 100003;  // floats, an odd size
  const std::size_t bytes = count * sizeof(float);
  auto* source = static_cast<float*>(sela::cuda::pinned_host_allocate(bytes));
  auto* target = static_cast<float*>(sela::cuda::pinned_host_allocate(bytes));
  REQUIRE(source != nullptr);
  REQUIRE(target != nullptr);
  CHECK(source != target);
  const auto values = sela::test::random_vector<float>(static_cast<std::int64_t>(count), 5);
  std::memcpy(source, values.data(), bytes);
  for (std::size_t i = 0; i < count; ++i) target[i] = std::nanf("");

  void* on_device = sela::cuda::device_allocate(bytes, device, "pinned test");
  cudaStream_t stream = sela::cuda::device_stream(device);
  SELA_CUDA_CHECK(cudaMemcpyAsync(on_device, source, bytes, cudaMemcpyHostToDevice, stream));
  SELA_CUDA_CHECK(cudaMemcpyAsync(target, on_device, bytes, cudaMemcpyDeviceToHost, stream));
  sela::cuda::synchronize_device_stream(device);
  CHECK(std::memcmp(target, values.data(), bytes) == 0);
  sela::cuda::device_free(on_device, bytes, device);

  const DeviceMemoryStats held = sela::cuda::pinned_host_memory_stats();
  sela::cuda::pinned_host_free(target, bytes);
  sela::cuda::pinned_host_free(source, bytes);
  sela::cuda::synchronize_device_stream(device);  // the events recorded at the frees complete
  void* again = sela::cuda::pinned_host_allocate(bytes);
  const DeviceMemoryStats reused = sela::cuda::pinned_host_memory_stats();
  CHECK((again == source || again == target));
  CHECK(reused.device_mallocs == held.device_mallocs);
  CHECK(reused.cache_hits == held.cache_hits + 1);
  sela::cuda::pinned_host_free(again, bytes);
}

namespace {

// A host function queued on a stream that holds the stream until `released` is set.
void CUDART_CB hold_stream(void* released) {
  auto* flag = static_cast<std::atomic<bool>*>(released);
  while (!flag->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// Lets the held stream go when the test ends, whatever happened.
struct Release {
  std::atomic<bool>& flag;
  ~Release() { flag.store(true); }
};

}  // namespace

SELA_CUDA_TEST("a pinned block is not handed out while a queued copy may still read it",
               pinned_pending) {
  const int device = sela::cuda::current_device();
  const std::size_t bytes = 4096;
  cudaStream_t stream = sela::cuda::device_stream(device);
  // Two blocks of one class; `spare` is cached and idle before the stream is held, so that
  // nothing below needs cudaHostAlloc while the stream waits.
  void* first = sela::cuda::pinned_host_allocate(bytes);
  void* spare = sela::cuda::pinned_host_allocate(bytes);
  sela::cuda::pinned_host_free(spare, bytes);
  void* on_device = sela::cuda::device_allocate(bytes, device, "pinned pending test");
  sela::cuda::synchronize_device_stream(device);

  static std::atomic<bool> released{false};  // static: outlives the host function
  released.store(false);
  {
    Release release{released};
    SELA_CUDA_CHECK(cudaLaunchHostFunc(stream, hold_stream, &released));
    SELA_CUDA_CHECK(cudaMemcpyAsync(on_device, first, bytes, cudaMemcpyHostToDevice, stream));
    sela::cuda::pinned_host_free(first, bytes);  // the copy has not run yet
    void* second = sela::cuda::pinned_host_allocate(bytes);
    CHECK(second != first);  // must not be the block the pending copy reads
    CHECK(second == spare);  // the idle one
    sela::cuda::pinned_host_free(second, bytes);
  }
  sela::cuda::synchronize_device_stream(device);
  sela::cuda::device_free(on_device, bytes, device);
  // Once the stream has passed the copy, both blocks are free for reuse again.
  const DeviceMemoryStats before = sela::cuda::pinned_host_memory_stats();
  void* third = sela::cuda::pinned_host_allocate(bytes);
  void* fourth = sela::cuda::pinned_host_allocate(bytes);
  CHECK(sela::cuda::pinned_host_memory_stats().device_mallocs == before.device_mallocs);
  CHECK(((third == first && fourth == spare) || (third == spare && fourth == first)));
  sela::cuda::pinned_host_free(third, bytes);
  sela::cuda::pinned_host_free(fourth, bytes);
  sela::cuda::release_cached_pinned_host_memory();
  CHECK(sela::cuda::pinned_host_memory_stats().cached_bytes == 0);
  settle();
}
