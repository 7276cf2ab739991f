// OpenMP-backed implementation of kernels/cpu/parallel.h (serial fallback without OpenMP).
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sela::cpu {
namespace {

// Asked once: hardware_concurrency() reads /sys on every call, and num_threads() is on
// every kernel's path.
int hardware_threads() {
  static const int count = [] {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
  }();
  return count;
}

std::atomic<int> g_threads{0};  // 0 until set: use all hardware threads

}  // namespace

void set_num_threads(int threads) {
  int n = threads <= 0 ? hardware_threads() : threads;
  g_threads.store(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

int num_threads() {
  int n = g_threads.load();
  return n <= 0 ? hardware_threads() : n;
}

std::int64_t parallel_chunk_count(std::int64_t begin, std::int64_t end, std::int64_t grain) {
  std::int64_t items = end - begin;
  if (items <= 0) return 0;
  grain = std::max<std::int64_t>(grain, 1);
  std::int64_t by_grain = (items + grain - 1) / grain;
  return std::max<std::int64_t>(1, std::min<std::int64_t>(by_grain, num_threads()));
}

void parallel_chunk_range(std::int64_t begin, std::int64_t end, std::int64_t chunks,
                          std::int64_t i, std::int64_t* chunk_begin, std::int64_t* chunk_end) {
  std::int64_t items = end - begin;
  std::int64_t base = items / chunks;
  std::int64_t extra = items % chunks;  // the first `extra` chunks get one more item
  *chunk_begin = begin + i * base + std::min(i, extra);
  *chunk_end = *chunk_begin + base + (i < extra ? 1 : 0);
}

void parallel_chunks(std::int64_t begin, std::int64_t end, std::int64_t grain,
                     const std::function<void(std::int64_t, std::int64_t, std::int64_t)>& body) {
  std::int64_t chunks = parallel_chunk_count(begin, end, grain);
  if (chunks == 0) return;
  bool nested = false;
#ifdef _OPENMP
  nested = omp_in_parallel();
#endif
  if (chunks == 1 || nested) {
    for (std::int64_t i = 0; i < chunks; ++i) {
      std::int64_t b = 0, e = 0;
      parallel_chunk_range(begin, end, chunks, i, &b, &e);
      body(i, b, e);
    }
    return;
  }
#ifdef _OPENMP
  // An exception must not leave an OpenMP region: keep the first one and rethrow it here.
  std::exception_ptr first_error;
  std::atomic<bool> failed{false};
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(chunks))
  for (std::int64_t i = 0; i < chunks; ++i) {
    std::int64_t b = 0, e = 0;
    parallel_chunk_range(begin, end, chunks, i, &b, &e);
    try {
      body(i, b, e);
    } catch (...) {
      if (!failed.exchange(true)) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
#else
  for (std::int64_t i = 0; i < chunks; ++i) {
    std::int64_t b = 0, e = 0;
    parallel_chunk_range(begin, end, chunks, i, &b, &e);
    body(i, b, e);
  }
#endif
}

void parallel_for(std::int64_t begin, std::int64_t end, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& body) {
  parallel_chunks(begin, end, grain,
                  [&](std::int64_t, std::int64_t b, std::int64_t e) { body(b, e); });
}

}  // namespace sela::cpu
