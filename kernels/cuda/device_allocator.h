// The caching allocator for device memory (and for page-locked host memory): after the first
// training step, every allocation is served from blocks freed earlier, so the steady state
// makes no cudaMalloc / cudaFree (both are slow, and cudaFree synchronises the device).
//
// CONTRACT (what makes immediate reuse safe): every use of a block from device_allocate(...,
// device, ...) is queued on device_stream(device) (kernels/cuda/stream.h). A freed block goes
// back to the cache at once and the next device_allocate may hand it to the next op: that op
// is queued after every kernel that used the block, on the same stream, so it cannot run
// before them. Memory used on any other stream must be waited for (cudaStreamSynchronize or
// an event) before it is freed.
//
// Size classes (a request is rounded up to its class; a block is reused only for requests
// of exactly its class, so a training step, which asks for the same sizes every time, reuses
// every block, and no block is split):
//   <= 1 MiB          multiples of 512 B       (biases, BN statistics, small activations)
//   (1 MiB, 16 MiB]   multiples of 128 KiB
//   > 16 MiB          multiples of 2 MiB       (activations, weights, workspaces)
// Each class wastes at most 1/8 of a request above 4 KiB (512 B for tiny ones, 128 KiB over
// 1 MiB, 2 MiB over 16 MiB), so peak memory stays close to what is asked. Power-of-two
// classes would reuse across more sizes but waste up to half; block splitting (PyTorch's
// way) wastes nothing but needs coalescing and a best-fit search: not needed while the step's
// sizes repeat exactly. The price is reserved memory: each distinct size keeps its blocks,
// so what cudaMalloc holds is above what is in use at the peak (alexnet, batch 256, on an
// H100: 8,474 MiB reserved for a 4,002 MiB peak; PyTorch's splitting allocator 5,976 MiB,
// docs/perf.md).
//
// Out of memory: when cudaMalloc fails, the allocator waits for the device, returns every
// cached block with cudaFree, and retries once; if that fails too it throws a sela::Error
// that says what was asked (bytes, human readable), for which op or tensor (`what`), what
// the device has free (cudaMemGetInfo), what this allocator holds (in use, cached), and what
// to reduce (batch size, model width).
//
// Threads: each device's pool (and the pinned pool) is guarded by its own mutex. Pools are
// leaked singletons, so blocks freed during static destruction still find their pool.
//
// Plain host header (no device code): usable from .cpp files compiled by the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sela::cuda {

struct DeviceMemoryStats {
  std::size_t current_bytes = 0;   // handed out, not yet freed (size classes, not requests)
  std::size_t peak_bytes = 0;      // max of current_bytes since the last reset
  std::size_t cached_bytes = 0;    // freed blocks kept for reuse
  std::size_t reserved_bytes = 0;  // obtained from cudaMalloc and not yet released
  std::uint64_t allocations = 0, cache_hits = 0, device_mallocs = 0;
};

// A block of >= bytes on `device` (256-byte aligned), for use on device_stream(device).
// bytes == 0 gives nullptr (no CUDA call beyond the device check; device_free(nullptr, 0, d)
// is a no-op). `what` names the op or tensor for the out-of-memory error (nullptr allowed).
// Throws sela::Error for a device that does not exist and when memory runs out (see the top).
// Makes no change to the calling thread's current device.
void* device_allocate(std::size_t bytes, int device, const char* what);

// Returns a block to the cache of `device` (never cudaFree). `bytes` is the size asked for
// at allocation. Throws sela::Error when the pointer was not handed out by device_allocate
// on that device (double free, wrong device) or `bytes` falls in another size class.
void device_free(void* pointer, std::size_t bytes, int device);

// Like device_free, but the block goes back to the driver (cudaFree, which waits for the
// device) instead of the cache: for a one-off block of a size no later request will ask for
// (the workspace of a cuDNN algorithm search, up to 1 GiB per shape), which the cache would
// otherwise keep reserved for the rest of the process.
void device_free_to_driver(void* pointer, std::size_t bytes, int device);

// Counters of `device` (all zero for a device never used; no CUDA call).
DeviceMemoryStats device_memory_stats(int device);
// peak_bytes = current_bytes.
void reset_device_peak(int device);
// The census: what the memory in use was at the peak, by the `what` names given to
// device_allocate (tensors are named by the op that made them). Off by default (it keeps a
// name per block and walks the blocks at every new peak); a benchmark turns it on before it
// allocates anything (blocks from before are counted as "(before the census)"). The peak is
// the one of device_memory_stats (size classes), reset with it by reset_device_peak.
struct DeviceMemoryCensusEntry {
  std::string what;
  std::size_t bytes = 0;   // size classes
  std::size_t blocks = 0;
};
void set_device_memory_census(int device, bool enabled);
// Largest first; empty when the census is off.
std::vector<DeviceMemoryCensusEntry> device_memory_census_at_peak(int device);

// cudaFree of every cached block, after waiting for the device (cudaDeviceSynchronize: a
// cached block may still be read by queued kernels). Blocks in use stay.
void release_cached_device_memory(int device);

// Page-locked host memory for the data loader's batches (cudaHostAlloc, portable to every
// device), cached in the same size classes; host memory a cudaMemcpyAsync from/to a device
// can overlap with. Throws sela::Error when the allocation fails (the message says what was
// asked). bytes == 0 gives nullptr.
//
// Reuse is safe without caller synchronisation when copies from/to the block are queued on
// device_stream(d): pinned_host_free records an event on every device stream that exists,
// and the block is handed out again only when those events have completed (a new block is
// allocated meanwhile). Copies on other streams must be waited for before the free.
void* pinned_host_allocate(std::size_t bytes);
void pinned_host_free(void* pointer, std::size_t bytes);

// --- private pools (CUDA-graph capture) -----------------------------------------------
//
// A replay of a captured CUDA graph writes the very addresses the capture allocated. Those
// blocks must therefore never be handed to anything else while the graph lives, including
// the blocks the captured step freed again (its temporaries). A private pool keeps them:
//   - while a pool is active on a device (begin_private_pool ... end_private_pool),
//     device_allocate serves that device from the pool's own free blocks first, then from
//     the shared cache or cudaMalloc, and the block becomes the pool's;
//   - a block of a pool goes back to that pool when freed, active or not, never to the
//     shared cache, until the pool is released;
//   - release_private_pool (when the graph is destroyed) gives the pool's free blocks to the
//     shared cache, and its blocks still in use (a graph's outputs someone kept) go there
//     when they are freed.
// Taking a block from the shared cache during the capture is safe for the same reason as
// any reuse (see CONTRACT): everything that used it was queued earlier on the same stream.
// One pool may be active per device at a time, for every thread (the engine allocates
// device memory from one thread; the data loader's workers use the pinned pool only).
std::uint64_t create_private_pool(int device);
void begin_private_pool(int device, std::uint64_t pool);  // throws if another is active
void end_private_pool(int device);
// Ends the pool's life (see above). Unknown or released pools are an error.
void release_private_pool(int device, std::uint64_t pool);
// Bytes in the pool's blocks (in use and free), and in its free blocks alone: memory the
// pool keeps from everything else although no tensor holds it (device_memory_stats counts
// it as cached). For logs, benchmarks and tests.
std::size_t private_pool_bytes(int device, std::uint64_t pool);
std::size_t private_pool_free_bytes(int device, std::uint64_t pool);

// --- additions -------------------------------------------------------------------------

// Counters of the pinned host pool (device_mallocs counts cudaHostAlloc calls).
DeviceMemoryStats pinned_host_memory_stats();
// cudaFreeHost of every cached pinned block (waits for the copies still reading them).
void release_cached_pinned_host_memory();

// The size class a request of `bytes` is rounded to (see the top), for tests and logs.
std::size_t allocation_size_class(std::size_t bytes);

// "512 B", "1.50 KiB", "2.00 MiB", "79.10 GiB", "1.00 PiB": for messages and banners.
std::string human_bytes(std::uint64_t bytes);

}  // namespace sela::cuda
