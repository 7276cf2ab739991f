// CPU kernels of the SeLa label assignment (fused Sinkhorn-Knopp from logits).
//
// What they compute (DESIGN.md, "The method in one screen"): for one head with logits z
// (N, K) and sharpness λ, the transport kernel
//     A_ik = scale · exp(λ (z_ik − max_k z_ik))          values in [0, scale]
// is stored once, row-major with a padded row stride, in float32 or a 16-bit form; then
// each Sinkhorn-Knopp iteration is ONE pass over A (the published algorithm makes two):
//     c_i = 1 / (N Σ_k A_ik r_k)           (row dot with r, then the new row scaling)
//     s_k = Σ_i A_ik c_i                   (column sums weighted by the new c)
// after which the caller sets r_k = 1 / (K s_k). Labels are y_i = argmax_k A_ik r_k.
//
// Why this shape:
//  * The kernels take raw pointers and sizes and know nothing of Tensor, autograd or the
//    solver; the CUDA twin (sinkhorn_cuda.cuh) is meant to take the same arguments plus a
//    stream, so one file explains the other and both can be tested against each other.
//  * r is passed as r_rel = r / r_scale in float32 (max 1) and c comes back in double:
//    the pass multiplies in float32 (so it can stream 16 values per AVX-512 instruction)
//    but every quantity that is summed over many rows or compared between iterations is
//    kept in double, so the stopping rule Σ_i |c_i/c_new_i − 1| < tol — whose strictness
//    grows with N — is not drowned by float32 rounding.
//  * Column sums are reduced per chunk of rows (float32 over blocks of 64 rows, then into a
//    double partial per chunk) and the chunk partials are added in chunk order: the result
//    is bit-identical for a given thread count (kernels/cpu/parallel.h).
//  * Padding columns [K, stride) hold A = 0 and r_rel = 0, so the vector loops need no tail.
//
// Storage types: float (f32), sela::assign::Half (IEEE binary16; A is stored times 2^15
// so that its normal range reaches e^-20 below the row maximum), sela::assign::BFloat16
// (bfloat16: float32's exponent range, 8-bit significand). Values of A below the storage's
// floor (2^-100 ≈ e^-69 for float and BFloat16; 2^-24 for Half, i.e. A < 2^-39 ≈ e^-27)
// are stored AS the floor, never as 0: a zero could make the transport problem infeasible
// (a cluster no sample reaches, or clusters reached through too few samples when N < K)
// and Sinkhorn-Knopp would then diverge. The floor changes A only where the reference's
// entries are below e^-27 (Half) or e^-69 relative to the row maximum; the labels kernel
// measures how much of the plan's mass lies on floored entries, so the caller can warn.
// Where the plan does need such entries (confident logits, unpopular clusters), the solver
// re-stores A with its column scaling folded in (sinkhorn_store_rows_absorbed: absorption,
// sinkhorn.h), so that the entries the plan rests on are again within range.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sela::assign {

// 16-bit storage element types (bit patterns; conversions live in the .cpp).
struct Half {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

// The constant factor each storage type multiplies A by (absorbed by c).
template <typename Store>
constexpr float sinkhorn_storage_scale();
template <>
constexpr float sinkhorn_storage_scale<float>() {
  return 1.0f;
}
template <>
constexpr float sinkhorn_storage_scale<Half>() {
  return 32768.0f;
}
template <>
constexpr float sinkhorn_storage_scale<BFloat16>() {
  return 1.0f;
}

// The smallest value stored for A (see above), in stored units.
template <typename Store>
constexpr float sinkhorn_storage_floor();
template <>
constexpr float sinkhorn_storage_floor<float>() {
  return 7.888609052210118e-31f;
}  // 2^-100
template <>
constexpr float sinkhorn_storage_floor<Half>() {
  return 5.9604644775390625e-08f;
}  // 2^-24
template <>
constexpr float sinkhorn_storage_floor<BFloat16>() {
  return 7.888609052210118e-31f;
}  // 2^-100

// Value conversions, exposed for tests and for the labels kernel's users.
float sinkhorn_load(Half value);
float sinkhorn_load(BFloat16 value);
inline float sinkhorn_load(float value) { return value; }
template <typename Store>
Store sinkhorn_store(float value);  // round to nearest even

// Row stride (in elements) used for K columns: K rounded up to 32 (a 64-byte row of Half).
std::int64_t sinkhorn_row_stride(std::int64_t k);

// Scratch the pass kernels need, in bytes, for `rows` rows and row stride `stride` with the
// current thread count (per-chunk column partials). The kernels check the size they are
// given, so a thread count raised after sizing is an Error, never an overrun.
std::size_t sinkhorn_workspace_bytes(std::int64_t rows, std::int64_t stride);

// Stores A for `rows` rows of logits (rows, k) into a (rows, stride), padding with zeros,
// and (when row_log_mass is not null) each row's log Σ_k exp(z_ik − max_k z_ik), which
// converts between this A and the reference's softmax^λ: p_ik^λ = A_ik / (scale ·
// exp(λ row_log_mass_i)). Returns the index (0-based, within this call) of the first row
// holding NaN or ±Inf, or -1 when every value is finite; rows from the first bad one on
// are left unspecified.
template <typename Store>
std::int64_t sinkhorn_store_rows(const float* logits, std::int64_t rows, std::int64_t k,
                                 float lambda, Store* a, std::int64_t stride,
                                 float* row_log_mass /* (rows) or null */);

// Re-stores A for absorption (sinkhorn.h): with v_ik = λ (z_ik − max_k z_ik) + g_k and
// M_i = max_k v_ik, writes A_ik = max(scale · exp(v_ik − M_i), floor) (padding zeros) and
// row_shift_i = M_i. g is the column log-potential folded into A (k values, float32, as
// used). The logits must be finite (they were checked by sinkhorn_store_rows).
template <typename Store>
void sinkhorn_store_rows_absorbed(const float* logits, std::int64_t rows, std::int64_t k,
                                  float lambda, const float* column_log_scale /* (k) */, Store* a,
                                  std::int64_t stride, double* row_shift /* (rows) */);

// Weighted column sums s_k = Σ_i A_ik w_i in float64 (w = 1 when row_weights is null):
// the first iteration's r comes from them with the starting c as weights. Float64 all the
// way because the starting weights span up to K^-λ (1e-75 at K = 1000, λ = 25).
template <typename Store>
void sinkhorn_column_sums(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                          const double* row_weights /* (n) or null */, void* workspace,
                          std::size_t workspace_bytes, double* col_sums /* (k) */);

// One Sinkhorn-Knopp pass. In: r_rel (stride; padding 0) with true r = r_scale · r_rel,
// and c (n) from the previous pass. Out: c (n) replaced by c_new_i = 1/(N (A r)_i) with
// N = n_total (the number of rows of the whole problem), and col_sums (k) = Σ_i A_ik c_new_i.
// With omega != 1 (over-relaxation) c is replaced by c_i^(1−ω) c_new_i^ω instead, and the
// column sums use that c. When measure_change is set, returns Σ_i |c_i/c_new_i − 1| (the
// plain step's change, else 0). A row whose dot with r is not positive and finite is
// counted in *bad_rows (its c is set to 0).
template <typename Store>
double sinkhorn_pass(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                     std::int64_t n_total, const float* r_rel, double r_scale, double omega,
                     double* c, double* col_sums, bool measure_change, void* workspace,
                     std::size_t workspace_bytes, std::int64_t* bad_rows);

// x^(1−ω)·y^ω / y = (x/y)^(1−ω), exact to double rounding also for x/y near 1 (where the
// over-relaxed iteration spends its time), cheaply: a series for |x/y − 1| < 1e-2, pow elsewhere.
double sinkhorn_relaxation_factor(double x, double y, double omega);

// Labels y_i = argmax_k A_ik r_rel_k (first index on ties) and the row marginal error of
// the plan P = diag(c) A diag(r): returns max_i |N c_i (A r)_i − 1|. *floor_mass (if
// given) receives max_i Σ_{k: A_ik at the floor} A_ik r_k / Σ_k A_ik r_k: the largest
// share of a row's plan that rests on entries the storage could not represent.
template <typename Store>
double sinkhorn_labels(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                       std::int64_t n_total, const float* r_rel, double r_scale, const double* c,
                       std::int64_t* labels, double* floor_mass);

}  // namespace sela::assign
