// Host memory for tensors: 64-byte aligned blocks from a caching allocator; and page-locked
// ("pinned") host memory for buffers a GPU reads.
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

// Page-locked host memory (for the data loader's batches, through its ImageAllocator hook):
// uploads from it to a GPU are asynchronous (Tensor::copy_from_host finds that out by
// itself). From the CUDA backend's pinned pool (kernels/cuda/device_allocator.h) when this
// build has CUDA and a GPU is usable; otherwise plain host_allocate memory, since there is
// nothing to pin for. Free with pinned_free and the same byte count.
void* pinned_allocate(std::size_t bytes);
void pinned_free(void* pointer, std::size_t bytes);
// True when pinned_allocate gives page-locked memory (CUDA build, GPU usable).
bool pinned_memory_available();

}  // namespace sela
