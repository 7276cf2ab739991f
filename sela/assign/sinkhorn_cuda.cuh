// CUDA kernels of the SeLa label assignment: the twins of sinkhorn_cpu.h (same names, same
// arguments plus a stream) and the on-device control step that lets the solver run
// Sinkhorn-Knopp without a host round trip per iteration. Host-includable: declarations
// only (no device code), so sinkhorn.cpp and the tests include it from plain C++ under
// `#if defined(SELA_HAVE_CUDA)`. The kernels live in sinkhorn_cuda.cu.
//
// What is computed is exactly what sinkhorn_cpu.h says; only the schedule differs:
//  * store: one warp per row; the row maximum, the log-mass and A = max(scale·e^{λ(z−max)},
//    floor) with the CPU's exponential (the same range reduction and polynomial, so A is
//    the CPU's A, up to an ulp where a 16-bit rounding tie falls differently).
//  * pass: a persistent grid (multiprocessors × resident blocks, fixed for a GPU and a
//    binary) walks over steps of R rows; a block holds R full rows in registers (16-byte
//    loads, coalesced, the next step's rows loaded while this one is reduced), so A is
//    read from memory once per iteration. For each row the block reduces the dot with r
//    in a fixed tree, one thread per row turns it into c (double) and the row's weight,
//    and every thread adds its columns' weighted values into double accumulators (float
//    within a step of R rows). Each block writes one (stride) row of column partials; a
//    second kernel adds the partials in block order. No atomics on floats anywhere: two
//    runs on the same GPU give the same bits.
//    The fused form covers rows of up to 768 16-byte vectors: K ≤ 6144 for 16-bit storage,
//    K ≤ 3072 for f32 (1 slot per thread and 8 rows per step up to 512 vectors, 2 slots
//    and 4 rows above; SELA_SINKHORN_CUDA_CONFIG=2x4 takes the second from 33 vectors on,
//    a lab knob). Wider rows fall back to two kernels (row dots, then weighted column
//    sums), which read A twice per iteration (sinkhorn_pass_reads says so).
//  * labels: the pass's row walk with an argmax (first maximum) instead of the column sums,
//    and the row marginal error and the floored share of each row, reduced as maxima.
//  * control: one block after each pass does what the CPU solver's loop does between two
//    passes — the over-relaxation safeguard, the stopping rule at check iterations, the new
//    r = 1/(K s), the absorption bound and r_rel — and records it in SinkhornDeviceState.
//    Once the state leaves kRunning every later kernel that is given the state returns at
//    once, so the host can queue iterations ahead and look at the state only at check
//    points.
//
// Scalars the device computes between passes (r_scale, ω after the safeguard) are passed
// to the kernels by device pointer; everything else is as on the CPU. Pointers are device
// pointers unless the comment says host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "sela/assign/sinkhorn_cpu.h"

namespace sela::assign::cuda {

// ---- device-side results and solver state (plain data; copied to the host to be read) ----

// What a pass leaves for its caller (the CPU pass returns the same as values).
struct SinkhornPassTotals {
  double change = 0.0;     // Σ_i |c_i/c_new_i − 1| when measured, else 0
  long long bad_rows = 0;  // rows whose dot with r was not positive and finite (c set to 0)
  double c_max = 0.0;      // max_i of the new c (the absorption bound needs it)
};

// What the labels kernel leaves (the CPU labels kernel returns the same).
struct SinkhornLabelTotals {
  double row_error = 0.0;   // max_i |N r_scale c_i (A r_rel)_i − 1|
  double floor_mass = 0.0;  // max_i share of the row's plan on entries at the storage floor
};

enum SinkhornRunStatus : int {
  kSinkhornRunning = 0,
  kSinkhornConverged = 1,  // the stopping rule was met
  kSinkhornCapReached = 2,
  kSinkhornFailed = 3,  // see error_kind
  kSinkhornHalted = 4,  // absorption wanted before iteration halted_at: the host acts (also
                        // after the safeguard restored G: A must be stored from it again)
};

enum SinkhornErrorKind : int {
  kSinkhornNoError = 0,
  kSinkhornBadRows = 1,    // error_count rows lost their mass in pass error_iteration
  kSinkhornBadColumn = 2,  // column error_index's sum error_value left float64's range
};

struct SinkhornDeviceState {
  int status = kSinkhornRunning;
  int error_kind = kSinkhornNoError;
  int absorbed_last = 0;  // absorption happened right before the last pass
  int absorbed_since_check = 0;  // an absorption since r_at_check was taken (the safeguard)
  int warm_first = 0;  // a warm start's first pass is plain (omega 1): ω from the next one
  int padding = 0;
  long long error_iteration = -1;
  long long error_index = -1;  // column (kSinkhornBadColumn) or row count (kSinkhornBadRows)
  double error_value = 0.0;
  long long iterations = 0;         // passes made
  long long halted_at = -1;         // kSinkhornHalted: absorb before this iteration
  long long omega_stopped_at = -1;  // iteration where the safeguard gave up on ω
  double omega = 1.0;               // ω in use (1 after the safeguard)
  double stop_error = 0.0;          // last measured Σ|c/c_new − 1|
  double last_check_error = 0.0;    // +inf before the first check
  double r_scale = 1.0;             // r = r_scale · r_rel
  double bound = 0.0;               // the last floored-share bound (absorption)
  double col_error = 0.0;           // max_k |K r_k s_k − 1| (sinkhorn_final)
  SinkhornPassTotals pass;
  SinkhornLabelTotals labels;
};

// Device vectors the control kernels work on (K doubles unless said otherwise).
struct SinkhornDeviceVectors {
  double* r = nullptr;                  // the r of the next pass
  double* r_prev = nullptr;             // the r of the last pass (absorption bound)
  double* r_at_check = nullptr;         // r at the last check (over-relaxation safeguard)
  double* potential_at_check = nullptr; // G at the last check (absorption and the safeguard)
  double* col_sums = nullptr;           // s_k of the last pass (scaled: Σ_i A_ik c_i)
  float* r_rel = nullptr;               // (stride) r / r_scale in float32, padding 0
  double* column_potential = nullptr;   // G (absorption)
  float* column_potential_f = nullptr;  // (stride) G as float32, padding 0
};

// Constants of one solve for the control kernels (passed by value).
struct SinkhornControlParams {
  std::int64_t n = 0, k = 0, stride = 0;
  double tol = 0.1;
  std::int64_t max_iters = 1;
  double omega = 1.0;         // ω asked for
  bool absorb = false;        // check the absorption bound
  double absorb_above = 0.0;  // sinkhorn_absorb_floor_share(storage)
  double floor_value = 0.0;   // the bound's floor (2^-14 for f16, else the storage floor)
  double scale = 1.0;         // sinkhorn_storage_scale
};

// ---- the CPU kernels' twins ---------------------------------------------------------------

// sinkhorn_store_rows: as the CPU kernel; instead of returning the first bad row it lowers
// *first_bad (set it to ULLONG_MAX, e.g. with cudaMemset 0xFF, before the first call) to
// row_offset + the index of any row holding NaN or ±Inf, so several calls (batches) can be
// checked with one read at the end: the value is then the first bad row of all of them.
template <typename Store>
void sinkhorn_store_rows(const float* logits, std::int64_t rows, std::int64_t k, float lambda,
                         Store* a, std::int64_t stride, float* row_log_mass /* (rows) or null */,
                         std::int64_t row_offset, unsigned long long* first_bad,
                         cudaStream_t stream);

template <typename Store>
void sinkhorn_store_rows_absorbed(const float* logits, std::int64_t rows, std::int64_t k,
                                  float lambda, const float* column_log_scale /* (k) */, Store* a,
                                  std::int64_t stride, double* row_shift /* (rows) */,
                                  cudaStream_t stream);

// Bytes of device workspace the column-sum, pass and labels kernels need for n rows of k
// columns on `device` (column partials of the persistent grid, block totals and, for wide
// rows, the row weights).
template <typename Store>
std::size_t sinkhorn_workspace_bytes(std::int64_t n, std::int64_t k, int device);

// Bytes of A each pass reads: n·stride·sizeof(Store), twice for rows too wide for the fused
// kernel (see above).
template <typename Store>
std::uint64_t sinkhorn_pass_reads(std::int64_t n, std::int64_t k);

template <typename Store>
void sinkhorn_column_sums(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                          const double* row_weights /* (n) or null */, void* workspace,
                          std::size_t workspace_bytes, double* col_sums /* (k) */,
                          cudaStream_t stream);

// One pass. r_scale and omega are device scalars; totals (device) receives the change, bad
// rows and max c. run_status (device, may be null): when it points to a status other than
// kSinkhornRunning the pass does nothing.
template <typename Store>
void sinkhorn_pass(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                   std::int64_t n_total, const float* r_rel, const double* r_scale,
                   const double* omega, double* c, double* col_sums, bool measure_change,
                   void* workspace, std::size_t workspace_bytes, SinkhornPassTotals* totals,
                   const int* run_status, cudaStream_t stream);

template <typename Store>
void sinkhorn_labels(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                     std::int64_t n_total, const float* r_rel, const double* r_scale,
                     const double* c, std::int64_t* labels, void* workspace,
                     std::size_t workspace_bytes, SinkhornLabelTotals* totals, cudaStream_t stream);

// ---- the solver's steps (one block each, O(K)) ----------------------------------------------

// c_0,i = exp(−λ row_log_mass_i) · c0_factor (the reference's start in this A's units).
void sinkhorn_start_c(const float* row_log_mass, std::int64_t n, double lambda, double c0_factor,
                      double* c, cudaStream_t stream);

// After column sums with c_0: r = (1/K)/s (an out-of-range sum fails the state), the check
// state (r_at_check = r, potential_at_check = G, absorbed_since_check = 0), the iteration-0
// absorption bound, r_scale and r_rel. `initialise` resets the state (first call of a solve,
// with params.omega, or 1 for a warm start's first pass); otherwise it marks an absorption
// round (absorbed_last = 1). `warm`: r already holds a warm start's scaling (copied in by the
// host; the column sums are not read): the state is reset, the first pass will be plain
// (warm_first) and the stopping value is NaN until the first check, as on the CPU.
void sinkhorn_control_start(const SinkhornControlParams& params, bool initialise, bool warm,
                            SinkhornDeviceVectors vectors, SinkhornDeviceState* state,
                            cudaStream_t stream);

// After pass `iteration` (and its column sums): everything the CPU solver's loop does up to
// the next pass; sets the state's status when the solve stops or wants an absorption.
void sinkhorn_control_step(const SinkhornControlParams& params, std::int64_t iteration,
                           bool measured, SinkhornDeviceVectors vectors, SinkhornDeviceState* state,
                           cudaStream_t stream);

// Absorption, part 1 (before re-storing A with sinkhorn_store_rows_absorbed): G ← float32(G +
// log r − max), r multiplied by e^{G_old − G_new}, column_potential_f set (r_at_check stays
// in the units of potential_at_check).
void sinkhorn_absorb_columns(std::int64_t k, SinkhornDeviceVectors vectors, cudaStream_t stream);
// Absorption, part 2: c_i ← c_i · exp(new_shift_i − old_shift_i) (old_shift null: 0).
void sinkhorn_absorb_rows(std::int64_t n, const double* new_shift, const double* old_shift,
                          double* c, cudaStream_t stream);
// After an absorption (the floor bound's, the safeguard's restoring one, or a warm r folded
// in at iteration 0): back to kSinkhornRunning with absorbed_last = 1 and
// absorbed_since_check = 1, r_scale and r_rel from the new r.
void sinkhorn_control_resume(const SinkhornControlParams& params, SinkhornDeviceVectors vectors,
                             SinkhornDeviceState* state, cudaStream_t stream);
// After the last pass: the column marginal error, then r_scale and r_rel from the final r
// (for the labels); works whatever the status.
void sinkhorn_control_final(const SinkhornControlParams& params, SinkhornDeviceVectors vectors,
                            SinkhornDeviceState* state, cudaStream_t stream);

// ---- benchmark support ------------------------------------------------------------------

// Random logits (n, k) on the device with the structured model of `sela bench sinkhorn`
// (`centres` latent centres N(0, 1)^k, each row picks one uniformly and adds N(0, noise²)),
// drawn from a counter-based hash of (seed, row, column): the same distribution as the host
// generator, not the same numbers.
void sinkhorn_random_logits(float* logits, std::int64_t n, std::int64_t k, std::int64_t centres,
                            double noise, std::uint64_t seed, cudaStream_t stream);

}  // namespace sela::assign::cuda
