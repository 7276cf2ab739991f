// Host memory for tensors: 64-byte aligned blocks from a caching allocator.
//
// A training step allocates the same activation and gradient sizes every iteration; large
// blocks from malloc come from fresh mmap'd pages that the kernel zero-fills on first touch,
// which costs a visible share of a CPU step. So freed blocks are kept in per-size free lists
// (sizes rounded up to 4 KiB) and handed out again; nothing is returned to the OS until
// release_cached() is called. Statistics (current, peak, cached bytes) are kept so that
// benchmarks can report peak memory. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sela {

struct HostMemoryStats {
  std::size_t current_bytes = 0;  // handed out and not yet freed
  std::size_t peak_bytes = 0;     // maximum of current_bytes
  std::size_t cached_bytes = 0;   // freed, kept for reuse
  std::uint64_t allocations = 0;  // calls to host_allocate
  std::uint64_t cache_hits = 0;   // of which served from the cache
};

// Returns a block of at least `bytes` bytes aligned to 64 bytes (never nullptr; throws
// sela::Error when the system has no memory left, saying how much was asked).
void* host_allocate(std::size_t bytes);
void host_free(void* pointer, std::size_t bytes);
HostMemoryStats host_memory_stats();
void reset_host_peak();
void release_cached_host_memory();

}  // namespace sela
