// Implementation of engine/allocator.h: per-size free lists under one mutex.
#include "engine/allocator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "engine/error.h"

#if defined(SELA_HAVE_CUDA)
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/device_allocator.h"
#endif

namespace sela {
namespace {

constexpr std::size_t kAlignment = 64;
constexpr std::size_t kGranule = 4096;

struct Cache {
  std::mutex mutex;
  std::map<std::size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
  HostMemoryStats stats;
};

Cache& cache() {
  static Cache* instance = new Cache();  // never destroyed: tensors may outlive statics
  return *instance;
}

std::size_t rounded(std::size_t bytes) {
  if (bytes == 0) bytes = 1;
  return (bytes + kGranule - 1) / kGranule * kGranule;
}

}  // namespace

void* host_allocate(std::size_t bytes) {
  std::size_t size = rounded(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.stats.allocations++;
    auto it = c.free_blocks.find(size);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* block = it->second.back();
      it->second.pop_back();
      c.stats.cache_hits++;
      c.stats.cached_bytes -= size;
      c.stats.current_bytes += size;
      if (c.stats.current_bytes > c.stats.peak_bytes) c.stats.peak_bytes = c.stats.current_bytes;
      return block;
    }
  }
  void* block = std::aligned_alloc(kAlignment, size);
  if (block == nullptr) {
    release_cached_host_memory();
    block = std::aligned_alloc(kAlignment, size);
  }
  SELA_CHECK(block != nullptr, "host_allocate",
             "out of host memory: asked for " << bytes << " bytes, "
                                               << host_memory_stats().current_bytes
                                               << " bytes already in use by tensors");
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.current_bytes += size;
  if (c.stats.current_bytes > c.stats.peak_bytes) c.stats.peak_bytes = c.stats.current_bytes;
  return block;
}

void host_free(void* pointer, std::size_t bytes) {
  if (pointer == nullptr) return;
  std::size_t size = rounded(bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free_blocks[size].push_back(pointer);
  c.stats.current_bytes -= size;
  c.stats.cached_bytes += size;
}

HostMemoryStats host_memory_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

void reset_host_peak() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.peak_bytes = c.stats.current_bytes;
}

void release_cached_host_memory() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& entry : c.free_blocks) {
    for (void* block : entry.second) std::free(block);
  }
  c.free_blocks.clear();
  c.stats.cached_bytes = 0;
}

bool pinned_memory_available() {
#if defined(SELA_HAVE_CUDA)
  static const bool available = cuda::device_count() > 0;
  return available;
#else
  return false;
#endif
}

void* pinned_allocate(std::size_t bytes) {
#if defined(SELA_HAVE_CUDA)
  if (pinned_memory_available()) return cuda::pinned_host_allocate(bytes > 0 ? bytes : 1);
#endif
  return host_allocate(bytes);
}

void pinned_free(void* pointer, std::size_t bytes) {
  if (pointer == nullptr) return;
#if defined(SELA_HAVE_CUDA)
  if (pinned_memory_available()) {
    cuda::pinned_host_free(pointer, bytes > 0 ? bytes : 1);
    return;
  }
#endif
  host_free(pointer, bytes);
}

}  // namespace sela
