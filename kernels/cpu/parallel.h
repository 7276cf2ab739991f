// CPU threading for kernels: one thread count for the whole process, and a parallel_for
// that splits [begin, end) into contiguous chunks, one per thread, in a fixed way.
//
// Why this shape: a chunk boundary depends only on (begin, end, grain, thread count), so a
// kernel that reduces per chunk and then combines the chunks in order is deterministic for
// a given thread count. Built on OpenMP when the compiler has it; otherwise runs serially.
#pragma once

#include <cstdint>
#include <functional>

namespace sela::cpu {

// Threads used by kernels (and by the GEMM library). 0 means "all hardware threads".
void set_num_threads(int threads);
int num_threads();

// Calls body(chunk_begin, chunk_end) for disjoint chunks covering [begin, end). Chunks hold
// at least `grain` items (the last may hold fewer); no more chunks than threads. Runs inline
// when there is one chunk, or when called from inside another parallel_for.
void parallel_for(std::int64_t begin, std::int64_t end, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& body);

// The chunking parallel_for uses, exposed so that a kernel can size per-chunk scratch
// (for deterministic two-stage reductions): the number of chunks and chunk `i`'s range.
std::int64_t parallel_chunk_count(std::int64_t begin, std::int64_t end, std::int64_t grain);
void parallel_chunk_range(std::int64_t begin, std::int64_t end, std::int64_t chunks,
                          std::int64_t i, std::int64_t* chunk_begin, std::int64_t* chunk_end);

// Runs body(chunk_index, chunk_begin, chunk_end) on the same chunking as above.
void parallel_chunks(std::int64_t begin, std::int64_t end, std::int64_t grain,
                     const std::function<void(std::int64_t, std::int64_t, std::int64_t)>& body);

}  // namespace sela::cpu
