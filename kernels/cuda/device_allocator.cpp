// The caching allocator (see device_allocator.h for the contract and the size classes).
// Host code, compiled by the host compiler.
//
// A pool is: free lists keyed by size class, a map of the blocks handed out (pointer -> size
// class, so that a free can be checked and counted), and the counters. Device pools are one
// per device; the pinned host pool is one for the process and additionally remembers, for
// each freed block, the events recorded on the device streams at the time of the free: the
// block is handed out again only when those have completed (the host would otherwise write
// the next batch into memory a queued cudaMemcpyAsync is still reading).
//
// cudaMalloc / cudaHostAlloc are called with the pool's mutex held: they are rare after the
// first step, and holding the lock keeps the counters and the retry-after-release simple.
#include "kernels/cuda/device_allocator.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/stream.h"

namespace sela::cuda {
namespace {

constexpr std::size_t kKiB = 1024, kMiB = 1024 * kKiB;
constexpr std::size_t kSmallLimit = kMiB, kSmallStep = 512;
constexpr std::size_t kMediumLimit = 16 * kMiB, kMediumStep = 128 * kKiB;
constexpr std::size_t kLargeStep = 2 * kMiB;
// Requests above this are refused before any rounding could overflow (no device has 4 EiB).
constexpr std::size_t kLargestRequest = std::size_t(1) << 62;

std::size_t round_up(std::size_t bytes, std::size_t step) {
  return (bytes + step - 1) / step * step;
}

void count_allocation(DeviceMemoryStats& stats, std::size_t block) {
  ++stats.allocations;
  stats.current_bytes += block;
  stats.peak_bytes = std::max(stats.peak_bytes, stats.current_bytes);
}

// --- device pools ----------------------------------------------------------------------------

// A private pool (see the header): its blocks, in use or free, belong to it until released.
struct PrivatePool {
  std::unordered_map<std::size_t, std::vector<void*>> free_blocks;  // size class -> blocks
  std::size_t live_blocks = 0;  // handed out, not yet freed
  std::size_t held_bytes = 0;   // in use and free
  bool released = false;        // its graph is gone: blocks go to the shared cache when freed
};

struct DevicePool {
  std::mutex mutex;
  std::unordered_map<std::size_t, std::vector<void*>> free_blocks;  // size class -> blocks
  std::unordered_map<void*, std::size_t> live;                      // handed out -> size class
  DeviceMemoryStats stats;
  // Private pools by id, the pool each of their blocks belongs to, and the active one (0: none).
  std::unordered_map<std::uint64_t, PrivatePool> private_pools;
  std::unordered_map<void*, std::uint64_t> owner;
  std::uint64_t active_private = 0, next_private = 1;
  // The census (see the header): names of the live blocks, and the last state at the peak.
  bool census = false;
  std::unordered_map<void*, std::string> names;
  std::vector<DeviceMemoryCensusEntry> census_at_peak;
};

// The live blocks by name, largest first; the caller holds the pool's mutex.
void take_census(DevicePool& pool) {
  std::unordered_map<std::string, DeviceMemoryCensusEntry> by_name;
  for (const auto& [pointer, block] : pool.live) {
    auto name = pool.names.find(pointer);
    const std::string& what = name != pool.names.end() ? name->second : "(before the census)";
    DeviceMemoryCensusEntry& entry = by_name[what];
    entry.what = what;
    entry.bytes += block;
    ++entry.blocks;
  }
  pool.census_at_peak.clear();
  for (auto& [what, entry] : by_name) pool.census_at_peak.push_back(std::move(entry));
  std::sort(pool.census_at_peak.begin(), pool.census_at_peak.end(),
            [](const DeviceMemoryCensusEntry& a, const DeviceMemoryCensusEntry& b) {
              return a.bytes != b.bytes ? a.bytes > b.bytes : a.what < b.what;
            });
}

// After count_allocation: the block's name, and a new census when this is the peak.
void note_allocation(DevicePool& pool, void* pointer, const char* what) {
  if (!pool.census) return;
  pool.names[pointer] = what != nullptr && *what != '\0' ? what : "(unnamed)";
  if (pool.stats.current_bytes == pool.stats.peak_bytes) take_census(pool);
}

DevicePool& device_pool(int device) {
  static DevicePool* pools = new DevicePool[kMaxDevices];  // leaked on purpose (see the header)
  return pools[device];
}

// The block `allocate(&pointer)` (cudaMalloc or cudaHostAlloc) gives, or nullptr when memory
// is exhausted (the error is cleared so that a later launch check does not report it).
// Other failures throw.
template <typename Allocate>
void* try_allocate(Allocate&& allocate) {
  void* pointer = nullptr;
  const cudaError_t status = allocate(&pointer);
  if (status == cudaSuccess) return pointer;
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return nullptr;
  }
  SELA_CUDA_CHECK(status);
  return nullptr;
}

void* try_device_malloc(std::size_t bytes) {
  return try_allocate([bytes](void** pointer) { return cudaMalloc(pointer, bytes); });
}

// cudaFree of every cached block of a pool whose device is current; the caller holds the
// pool's mutex. Waits for the device first: a cached block may still be read by queued work.
void free_cached_blocks(DevicePool& pool) {
  if (pool.stats.cached_bytes == 0) return;
  SELA_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& [size, blocks] : pool.free_blocks) {
    for (void* block : blocks) {
      SELA_CUDA_CHECK(cudaFree(block));
      pool.stats.cached_bytes -= size;
      pool.stats.reserved_bytes -= size;
    }
    blocks.clear();
  }
  pool.free_blocks.clear();
}

[[noreturn]] void throw_device_out_of_memory(int device, std::size_t bytes, std::size_t block,
                                             const char* what, const DeviceMemoryStats& stats,
                                             bool retried) {
  std::size_t free_bytes = 0, total_bytes = 0;
  const bool have_info = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
  if (!have_info) (void)cudaGetLastError();
  std::ostringstream message;
  message << "out of memory on cuda:" << device << ": asked for " << human_bytes(bytes) << " ("
          << bytes << " bytes";
  if (block != bytes) message << ", size class " << block << " bytes";
  message << ") for " << (what != nullptr && *what != '\0' ? what : "(unnamed)") << "; ";
  if (have_info) {
    message << "the device has " << human_bytes(free_bytes) << " free of "
            << human_bytes(total_bytes) << "; ";
  } else {
    message << "the device's free memory could not be read (cudaMemGetInfo failed); ";
  }
  message << "this allocator holds " << human_bytes(stats.current_bytes) << " in use and "
          << human_bytes(stats.cached_bytes) << " cached";
  message << (retried ? " (its cache was released and the allocation retried)"
                      : " (the request exceeds the device's total memory)");
  throw ::sela::Error("device_allocate", message.str(), __FILE__, __LINE__,
                      "reduce the batch size (--batch) or the model width (--width-mult), or "
                      "stop other work on this GPU");
}

// --- the pinned host pool --------------------------------------------------------------------

struct PendingUse {
  int device;
  cudaEvent_t event;  // recorded on device_stream(device) when the block was freed
};

struct PinnedBlock {
  void* pointer;
  std::vector<PendingUse> uses;
};

struct PinnedPool {
  std::mutex mutex;
  std::unordered_map<std::size_t, std::vector<PinnedBlock>> free_blocks;
  std::unordered_map<void*, std::size_t> live;
  std::vector<cudaEvent_t> spare_events[kMaxDevices];  // completed events, for reuse
  DeviceMemoryStats stats;
};

PinnedPool& pinned_pool() {
  static PinnedPool* pool = new PinnedPool();  // leaked on purpose
  return *pool;
}

// True when every event of the block has completed.
bool uses_completed(const PinnedBlock& block) {
  for (const PendingUse& use : block.uses) {
    const cudaError_t status = cudaEventQuery(use.event);
    if (status == cudaErrorNotReady) {
      // "Not ready" is also recorded as the thread's last error: clear it, or the next
      // SELA_CUDA_CHECK_LAUNCH (cudaGetLastError) would report it as a kernel failure.
      (void)cudaGetLastError();
      return false;
    }
    SELA_CUDA_CHECK(status);
  }
  return true;
}

// Returns the block's (completed) events to the spare lists.
void recycle_events(PinnedPool& pool, PinnedBlock& block) {
  for (const PendingUse& use : block.uses) pool.spare_events[use.device].push_back(use.event);
  block.uses.clear();
}

// cudaFreeHost of every cached pinned block, waiting for its copies; mutex held.
void free_cached_pinned_blocks(PinnedPool& pool) {
  for (auto& [size, blocks] : pool.free_blocks) {
    for (PinnedBlock& block : blocks) {
      for (const PendingUse& use : block.uses) SELA_CUDA_CHECK(cudaEventSynchronize(use.event));
      recycle_events(pool, block);
      SELA_CUDA_CHECK(cudaFreeHost(block.pointer));
      pool.stats.cached_bytes -= size;
      pool.stats.reserved_bytes -= size;
    }
    blocks.clear();
  }
  pool.free_blocks.clear();
}

void* try_host_alloc(std::size_t bytes) {
  return try_allocate(
      [bytes](void** pointer) { return cudaHostAlloc(pointer, bytes, cudaHostAllocPortable); });
}

}  // namespace

std::size_t allocation_size_class(std::size_t bytes) {
  if (bytes == 0) return 0;
  if (bytes <= kSmallLimit) return round_up(bytes, kSmallStep);
  if (bytes <= kMediumLimit) return round_up(bytes, kMediumStep);
  if (bytes > kLargestRequest) return bytes;  // refused by the callers; no overflow here
  return round_up(bytes, kLargeStep);
}

std::string human_bytes(std::uint64_t bytes) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 6) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f %s", value, units[unit]);
  return text;
}

namespace {

// A cached block of the size class `block` from `free_blocks` (the shared cache or a private
// pool's), handed out and counted; nullptr when there is none. The caller holds the mutex.
void* hand_out_cached(DevicePool& pool,
                      std::unordered_map<std::size_t, std::vector<void*>>& free_blocks,
                      std::size_t block, const char* what) {
  auto cached = free_blocks.find(block);
  if (cached == free_blocks.end() || cached->second.empty()) return nullptr;
  void* pointer = cached->second.back();
  cached->second.pop_back();
  pool.live.emplace(pointer, block);
  pool.stats.cached_bytes -= block;
  ++pool.stats.cache_hits;
  count_allocation(pool.stats, block);
  note_allocation(pool, pointer, what);
  return pointer;
}

// A block of the size class `block` from the shared cache, or from cudaMalloc (releasing the
// cache and retrying once when the device is full); counted. The caller holds the mutex.
void* allocate_shared(DevicePool& pool, int device, std::size_t bytes, std::size_t block,
                      const char* what) {
  if (void* pointer = hand_out_cached(pool, pool.free_blocks, block, what)) return pointer;

  DeviceGuard guard(device);  // cudaMalloc and cudaMemGetInfo act on the current device
  std::size_t free_bytes = 0, total_bytes = 0;
  SELA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (block > total_bytes)
    throw_device_out_of_memory(device, bytes, block, what, pool.stats, false);
  void* pointer = try_device_malloc(block);
  if (pointer == nullptr) {  // release the cache and retry once
    free_cached_blocks(pool);
    pointer = try_device_malloc(block);
    if (pointer == nullptr)
      throw_device_out_of_memory(device, bytes, block, what, pool.stats, true);
  }
  pool.live.emplace(pointer, block);
  pool.stats.reserved_bytes += block;
  ++pool.stats.device_mallocs;
  count_allocation(pool.stats, block);
  note_allocation(pool, pointer, what);
  return pointer;
}

PrivatePool& private_pool(DevicePool& pool, int device, std::uint64_t id, const char* op) {
  auto found = pool.private_pools.find(id);
  SELA_CHECK(found != pool.private_pools.end() && !found->second.released, op,
             "private pool " << id << " on cuda:" << device
                             << " does not exist or was released already");
  return found->second;
}

}  // namespace

void* device_allocate(std::size_t bytes, int device, const char* what) {
  check_device_index(device, "device_allocate");
  if (bytes == 0) return nullptr;
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  const std::size_t block = allocation_size_class(bytes);
  if (pool.active_private == 0) return allocate_shared(pool, device, bytes, block, what);

  // A capture is running: the active private pool's own blocks first.
  PrivatePool& own = pool.private_pools.at(pool.active_private);
  if (void* pointer = hand_out_cached(pool, own.free_blocks, block, what)) {
    ++own.live_blocks;
    return pointer;
  }
  void* pointer = allocate_shared(pool, device, bytes, block, what);
  pool.owner.emplace(pointer, pool.active_private);
  ++own.live_blocks;
  own.held_bytes += block;
  return pointer;
}

namespace {

// Removes a handed-out block from the live set (checked); returns its size class. The
// caller holds the pool's mutex.
std::size_t take_back(DevicePool& pool, void* pointer, std::size_t bytes, int device,
                      const char* op) {
  auto found = pool.live.find(pointer);
  if (found == pool.live.end()) {
    SELA_FAIL_HINT(op,
                   "pointer " << pointer << " (" << bytes << " bytes) was not handed out by "
                              << "device_allocate on cuda:" << device << " or was freed already",
                   "free a block once, on the device it was allocated on");
  }
  const std::size_t block = found->second;
  SELA_CHECK(allocation_size_class(bytes) == block, op,
             "pointer " << pointer << " on cuda:" << device << " was allocated as a block of "
                        << block << " bytes but freed with " << bytes << " bytes");
  pool.live.erase(found);
  if (pool.census) pool.names.erase(pointer);
  pool.stats.current_bytes -= block;
  return block;
}

// Caches a taken-back block: in its private pool while that lives, else in the shared cache.
void cache_block(DevicePool& pool, void* pointer, std::size_t block) {
  pool.stats.cached_bytes += block;
  auto owned = pool.owner.find(pointer);
  if (owned != pool.owner.end()) {  // a private pool's block
    const std::uint64_t id = owned->second;
    PrivatePool& own = pool.private_pools.at(id);
    --own.live_blocks;
    if (!own.released) {
      own.free_blocks[block].push_back(pointer);
      return;
    }
    pool.owner.erase(owned);
    own.held_bytes -= block;
    if (own.live_blocks == 0) pool.private_pools.erase(id);
  }
  pool.free_blocks[block].push_back(pointer);
}

}  // namespace

void device_free(void* pointer, std::size_t bytes, int device) {
  check_device_index(device, "device_free");
  if (pointer == nullptr) return;
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  const std::size_t block = take_back(pool, pointer, bytes, device, "device_free");
  cache_block(pool, pointer, block);
}

void device_free_to_driver(void* pointer, std::size_t bytes, int device) {
  check_device_index(device, "device_free_to_driver");
  if (pointer == nullptr) return;
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  const std::size_t block = take_back(pool, pointer, bytes, device, "device_free_to_driver");
  if (pool.owner.count(pointer) != 0) {  // a private pool's block stays with its graph
    cache_block(pool, pointer, block);
    return;
  }
  DeviceGuard guard(device);
  pool.stats.reserved_bytes -= block;  // the block is gone from the pool whatever cudaFree says
  SELA_CUDA_CHECK(cudaFree(pointer));
}

std::uint64_t create_private_pool(int device) {
  check_device_index(device, "create_private_pool");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  const std::uint64_t id = pool.next_private++;
  pool.private_pools.emplace(id, PrivatePool{});
  return id;
}

void begin_private_pool(int device, std::uint64_t id) {
  check_device_index(device, "begin_private_pool");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  private_pool(pool, device, id, "begin_private_pool");
  SELA_CHECK(pool.active_private == 0, "begin_private_pool",
             "private pool " << pool.active_private << " is already active on cuda:" << device
                             << " (one capture at a time per device)");
  pool.active_private = id;
}

void end_private_pool(int device) {
  check_device_index(device, "end_private_pool");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.active_private = 0;
}

void release_private_pool(int device, std::uint64_t id) {
  check_device_index(device, "release_private_pool");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  PrivatePool& own = private_pool(pool, device, id, "release_private_pool");
  SELA_CHECK(pool.active_private != id, "release_private_pool",
             "private pool " << id << " on cuda:" << device << " is still active (end it first)");
  for (auto& [block, blocks] : own.free_blocks) {
    for (void* pointer : blocks) {
      pool.owner.erase(pointer);
      own.held_bytes -= block;
      pool.free_blocks[block].push_back(pointer);
    }
  }
  own.free_blocks.clear();
  if (own.live_blocks == 0) {
    pool.private_pools.erase(id);
  } else {
    own.released = true;
  }
}

std::size_t private_pool_bytes(int device, std::uint64_t id) {
  check_device_index(device, "private_pool_bytes");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  return private_pool(pool, device, id, "private_pool_bytes").held_bytes;
}

std::size_t private_pool_free_bytes(int device, std::uint64_t id) {
  check_device_index(device, "private_pool_free_bytes");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  std::size_t bytes = 0;
  for (const auto& [block, blocks] : private_pool(pool, device, id, "private_pool_free_bytes").free_blocks)
    bytes += block * blocks.size();
  return bytes;
}

DeviceMemoryStats device_memory_stats(int device) {
  SELA_CHECK(device >= 0 && device < kMaxDevices, "device_memory_stats",
             "device index " << device << " is out of range [0, " << kMaxDevices << ")");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  return pool.stats;
}

void reset_device_peak(int device) {
  SELA_CHECK(device >= 0 && device < kMaxDevices, "reset_device_peak",
             "device index " << device << " is out of range [0, " << kMaxDevices << ")");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.stats.peak_bytes = pool.stats.current_bytes;
  if (pool.census) take_census(pool);
}

void set_device_memory_census(int device, bool enabled) {
  check_device_index(device, "set_device_memory_census");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.census = enabled;
  pool.names.clear();
  pool.census_at_peak.clear();
  if (enabled) take_census(pool);
}

std::vector<DeviceMemoryCensusEntry> device_memory_census_at_peak(int device) {
  check_device_index(device, "device_memory_census_at_peak");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  return pool.census_at_peak;
}

void release_cached_device_memory(int device) {
  check_device_index(device, "release_cached_device_memory");
  DevicePool& pool = device_pool(device);
  std::lock_guard<std::mutex> lock(pool.mutex);
  if (pool.stats.cached_bytes == 0) return;
  DeviceGuard guard(device);
  free_cached_blocks(pool);
}

// --- pinned host memory ----------------------------------------------------------------------

void* pinned_host_allocate(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  PinnedPool& pool = pinned_pool();
  std::lock_guard<std::mutex> lock(pool.mutex);
  SELA_CHECK(
      bytes <= kLargestRequest, "pinned_host_allocate",
      "asked for " << human_bytes(bytes) << " (" << bytes << " bytes) of pinned host memory");
  const std::size_t block = allocation_size_class(bytes);

  auto cached = pool.free_blocks.find(block);
  if (cached != pool.free_blocks.end()) {
    std::vector<PinnedBlock>& blocks = cached->second;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (!uses_completed(blocks[i])) continue;
      PinnedBlock taken = std::move(blocks[i]);
      if (i + 1 != blocks.size()) blocks[i] = std::move(blocks.back());
      blocks.pop_back();
      recycle_events(pool, taken);
      pool.live.emplace(taken.pointer, block);
      pool.stats.cached_bytes -= block;
      ++pool.stats.cache_hits;
      count_allocation(pool.stats, block);
      return taken.pointer;
    }
  }

  void* pointer = try_host_alloc(block);
  if (pointer == nullptr) {
    free_cached_pinned_blocks(pool);
    pointer = try_host_alloc(block);
    if (pointer == nullptr) {
      SELA_FAIL_HINT(
          "pinned_host_allocate",
          "cudaHostAlloc could not provide "
              << human_bytes(bytes) << " (" << bytes << " bytes) of page-locked host memory; "
              << "the pinned pool holds " << human_bytes(pool.stats.current_bytes) << " in use",
          "reduce the batch size or the number of batches the loader prefetches");
    }
  }
  pool.live.emplace(pointer, block);
  pool.stats.reserved_bytes += block;
  ++pool.stats.device_mallocs;
  count_allocation(pool.stats, block);
  return pointer;
}

void pinned_host_free(void* pointer, std::size_t bytes) {
  if (pointer == nullptr) return;
  PinnedPool& pool = pinned_pool();
  std::lock_guard<std::mutex> lock(pool.mutex);
  auto found = pool.live.find(pointer);
  if (found == pool.live.end()) {
    SELA_FAIL_HINT("pinned_host_free",
                   "pointer " << pointer << " (" << bytes << " bytes) was not handed out by "
                              << "pinned_host_allocate or was freed already",
                   "free a pinned block once");
  }
  const std::size_t block = found->second;
  SELA_CHECK(allocation_size_class(bytes) == block, "pinned_host_free",
             "pointer " << pointer << " was allocated as a block of " << block
                        << " bytes but freed with " << bytes << " bytes");

  // An event on every device stream that exists: copies from/to the block queued there so
  // far must complete before the block is handed out again.
  PinnedBlock freed{pointer, {}};
  for (int device = 0; device < kMaxDevices; ++device) {
    cudaStream_t stream = created_device_stream(device);
    if (stream == nullptr) continue;
    DeviceGuard guard(device);
    cudaEvent_t event = nullptr;
    std::vector<cudaEvent_t>& spare = pool.spare_events[device];
    if (!spare.empty()) {
      event = spare.back();
      spare.pop_back();
    } else {
      SELA_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    }
    freed.uses.push_back(PendingUse{device, event});
    SELA_CUDA_CHECK(cudaEventRecord(event, stream));
  }
  pool.live.erase(found);
  pool.free_blocks[block].push_back(std::move(freed));
  pool.stats.current_bytes -= block;
  pool.stats.cached_bytes += block;
}

DeviceMemoryStats pinned_host_memory_stats() {
  PinnedPool& pool = pinned_pool();
  std::lock_guard<std::mutex> lock(pool.mutex);
  return pool.stats;
}

void release_cached_pinned_host_memory() {
  PinnedPool& pool = pinned_pool();
  std::lock_guard<std::mutex> lock(pool.mutex);
  free_cached_pinned_blocks(pool);
}

}  // namespace sela::cuda
