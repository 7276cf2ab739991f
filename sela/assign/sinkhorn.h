// SeLa label assignment: equipartitioned labels from a head's logits by Sinkhorn-Knopp.
//
// For one head with logits z (N, K) the self-labelling step (DESIGN.md) solves
//     max over Q in U(r = 1/K, c = 1/N) of <Q, log p> + (1/λ) H(Q),   p = softmax(z)
// whose solution is Q = diag(c) A diag(r) with A_ik = p_ik^λ. The labels are y_i =
// argmax_k A_ik r_k. This header holds two solvers with the same stopping rule:
//
//  * sinkhorn_reference — the published algorithm, kept for tests and for the record:
//    float64 softmax, power λ, two matrix-vector products per iteration
//        r = (1/K) / (Aᵀ c),   c_new = (1/N) / (A r),
//    and the check Σ_i |c_i/c_new_i − 1| <= tol every `check_every` iterations (counting
//    from the first), exactly as the reference code's loop.
//  * SinkhornSolver — the fast path: stores A ∝ exp(λ(z − max_k z)) once (float32 or
//    16-bit) straight from the logits and makes one pass over it per iteration (see
//    sinkhorn_cpu.h). Same updates, same stopping rule and the same start (c = 1/N in the
//    reference's row scaling, from each row's log Σ_k exp(z_ik − max z_i) kept while
//    storing A), so it follows the reference's sequence of r and c up to the storage's
//    rounding: the iteration counts and the labels match.
//
// Absorption (Schmitzer 2019; Chizat et al. 2018). A stored A keeps entries only down to
// the storage's floor (e^-69 below the row maximum for f32/bf16, e^-27 for f16). When the
// network is confident, λ(z − max) of most entries is below that, and an unpopular cluster
// needs r_k ~ e^80 to attract its N/K samples: the plan then rests on floored entries and
// the answer is the storage's, not the problem's. With options.absorb (the default) the
// solver keeps the logits and, when a bound on the plan's mass on floored entries exceeds
// sinkhorn_absorb_floor_share(storage), re-stores
//     A_ik = scale · exp(λ(z_ik − m_i) + G_k − M_i),   M_i = max_k (λ(z_ik − m_i) + G_k)
// with the column potential G = log of the scaling so far, folds e^{M_i} into c and resets
// r to 1 (relative), then continues; result.r and result.c stay in the units of the
// original A below, so nothing changes for callers. On logits that never need it (the
// bound is checked in O(K) per iteration, in O(N) only when the cheap bound fires) the
// iteration sequence is exactly the one without absorption. Where it is needed before the
// first pass, r_1 is computed again from the re-stored A, so the sequence still starts
// where the reference's does. (For f16 the bound counts entries below the smallest normal
// half, whose subnormals keep too few bits.) Where absorption is off or cannot remove the
// floor's share, the floor-mass warning stays, and says which.
// Memory: solve(logits, n, k) reads the caller's logits (nothing is copied); the batch API
// (begin_head/append_logits) keeps a float32 copy, N·K·4 bytes, in the memory plan. Not
// 16-bit: bf16's spacing at λ(z − max) ≈ −80 is 0.5, an e^0.5 error on exactly the entries
// absorption brings back.
//
// How it is used: a trainer feeds each head's logits in batches while the network runs
// over the data (begin_head, append_logits, solve), or passes them at once (solve(logits)).
// Heads are solved one after the other with the same solver, which keeps its buffers.
//
//   sela::assign::SinkhornOptions options;          // λ = 25, tol = 0.1, storage bf16
//   sela::assign::SinkhornSolver solver(options);
//   solver.begin_head(n, k, "head0");
//   for (batch : data) solver.append_logits(batch_logits, batch_rows);   // (rows, k) f32
//   sela::assign::SinkhornResult result = solver.solve();
//
// On a GPU (options.device cuda:N, CUDA builds): the same solver runs the kernels of
// sinkhorn_cuda.cuh on one stream of its own. A, c, r and the logits copy live in device
// memory, held by the solver and reused across heads (grown only); logits given on the
// host are uploaded in chunks (begin_head/append_logits or solve(logits): with absorb, a
// device copy of the logits is kept for re-storing A), and solve_device() takes logits
// that are already on the device (nothing is copied). The iterations run without a host
// round trip: the stopping rule is evaluated on the device, and the host reads a small
// state only at check iterations (every check_every passes), queueing the next stretch of
// iterations before it waits. The memory plan is then checked against the device's free
// memory (cudaMemGetInfo), and the result's timings come from CUDA events (prepare: host
// time of the appends plus the wait for their kernels). Iteration counts, labels and both
// marginals follow the CPU fast path up to float32 summation order; results are
// bit-identical between runs on the same GPU (sinkhorn_cuda.cuh says why).
//
// Warm start: warm_start(r) before a solve makes it start from a column scaling
// r (K values, e.g. the previous label step's result.r for the same head) instead of the
// reference's start: r is taken as given (folded into A by absorption where its range needs
// it), the first pass computes c from it without over-relaxation, and the iteration and its
// stopping rule go on as above. The answer meets the same stopping rule, so it is as good a
// solution; between label steps the scaling moves little, so far fewer passes are needed
// (docs/perf.md). The iteration sequence is then no longer the reference's. Without
// absorption an r spanning more than e^160 is an Error (float32 could not hold it).
//
// Robustness: NaN/Inf in the logits is an Error naming the head and the first bad row;
// reaching the iteration cap (or labels resting on entries below the storage's range) is a
// warning written to the log stream (stderr by default) and kept in result.warning; N < K,
// K = 1 and N = 1 are solved; before allocating, the memory plan is checked against the
// memory available (and printed when verbose), and an absurd size is an Error.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace sela::assign {

// How the fast path stores A: float32, IEEE half (times 2^15), or bfloat16.
enum class SinkhornStorage : std::uint8_t { f32, f16, bf16 };

const char* storage_name(SinkhornStorage storage);           // "f32", "f16", "bf16"
SinkhornStorage parse_storage(const std::string& name);      // Error on anything else
std::size_t storage_element_bytes(SinkhornStorage storage);  // 4 or 2

// floor_mass above which a result carries a warning (use f32 storage or a smaller λ).
constexpr double kSinkhornFloorMassWarning = 1e-3;
// Bound on the share of a row's plan on floored entries above which the fast path absorbs
// the scaling into A (options.absorb): the storage's unit roundoff (f32 2^-24, f16 2^-11,
// bf16 2^-9), capped at this value, a tenth of kSinkhornFloorMassWarning. Below it the
// floor changes a row no more than rounding its entries does; absorbing earlier only
// re-rounds A more often, which costs iterations with 16-bit storage.
constexpr double kSinkhornAbsorbFloorShareMax = 1e-4;
double sinkhorn_absorb_floor_share(SinkhornStorage storage);

struct SinkhornOptions {
  double lambda = 25.0;           // λ: 25 for ImageNet, 10 for CIFAR in the paper
  double tol = 0.1;               // stop when Σ_i |c_i/c_new_i − 1| <= tol ...
  std::int64_t check_every = 10;  // ... measured at iterations 0, 10, 20, ... (0-based)
  std::int64_t max_iters = 2000;  // iteration cap: reaching it is a warning, never silent
  // Over-relaxation ω in [1, 2): c ← c^(1−ω) c_new^ω and r likewise (DESIGN.md), with a
  // safeguard that returns to the last checked r and to ω = 1 when the stopping value grows
  // (reported in the result's warning). 1 = off, the published algorithm: the default.
  double over_relaxation = 1.0;
  SinkhornStorage storage = SinkhornStorage::bf16;  // see sinkhorn_cpu.h and docs/perf.md
  // Stabilisation by absorption (above): re-store A from the logits with the scaling folded
  // in when the storage's floor would limit the answer. Costs nothing on logits that do not
  // need it; the batch API then keeps a float32 copy of the logits (the memory plan says
  // so). false: the plain fast path, which warns where the storage limits the answer.
  bool absorb = true;
  // cpu, or cuda:N (CUDA builds; an Error naming the reason where the build has no CUDA or
  // no GPU is usable).
  Device device = Device::cpu();
  int verbose = 0;              // 1: memory plan and a summary line per head on `log`
  std::ostream* log = nullptr;  // warnings and verbose lines; nullptr means std::cerr
  // Largest plan allowed, in bytes; 0 means the memory the system reports as available
  // (for cuda: the device's free memory plus what the solver already holds).
  std::uint64_t memory_limit_bytes = 0;
};

// What one head's solve needs, computed before anything is allocated.
struct SinkhornMemoryPlan {
  std::int64_t n = 0, k = 0, row_stride = 0;
  SinkhornStorage storage = SinkhornStorage::bf16;
  std::uint64_t matrix_bytes = 0;     // A: n · row_stride · element bytes
  std::uint64_t vector_bytes = 0;     // c, labels (n each), r and column sums (k each)
  std::uint64_t workspace_bytes = 0;  // column partials (cuda: + the upload staging chunk)
  // float32 copy of the logits for absorption (options.absorb, batch API only: n · k · 4;
  // solve(logits, n, k) reads the caller's array) plus the row shifts (n doubles).
  std::uint64_t logits_bytes = 0;
  std::uint64_t total_bytes = 0;
  std::uint64_t limit_bytes = 0;  // what it was checked against
  std::string where;              // "host memory" or "cuda:N memory"
  std::string describe() const;   // one line for logs and errors
};

struct SinkhornResult {
  std::string head;
  std::int64_t n = 0, k = 0;
  double lambda = 0.0;
  std::string storage;  // "f32" | "f16" | "bf16" | "reference-f64"
  std::string device;   // "cpu" or "cuda:N"

  std::vector<std::int64_t> labels;  // (N) y_i = argmax_k A_ik r_k
  // The plan is P_ik = c_i A_ik r_k with, for the fast path,
  //   A_ik = storage_scale · exp(λ(z_ik − max_k z_ik)),
  // and for the reference A_ik = softmax(z_i)_k^λ. r is the scaling used for the last c
  // (as in the reference code, which returns that pair): rows of P sum to 1/N exactly,
  // columns to 1/K up to col_marginal_error. (c, r) are defined up to c·a, r/a.
  std::vector<double> r;  // (K)
  std::vector<double> c;  // (N)
  double storage_scale = 1.0;

  std::int64_t iterations = 0;                   // passes made (the reference counts the same way)
  bool warm_started = false;                     // began from warm_start()'s r
  double over_relaxation = 1.0;                  // ω asked for (1: off)
  std::int64_t over_relaxation_stopped_at = -1;  // iteration where the safeguard gave up on ω
  bool converged = false;                        // the stopping rule was met before the cap
  double stop_error = 0.0;                       // the last Σ_i |c_i/c_new_i − 1| measured
  double row_marginal_error = 0.0;               // max_i |N Σ_k P_ik − 1|
  double col_marginal_error = 0.0;               // max_k |K Σ_i P_ik − 1|
  // The largest share of any row's plan mass that rests on entries of A stored at the
  // storage's floor (sinkhorn_cpu.h), i.e. entries too small for the storage: above
  // kSinkhornFloorMassWarning the solution is limited by the storage (a warning).
  double floor_mass = 0.0;
  // Absorptions made (options.absorb): times A was re-stored from the logits with the
  // scaling folded in, and the iteration before which the last one happened (-1: none).
  std::int64_t absorptions = 0;
  std::int64_t last_absorption_at = -1;

  std::int64_t cluster_min = 0, cluster_max = 0, clusters_empty = 0;  // label counts

  double prepare_seconds = 0.0;           // logits → stored A (summed over append calls)
  double iterate_seconds = 0.0;           // Sinkhorn-Knopp iterations
  double label_seconds = 0.0;             // argmax and marginal errors
  double total_seconds = 0.0;             // the three above
  std::uint64_t bytes_per_iteration = 0;  // bytes of A read per pass (2 reads for very wide
                                          // rows on cuda: sinkhorn_cuda.cuh)

  std::string warning;  // empty when the solve was clean; also written to the log stream
};

// The published float64 algorithm (softmax, power λ, two matrix-vector products per
// iteration). Uses options.lambda, tol, check_every, max_iters, log; ignores storage.
SinkhornResult sinkhorn_reference(const float* logits /* (n, k) */, std::int64_t n, std::int64_t k,
                                  const SinkhornOptions& options,
                                  const std::string& head = "head0");

class SinkhornSolver {
 public:
  explicit SinkhornSolver(SinkhornOptions options = {});
  ~SinkhornSolver();
  SinkhornSolver(const SinkhornSolver&) = delete;
  SinkhornSolver& operator=(const SinkhornSolver&) = delete;

  const SinkhornOptions& options() const { return options_; }
  // Changes options between heads (an Error while a head is being filled).
  void set_options(const SinkhornOptions& options);

  // The memory a head of n samples and k clusters needs with the current options.
  SinkhornMemoryPlan plan(std::int64_t n, std::int64_t k) const;

  // Starts a head: checks the plan against the memory limit, then (re)uses the buffers,
  // growing them only when the previous head's were smaller.
  void begin_head(std::int64_t n, std::int64_t k, const std::string& head = "head0");
  // Appends `rows` rows of logits (rows, k), float32, row-major, in sample order.
  void append_logits(const float* logits, std::int64_t rows);
  std::int64_t rows_appended() const { return rows_appended_; }
  // Solves the current head once all n rows are appended.
  SinkhornResult solve();
  // begin_head + append_logits(all) + solve.
  SinkhornResult solve(const float* logits /* (n, k) */, std::int64_t n, std::int64_t k,
                       const std::string& head = "head0");
  // The same for logits already in the memory of the GPU options.device names (float32,
  // row-major (n, k), e.g. a head's output): nothing is copied, the logits stay borrowed
  // for the call (absorption reads them). Waits for the device (cudaDeviceSynchronize)
  // before reading them, so work queued on any stream is done. An Error for device cpu,
  // for a pointer that is not device memory, and in builds without CUDA.
  SinkhornResult solve_device(const float* device_logits /* (n, k) */, std::int64_t n,
                              std::int64_t k, const std::string& head = "head0");

  std::uint64_t allocated_bytes() const;  // what the solver holds now (host and device)

  // The next solve starts from column scaling r (K positive finite values, in the units of
  // result.r: a previous result of the same K and storage) instead of the reference's start;
  // consumed by that solve (see "Warm start" above), on the CPU and on a GPU alike. An empty
  // r cancels it.
  void warm_start(std::vector<double> r);

 private:
  struct Buffers;
  struct DeviceBuffers;  // the CUDA path's device memory, stream and events (sinkhorn.cpp)
  // host_input: logits come from the host (batch API, solve(logits)); cuda only.
  SinkhornMemoryPlan plan_for(std::int64_t n, std::int64_t k, bool keep_logits,
                              bool host_input = true) const;
  void open_head(std::int64_t n, std::int64_t k, const std::string& head, bool keep_logits,
                 bool host_input = true);
  void open_device_head(const SinkhornMemoryPlan& memory, const std::string& head, bool keep_logits,
                        bool host_input);
  template <typename Store>
  void append_rows(const float* logits, std::int64_t rows);
  template <typename Store>
  void append_rows_device(const float* logits, std::int64_t rows, bool on_device);
  template <typename Store>
  void run(SinkhornResult* result);
  template <typename Store>
  void run_device(SinkhornResult* result);
  // Times, cluster sizes, warnings and the summary line, shared by the host and device paths.
  SinkhornResult finish(SinkhornResult* result) const;
  // The open head's warm-start r, centred on 1 (divided by the geometric middle of its
  // range), taken (head_warm_r_ is cleared); an Error without absorption when r spans more
  // than float32 can hold. Shared by the host and device paths.
  std::vector<double> take_warm_r(bool absorb);

  SinkhornOptions options_;
  std::unique_ptr<Buffers> buffers_;
  std::unique_ptr<DeviceBuffers> device_;
  const float* borrowed_device_logits_ = nullptr;  // solve_device: the caller's (n, k) array
  std::string head_;
  std::int64_t n_ = 0, k_ = 0, stride_ = 0;
  std::int64_t rows_appended_ = 0;
  bool head_open_ = false;
  bool keep_logits_ = false;               // append_logits copies the rows for absorption
  const float* borrowed_logits_ = nullptr;  // solve(logits, ...): the caller's (n, k) array
  double prepare_seconds_ = 0.0;
  // warm_start(): the starting r of the next head opened, and of the open head (taken over
  // by open_head, used and cleared by its solve). Empty: start cold.
  std::vector<double> warm_r_, head_warm_r_;
};

}  // namespace sela::assign
