// Implementation of sela/assign/sinkhorn.h: the float64 reference, and the solver that
// drives the CPU kernels of sinkhorn_cpu.h (buffers, memory plan, iteration loop, result).
//
// The solver's loop has the reference's structure, one pass per iteration:
//   reference:  r_t = f(c_{t-1}), c_t = g(r_t), check c_{t-1} vs c_t when t % m == 0
//   here:       r_1 from the column sums of A (c_0 = 1/N); pass t computes c_t = g(r_t)
//               and the column sums that give r_{t+1}; the same check inside the pass.
// When it stops it returns (r_t, c_t) — the pair the reference returns — and the labels
// argmax_k A_ik r_t,k. c_0 = 1/N is taken in the reference's row scaling, so both
// produce the same sequence up to the storage's rounding.
//
// Absorption (sinkhorn.h) happens between passes, after r_{t+1} is known: the solver holds
// the column potential G (double; its float32 rounding is what the kernel folds in) and the
// row shifts M, so that the stored A is K0_ik e^{G_k − M_i} with K0 the original
// scale·exp(λ(z − max)); the iterated (c, r) are in the units of the stored A and are
// converted back (c e^{−M}, r e^{G}) for the result. The check that decides is a bound on
// the largest share of a row's plan resting on floored entries, floor·Σ_k r_k / (A r)_i:
// first with (A r)_i >= scale·min_k r_k (O(K)), then, only when that fires, with
// (A r)_i = 1/(N c_i) of the last pass (O(N)), corrected for the change of r since.
//
// The CUDA path (options.device cuda, `#if defined(SELA_HAVE_CUDA)`) runs the same loop with
// the kernels of sinkhorn_cuda.cuh: the part between two passes is the device's control
// kernel, so the host only queues passes and reads the device state at check iterations,
// queueing the next stretch of iterations before it waits for the last one's state (the
// GPU never idles on the host; a queued stretch that turns out to be after the stop does
// nothing). When the control kernel wants an absorption (the floor bound, or the
// over-relaxation safeguard having restored the checked column potentials) it halts; the
// host then absorbs (three kernels) and resumes at that iteration, so the sequence is the
// CPU's.
#include "sela/assign/sinkhorn.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/sinkhorn_cpu.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <unistd.h>

#if defined(SELA_HAVE_CUDA)  // defined by cmake/SelaCuda.cmake for targets linking the CUDA kernels
#include <cuda_runtime_api.h>

#include <climits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.cuh"
#include "sela/assign/sinkhorn_cuda.cuh"
#endif

namespace sela::assign {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::ostream& log_stream(const SinkhornOptions& options) {
  return options.log != nullptr ? *options.log : std::cerr;
}

std::string format_bytes(std::uint64_t bytes) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  if (bytes >= (1ull << 30)) {
    out << static_cast<double>(bytes) / static_cast<double>(1ull << 30) << " GiB";
  } else if (bytes >= (1ull << 20)) {
    out << static_cast<double>(bytes) / static_cast<double>(1ull << 20) << " MiB";
  } else if (bytes >= (1ull << 10)) {
    out << static_cast<double>(bytes) / static_cast<double>(1ull << 10) << " KiB";
  } else {
    out << bytes << " B";
  }
  return out.str();
}

// Memory the system says a new allocation can take (MemAvailable), or "unlimited".
std::uint64_t available_host_bytes() {
#if defined(__linux__)
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::uint64_t value = 0;
  std::string unit;
  while (meminfo >> key >> value >> unit) {
    if (key == "MemAvailable:") return value * 1024ull;
  }
#endif
  long pages = sysconf(_SC_AVPHYS_PAGES);
  long page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) {
    return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
  }
  return std::numeric_limits<std::uint64_t>::max();
}

void check_options(const SinkhornOptions& options, const char* op) {
  SELA_CHECK(std::isfinite(options.lambda) && options.lambda > 0.0, op,
             "lambda must be positive and finite, got " << options.lambda);
  SELA_CHECK(std::isfinite(options.tol) && options.tol >= 0.0, op,
             "tol must be >= 0, got " << options.tol);
  SELA_CHECK(options.check_every >= 1, op, "check_every must be >= 1, got " << options.check_every);
  SELA_CHECK(options.max_iters >= 1, op, "max_iters must be >= 1, got " << options.max_iters);
  SELA_CHECK(options.over_relaxation >= 1.0 && options.over_relaxation < 2.0, op,
             "over_relaxation (omega) must be in [1, 2), got " << options.over_relaxation);
}

void check_problem(std::int64_t n, std::int64_t k, const std::string& head, const char* op) {
  SELA_CHECK(n >= 1 && k >= 1, op,
             "head '" << head << "': needs at least one sample and one cluster, got N=" << n
                      << ", K=" << k);
}

// Fills the label statistics of a result from its labels.
void count_clusters(SinkhornResult* result) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(result->k), 0);
  for (std::int64_t label : result->labels) ++counts[static_cast<std::size_t>(label)];
  result->cluster_min = *std::min_element(counts.begin(), counts.end());
  result->cluster_max = *std::max_element(counts.begin(), counts.end());
  result->clusters_empty = std::count(counts.begin(), counts.end(), std::int64_t{0});
}

// Composes the warning of a solve that did not converge or could not reach every cluster,
// writes it to the log stream and keeps it in the result.
void finish_warnings(const SinkhornOptions& options, SinkhornResult* result) {
  std::ostringstream warning;
  if (!result->converged) {
    warning << "sinkhorn head '" << result->head << "': reached the iteration cap ("
            << options.max_iters
            << ") before the stopping rule: sum|c/c_new - 1| = " << result->stop_error << " (tol "
            << options.tol << "), row marginal error " << result->row_marginal_error
            << ", column marginal error " << result->col_marginal_error
            << "; labels are those of the last iteration";
  }
  if (result->floor_mass > kSinkhornFloorMassWarning) {
    if (!warning.str().empty()) warning << "; ";
    warning << "sinkhorn head '" << result->head << "': up to " << 100.0 * result->floor_mass
            << "% of a sample's plan rests on entries of A below the range of storage "
            << result->storage
            << " (stored at its floor), so the solution is limited by the storage; "
            << (options.absorb
                    ? "absorption (" + std::to_string(result->absorptions) +
                          " made) could not remove it: use storage f32 (or bf16 instead of f16) or "
                          "a smaller lambda for these logits"
                    : std::string("enable absorption (SinkhornOptions::absorb), use storage "
                                  "f32 (or bf16 instead of f16) or a smaller lambda for these "
                                  "logits"));
  }
  if (result->over_relaxation_stopped_at >= 0) {
    if (!warning.str().empty()) warning << "; ";
    warning << "sinkhorn head '" << result->head << "': over-relaxation (omega "
            << result->over_relaxation << ") stopped at iteration "
            << result->over_relaxation_stopped_at
            << " because the error grew; continued with plain Sinkhorn-Knopp steps";
  }
  result->warning = warning.str();
  if (!result->warning.empty()) log_stream(options) << "warning: " << result->warning << "\n";
}

void log_summary(const SinkhornOptions& options, const SinkhornResult& result) {
  if (options.verbose < 1) return;
  log_stream(options) << "sinkhorn head '" << result.head << "': N=" << result.n
                      << " K=" << result.k << " lambda=" << result.lambda
                      << " storage=" << result.storage << " omega=" << result.over_relaxation
                      << ": " << result.iterations << " iterations, " << result.absorptions
                      << " absorptions, stop error "
                      << result.stop_error << ", marginal errors row " << result.row_marginal_error
                      << " column " << result.col_marginal_error << ", clusters min/max/empty "
                      << result.cluster_min << "/" << result.cluster_max << "/"
                      << result.clusters_empty << ", " << result.total_seconds << " s\n";
}

// A zero-initialised-on-demand block of host memory aligned to 2 MiB, so that Linux can
// back it with transparent huge pages (fewer TLB misses when streaming gigabytes).
class HostBlock {
 public:
  HostBlock() = default;
  ~HostBlock() { std::free(ptr_); }
  HostBlock(const HostBlock&) = delete;
  HostBlock& operator=(const HostBlock&) = delete;

  void ensure(std::uint64_t bytes, const std::string& what) {
    if (bytes <= bytes_) return;
    std::free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    constexpr std::uint64_t kAlign = 2ull << 20;
    std::uint64_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    ptr_ = std::aligned_alloc(static_cast<std::size_t>(kAlign), static_cast<std::size_t>(rounded));
    if (ptr_ == nullptr) {
      SELA_FAIL_HINT(
          "sinkhorn", "could not allocate " << format_bytes(rounded) << " for " << what,
          "free memory, use 16-bit storage (bf16 or f16), or solve fewer samples at once");
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(ptr_, static_cast<std::size_t>(rounded), MADV_HUGEPAGE);  // a hint; failure is harmless
#endif
    bytes_ = rounded;
  }
  void* get() const { return ptr_; }
  std::uint64_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::uint64_t bytes_ = 0;
};

}  // namespace

// ---- storage names ----------------------------------------------------------------------

const char* storage_name(SinkhornStorage storage) {
  switch (storage) {
    case SinkhornStorage::f32:
      return "f32";
    case SinkhornStorage::f16:
      return "f16";
    case SinkhornStorage::bf16:
      return "bf16";
  }
  return "?";
}

SinkhornStorage parse_storage(const std::string& name) {
  if (name == "f32") return SinkhornStorage::f32;
  if (name == "f16") return SinkhornStorage::f16;
  if (name == "bf16") return SinkhornStorage::bf16;
  SELA_FAIL_HINT("sinkhorn", "unknown storage '" << name << "'", "use f32, f16 or bf16");
}

double sinkhorn_absorb_floor_share(SinkhornStorage storage) {
  const double unit_roundoff = storage == SinkhornStorage::f32   ? 0x1p-24
                               : storage == SinkhornStorage::f16 ? 0x1p-11
                                                                 : 0x1p-9;
  return std::min(unit_roundoff, kSinkhornAbsorbFloorShareMax);
}

std::size_t storage_element_bytes(SinkhornStorage storage) {
  return storage == SinkhornStorage::f32 ? 4 : 2;
}

std::string SinkhornMemoryPlan::describe() const {
  std::ostringstream out;
  out << "N=" << n << " x K=" << k << " (row stride " << row_stride << "), storage "
      << storage_name(storage) << ": A " << format_bytes(matrix_bytes) << " + vectors "
      << format_bytes(vector_bytes) << " + workspace " << format_bytes(workspace_bytes)
      << " + absorption " << format_bytes(logits_bytes)
      << (logits_bytes >= static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(k) * 4
              ? " (float32 copy of the logits for the batch API, row shifts)"
              : " (row shifts)")
      << " = "
      << format_bytes(total_bytes) << " in " << where << " (limit " << format_bytes(limit_bytes)
      << ")";
  return out.str();
}

// ---- the float64 reference ----------------------------------------------------------------

SinkhornResult sinkhorn_reference(const float* logits, std::int64_t n, std::int64_t k,
                                  const SinkhornOptions& options, const std::string& head) {
  const char* op = "sinkhorn_reference";
  check_options(options, op);
  check_problem(n, k, head, op);
  SELA_CHECK(logits != nullptr, op, "logits pointer is null");
  SELA_CHECK(static_cast<double>(n) * static_cast<double>(k) * 8.0 <
                 static_cast<double>(available_host_bytes()),
             op,
             "head '" << head << "': N x K = " << n << " x " << k
                      << " float64 values do not fit in the memory available");
  const auto start = Clock::now();
  const std::size_t rows = static_cast<std::size_t>(n), cols = static_cast<std::size_t>(k);

  // Softmax in float64, then the power λ: A_ik = p_ik^λ (the reference's PS **= lamb).
  std::vector<double> a(rows * cols);  // (N, K)
  for (std::size_t i = 0; i < rows; ++i) {
    const float* z = logits + i * cols;
    double row_max = -std::numeric_limits<double>::infinity();
    for (std::size_t j = 0; j < cols; ++j) {
      if (!std::isfinite(z[j])) {
        SELA_FAIL_HINT(op,
                       "head '" << head << "': logits row " << i << " holds " << z[j] << " (column "
                                << j << ")",
                       "the network produced NaN/Inf; check the learning rate and the inputs");
      }
      row_max = std::max(row_max, static_cast<double>(z[j]));
    }
    double total = 0.0;
    for (std::size_t j = 0; j < cols; ++j) {
      a[i * cols + j] = std::exp(static_cast<double>(z[j]) - row_max);
      total += a[i * cols + j];
    }
    for (std::size_t j = 0; j < cols; ++j)
      a[i * cols + j] = std::pow(a[i * cols + j] / total, options.lambda);
  }

  const double inv_k = 1.0 / static_cast<double>(k), inv_n = 1.0 / static_cast<double>(n);
  std::vector<double> r(cols, inv_k), c(rows, inv_n), c_new(rows), column(cols);
  SinkhornResult result;
  double error = std::numeric_limits<double>::infinity();
  std::int64_t counter = 0;
  while (error > options.tol && counter < options.max_iters) {
    // r = (1/K) / (Aᵀ c)
    std::fill(column.begin(), column.end(), 0.0);
    for (std::size_t i = 0; i < rows; ++i) {
      for (std::size_t j = 0; j < cols; ++j) column[j] += a[i * cols + j] * c[i];
    }
    for (std::size_t j = 0; j < cols; ++j) {
      if (!(column[j] > 0.0)) {
        SELA_FAIL_HINT(
            op, "head '" << head << "': column " << j << " of softmax^lambda is 0 in float64",
            "lambda is too large for these logits");
      }
      r[j] = inv_k / column[j];
    }
    // c_new = (1/N) / (A r)
    for (std::size_t i = 0; i < rows; ++i) {
      double dot = 0.0;
      for (std::size_t j = 0; j < cols; ++j) dot += a[i * cols + j] * r[j];
      c_new[i] = inv_n / dot;
    }
    if (counter % options.check_every == 0) {
      error = 0.0;
      for (std::size_t i = 0; i < rows; ++i) {
        double term = std::fabs(c[i] / c_new[i] - 1.0);
        if (!std::isnan(term)) error += term;  // the reference uses nansum
      }
      result.stop_error = error;
    }
    c.swap(c_new);
    ++counter;
  }
  result.converged = error <= options.tol;
  result.iterations = counter;
  const double iterate_done = seconds_since(start);

  // Labels argmax_k A_ik r_k (c_i > 0 does not change a row's argmax) and both marginals.
  result.labels.assign(rows, 0);
  std::fill(column.begin(), column.end(), 0.0);
  for (std::size_t i = 0; i < rows; ++i) {
    double best = -1.0, dot = 0.0;
    for (std::size_t j = 0; j < cols; ++j) {
      double v = a[i * cols + j] * r[j];
      dot += v;
      column[j] += a[i * cols + j] * c[i];
      if (v > best) {
        best = v;
        result.labels[i] = static_cast<std::int64_t>(j);
      }
    }
    result.row_marginal_error =
        std::max(result.row_marginal_error, std::fabs(static_cast<double>(n) * c[i] * dot - 1.0));
  }
  for (std::size_t j = 0; j < cols; ++j) {
    result.col_marginal_error = std::max(
        result.col_marginal_error, std::fabs(static_cast<double>(k) * r[j] * column[j] - 1.0));
  }

  result.head = head;
  result.n = n;
  result.k = k;
  result.lambda = options.lambda;
  result.storage = "reference-f64";
  result.device = "cpu";
  result.r = std::move(r);
  result.c = std::move(c);
  result.storage_scale = 1.0;
  result.bytes_per_iteration = 2ull * rows * cols * sizeof(double);
  count_clusters(&result);
  result.prepare_seconds = 0.0;
  result.iterate_seconds = iterate_done;
  result.total_seconds = seconds_since(start);
  result.label_seconds = result.total_seconds - iterate_done;
  finish_warnings(options, &result);
  log_summary(options, result);
  return result;
}

// ---- the fast solver ------------------------------------------------------------------------

struct SinkhornSolver::Buffers {
  HostBlock matrix;                 // A (N, stride) in the storage type
  std::vector<double> c;            // (N)
  std::vector<float> row_log_mass;  // (N) log Σ_k exp(z_ik − max_k z_ik)
  std::vector<double> r, r_next;    // (K)
  std::vector<double> col_sums;     // (K)
  std::vector<float> r_rel;         // (stride), padding 0
  std::vector<double> workspace;    // per-chunk column partials (doubles for alignment)
  // Absorption (options.absorb):
  HostBlock logits;                       // (N, K) float32 copy made by append_logits
  std::vector<double> column_potential;   // (K) G: log-scaling folded into A so far
  std::vector<float> column_potential_f;  // (stride) G as float32, what the kernel used
  std::vector<double> row_shift;          // (N) M_i of the stored A (empty: all 0)
  std::vector<double> row_shift_new;      // (N) M_i of the A being stored
};

#if defined(SELA_HAVE_CUDA)
namespace {

namespace kc = sela::assign::cuda;

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    SELA_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device_) SELA_CUDA_CHECK(cudaSetDevice(device_));
  }
  ~DeviceGuard() {
    if (previous_ != device_) SELA_CUDA_WARN(cudaSetDevice(previous_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

// Free bytes of the current device (cudaMemGetInfo).
std::uint64_t free_device_bytes() {
  std::size_t free_bytes = 0, total_bytes = 0;
  SELA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes;
}

// A device allocation that only grows (cudaMalloc/cudaFree), like HostBlock.
class DeviceBlock {
 public:
  DeviceBlock() = default;
  ~DeviceBlock() { reset(); }
  DeviceBlock(const DeviceBlock&) = delete;
  DeviceBlock& operator=(const DeviceBlock&) = delete;

  void ensure(std::uint64_t bytes, const std::string& what) {
    if (bytes <= bytes_) return;
    reset();
    const std::uint64_t rounded = (bytes + 255) / 256 * 256;
    void* memory = nullptr;
    const cudaError_t status = cudaMalloc(&memory, static_cast<std::size_t>(rounded));
    if (status != cudaSuccess) {
      (void)cudaGetLastError();  // an allocation failure is not sticky: clear it
      SELA_FAIL_HINT("sinkhorn",
                     "could not allocate " << format_bytes(rounded) << " of device memory for "
                                           << what << " (" << cudaGetErrorString(status)
                                           << "; free: " << format_bytes(free_device_bytes())
                                           << ")",
                     "use 16-bit storage (bf16 or f16), absorb = false, fewer samples per solve, "
                     "or a GPU with more memory");
    }
    ptr_ = memory;
    bytes_ = rounded;
  }
  void swap(DeviceBlock& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void* get() const { return ptr_; }
  std::uint64_t bytes() const { return bytes_; }
  void reset() noexcept {
    if (ptr_ != nullptr) SELA_CUDA_WARN(cudaFree(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* ptr_ = nullptr;
  std::uint64_t bytes_ = 0;
};

// Page-locked host copies of the device state (two: one being read while the next is in
// flight).
class PinnedStates {
 public:
  PinnedStates() {
    void* memory = nullptr;
    SELA_CUDA_CHECK(cudaMallocHost(&memory, 2 * sizeof(kc::SinkhornDeviceState)));
    states_ = static_cast<kc::SinkhornDeviceState*>(memory);
  }
  ~PinnedStates() { SELA_CUDA_WARN(cudaFreeHost(states_)); }
  PinnedStates(const PinnedStates&) = delete;
  PinnedStates& operator=(const PinnedStates&) = delete;
  kc::SinkhornDeviceState* slot(int index) { return states_ + index; }

 private:
  kc::SinkhornDeviceState* states_ = nullptr;
};

class Event {
 public:
  Event() { SELA_CUDA_CHECK(cudaEventCreate(&event_)); }
  ~Event() { SELA_CUDA_WARN(cudaEventDestroy(event_)); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }
  void record(cudaStream_t stream) { SELA_CUDA_CHECK(cudaEventRecord(event_, stream)); }

 private:
  cudaEvent_t event_ = nullptr;
};

double elapsed_seconds(const Event& start, const Event& end) {
  float ms = 0.0f;
  SELA_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), end.get()));
  return static_cast<double>(ms) * 1e-3;
}

// An Error unless cuda:index exists and is usable; `context` says who asks ("head 'h0'").
void check_cuda_device(const Device& device, const std::string& context) {
  const int count = sela::cuda::device_count();
  if (count == 0) {
    SELA_FAIL_HINT("sinkhorn",
                   context << ": device " << device.str()
                           << " asked, but no CUDA device is usable ("
                           << sela::cuda::no_device_reason() << ")",
                   "use device cpu, or run on a machine with a GPU and its driver");
  }
  SELA_CHECK(device.index < count, "sinkhorn",
             context << ": device " << device.str() << " asked, but only " << count
                     << " CUDA device(s) are present");
}

// Rows of logits uploaded per chunk when no device copy of the logits is kept: 64 MiB.
std::int64_t staging_rows(std::int64_t n, std::int64_t k) {
  const std::int64_t rows =
      (std::int64_t{64} << 20) / (k * static_cast<std::int64_t>(sizeof(float)));
  return std::max<std::int64_t>(1, std::min(n, rows));
}

std::uint64_t device_workspace_bytes(SinkhornStorage storage, std::int64_t n, std::int64_t k,
                                     int device) {
  switch (storage) {
    case SinkhornStorage::f32:
      return kc::sinkhorn_workspace_bytes<float>(n, k, device);
    case SinkhornStorage::f16:
      return kc::sinkhorn_workspace_bytes<Half>(n, k, device);
    case SinkhornStorage::bf16:
      return kc::sinkhorn_workspace_bytes<BFloat16>(n, k, device);
  }
  return 0;
}

}  // namespace

struct SinkhornSolver::DeviceBuffers {
  explicit DeviceBuffers(int index) : device(index) {
    DeviceGuard guard(device);
    SELA_CUDA_CHECK(cudaStreamCreate(&stream));  // blocking: ordered after the legacy stream
    states = std::make_unique<PinnedStates>();
    for (auto& event : events) event = std::make_unique<Event>();
  }
  ~DeviceBuffers() {
    // Everything is freed here, on the right device (never throwing: warnings only);
    // cudaFree waits for queued work.
    int previous = device;
    SELA_CUDA_WARN(cudaGetDevice(&previous));
    if (previous != device) SELA_CUDA_WARN(cudaSetDevice(device));
    SELA_CUDA_WARN(cudaStreamSynchronize(stream));
    for (DeviceBlock* block : blocks()) block->reset();
    for (auto& event : events) event.reset();
    states.reset();
    SELA_CUDA_WARN(cudaStreamDestroy(stream));
    if (previous != device) SELA_CUDA_WARN(cudaSetDevice(previous));
  }
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;

  std::vector<DeviceBlock*> blocks() {
    return {&matrix,    &logits,      &staging,   &workspace,     &c,        &row_log_mass,
            &labels,    &r,           &r_prev,    &r_at_check,    &col_sums, &r_rel,
            &potential, &potential_f, &row_shift, &row_shift_new, &state,    &first_bad,
            &potential_at_check};
  }
  std::uint64_t bytes() const {
    std::uint64_t total = 0;
    for (DeviceBlock* block : const_cast<DeviceBuffers*>(this)->blocks()) total += block->bytes();
    return total;
  }
  kc::SinkhornDeviceVectors vectors() const {
    kc::SinkhornDeviceVectors v;
    v.r = r.as<double>();
    v.r_prev = r_prev.as<double>();
    v.r_at_check = r_at_check.as<double>();
    v.col_sums = col_sums.as<double>();
    v.r_rel = r_rel.as<float>();
    v.column_potential = potential.as<double>();
    v.column_potential_f = potential_f.as<float>();
    v.potential_at_check = potential_at_check.as<double>();
    return v;
  }

  int device;
  cudaStream_t stream = nullptr;
  DeviceBlock matrix;        // A (N, stride) in the storage type
  DeviceBlock logits;        // (N, K) float32 device copy of host logits (absorption)
  DeviceBlock staging;       // (rows, K) float32 upload chunk when no copy is kept
  DeviceBlock workspace;     // kernel workspace (sinkhorn_cuda.cuh)
  DeviceBlock c;             // (N) double
  DeviceBlock row_log_mass;  // (N) float
  DeviceBlock labels;        // (N) int64
  DeviceBlock r, r_prev, r_at_check, col_sums;  // (K) double
  DeviceBlock r_rel;                            // (stride) float, padding 0
  DeviceBlock potential, potential_at_check;    // (K) double G, and G at the last check
  DeviceBlock potential_f;                      // (stride) float G, padding 0
  DeviceBlock row_shift, row_shift_new;         // (N) double M
  DeviceBlock state;                            // SinkhornDeviceState
  DeviceBlock first_bad;                        // unsigned long long
  std::unique_ptr<PinnedStates> states;
  std::unique_ptr<Event> events[6];  // iterate start/end, label start/end, state copies 0/1
  bool has_shift = false;            // row_shift holds M of the stored A
};
#else
struct SinkhornSolver::DeviceBuffers {};
#endif

namespace {

// Calls fn(Store{}) with the element type that `storage` names (float, Half, BFloat16), so
// that each storage-generic member is dispatched in one place.
template <typename Fn>
void with_storage_type(SinkhornStorage storage, Fn&& fn) {
  switch (storage) {
    case SinkhornStorage::f32:
      fn(float{});
      return;
    case SinkhornStorage::f16:
      fn(Half{});
      return;
    case SinkhornStorage::bf16:
      fn(BFloat16{});
      return;
  }
}

}  // namespace

SinkhornSolver::SinkhornSolver(SinkhornOptions options)
    : options_(options), buffers_(std::make_unique<Buffers>()) {
  check_options(options_, "sinkhorn");
}

SinkhornSolver::~SinkhornSolver() = default;

void SinkhornSolver::set_options(const SinkhornOptions& options) {
  SELA_CHECK(!head_open_, "sinkhorn",
             "head '" << head_ << "' is being filled (" << rows_appended_ << " of " << n_
                      << " rows): solve it before changing the options");
  check_options(options, "sinkhorn");
  options_ = options;
}

SinkhornMemoryPlan SinkhornSolver::plan(std::int64_t n, std::int64_t k) const {
  // The device is checked first: plan_for asks it for its free memory and occupancy.
  if (options_.device.is_cuda()) {
#if defined(SELA_HAVE_CUDA)
    check_cuda_device(options_.device, "memory plan");
#else
    SELA_FAIL_HINT("sinkhorn",
                   "memory plan: device " << options_.device.str()
                                          << " asked, but this build has no CUDA",
                   "reconfigure with -DSELA_CUDA=ON on a machine with nvcc, or use device cpu");
#endif
  }
  return plan_for(n, k, options_.absorb);
}

SinkhornMemoryPlan SinkhornSolver::plan_for(std::int64_t n, std::int64_t k, bool keep_logits,
                                            bool host_input) const {
  SinkhornMemoryPlan plan;
  plan.n = n;
  plan.k = k;
  plan.row_stride = sinkhorn_row_stride(k);
  plan.storage = options_.storage;
  plan.where = "host memory";
  // Guard the products: anything beyond 2^62 bytes is absurd on any machine.
  const double matrix = static_cast<double>(n) * static_cast<double>(plan.row_stride) *
                        static_cast<double>(storage_element_bytes(options_.storage));
  const double limit = 4.6e18;
  SELA_CHECK(
      matrix < limit, "sinkhorn",
      "N x K = " << n << " x " << k << " is absurd: A alone would take " << matrix << " bytes");
  plan.matrix_bytes = static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(plan.row_stride) *
                      storage_element_bytes(options_.storage);
  plan.vector_bytes =
      static_cast<std::uint64_t>(n) * (sizeof(double) + sizeof(std::int64_t) + sizeof(float)) +
      static_cast<std::uint64_t>(plan.row_stride) * (4 * sizeof(double) + sizeof(float));
  plan.workspace_bytes = sinkhorn_workspace_bytes(n, plan.row_stride);
  if (options_.absorb) {
    // Row shifts M (old and new), the column potentials G (and G at the last check), G as
    // float32.
    plan.logits_bytes =
        static_cast<std::uint64_t>(n) * 2 * sizeof(double) +
        static_cast<std::uint64_t>(plan.row_stride) * (2 * sizeof(double) + sizeof(float));
    if (keep_logits) {
      plan.logits_bytes +=
          static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(k) * sizeof(float);
    }
  }
  if (options_.device.is_cuda()) {
#if defined(SELA_HAVE_CUDA)
    // On the device: c and labels (8 bytes each) and the log-masses per row; r, its previous
    // value, r at the last check and the column sums (doubles), r_rel (floats); the kernels'
    // workspace and, for host logits without a kept copy, the upload chunk; absorption as on
    // the host, the logits copy being on the device.
    DeviceGuard guard(options_.device.index);
    plan.where = options_.device.str() + " memory";
    plan.vector_bytes =
        static_cast<std::uint64_t>(n) * (sizeof(double) + sizeof(std::int64_t) + sizeof(float)) +
        static_cast<std::uint64_t>(k) * 4 * sizeof(double) +
        static_cast<std::uint64_t>(plan.row_stride) * sizeof(float) +
        sizeof(sela::assign::cuda::SinkhornDeviceState) + sizeof(unsigned long long);
    plan.workspace_bytes = device_workspace_bytes(options_.storage, n, k, options_.device.index);
    if (host_input && !keep_logits) {
      plan.workspace_bytes += static_cast<std::uint64_t>(staging_rows(n, k)) *
                              static_cast<std::uint64_t>(k) * sizeof(float);
    }
#else
    (void)host_input;
#endif
  }
  plan.total_bytes =
      plan.matrix_bytes + plan.vector_bytes + plan.workspace_bytes + plan.logits_bytes;
  plan.limit_bytes = options_.memory_limit_bytes;
  if (plan.limit_bytes == 0) {
#if defined(SELA_HAVE_CUDA)
    if (options_.device.is_cuda()) {
      DeviceGuard guard(options_.device.index);
      plan.limit_bytes = free_device_bytes();
    } else {
      plan.limit_bytes = available_host_bytes();
    }
#else
    plan.limit_bytes = available_host_bytes();
#endif
  }
  return plan;
}

std::uint64_t SinkhornSolver::allocated_bytes() const {
  const Buffers& b = *buffers_;
  std::uint64_t device_bytes = 0;
#if defined(SELA_HAVE_CUDA)
  if (device_ != nullptr) device_bytes = device_->bytes();
#endif
  return device_bytes + b.matrix.bytes() + b.logits.bytes() +
         (b.column_potential.capacity() + b.row_shift.capacity() + b.row_shift_new.capacity()) *
             sizeof(double) +
         b.column_potential_f.capacity() * sizeof(float) + b.c.capacity() * sizeof(double) +
         b.row_log_mass.capacity() * sizeof(float) +
         (b.r.capacity() + b.r_next.capacity() + b.col_sums.capacity()) * sizeof(double) +
         b.r_rel.capacity() * sizeof(float) + b.workspace.capacity() * sizeof(double);
}

void SinkhornSolver::begin_head(std::int64_t n, std::int64_t k, const std::string& head) {
  open_head(n, k, head, options_.absorb);
}

void SinkhornSolver::open_head(std::int64_t n, std::int64_t k, const std::string& head,
                               bool keep_logits, bool host_input) {
  const char* op = "sinkhorn";
  // A pending warm start belongs to this head: whatever fails from here on, it is not
  // carried over to a later one.
  head_warm_r_ = std::move(warm_r_);
  warm_r_.clear();
  check_problem(n, k, head, op);
  if (options_.device.is_cuda()) {
#if defined(SELA_HAVE_CUDA)  // defined by cmake/SelaCuda.cmake for targets linking the CUDA kernels
    check_cuda_device(options_.device, "head '" + head + "'");
#else
    (void)host_input;
    SELA_FAIL_HINT(op,
                   "head '" << head << "': device " << options_.device.str()
                            << " asked, but this build has no CUDA",
                   "reconfigure with -DSELA_CUDA=ON on a machine with nvcc, or use device cpu");
#endif
  }
  head_open_ = false;
  borrowed_logits_ = nullptr;
  borrowed_device_logits_ = nullptr;
  SinkhornMemoryPlan memory = plan_for(n, k, keep_logits, host_input);
  if (options_.verbose >= 1) {
    log_stream(options_) << "sinkhorn head '" << head << "' memory plan: " << memory.describe()
                         << "\n";
  }
  // Memory the solver already holds is reused, so it counts towards what is available
  // (on a GPU only what it holds there).
  std::uint64_t held = allocated_bytes();
#if defined(SELA_HAVE_CUDA)
  if (options_.device.is_cuda()) held = device_ != nullptr ? device_->bytes() : 0;
#endif
  const std::uint64_t usable = memory.limit_bytes > std::numeric_limits<std::uint64_t>::max() - held
                                   ? std::numeric_limits<std::uint64_t>::max()
                                   : memory.limit_bytes + held;
  if (memory.total_bytes > usable) {
    if (options_.device.is_cuda()) {
      SELA_FAIL_HINT(op,
                     "head '" << head << "' does not fit: " << memory.describe() << "; "
                              << format_bytes(usable) << " usable on " << options_.device.str()
                              << " (free"
                              << (options_.memory_limit_bytes != 0 ? " under the memory limit"
                                                                   : "")
                              << " plus what the solver holds)",
                     "use 16-bit storage (bf16 or f16), solve_device() or absorb = false (no "
                     "device copy of the logits is kept), fewer samples per solve, or a GPU "
                     "with more memory");
    }
    SELA_FAIL_HINT(
        op, "head '" << head << "' does not fit: " << memory.describe(),
        "use 16-bit storage (f16 or bf16), fewer samples per solve, solve(logits) at once instead "
        "of batches (no copy of the logits is kept), absorb = false, or a machine with more "
        "memory");
  }
  if (options_.device.is_cuda()) {
    open_device_head(memory, head, keep_logits, host_input);
    return;
  }
  Buffers& b = *buffers_;
  try {
    b.matrix.ensure(memory.matrix_bytes, "A of head '" + head + "'");
    const std::size_t rows = static_cast<std::size_t>(n),
                      stride = static_cast<std::size_t>(memory.row_stride);
    b.c.resize(rows);
    b.row_log_mass.resize(rows);
    b.r.assign(static_cast<std::size_t>(k), 0.0);
    b.r_next.assign(static_cast<std::size_t>(k), 0.0);
    b.col_sums.assign(static_cast<std::size_t>(k), 0.0);
    b.r_rel.assign(stride, 0.0f);
    b.workspace.resize((memory.workspace_bytes + sizeof(double) - 1) / sizeof(double));
    if (keep_logits) {
      b.logits.ensure(static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(k) *
                          sizeof(float),
                      "the logits of head '" + head + "' (kept for absorption)");
    }
  } catch (const std::bad_alloc&) {
    SELA_FAIL_HINT(op,
                   "head '" << head << "': out of memory while allocating " << memory.describe(),
                   "use 16-bit storage or fewer samples per solve");
  }
  head_ = head;
  keep_logits_ = keep_logits;
  n_ = n;
  k_ = k;
  stride_ = memory.row_stride;
  rows_appended_ = 0;
  prepare_seconds_ = 0.0;
  head_open_ = true;
}

template <typename Store>
void SinkhornSolver::append_rows(const float* logits, std::int64_t rows) {
  Store* a = static_cast<Store*>(buffers_->matrix.get()) + rows_appended_ * stride_;
  std::int64_t bad =
      sinkhorn_store_rows<Store>(logits, rows, k_, static_cast<float>(options_.lambda), a, stride_,
                                 buffers_->row_log_mass.data() + rows_appended_);
  if (bad >= 0) {
    head_open_ = false;
    SELA_FAIL_HINT(
        "sinkhorn",
        "head '" << head_ << "': logits row " << rows_appended_ + bad
                 << " (sample index) holds NaN or Inf",
        "the network produced non-finite outputs; check the learning rate and the inputs");
  }
}

void SinkhornSolver::append_logits(const float* logits, std::int64_t rows) {
  const char* op = "sinkhorn";
  SELA_CHECK(head_open_, op,
             "append_logits before begin_head (or after a failed append or a solve)");
  SELA_CHECK(rows >= 0 && rows <= n_ - rows_appended_, op,
             "head '" << head_ << "': appending " << rows << " rows to " << rows_appended_ << " of "
                      << n_);
  if (rows == 0) return;
  SELA_CHECK(logits != nullptr, op, "logits pointer is null");
  const auto start = Clock::now();
#if defined(SELA_HAVE_CUDA)
  if (options_.device.is_cuda()) {
    with_storage_type(options_.storage, [&](auto tag) {
      this->template append_rows_device<decltype(tag)>(logits, rows, false);
    });
    rows_appended_ += rows;
    prepare_seconds_ += seconds_since(start);
    return;
  }
#endif
  with_storage_type(options_.storage, [&](auto tag) {
    this->template append_rows<decltype(tag)>(logits, rows);
  });
  if (keep_logits_) {
    std::memcpy(static_cast<float*>(buffers_->logits.get()) + rows_appended_ * k_, logits,
                static_cast<std::size_t>(rows * k_) * sizeof(float));
  }
  rows_appended_ += rows;
  prepare_seconds_ += seconds_since(start);
}

template <typename Store>
void SinkhornSolver::run(SinkhornResult* result) {
  Buffers& b = *buffers_;
  Store* a = static_cast<Store*>(b.matrix.get());
  const std::int64_t n = n_, k = k_, stride = stride_;
  const float* logits = borrowed_logits_ != nullptr
                            ? borrowed_logits_
                            : (keep_logits_ ? static_cast<const float*>(b.logits.get()) : nullptr);
  const bool absorb = options_.absorb && logits != nullptr;
  const std::size_t workspace_bytes = b.workspace.size() * sizeof(double);
  void* workspace = b.workspace.data();
  const double inv_k = 1.0 / static_cast<double>(k);

  const auto start = Clock::now();
  // A warm start (warm_start()) begins from the given r; c_0 below is then only a
  // placeholder that the first pass, made without over-relaxation, replaces.
  const bool warm = !head_warm_r_.empty();
  result->warm_started = warm;
  // Until the first check (a warm start's is at check_every) nothing has been measured.
  if (warm) result->stop_error = std::numeric_limits<double>::quiet_NaN();
  // c_0 = 1/N in the reference's row scaling: its A is softmax^λ = A / (scale e^{λ m_i})
  // with m_i = row_log_mass_i, so the same start here is c_0,i = e^{−λ m_i} / (N scale).
  // Then r_1 = (1/K) / (Aᵀ c_0), summed in float64 (c_0 spans down to K^-λ).
  const double c0_factor =
      1.0 / (static_cast<double>(n) * static_cast<double>(sinkhorn_storage_scale<Store>()));
  for (std::int64_t i = 0; i < n; ++i) {
    b.c[static_cast<std::size_t>(i)] =
        std::exp(-options_.lambda *
                 static_cast<double>(b.row_log_mass[static_cast<std::size_t>(i)])) *
        c0_factor;
  }
  auto update_r = [&](std::vector<double>* r, std::int64_t iteration) {
    for (std::int64_t j = 0; j < k; ++j) {
      const double s = b.col_sums[static_cast<std::size_t>(j)];
      if (!(s > 0.0) || !std::isfinite(s)) {  // A >= floor > 0, so only float64 range exhaustion
        SELA_FAIL_HINT("sinkhorn",
                       "head '" << head_ << "': column " << j << " sum " << s << " at iteration "
                                << iteration << " left float64's range",
                       "lambda is too large for these logits; use a smaller lambda");
      }
      (*r)[static_cast<std::size_t>(j)] = inv_k / s;
    }
  };
  if (warm) {
    b.r = take_warm_r(absorb);
  } else {
    sinkhorn_column_sums<Store>(a, n, k, stride, b.c.data(), workspace, workspace_bytes,
                                b.col_sums.data());
    update_r(&b.r, 0);
  }

  // Over-relaxation (options.over_relaxation = ω > 1): c ← c^(1−ω) c_new^ω, r likewise,
  // with a safeguard: when the stopping value grows from one check to the next (or stops
  // being finite), r goes back to its value at the previous check and ω to 1 for good.
  // A diverging relaxed r is also what sets off absorptions (its range grows), so the check's
  // r is kept with the column potentials G it was measured under: after an absorption, the
  // restored r would be r_check / r_now in the new A's units, a range as wide as the
  // divergence (seen: e^182, all rows of A r_rel lost in float32), so the safeguard then
  // restores G too and folds r into A again before the next pass.
  double omega = options_.over_relaxation;
  double last_check_error = std::numeric_limits<double>::infinity();
  std::vector<double> r_at_check = b.r;
  std::vector<double> potential_at_check;  // G at the check (set below, with G)
  bool absorbed_since_check = false;
  bool absorb_restored = false;  // the safeguard restored G: re-store A before the next pass
  auto record_check = [&]() {
    r_at_check = b.r;
    potential_at_check = b.column_potential;
    absorbed_since_check = false;
  };
  auto stop_relaxation = [&](std::int64_t iteration) {
    omega = 1.0;  // the safeguard: back to the last good r, plain steps from now on
    result->over_relaxation_stopped_at = iteration;
    b.r = r_at_check;
    if (absorbed_since_check) {
      b.column_potential = potential_at_check;
      absorb_restored = true;
    }
  };
  // r is handed to the float32 kernels as r_rel = r / r_scale with r_scale the geometric
  // middle of r's range, so that r_rel spans at most e^±87 around 1 before it would leave
  // float32's normal range (r can span many decades when N < K or λ is large).
  double r_scale = 1.0;
  auto set_r_rel = [&]() {
    const auto [r_min_at, r_max_at] = std::minmax_element(b.r.begin(), b.r.end());
    r_scale = std::sqrt(*r_max_at) * std::sqrt(*r_min_at);
    for (std::int64_t j = 0; j < k; ++j) {
      b.r_rel[static_cast<std::size_t>(j)] =
          static_cast<float>(b.r[static_cast<std::size_t>(j)] / r_scale);
    }
  };
  // Absorption (see the top of this file). G and M start at 0: the stored A is K0.
  // Entries below this are stored with less than the storage's relative precision: the
  // floor for f32 and bf16 (float32's exponent range), the smallest normal half (2^-14,
  // i.e. e^-20 below the row maximum) for f16, whose subnormals keep 1 to 10 bits.
  const double floor_value =
      std::is_same<Store, Half>::value ? 0x1p-14
                                       : static_cast<double>(sinkhorn_storage_floor<Store>());
  const double scale = static_cast<double>(sinkhorn_storage_scale<Store>());
  b.column_potential.assign(static_cast<std::size_t>(k), 0.0);
  potential_at_check = b.column_potential;
  b.row_shift.clear();
  bool absorbed_last_iteration = false;
  const double absorb_above = sinkhorn_absorb_floor_share(options_.storage);
  auto floored_share_bound = [&](std::int64_t iteration) {
    double r_sum = 0.0, r_min = std::numeric_limits<double>::infinity();
    for (double v : b.r) {
      r_sum += v;
      r_min = std::min(r_min, v);
    }
    const double cheap = floor_value * r_sum / (scale * r_min);
    if (!(cheap > absorb_above) || iteration == 0) return cheap;
    // (A r_old)_i = 1/(N c_i) from the last pass; (A r)_i >= (A r_old)_i · min_k r_k/r_old,k.
    double c_max = 0.0;
    for (std::int64_t i = 0; i < n; ++i) c_max = std::max(c_max, b.c[static_cast<std::size_t>(i)]);
    double worst_ratio = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      worst_ratio = std::max(worst_ratio, b.r_next[jj] / b.r[jj]);
    }
    return std::min(cheap, floor_value * r_sum * static_cast<double>(n) * c_max * worst_ratio);
  };
  auto absorb_scaling = [&](std::int64_t iteration) {
    // G_new = G + log r, shifted to max 0 and rounded to float32 (the kernel's values).
    double top = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      top = std::max(top, b.column_potential[jj] + std::log(b.r[jj]));
    }
    for (std::int64_t j = 0; j < k; ++j) {
      const std::size_t jj = static_cast<std::size_t>(j);
      const float g = static_cast<float>(b.column_potential[jj] + std::log(b.r[jj]) - top);
      b.column_potential_f[jj] = g;
      const double factor = std::exp(b.column_potential[jj] - static_cast<double>(g));
      b.r[jj] *= factor;  // ≈ e^top for every k: r is reset to a constant
      b.column_potential[jj] = static_cast<double>(g);
    }
    b.row_shift_new.resize(static_cast<std::size_t>(n));
    sinkhorn_store_rows_absorbed<Store>(logits, n, k, static_cast<float>(options_.lambda),
                                        b.column_potential_f.data(), a, stride,
                                        b.row_shift_new.data());
    // c in the units of the new A: c e^{M_new − M_old}.
    const bool had_shift = !b.row_shift.empty();
    for (std::int64_t i = 0; i < n; ++i) {
      const std::size_t ii = static_cast<std::size_t>(i);
      b.c[ii] *= std::exp(b.row_shift_new[ii] - (had_shift ? b.row_shift[ii] : 0.0));
    }
    b.row_shift.swap(b.row_shift_new);
    ++result->absorptions;
    result->last_absorption_at = iteration;
    absorbed_since_check = true;
  };
  if (absorb) b.column_potential_f.assign(static_cast<std::size_t>(stride), 0.0f);

  for (std::int64_t iteration = 0;; ++iteration) {
    if (absorb && iteration == 0 && warm) {
      // A warm r is kept: folded into A once where the floor would hide what it weighs.
      if (floored_share_bound(0) > absorb_above) {
        absorb_scaling(0);  // r_at_check stays the warm r, under G = 0
        absorbed_last_iteration = true;
      }
    } else if (absorb && iteration == 0) {
      // Before the first pass r_1 comes from the column sums of A with c_0: where A misses
      // floored entries r_1 is wrong too, and the iteration would start on another path
      // than the reference's. So absorb it and compute r_1 again from the new A (a few
      // rounds: each brings the unpopular columns' entries into range).
      for (int round = 0; round < 4 && floored_share_bound(0) > absorb_above; ++round) {
        absorb_scaling(0);
        sinkhorn_column_sums<Store>(a, n, k, stride, b.c.data(), workspace, workspace_bytes,
                                    b.col_sums.data());
        update_r(&b.r, 0);
        record_check();
        absorbed_last_iteration = true;
      }
    } else if (absorb_restored) {
      absorb_scaling(iteration);  // the safeguard's restored (G, r) folded into A
      absorb_restored = false;
      absorbed_last_iteration = true;
    } else if (absorb) {
      // Never twice in a row: right after an absorption the bound is K·floor/scale, so a
      // second one could not help (an extreme K with f16), and would only cost time.
      if (!absorbed_last_iteration && floored_share_bound(iteration) > absorb_above) {
        absorb_scaling(iteration);
        absorbed_last_iteration = true;
      } else {
        absorbed_last_iteration = false;
      }
    }
    set_r_rel();
    // (A warm start's c_0 is a placeholder: its first pass is not measured.)
    const bool measure = iteration % options_.check_every == 0 && !(warm && iteration == 0);
    std::int64_t bad_rows = 0;
    // A warm start's first pass sets c from r: its c_0 is no iterate to relax from.
    const double pass_omega = warm && iteration == 0 ? 1.0 : omega;
    double change = sinkhorn_pass<Store>(a, n, k, stride, n, b.r_rel.data(), r_scale, pass_omega,
                                         b.c.data(), b.col_sums.data(), measure, workspace,
                                         workspace_bytes, &bad_rows);
    if (omega != 1.0) {
      // A diverging relaxed iteration leaves float32's range (rows without mass) or float64's
      // (column sums 0 or inf) within a few passes: the safeguard below catches it as NaN.
      bool diverged = bad_rows > 0;
      for (double sum : b.col_sums) diverged = diverged || !(sum > 0.0) || !std::isfinite(sum);
      if (diverged) {
        bad_rows = 0;
        change = std::numeric_limits<double>::quiet_NaN();
      }
    }
    if (bad_rows > 0) {
      SELA_FAIL_HINT("sinkhorn",
                     "head '" << head_ << "': " << bad_rows
                              << " rows lost all their mass at iteration " << iteration
                              << " (A r underflowed float32)",
                     "use a smaller lambda or f32 storage");
    }
    result->iterations = iteration + 1;
    if (omega != 1.0 && (measure || !std::isfinite(change)) && !(change < last_check_error)) {
      stop_relaxation(iteration);
      if (result->iterations >= options_.max_iters) break;
      continue;
    }
    if (measure) {
      result->stop_error = change;
      last_check_error = change;
      record_check();
      if (change <= options_.tol) {
        result->converged = true;
        break;
      }
    }
    if (result->iterations >= options_.max_iters) break;
    update_r(&b.r_next, iteration + 1);
    if (omega != 1.0) {
      bool in_range = true;
      for (std::int64_t j = 0; j < k; ++j) {
        const std::size_t jj = static_cast<std::size_t>(j);
        b.r_next[jj] *= sinkhorn_relaxation_factor(b.r[jj], b.r_next[jj], omega);
        in_range = in_range && b.r_next[jj] > 0.0 && std::isfinite(b.r_next[jj]);
      }
      // A diverging relaxed r can also leave float64's range between two checks (seen with
      // bf16 storage and a warm start at K = 300, N = 10,000).
      if (!in_range) {
        // The next absorption bound compares r with the r of the pass before: this pass's
        // (as the device's r_prev), not the out-of-range values just computed.
        b.r_next = b.r;
        stop_relaxation(iteration);
        continue;
      }
    }
    b.r.swap(b.r_next);
  }
  // A safeguard stop at the cap restored G without a pass after it: A from G, as the labels
  // below read A with r. (The marginal errors then describe the diverged last pass: the cap
  // warning's figures are not those of the labels' r.)
  if (absorb_restored) absorb_scaling(result->iterations);
  // Column marginal of (c_t, r_t): K r_t,k (Aᵀ c_t)_k − 1.
  for (std::int64_t j = 0; j < k; ++j) {
    result->col_marginal_error =
        std::max(result->col_marginal_error,
                 std::fabs(static_cast<double>(k) * b.r[static_cast<std::size_t>(j)] *
                               b.col_sums[static_cast<std::size_t>(j)] -
                           1.0));
  }
  result->iterate_seconds = seconds_since(start);

  const auto label_start = Clock::now();
  set_r_rel();  // the r of the last pass (or, after a safeguard stop at the cap, the restored r)
  result->labels.resize(static_cast<std::size_t>(n));
  result->row_marginal_error =
      sinkhorn_labels<Store>(a, n, k, stride, n, b.r_rel.data(), r_scale, b.c.data(),
                             result->labels.data(), &result->floor_mass);
  result->label_seconds = seconds_since(label_start);
  result->storage_scale = sinkhorn_storage_scale<Store>();
  result->bytes_per_iteration =
      static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(stride) * sizeof(Store);
}

// ---- the CUDA path ---------------------------------------------------------------------------

#if defined(SELA_HAVE_CUDA)
void SinkhornSolver::open_device_head(const SinkhornMemoryPlan& memory, const std::string& head,
                                      bool keep_logits, bool host_input) {
  const int index = options_.device.index;
  if (device_ == nullptr || device_->device != index) {
    device_.reset();
    device_ = std::make_unique<DeviceBuffers>(index);
  }
  DeviceBuffers& d = *device_;
  DeviceGuard guard(index);
  const std::uint64_t n = static_cast<std::uint64_t>(memory.n),
                      k = static_cast<std::uint64_t>(memory.k),
                      stride = static_cast<std::uint64_t>(memory.row_stride);
  d.matrix.ensure(memory.matrix_bytes, "A of head '" + head + "'");
  d.workspace.ensure(device_workspace_bytes(options_.storage, memory.n, memory.k, index),
                     "the kernels' workspace");
  if (host_input && !keep_logits) {
    d.staging.ensure(static_cast<std::uint64_t>(staging_rows(memory.n, memory.k)) * k * 4,
                     "the upload chunk");
  }
  if (keep_logits)
    d.logits.ensure(n * k * 4, "the logits of head '" + head + "' (kept for absorption)");
  d.c.ensure(n * 8, "c");
  d.row_log_mass.ensure(n * 4, "row log-masses");
  d.labels.ensure(n * 8, "labels");
  for (DeviceBlock* vector : {&d.r, &d.r_prev, &d.r_at_check, &d.col_sums})
    vector->ensure(k * 8, "r");
  d.r_rel.ensure(stride * 4, "r_rel");
  if (options_.absorb) {  // (the memory plan counts these under absorption)
    d.potential.ensure(k * 8, "column potentials");
    d.potential_at_check.ensure(k * 8, "column potentials");
    d.potential_f.ensure(stride * 4, "column potentials");
    d.row_shift.ensure(n * 8, "row shifts");
    d.row_shift_new.ensure(n * 8, "row shifts");
  }
  d.state.ensure(sizeof(sela::assign::cuda::SinkhornDeviceState), "the solver state");
  d.first_bad.ensure(sizeof(unsigned long long), "the NaN check");
  // No row is bad yet; r_rel's padding stays 0 (the kernels only write k values).
  SELA_CUDA_CHECK(cudaMemsetAsync(d.first_bad.get(), 0xFF, sizeof(unsigned long long), d.stream));
  SELA_CUDA_CHECK(cudaMemsetAsync(d.r_rel.get(), 0, stride * 4, d.stream));
  head_ = head;
  keep_logits_ = keep_logits;
  n_ = memory.n;
  k_ = memory.k;
  stride_ = memory.row_stride;
  rows_appended_ = 0;
  prepare_seconds_ = 0.0;
  head_open_ = true;
}

template <typename Store>
void SinkhornSolver::append_rows_device(const float* logits, std::int64_t rows, bool on_device) {
  DeviceBuffers& d = *device_;
  DeviceGuard guard(d.device);
  const float lambda = static_cast<float>(options_.lambda);
  auto store = [&](const float* device_rows, std::int64_t count, std::int64_t first_row) {
    sela::assign::cuda::sinkhorn_store_rows<Store>(
        device_rows, count, k_, lambda, d.matrix.as<Store>() + first_row * stride_, stride_,
        d.row_log_mass.as<float>() + first_row, first_row, d.first_bad.as<unsigned long long>(),
        d.stream);
  };
  if (on_device) {
    store(logits, rows, rows_appended_);
    return;
  }
  const std::size_t row_bytes = static_cast<std::size_t>(k_) * sizeof(float);
  if (keep_logits_) {  // into the kept copy, then stored from there
    float* copy = d.logits.as<float>() + rows_appended_ * k_;
    SELA_CUDA_CHECK(cudaMemcpyAsync(copy, logits, static_cast<std::size_t>(rows) * row_bytes,
                                    cudaMemcpyHostToDevice, d.stream));
    store(copy, rows, rows_appended_);
    return;
  }
  // Through the upload chunk: the stream orders each copy after the last chunk's kernel.
  const std::int64_t chunk = static_cast<std::int64_t>(d.staging.bytes() / row_bytes);
  SELA_CHECK(chunk >= 1, "sinkhorn",
             "head '" << head_ << "': internal error: no upload chunk for host logits");
  for (std::int64_t done = 0; done < rows; done += chunk) {
    const std::int64_t count = std::min(chunk, rows - done);
    SELA_CUDA_CHECK(cudaMemcpyAsync(d.staging.get(), logits + done * k_,
                                    static_cast<std::size_t>(count) * row_bytes,
                                    cudaMemcpyHostToDevice, d.stream));
    store(d.staging.as<float>(), count, rows_appended_ + done);
  }
}

template <typename Store>
void SinkhornSolver::run_device(SinkhornResult* result) {
  namespace kc = sela::assign::cuda;
  using State = kc::SinkhornDeviceState;
  DeviceBuffers& d = *device_;
  DeviceGuard guard(d.device);
  cudaStream_t stream = d.stream;
  const std::int64_t n = n_, k = k_, stride = stride_;

  // The appends' kernels finish (part of the prepare time), then the NaN/Inf check.
  const auto drain_start = Clock::now();
  unsigned long long first_bad = 0;
  SELA_CUDA_CHECK(cudaMemcpyAsync(&first_bad, d.first_bad.get(), sizeof(first_bad),
                                  cudaMemcpyDeviceToHost, stream));
  SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
  prepare_seconds_ += seconds_since(drain_start);
  if (first_bad != ULLONG_MAX) {
    SELA_FAIL_HINT(
        "sinkhorn",
        "head '" << head_ << "': logits row " << first_bad << " (sample index) holds NaN or Inf",
        "the network produced non-finite outputs; check the learning rate and the inputs");
  }

  Store* a = d.matrix.as<Store>();
  const float* logits = borrowed_device_logits_ != nullptr
                            ? borrowed_device_logits_
                            : (keep_logits_ ? d.logits.as<float>() : nullptr);
  const bool absorb = options_.absorb && logits != nullptr;
  State* state = d.state.as<State>();
  const kc::SinkhornDeviceVectors v = d.vectors();
  double* c = d.c.as<double>();
  void* workspace = d.workspace.get();
  const std::size_t workspace_bytes = static_cast<std::size_t>(d.workspace.bytes());

  kc::SinkhornControlParams params;
  params.n = n;
  params.k = k;
  params.stride = stride;
  params.tol = options_.tol;
  params.max_iters = options_.max_iters;
  params.omega = options_.over_relaxation;
  params.absorb = absorb;
  params.absorb_above = sinkhorn_absorb_floor_share(options_.storage);
  params.floor_value = std::is_same<Store, Half>::value
                           ? 0x1p-14
                           : static_cast<double>(sinkhorn_storage_floor<Store>());
  params.scale = static_cast<double>(sinkhorn_storage_scale<Store>());

  Event& iterate_start = *d.events[0];
  Event& iterate_end = *d.events[1];
  Event& label_start = *d.events[2];
  Event& label_end = *d.events[3];
  Event* copied[2] = {d.events[4].get(), d.events[5].get()};

  auto read_state = [&]() -> State {
    SELA_CUDA_CHECK(
        cudaMemcpyAsync(d.states->slot(0), state, sizeof(State), cudaMemcpyDeviceToHost, stream));
    SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
    return *d.states->slot(0);
  };
  auto check_failed = [&](const State& s) {
    if (s.status != kc::kSinkhornFailed) return;
    if (s.error_kind == kc::kSinkhornBadRows) {
      SELA_FAIL_HINT("sinkhorn",
                     "head '" << head_ << "': " << s.error_index
                              << " rows lost all their mass at iteration " << s.error_iteration
                              << " (A r underflowed float32)",
                     "use a smaller lambda or f32 storage");
    }
    SELA_FAIL_HINT("sinkhorn",
                   "head '" << head_ << "': column " << s.error_index << " sum " << s.error_value
                            << " at iteration " << s.error_iteration << " left float64's range",
                   "lambda is too large for these logits; use a smaller lambda");
  };
  auto absorb_scaling = [&](std::int64_t iteration) {
    kc::sinkhorn_absorb_columns(k, v, stream);
    kc::sinkhorn_store_rows_absorbed<Store>(logits, n, k, static_cast<float>(options_.lambda),
                                            v.column_potential_f, a, stride,
                                            d.row_shift_new.as<double>(), stream);
    kc::sinkhorn_absorb_rows(n, d.row_shift_new.as<double>(),
                             d.has_shift ? d.row_shift.as<double>() : nullptr, c, stream);
    d.row_shift.swap(d.row_shift_new);
    d.has_shift = true;
    ++result->absorptions;
    result->last_absorption_at = iteration;
  };

  // A warm start (warm_start()) begins from the given r, as on the CPU (run): c_0 is then a
  // placeholder that the first pass, plain and not measured, replaces.
  const bool warm = !head_warm_r_.empty();
  result->warm_started = warm;
  iterate_start.record(stream);
  // c_0 = 1/N in the reference's row scaling, r_1 from the column sums of A with c_0.
  const double c0_factor =
      1.0 / (static_cast<double>(n) * static_cast<double>(sinkhorn_storage_scale<Store>()));
  kc::sinkhorn_start_c(d.row_log_mass.as<float>(), n, options_.lambda, c0_factor, c, stream);
  if (absorb) {
    SELA_CUDA_CHECK(
        cudaMemsetAsync(v.column_potential, 0, static_cast<std::size_t>(k) * 8, stream));
    SELA_CUDA_CHECK(
        cudaMemsetAsync(v.column_potential_f, 0, static_cast<std::size_t>(stride) * 4, stream));
  }
  d.has_shift = false;
  // r_prev is read by the absorption bound before any update has written it when the
  // over-relaxation safeguard fires at the first check: 0, as the CPU's r_next starts.
  SELA_CUDA_CHECK(cudaMemsetAsync(v.r_prev, 0, static_cast<std::size_t>(k) * 8, stream));
  if (warm) {
    // (A copy from pageable memory returns once the source has been read.)
    const std::vector<double> warm_r = take_warm_r(absorb);
    SELA_CUDA_CHECK(cudaMemcpyAsync(v.r, warm_r.data(), static_cast<std::size_t>(k) * 8,
                                    cudaMemcpyHostToDevice, stream));
  } else {
    kc::sinkhorn_column_sums<Store>(a, n, k, stride, c, workspace, workspace_bytes, v.col_sums,
                                    stream);
  }
  kc::sinkhorn_control_start(params, true, warm, v, state, stream);
  State current = read_state();
  check_failed(current);
  // As the CPU: a warm r is folded into A once where the floor would hide what it weighs
  // (r_at_check stays the warm r, under G = 0).
  if (warm && absorb && current.bound > params.absorb_above) {
    absorb_scaling(0);
    kc::sinkhorn_control_resume(params, v, state, stream);
  }
  // As the CPU: where A misses floored entries before the first pass, absorb and compute r_1
  // again from the new A (a few rounds).
  for (int round = 0; absorb && !warm && round < 4 && current.bound > params.absorb_above;
       ++round) {
    absorb_scaling(0);
    kc::sinkhorn_column_sums<Store>(a, n, k, stride, c, workspace, workspace_bytes, v.col_sums,
                                    stream);
    kc::sinkhorn_control_start(params, false, false, v, state, stream);
    current = read_state();
    check_failed(current);
  }

  // The iterations, in stretches that end at check iterations (t % check_every == 0) or at
  // the cap; the next stretch is queued before the host waits for the last one's state.
  const std::int64_t check_every = options_.check_every, cap = options_.max_iters;
  auto queue_stretch = [&](std::int64_t first) {
    const std::int64_t last = first % check_every == 0
                                  ? first
                                  : std::min(cap - 1, (first / check_every + 1) * check_every);
    for (std::int64_t t = first; t <= last; ++t) {
      const bool measure = t % check_every == 0 && !(warm && t == 0);
      kc::sinkhorn_pass<Store>(a, n, k, stride, n, v.r_rel, &state->r_scale, &state->omega, c,
                               v.col_sums, measure, workspace, workspace_bytes, &state->pass,
                               &state->status, stream);
      kc::sinkhorn_control_step(params, t, measure, v, state, stream);
    }
    return last;
  };
  std::int64_t next = 0;
  int slot = 0, pending = -1;
  bool finished = false;
  while (!finished) {
    int queued = -1;
    if (next < cap) {
      next = queue_stretch(next) + 1;
      SELA_CUDA_CHECK(cudaMemcpyAsync(d.states->slot(slot), state, sizeof(State),
                                      cudaMemcpyDeviceToHost, stream));
      copied[slot]->record(stream);
      queued = slot;
      slot ^= 1;
    }
    if (pending >= 0) {
      SELA_CUDA_CHECK(cudaEventSynchronize(copied[pending]->get()));
      const State seen = *d.states->slot(pending);
      if (seen.status != kc::kSinkhornRunning) {
        SELA_CUDA_CHECK(cudaStreamSynchronize(stream));  // what was queued after did nothing
        check_failed(seen);
        if (seen.status == kc::kSinkhornHalted) {
          absorb_scaling(seen.halted_at);
          kc::sinkhorn_control_resume(params, v, state, stream);
          // The safeguard's restoring absorption can come at the cap: then no pass is left.
          finished = seen.halted_at >= cap;
          next = seen.halted_at;
          pending = -1;
          continue;
        }
        finished = true;  // converged or at the cap
        continue;
      }
    }
    if (queued < 0) {  // everything up to the cap was queued and the state still runs
      SELA_FAIL("sinkhorn", "head '" << head_ << "': internal error: the device solver passed "
                                     << "the iteration cap without stopping");
    }
    pending = queued;
  }
  kc::sinkhorn_control_final(params, v, state, stream);
  iterate_end.record(stream);

  label_start.record(stream);
  kc::sinkhorn_labels<Store>(a, n, k, stride, n, v.r_rel, &state->r_scale, c,
                             d.labels.as<std::int64_t>(), workspace, workspace_bytes,
                             &state->labels, stream);
  result->labels.resize(static_cast<std::size_t>(n));
  SELA_CUDA_CHECK(cudaMemcpyAsync(result->labels.data(), d.labels.get(),
                                  static_cast<std::size_t>(n) * sizeof(std::int64_t),
                                  cudaMemcpyDeviceToHost, stream));
  label_end.record(stream);
  const State final_state = read_state();
  check_failed(final_state);

  result->iterations = final_state.iterations;
  result->converged = final_state.status == kc::kSinkhornConverged;
  result->stop_error = final_state.stop_error;
  result->over_relaxation_stopped_at = final_state.omega_stopped_at;
  result->col_marginal_error = final_state.col_error;
  result->row_marginal_error = final_state.labels.row_error;
  result->floor_mass = final_state.labels.floor_mass;
  result->iterate_seconds = elapsed_seconds(iterate_start, iterate_end);
  result->label_seconds = elapsed_seconds(label_start, label_end);
  result->storage_scale = sinkhorn_storage_scale<Store>();
  result->bytes_per_iteration = kc::sinkhorn_pass_reads<Store>(n, k);

  // (c, r) in the units of the original A (r e^{G}, c e^{−M}), as the CPU path returns them.
  result->r.resize(static_cast<std::size_t>(k));
  result->c.resize(static_cast<std::size_t>(n));
  SELA_CUDA_CHECK(
      cudaMemcpy(result->r.data(), v.r, static_cast<std::size_t>(k) * 8, cudaMemcpyDeviceToHost));
  SELA_CUDA_CHECK(
      cudaMemcpy(result->c.data(), c, static_cast<std::size_t>(n) * 8, cudaMemcpyDeviceToHost));
  if (result->absorptions > 0) {
    std::vector<double> potential(static_cast<std::size_t>(k)), shift(static_cast<std::size_t>(n));
    SELA_CUDA_CHECK(cudaMemcpy(potential.data(), v.column_potential,
                               static_cast<std::size_t>(k) * 8, cudaMemcpyDeviceToHost));
    SELA_CUDA_CHECK(cudaMemcpy(shift.data(), d.row_shift.get(), static_cast<std::size_t>(n) * 8,
                               cudaMemcpyDeviceToHost));
    for (std::size_t j = 0; j < result->r.size(); ++j) result->r[j] *= std::exp(potential[j]);
    for (std::size_t i = 0; i < result->c.size(); ++i) result->c[i] *= std::exp(-shift[i]);
  }
}
#else
void SinkhornSolver::open_device_head(const SinkhornMemoryPlan&, const std::string& head, bool,
                                      bool) {
  SELA_FAIL("sinkhorn", "head '" << head << "': this build has no CUDA");
}
#endif

SinkhornResult SinkhornSolver::finish(SinkhornResult* result) const {
  result->prepare_seconds = prepare_seconds_;
  result->total_seconds = result->prepare_seconds + result->iterate_seconds + result->label_seconds;
  count_clusters(result);
  finish_warnings(options_, result);
  log_summary(options_, *result);
  return std::move(*result);
}

std::vector<double> SinkhornSolver::take_warm_r(bool absorb) {
  std::vector<double> r = std::move(head_warm_r_);
  head_warm_r_.clear();
  // r up to a constant factor: centred on 1 (geometric middle of its range).
  const auto [r_min_at, r_max_at] = std::minmax_element(r.begin(), r.end());
  const double middle = std::sqrt(*r_max_at) * std::sqrt(*r_min_at);
  // Without absorption r reaches the kernels as float32 around that middle (set_r_rel).
  if (!absorb && std::log(*r_max_at) - std::log(*r_min_at) > 160.0) {
    SELA_FAIL_HINT("sinkhorn",
                   "head '" << head_ << "': the warm start's r spans e^"
                            << std::log(*r_max_at) - std::log(*r_min_at)
                            << ", beyond float32's range, and absorption is off",
                   "enable absorption (options.absorb) or start cold");
  }
  for (double& value : r) value /= middle;
  return r;
}

void SinkhornSolver::warm_start(std::vector<double> r) {
  // Between begin_head and solve it is for the open head, else for the next one opened.
  std::vector<double>& pending = head_open_ ? head_warm_r_ : warm_r_;
  pending.clear();  // a rejected r leaves nothing pending either
  for (std::size_t j = 0; j < r.size(); ++j) {
    if (!(r[j] > 0.0 && std::isfinite(r[j]))) {
      SELA_FAIL_HINT("sinkhorn",
                     "warm_start: r[" << j << "] = " << r[j] << " is not a positive finite scaling",
                     "pass a previous result.r of the same head, or start cold");
    }
  }
  pending = std::move(r);
}

SinkhornResult SinkhornSolver::solve() {
  SELA_CHECK(head_open_, "sinkhorn",
             "solve before begin_head (or after a failed append or a solve)");
  if (!head_warm_r_.empty()) {
    const std::size_t given = head_warm_r_.size();
    if (given != static_cast<std::size_t>(k_)) {
      head_warm_r_.clear();
      head_open_ = false;
      SELA_FAIL_HINT("sinkhorn",
                     "head '" << head_ << "': warm start r has " << given
                              << " values, the head has K = " << k_ << " clusters",
                     "warm-start a head only from a previous result of the same K");
    }
  }
  SELA_CHECK(
      rows_appended_ == n_, "sinkhorn",
      "head '" << head_ << "': solve with " << rows_appended_ << " of " << n_ << " rows appended");
  head_open_ = false;
  SinkhornResult result;
  result.head = head_;
  result.n = n_;
  result.k = k_;
  result.lambda = options_.lambda;
  result.storage = storage_name(options_.storage);
  result.device = "cpu";
  result.over_relaxation = options_.over_relaxation;
#if defined(SELA_HAVE_CUDA)
  if (options_.device.is_cuda()) {
    result.device = options_.device.str();
    try {
      with_storage_type(options_.storage, [&](auto tag) {
        this->template run_device<decltype(tag)>(&result);
      });
    } catch (...) {
      borrowed_device_logits_ = nullptr;
      throw;
    }
    borrowed_device_logits_ = nullptr;
    return finish(&result);
  }
#endif
  with_storage_type(options_.storage, [&](auto tag) {
    this->template run<decltype(tag)>(&result);
  });
  // (c, r) in the units of the original A (r e^{G}, c e^{−M}), whatever was absorbed.
  const Buffers& b = *buffers_;
  result.r = b.r;
  result.c = b.c;
  if (result.absorptions > 0) {
    for (std::size_t j = 0; j < result.r.size(); ++j)
      result.r[j] *= std::exp(b.column_potential[j]);
    for (std::size_t i = 0; i < result.c.size(); ++i) result.c[i] *= std::exp(-b.row_shift[i]);
  }
  borrowed_logits_ = nullptr;
  return finish(&result);
}

SinkhornResult SinkhornSolver::solve(const float* logits, std::int64_t n, std::int64_t k,
                                     const std::string& head) {
  if (options_.device.is_cuda()) {
    // Absorption reads the logits on the device: with absorb they are uploaded into a copy
    // kept there, else through a chunk that is reused.
    open_head(n, k, head, options_.absorb, true);
    append_logits(logits, n);
    return solve();
  }
  // The caller's logits stay valid during the solve: absorption reads them, no copy.
  open_head(n, k, head, false);
  append_logits(logits, n);
  borrowed_logits_ = logits;
  return solve();
}

SinkhornResult SinkhornSolver::solve_device(const float* device_logits, std::int64_t n,
                                            std::int64_t k, const std::string& head) {
  const char* op = "sinkhorn";
  SELA_CHECK(options_.device.is_cuda(), op,
             "head '" << head << "': solve_device needs options.device cuda, got "
                      << options_.device.str() << " (use solve(logits) for host logits)");
  open_head(n, k, head, false, false);  // an Error in builds without CUDA
#if defined(SELA_HAVE_CUDA)
  DeviceGuard guard(device_->device);
  const auto start = Clock::now();
  cudaPointerAttributes attributes{};
  const cudaError_t status = cudaPointerGetAttributes(&attributes, device_logits);
  if (status != cudaSuccess) (void)cudaGetLastError();
  if (device_logits == nullptr || status != cudaSuccess ||
      (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)) {
    head_open_ = false;
    SELA_FAIL_HINT(op,
                   "head '" << head << "': solve_device was given "
                            << (device_logits == nullptr ? "a null pointer"
                                                         : "a pointer that is not device memory"),
                   "pass logits allocated with cudaMalloc (or use solve(logits) for host logits)");
  }
  SELA_CUDA_CHECK(cudaDeviceSynchronize());  // the producer's work, on whatever stream, is done
  with_storage_type(options_.storage, [&](auto tag) {
    this->template append_rows_device<decltype(tag)>(device_logits, n, true);
  });
  rows_appended_ = n;
  prepare_seconds_ += seconds_since(start);
  borrowed_device_logits_ = device_logits;
  return solve();
#else
  (void)device_logits;
  SELA_FAIL(op, "unreachable: open_head fails without CUDA");
#endif
}

}  // namespace sela::assign
