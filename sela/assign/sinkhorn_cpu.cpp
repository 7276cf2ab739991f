// Implementation of sela/assign/sinkhorn_cpu.h.
//
// Two code paths with the same results up to float32 rounding: an AVX-512 path (the
// development machine, -march=native) and a portable scalar path for any other CPU. Both
// walk rows in the same chunks (kernels/cpu/parallel.h), so the reductions are combined in
// the same order.
//
// The AVX-512 pass treats rows eight at a time: eight independent dot-product chains hide
// the FMA latency, and the column update loads and stores each running column sum once per
// eight rows. The eight rows (8·K 16-bit values, 16 KB at K = 1000) are still in L1/L2 when
// the column update reads them a second time, so memory sees A once per iteration.
// The next group is prefetched during both sweeps: the column sweep issues no memory
// traffic of its own, so without it the memory idles for a third of the time.
// Measured single-thread, N = 200k, K = 1000, bf16 A (410 MB; reading it alone: 11.1 ms at
// 37 GB/s): 4 rows 22.5 ms, 8 rows 15.7 ms, 8 rows + prefetch 11.5 ms. Converting each value
// once into an L1 buffer instead of twice, or the bfloat16 even/odd-lane trick (one integer
// op per 16 values), were not faster (docs/perf.md).
#include "sela/assign/sinkhorn_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

#if defined(__AVX512F__) && defined(__AVX512VL__)  // VL: the 8-lane masks of the group pass
// GCC 12's AVX-512 intrinsics start from an "undefined" register that its
// -Wmaybe-uninitialized flags once inlined (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define SELA_SINKHORN_AVX512 1
#else
#define SELA_SINKHORN_AVX512 0
#endif

namespace sela::assign {
namespace {

// A chunk of rows must hold at least this many values of A to be worth a thread of its own
// (about 0.1 ms of work): a smaller problem runs on one thread, which avoids the fork/join
// of a parallel region per pass (and its spinning when the machine is shared).
constexpr std::int64_t kValuesPerChunk = std::int64_t{1} << 20;
constexpr int kRowsPerGroup = 8;             // rows sharing each load of r and of the column sums
// sinkhorn_relaxation_factor uses its series where |x/y − 1| is below this, pow elsewhere.
constexpr double kRelaxationSeriesBound = 1e-2;
constexpr int kRowsPerColumnBlock = 64;      // float32 column sums flushed to double after
constexpr float kExpUnderflow = -87.33654f;  // log(FLT_MIN): exp gives 0 below (then the floor)

// ---- scalar conversions ---------------------------------------------------------------

std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

std::uint16_t float_to_half_bits(float value) {
  std::uint32_t bits = float_bits(value);
  std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // Inf or NaN
    return static_cast<std::uint16_t>(sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u));
  }
  if (magnitude >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // ≥ 65520
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, units of 2^-24
    float units = std::nearbyint(std::fabs(value) * 16777216.0f);  // round to nearest even
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(units));
  }
  // Normal: rebias the exponent (127 → 15) and round the 23-bit significand to 10 bits,
  // to nearest even; a carry out of the significand correctly bumps the exponent.
  std::uint32_t rebiased = magnitude - (112u << 23);
  std::uint32_t rounded = (rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13;
  return static_cast<std::uint16_t>(sign | rounded);
}

float half_bits_to_float(std::uint16_t half) {
  std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  std::uint32_t exponent = (half >> 10) & 0x1Fu;
  std::uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0) {
    float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // exact
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_float(sign | 0x7F800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

std::uint16_t float_to_bfloat16_bits(float value) {
  std::uint32_t bits = float_bits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

#if !SELA_SINKHORN_AVX512
// exp(v) for v <= 0 as stored in A: 0 below float32's normal range.
float exp_nonpositive(float v) { return v < kExpUnderflow ? 0.0f : std::exp(v); }
#endif

// ---- scalar row primitives (portable path) --------------------------------------------

template <typename Store>
float row_dot_scalar(const Store* row, const float* r_rel, std::int64_t stride) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight chains: same rounding spirit as SIMD
  for (std::int64_t j = 0; j < stride; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += sinkhorn_load(row[j + l]) * r_rel[j + l];
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename Store>
void row_axpy_scalar(const Store* row, float weight, float* block, std::int64_t stride) {
  for (std::int64_t j = 0; j < stride; ++j) block[j] += sinkhorn_load(row[j]) * weight;
}

#if SELA_SINKHORN_AVX512
// ---- AVX-512 primitives -----------------------------------------------------------------

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const BFloat16* p) {
  __m512i widened = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store16(BFloat16* p, __m512 v) {  // round to nearest even (values are finite)
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
}

// exp(v) for v <= 0, |relative error| < 2e-7, and exactly 0 below kExpUnderflow. Cody-Waite
// reduction v = n·ln2 + f (|f| <= ln2/2) and a degree-7 Taylor polynomial for e^f.
inline __m512 exp16_nonpositive(__m512 v) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __mmask16 representable = _mm512_cmp_ps_mask(v, _mm512_set1_ps(kExpUnderflow), _CMP_GE_OQ);
  return _mm512_maskz_mov_ps(representable, _mm512_scalef_ps(p, n));
}

// Σ of the 16 lanes in a fixed tree: lanes j and j + 8, then j and j + 4, then j and j + 2,
// then the last two (GCC 12's _mm512_reduce_add_ps, written out so that the result does not
// depend on the compiler and so that reduce_add_8_rows can reproduce it bit for bit).
inline float reduce_add16(__m512 v) {
  const __m256 t3 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 t6 = _mm_add_ps(_mm256_castps256_ps128(t3), _mm256_extractf128_ps(t3, 1));
  const __m128 t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(t8) + _mm_cvtss_f32(_mm_shuffle_ps(t8, t8, _MM_SHUFFLE(1, 1, 1, 1)));
}

// reduce_add16 of eight rows at once, the eight sums in row order: the same additions of
// the same lanes (float addition is commutative), arranged across registers: about 3
// instructions per row instead of 8, which matters when K is small and a pass spends most
// of its time per row, not per value.
inline __m256 reduce_add_8_rows(const __m512 (&v)[8]) {
  __m512 pairs[4];  // rows 2p and 2p + 1: lanes j + 8 added to lanes j, one row per half
  for (int p = 0; p < 4; ++p) {
    const __m512 low = _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 high = _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
    pairs[p] = _mm512_add_ps(low, high);
  }
  __m512 quads[2];  // rows 4h .. 4h + 3: lanes j + 4 added to lanes j, one row per 128 bits
  for (int h = 0; h < 2; ++h) {
    const __m512 even = pairs[2 * h], odd = pairs[2 * h + 1];
    const __m512 low = _mm512_shuffle_f32x4(even, odd, _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 high = _mm512_shuffle_f32x4(even, odd, _MM_SHUFFLE(3, 1, 3, 1));
    __m512 q = _mm512_add_ps(low, high);
    // lanes j + 2 added to lanes j, then lane 1 added to lane 0, within each 128 bits
    q = _mm512_add_ps(q, _mm512_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
    quads[h] = _mm512_add_ps(q, _mm512_shuffle_ps(q, q, _MM_SHUFFLE(1, 1, 1, 1)));
  }
  const __m512i first_lanes =
      _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps256(_mm512_permutex2var_ps(quads[0], first_lanes, quads[1]));
}

inline __mmask16 lanes_below(std::int64_t begin, std::int64_t limit) {
  std::int64_t left = limit - begin;
  if (left >= 16) return static_cast<__mmask16>(0xFFFF);
  if (left <= 0) return 0;
  return static_cast<__mmask16>((1u << left) - 1u);
}

// Adds the float32 column block into the double partial and clears the block.
inline void flush_block(float* block, double* partial, std::int64_t stride) {
  for (std::int64_t j = 0; j < stride; j += 16) {
    __m512 b = _mm512_loadu_ps(block + j);
    // The maskz forms: GCC 12 flags the plain _mm512_cvtps_pd (its undefined passthrough)
    // as maybe-uninitialized under -Werror.
    __m512d lo = _mm512_maskz_cvtps_pd(0xFF, _mm512_castps512_ps256(b));
    __m512d hi = _mm512_maskz_cvtps_pd(
        0xFF, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)));
    _mm512_storeu_pd(partial + j, _mm512_add_pd(_mm512_loadu_pd(partial + j), lo));
    _mm512_storeu_pd(partial + j + 8, _mm512_add_pd(_mm512_loadu_pd(partial + j + 8), hi));
    _mm512_storeu_ps(block + j, _mm512_setzero_ps());
  }
}
#else
inline void flush_block(float* block, double* partial, std::int64_t stride) {
  for (std::int64_t j = 0; j < stride; ++j) {
    partial[j] += static_cast<double>(block[j]);
    block[j] = 0.0f;
  }
}
#endif

// Per-chunk scratch: a double partial (stride) then a float32 block (stride).
struct ChunkScratch {
  double* partial;
  float* block;
};

std::int64_t row_grain(std::int64_t stride) {
  return std::max<std::int64_t>(64, kValuesPerChunk / std::max<std::int64_t>(stride, 1));
}

std::int64_t chunk_count(std::int64_t rows, std::int64_t stride) {
  return sela::cpu::parallel_chunk_count(0, rows, row_grain(stride));
}

ChunkScratch chunk_scratch(void* workspace, std::int64_t chunk, std::int64_t stride) {
  char* base = static_cast<char*>(workspace) + chunk * stride * 12;
  return ChunkScratch{reinterpret_cast<double*>(base), reinterpret_cast<float*>(base + stride * 8)};
}

void check_workspace(const char* op, std::int64_t rows, std::int64_t stride, const void* workspace,
                     std::size_t given) {
  std::size_t needed = sinkhorn_workspace_bytes(rows, stride);
  SELA_CHECK(workspace != nullptr || needed == 0, op, "workspace pointer is null");
  SELA_CHECK(given >= needed, op,
             "workspace holds " << given << " bytes, " << needed << " needed for " << rows
                                << " rows of stride " << stride << " with "
                                << sela::cpu::num_threads() << " threads"
                                << " (was the thread count raised after sizing it?)");
}

void check_shape(const char* op, std::int64_t n, std::int64_t k, std::int64_t stride) {
  SELA_CHECK(n >= 0 && k >= 1, op,
             "needs n >= 0 rows and k >= 1 columns, got n=" << n << ", k=" << k);
  SELA_CHECK(stride == sinkhorn_row_stride(k), op,
             "row stride " << stride << " is not sinkhorn_row_stride(" << k
                           << ") = " << sinkhorn_row_stride(k));
}

// ---- one chunk of a pass ------------------------------------------------------------------

#if SELA_SINKHORN_AVX512
// Σ_j row_j r_rel_j with one 16-lane chain: the same arithmetic as each row of the 8-row
// loop below and as the labels kernel, so a row's dot is the same float everywhere.
template <typename Store>
inline float row_dot16(const Store* row, const float* r_rel, std::int64_t stride) {
  __m512 d = _mm512_setzero_ps();
  for (std::int64_t j = 0; j < stride; j += 16)
    d = _mm512_fmadd_ps(load16(row + j), _mm512_loadu_ps(r_rel + j), d);
  return reduce_add16(d);
}
#endif

// Rows [begin, end): each row's dot with r_rel goes to weight_of(i, dot), which returns the
// row's weight in the column sums; the weighted rows are summed into scratch.partial. With
// AVX-512, groups of kRowsPerGroup rows go to group_weights(i, dots, weights) instead (the
// dots of rows i.., their weights out), which must give what weight_of would row by row.
template <typename Store, typename WeightOf, typename GroupWeights>
void pass_chunk(const Store* a, std::int64_t begin, std::int64_t end, std::int64_t stride,
                const float* r_rel, ChunkScratch scratch, WeightOf&& weight_of,
                [[maybe_unused]] GroupWeights&& group_weights) {
  std::fill(scratch.partial, scratch.partial + stride, 0.0);
  std::fill(scratch.block, scratch.block + stride, 0.0f);
  int rows_in_block = 0;
  std::int64_t i = begin;
#if SELA_SINKHORN_AVX512
  // The next group's cache lines are prefetched while this group is processed, a few per
  // 16-column step of each sweep, so that memory stays busy while the column sweep works
  // from cache (without it the pass ran ~35% above the time to read A).
  const std::int64_t group_lines =
      kRowsPerGroup * stride * static_cast<std::int64_t>(sizeof(Store)) / 64;
  const std::int64_t steps = stride / 16;
  const std::int64_t lines_per_step = (group_lines + 2 * steps - 1) / (2 * steps);
  for (; i + kRowsPerGroup <= end; i += kRowsPerGroup) {
    const Store* group = a + i * stride;
    const char* next = reinterpret_cast<const char*>(group + kRowsPerGroup * stride);
    const std::int64_t prefetch_lines = i + 2 * kRowsPerGroup <= end ? group_lines : 0;
    std::int64_t line = 0;
    __m512 dot[kRowsPerGroup];
    for (int q = 0; q < kRowsPerGroup; ++q) dot[q] = _mm512_setzero_ps();
    for (std::int64_t j = 0; j < stride; j += 16) {
      const __m512 rv = _mm512_loadu_ps(r_rel + j);
      for (int q = 0; q < kRowsPerGroup; ++q)
        dot[q] = _mm512_fmadd_ps(load16(group + q * stride + j), rv, dot[q]);
      for (std::int64_t p = 0; p < lines_per_step && line < prefetch_lines; ++p, ++line) {
        _mm_prefetch(next + line * 64, _MM_HINT_T0);
      }
    }
    static_assert(kRowsPerGroup == 8, "reduce_add_8_rows takes eight rows");
    alignas(32) float dots[kRowsPerGroup], weights[kRowsPerGroup];
    _mm256_store_ps(dots, reduce_add_8_rows(dot));
    group_weights(i, dots, weights);
    __m512 weight[kRowsPerGroup];
    for (int q = 0; q < kRowsPerGroup; ++q) weight[q] = _mm512_set1_ps(weights[q]);
    for (std::int64_t j = 0; j < stride; j += 16) {
      __m512 s = _mm512_loadu_ps(scratch.block + j);
      for (int q = 0; q < kRowsPerGroup; ++q)
        s = _mm512_fmadd_ps(load16(group + q * stride + j), weight[q], s);
      _mm512_storeu_ps(scratch.block + j, s);
      for (std::int64_t p = 0; p < lines_per_step && line < prefetch_lines; ++p, ++line) {
        _mm_prefetch(next + line * 64, _MM_HINT_T0);
      }
    }
    rows_in_block += kRowsPerGroup;
    if (rows_in_block >= kRowsPerColumnBlock) {
      flush_block(scratch.block, scratch.partial, stride);
      rows_in_block = 0;
    }
  }
  for (; i < end; ++i) {
    const Store* row = a + i * stride;
    const __m512 w = _mm512_set1_ps(weight_of(i, row_dot16(row, r_rel, stride)));
    for (std::int64_t j = 0; j < stride; j += 16) {
      _mm512_storeu_ps(scratch.block + j,
                       _mm512_fmadd_ps(load16(row + j), w, _mm512_loadu_ps(scratch.block + j)));
    }
  }
#else
  for (; i < end; ++i) {
    const Store* row = a + i * stride;
    row_axpy_scalar(row, weight_of(i, row_dot_scalar(row, r_rel, stride)), scratch.block, stride);
    if (++rows_in_block >= kRowsPerColumnBlock) {
      flush_block(scratch.block, scratch.partial, stride);
      rows_in_block = 0;
    }
  }
#endif
  flush_block(scratch.block, scratch.partial, stride);
}

// Sums the chunk partials in chunk order and scales them.
void combine_partials(void* workspace, std::int64_t chunks, std::int64_t k, std::int64_t stride,
                      double scale, double* col_sums) {
  for (std::int64_t j = 0; j < k; ++j) col_sums[j] = 0.0;
  for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
    const double* partial = chunk_scratch(workspace, chunk, stride).partial;
    for (std::int64_t j = 0; j < k; ++j) col_sums[j] += partial[j];
  }
  for (std::int64_t j = 0; j < k; ++j) col_sums[j] *= scale;
}

}  // namespace

// ---- public ---------------------------------------------------------------------------

float sinkhorn_load(Half value) { return half_bits_to_float(value.bits); }
float sinkhorn_load(BFloat16 value) {
  return bits_float(static_cast<std::uint32_t>(value.bits) << 16);
}

template <>
float sinkhorn_store<float>(float value) {
  return value;
}
template <>
Half sinkhorn_store<Half>(float value) {
  return Half{float_to_half_bits(value)};
}
template <>
BFloat16 sinkhorn_store<BFloat16>(float value) {
  return BFloat16{float_to_bfloat16_bits(value)};
}

std::int64_t sinkhorn_row_stride(std::int64_t k) { return (k + 31) / 32 * 32; }

std::size_t sinkhorn_workspace_bytes(std::int64_t rows, std::int64_t stride) {
  return static_cast<std::size_t>(std::max<std::int64_t>(chunk_count(rows, stride), 1)) *
         static_cast<std::size_t>(stride) * 12u;
}

template <typename Store>
std::int64_t sinkhorn_store_rows(const float* logits, std::int64_t rows, std::int64_t k,
                                 float lambda, Store* a, std::int64_t stride, float* row_log_mass) {
  const char* op = "sinkhorn_store_rows";
  check_shape(op, rows, k, stride);
  SELA_CHECK(rows == 0 || (logits != nullptr && a != nullptr), op,
             "null logits or storage pointer");
  SELA_CHECK(std::isfinite(lambda) && lambda > 0.0f, op,
             "lambda must be positive and finite, got " << lambda);
  const float scale = sinkhorn_storage_scale<Store>();
  const std::int64_t grain = row_grain(stride);
  const std::int64_t chunks = sela::cpu::parallel_chunk_count(0, rows, grain);
  std::vector<std::int64_t> first_bad(static_cast<std::size_t>(std::max<std::int64_t>(chunks, 1)),
                                      -1);
  sela::cpu::parallel_chunks(
      0, rows, grain, [&](std::int64_t chunk, std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) {
          const float* z = logits + i * k;
          Store* out = a + i * stride;
#if SELA_SINKHORN_AVX512
          __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
          __m512 poison = _mm512_setzero_ps();  // becomes NaN if any value is NaN or ±Inf
          for (std::int64_t j = 0; j < k; j += 16) {
            __mmask16 m = lanes_below(j, k);
            __m512 x = _mm512_maskz_loadu_ps(m, z + j);
            poison = _mm512_add_ps(poison, _mm512_mul_ps(x, _mm512_setzero_ps()));
            vmax = _mm512_mask_max_ps(vmax, m, vmax, x);
          }
          float row_max = _mm512_reduce_max_ps(vmax);
          if (std::isnan(_mm512_reduce_add_ps(poison))) {
            first_bad[static_cast<std::size_t>(chunk)] = i;
            return;
          }
          const __m512 vlambda = _mm512_set1_ps(lambda), vrow_max = _mm512_set1_ps(row_max);
          const __m512 vscale = _mm512_set1_ps(scale),
                       vfloor = _mm512_set1_ps(sinkhorn_storage_floor<Store>());
          if (row_log_mass != nullptr) {
            __m512 mass = _mm512_setzero_ps();
            for (std::int64_t j = 0; j < k; j += 16) {
              __mmask16 m = lanes_below(j, k);
              __m512 x = _mm512_maskz_loadu_ps(m, z + j);
              mass = _mm512_add_ps(
                  mass, _mm512_maskz_mov_ps(m, exp16_nonpositive(_mm512_sub_ps(x, vrow_max))));
            }
            row_log_mass[i] = std::log(_mm512_reduce_add_ps(mass));
          }
          for (std::int64_t j = 0; j < stride; j += 16) {
            __mmask16 m = lanes_below(j, k);
            __m512 x = _mm512_maskz_loadu_ps(m, z + j);
            __m512 v = _mm512_mul_ps(_mm512_sub_ps(x, vrow_max), vlambda);
            __m512 e = _mm512_maskz_mov_ps(
                m, _mm512_max_ps(_mm512_mul_ps(exp16_nonpositive(v), vscale), vfloor));
            store16(out + j, e);
          }
#else
      float row_max = -std::numeric_limits<float>::infinity();
      bool finite = true;
      for (std::int64_t j = 0; j < k; ++j) {
        finite = finite && std::isfinite(z[j]);
        row_max = std::max(row_max, z[j]);
      }
      if (!finite) {
        first_bad[static_cast<std::size_t>(chunk)] = i;
        return;
      }
      float mass = 0.0f;
      for (std::int64_t j = 0; j < k; ++j) {
        mass += exp_nonpositive(z[j] - row_max);
        out[j] = sinkhorn_store<Store>(
            std::max(exp_nonpositive((z[j] - row_max) * lambda) * scale, sinkhorn_storage_floor<Store>()));
      }
      if (row_log_mass != nullptr) row_log_mass[i] = std::log(mass);
      for (std::int64_t j = k; j < stride; ++j) out[j] = sinkhorn_store<Store>(0.0f);
#endif
        }
      });
  for (std::int64_t bad : first_bad) {
    if (bad >= 0) return bad;  // chunks are in row order: the first found is the first row
  }
  return -1;
}

template <typename Store>
void sinkhorn_store_rows_absorbed(const float* logits, std::int64_t rows, std::int64_t k,
                                  float lambda, const float* column_log_scale, Store* a,
                                  std::int64_t stride, double* row_shift) {
  const char* op = "sinkhorn_store_rows_absorbed";
  check_shape(op, rows, k, stride);
  SELA_CHECK(rows == 0 || (logits != nullptr && a != nullptr && column_log_scale != nullptr &&
                           row_shift != nullptr),
             op, "null pointer argument");
  SELA_CHECK(std::isfinite(lambda) && lambda > 0.0f, op,
             "lambda must be positive and finite, got " << lambda);
  const float scale = sinkhorn_storage_scale<Store>();
  const float floor_value = sinkhorn_storage_floor<Store>();
  sela::cpu::parallel_chunks(
      0, rows, row_grain(stride), [&](std::int64_t, std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) {
          const float* z = logits + i * k;
          Store* out = a + i * stride;
#if SELA_SINKHORN_AVX512
          // Two sweeps over the row: the maxima (of z, then of v), then the stored values.
          __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
          for (std::int64_t j = 0; j < k; j += 16) {
            vmax = _mm512_mask_max_ps(vmax, lanes_below(j, k), vmax,
                                      _mm512_maskz_loadu_ps(lanes_below(j, k), z + j));
          }
          const __m512 vrow_max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
          const __m512 vlambda = _mm512_set1_ps(lambda);
          __m512 vshift = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
          for (std::int64_t j = 0; j < k; j += 16) {
            const __mmask16 m = lanes_below(j, k);
            const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, z + j), vrow_max);
            const __m512 v =
                _mm512_fmadd_ps(x, vlambda, _mm512_maskz_loadu_ps(m, column_log_scale + j));
            vshift = _mm512_mask_max_ps(vshift, m, vshift, v);
          }
          const float shift = _mm512_reduce_max_ps(vshift);
          const __m512 vshift_all = _mm512_set1_ps(shift), vscale = _mm512_set1_ps(scale),
                       vfloor = _mm512_set1_ps(floor_value);
          for (std::int64_t j = 0; j < stride; j += 16) {
            const __mmask16 m = lanes_below(j, k);
            const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, z + j), vrow_max);
            const __m512 v =
                _mm512_fmadd_ps(x, vlambda, _mm512_maskz_loadu_ps(m, column_log_scale + j));
            const __m512 e = _mm512_maskz_mov_ps(
                m, _mm512_max_ps(_mm512_mul_ps(exp16_nonpositive(_mm512_sub_ps(v, vshift_all)),
                                               vscale),
                                 vfloor));
            store16(out + j, e);
          }
#else
      const float row_max = *std::max_element(z, z + k);
      float shift = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = 0; j < k; ++j)
        shift = std::max(shift, std::fma(z[j] - row_max, lambda, column_log_scale[j]));
      for (std::int64_t j = 0; j < k; ++j) {
        const float v = std::fma(z[j] - row_max, lambda, column_log_scale[j]);
        out[j] = sinkhorn_store<Store>(std::max(exp_nonpositive(v - shift) * scale, floor_value));
      }
      for (std::int64_t j = k; j < stride; ++j) out[j] = sinkhorn_store<Store>(0.0f);
#endif
          row_shift[i] = static_cast<double>(shift);
        }
      });
}

template <typename Store>
void sinkhorn_column_sums(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                          const double* row_weights, void* workspace, std::size_t workspace_bytes,
                          double* col_sums) {
  const char* op = "sinkhorn_column_sums";
  check_shape(op, n, k, stride);
  check_workspace(op, n, stride, workspace, workspace_bytes);
  SELA_CHECK(col_sums != nullptr && (n == 0 || a != nullptr), op, "null pointer argument");
  const std::int64_t chunks = chunk_count(n, stride);
  sela::cpu::parallel_chunks(
      0, n, row_grain(stride), [&](std::int64_t chunk, std::int64_t begin, std::int64_t end) {
        double* partial = chunk_scratch(workspace, chunk, stride).partial;
        std::fill(partial, partial + stride, 0.0);
        for (std::int64_t i = begin; i < end; ++i) {
          const double weight = row_weights != nullptr ? row_weights[i] : 1.0;
          if (weight == 0.0) continue;
          const Store* row = a + i * stride;
#if SELA_SINKHORN_AVX512
          const __m512d w = _mm512_set1_pd(weight);
          for (std::int64_t j = 0; j < stride; j += 16) {
            __m512 x = load16(row + j);
            __m512d lo = _mm512_maskz_cvtps_pd(0xFF, _mm512_castps512_ps256(x));
            __m512d hi = _mm512_maskz_cvtps_pd(
                0xFF, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
            _mm512_storeu_pd(partial + j, _mm512_fmadd_pd(lo, w, _mm512_loadu_pd(partial + j)));
            _mm512_storeu_pd(partial + j + 8,
                             _mm512_fmadd_pd(hi, w, _mm512_loadu_pd(partial + j + 8)));
          }
#else
      for (std::int64_t j = 0; j < stride; ++j) partial[j] += static_cast<double>(sinkhorn_load(row[j])) * weight;
#endif
        }
      });
  combine_partials(workspace, chunks, k, stride, 1.0, col_sums);
}

double sinkhorn_relaxation_factor(double x, double y, double omega) {
  const double delta = x / y - 1.0;
  if (std::fabs(delta) < kRelaxationSeriesBound) {
    // log(1+δ) to δ⁷ and exp(u) to u⁶ (truncation below 2e-17 for |δ| < 1e-2, |1 − ω| < 1),
    // each polynomial in Estrin's form with explicit fused multiply-adds: a shorter chain
    // than Horner's, and the exact operations of the AVX-512 form below.
    const double d2 = delta * delta, d4 = d2 * d2;
    const double log_poly =
        std::fma(std::fma(1.0 / 7, d2, std::fma(-1.0 / 6, delta, 1.0 / 5)), d4,
                 std::fma(std::fma(-1.0 / 4, delta, 1.0 / 3), d2, std::fma(-1.0 / 2, delta, 1.0)));
    const double u = (1.0 - omega) * (delta * log_poly);
    const double u2 = u * u, u4 = u2 * u2;
    return std::fma(std::fma(1.0 / 720, u2, std::fma(1.0 / 120, u, 1.0 / 24)), u4,
                    std::fma(std::fma(1.0 / 6, u, 1.0 / 2), u2, std::fma(1.0, u, 1.0)));
  }
  return std::pow(x / y, 1.0 - omega);
}

#if SELA_SINKHORN_AVX512
namespace {
// sinkhorn_relaxation_factor's series for eight values of δ at once: the same fused
// multiply-adds in the same Estrin arrangement, so each lane is bit for bit the scalar
// series (tests/assign/test_sinkhorn_kernels.cpp checks it).
__m512d relaxation_series(__m512d delta, double omega) {
  auto fma = [](double a, __m512d x, __m512d b) {
    return _mm512_fmadd_pd(_mm512_set1_pd(a), x, b);
  };
  auto fma_v = [](__m512d a, __m512d x, __m512d b) { return _mm512_fmadd_pd(a, x, b); };
  auto constant = [](double v) { return _mm512_set1_pd(v); };
  const __m512d d2 = _mm512_mul_pd(delta, delta), d4 = _mm512_mul_pd(d2, d2);
  const __m512d log_poly =
      fma_v(fma(1.0 / 7, d2, fma(-1.0 / 6, delta, constant(1.0 / 5))), d4,
            fma_v(fma(-1.0 / 4, delta, constant(1.0 / 3)), d2,
                  fma(-1.0 / 2, delta, constant(1.0))));
  const __m512d u = _mm512_mul_pd(constant(1.0 - omega), _mm512_mul_pd(delta, log_poly));
  const __m512d u2 = _mm512_mul_pd(u, u), u4 = _mm512_mul_pd(u2, u2);
  return fma_v(fma(1.0 / 720, u2, fma(1.0 / 120, u, constant(1.0 / 24))), u4,
               fma_v(fma(1.0 / 6, u, constant(1.0 / 2)), u2, fma(1.0, u, constant(1.0))));
}
}  // namespace
#endif

template <typename Store>
double sinkhorn_pass(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                     std::int64_t n_total, const float* r_rel, double r_scale, double omega,
                     double* c, double* col_sums, bool measure_change, void* workspace,
                     std::size_t workspace_bytes, std::int64_t* bad_rows) {
  const char* op = "sinkhorn_pass";
  check_shape(op, n, k, stride);
  check_workspace(op, n, stride, workspace, workspace_bytes);
  SELA_CHECK(col_sums != nullptr && r_rel != nullptr && (n == 0 || (a != nullptr && c != nullptr)),
             op, "null pointer argument");
  SELA_CHECK(n_total >= n && n_total >= 1, op, "n_total " << n_total << " must be >= n " << n);
  SELA_CHECK(r_scale > 0.0 && std::isfinite(r_scale), op,
             "r_scale must be positive, got " << r_scale);
  SELA_CHECK(omega > 0.0 && omega < 2.0, op,
             "over-relaxation omega must be in (0, 2), got " << omega);
  const bool relaxed = omega != 1.0;
  const std::int64_t chunks = chunk_count(n, stride);
  const double inv_n_rscale = 1.0 / (static_cast<double>(n_total) * r_scale);
  std::vector<double> chunk_change(static_cast<std::size_t>(std::max<std::int64_t>(chunks, 1)),
                                   0.0);
  std::vector<std::int64_t> chunk_bad(chunk_change.size(), 0);
  sela::cpu::parallel_chunks(
      0, n, row_grain(stride), [&](std::int64_t chunk, std::int64_t begin, std::int64_t end) {
        double change = 0.0;
        std::int64_t bad = 0;
        auto weight_of = [&](std::int64_t i, float dot) -> float {
          if (!(dot > 0.0f) || !std::isfinite(dot)) {
            ++bad;
            c[i] = 0.0;
            return 0.0f;
          }
          const double c_new = inv_n_rscale / static_cast<double>(dot);
          if (measure_change) change += std::fabs(c[i] / c_new - 1.0);
          if (!relaxed) {
            c[i] = c_new;
            return 1.0f / dot;  // c_new · N · r_scale: the column sums are rescaled once at the end
          }
          const double factor = c[i] > 0.0 ? sinkhorn_relaxation_factor(c[i], c_new, omega) : 1.0;
          c[i] = c_new * factor;
          return static_cast<float>(factor / static_cast<double>(dot));
        };
        // Eight rows of weight_of at once: the same IEEE operations lane by lane, and the
        // change added in row order, so the results are those of weight_of bit for bit. An
        // over-relaxed group computes the factor's series for all eight rows (where the
        // iteration spends its time, |c_i / c_new_i − 1| < 1e-2) and pow only for the rows
        // beyond; a group holding a row that is not usable (or c_i = 0) goes row by row.
        auto group_weights = [&](std::int64_t i, const float* dots, float* weights) {
#if SELA_SINKHORN_AVX512
          const __m256 d = _mm256_load_ps(dots);
          const __mmask8 usable =
              _mm256_cmp_ps_mask(d, _mm256_setzero_ps(), _CMP_GT_OQ) &
              _mm256_cmp_ps_mask(d, _mm256_set1_ps(std::numeric_limits<float>::infinity()),
                                 _CMP_LT_OQ);
          const __m512d c_old = _mm512_loadu_pd(c + i);
          const bool all_positive =
              _mm512_cmp_pd_mask(c_old, _mm512_setzero_pd(), _CMP_GT_OQ) == 0xFF;
          if (usable == 0xFF && (!relaxed || all_positive)) {
            const __m512d c_new =
                _mm512_div_pd(_mm512_set1_pd(inv_n_rscale), _mm512_maskz_cvtps_pd(0xFF, d));
            // c_old / c_new − 1: the change and the factor's argument (the plain pass needs it
            // only on the iterations that measure the change).
            const __m512d delta =
                measure_change || relaxed
                    ? _mm512_sub_pd(_mm512_div_pd(c_old, c_new), _mm512_set1_pd(1.0))
                    : _mm512_setzero_pd();
            if (measure_change) {
              alignas(64) double terms[kRowsPerGroup];
              _mm512_store_pd(terms, _mm512_abs_pd(delta));
              for (int q = 0; q < kRowsPerGroup; ++q) change += terms[q];
            }
            if (!relaxed) {
              _mm512_storeu_pd(c + i, c_new);
              _mm256_store_ps(weights, _mm256_div_ps(_mm256_set1_ps(1.0f), d));
              return;
            }
            alignas(64) double factors[kRowsPerGroup];
            _mm512_store_pd(factors, relaxation_series(delta, omega));
            const __mmask8 near_one = _mm512_cmp_pd_mask(
                _mm512_abs_pd(delta), _mm512_set1_pd(kRelaxationSeriesBound), _CMP_LT_OQ);
            if (near_one != 0xFF) {  // the rows away from convergence: pow, one by one
              alignas(64) double olds[kRowsPerGroup], news[kRowsPerGroup];
              _mm512_store_pd(olds, c_old);
              _mm512_store_pd(news, c_new);
              for (int q = 0; q < kRowsPerGroup; ++q) {
                if (!(near_one & (1u << q)))
                  factors[q] = sinkhorn_relaxation_factor(olds[q], news[q], omega);
              }
            }
            const __m512d factor = _mm512_load_pd(factors);
            _mm512_storeu_pd(c + i, _mm512_mul_pd(c_new, factor));
            _mm256_store_ps(weights, _mm512_cvtpd_ps(
                                         _mm512_div_pd(factor, _mm512_maskz_cvtps_pd(0xFF, d))));
            return;
          }
#endif
          for (int q = 0; q < kRowsPerGroup; ++q) weights[q] = weight_of(i + q, dots[q]);
        };
        pass_chunk<Store>(a, begin, end, stride, r_rel, chunk_scratch(workspace, chunk, stride),
                          weight_of, group_weights);
        chunk_change[static_cast<std::size_t>(chunk)] = change;
        chunk_bad[static_cast<std::size_t>(chunk)] = bad;
      });
  combine_partials(workspace, chunks, k, stride, inv_n_rscale, col_sums);
  double change = 0.0;
  std::int64_t bad = 0;
  for (std::size_t chunk = 0; chunk < chunk_change.size(); ++chunk) {
    change += chunk_change[chunk];
    bad += chunk_bad[chunk];
  }
  if (bad_rows != nullptr) *bad_rows = bad;
  return measure_change ? change : 0.0;
}

template <typename Store>
double sinkhorn_labels(const Store* a, std::int64_t n, std::int64_t k, std::int64_t stride,
                       std::int64_t n_total, const float* r_rel, double r_scale, const double* c,
                       std::int64_t* labels, double* floor_mass) {
  const char* op = "sinkhorn_labels";
  check_shape(op, n, k, stride);
  SELA_CHECK(r_rel != nullptr && (n == 0 || (a != nullptr && c != nullptr && labels != nullptr)),
             op, "null pointer argument");
  const std::int64_t chunks = chunk_count(n, stride);
  std::vector<double> chunk_error(static_cast<std::size_t>(std::max<std::int64_t>(chunks, 1)), 0.0);
  std::vector<double> chunk_floor_mass(chunk_error.size(), 0.0);
  const float floor_value = sinkhorn_storage_floor<Store>();
  const double row_factor = static_cast<double>(n_total) * r_scale;
  sela::cpu::parallel_chunks(
      0, n, row_grain(stride), [&](std::int64_t chunk, std::int64_t begin, std::int64_t end) {
        double worst = 0.0, worst_floor_share = 0.0;
        for (std::int64_t i = begin; i < end; ++i) {
          const Store* row = a + i * stride;
          float dot = 0.0f, floor_dot = 0.0f;
          std::int64_t best_index = 0;
#if SELA_SINKHORN_AVX512
          __m512 best = _mm512_set1_ps(-1.0f);
          __m512i best_at = _mm512_setzero_si512();
          __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
          const __m512i step = _mm512_set1_epi32(16);
          const __m512 vfloor = _mm512_set1_ps(floor_value);
          __m512 d = _mm512_setzero_ps(), fd = _mm512_setzero_ps();
          for (std::int64_t j = 0; j < stride; j += 16) {
            __m512 rv = _mm512_loadu_ps(r_rel + j);
            __m512 x = load16(row + j);
            __m512 v = _mm512_mul_ps(x, rv);
            d = _mm512_fmadd_ps(x, rv, d);  // as row_dot16
            fd = _mm512_mask_add_ps(fd, _mm512_cmp_ps_mask(x, vfloor, _CMP_LE_OQ), fd, v);
            __mmask16 better = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);  // strict: first index kept
            best = _mm512_mask_mov_ps(best, better, v);
            best_at = _mm512_mask_mov_epi32(best_at, better, at);
            at = _mm512_add_epi32(at, step);
          }
          float top = _mm512_reduce_max_ps(best);
          __mmask16 winners = _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
          best_index = _mm512_mask_reduce_min_epi32(winners, best_at);
          dot = reduce_add16(d);
          floor_dot = reduce_add16(fd);
#else
      float top = -1.0f;
      for (std::int64_t j = 0; j < k; ++j) {
        float v = sinkhorn_load(row[j]) * r_rel[j];
        if (sinkhorn_load(row[j]) <= floor_value) floor_dot += v;
        if (v > top) {
          top = v;
          best_index = j;
        }
      }
      dot = row_dot_scalar(row, r_rel, stride);
#endif
          labels[i] = best_index;
          if (floor_dot > 0.0f)
            worst_floor_share = std::max(worst_floor_share, static_cast<double>(floor_dot) / dot);
          worst = std::max(worst, std::fabs(row_factor * c[i] * static_cast<double>(dot) - 1.0));
        }
        chunk_error[static_cast<std::size_t>(chunk)] = worst;
        chunk_floor_mass[static_cast<std::size_t>(chunk)] = worst_floor_share;
      });
  double worst = 0.0, worst_floor_share = 0.0;
  for (std::size_t chunk = 0; chunk < chunk_error.size(); ++chunk) {
    worst = std::max(worst, chunk_error[chunk]);
    worst_floor_share = std::max(worst_floor_share, chunk_floor_mass[chunk]);
  }
  if (floor_mass != nullptr) *floor_mass = worst_floor_share;
  return worst;
}

#define SELA_SINKHORN_INSTANTIATE(Store)                                                         \
  template std::int64_t sinkhorn_store_rows<Store>(const float*, std::int64_t, std::int64_t,     \
                                                   float, Store*, std::int64_t, float*);         \
  template void sinkhorn_store_rows_absorbed<Store>(const float*, std::int64_t, std::int64_t,   \
                                                   float, const float*, Store*, std::int64_t,    \
                                                   double*);                                     \
  template void sinkhorn_column_sums<Store>(const Store*, std::int64_t, std::int64_t,            \
                                            std::int64_t, const double*, void*, std::size_t,     \
                                            double*);                                            \
  template double sinkhorn_pass<Store>(const Store*, std::int64_t, std::int64_t, std::int64_t,   \
                                       std::int64_t, const float*, double, double, double*,      \
                                       double*, bool, void*, std::size_t, std::int64_t*);        \
  template double sinkhorn_labels<Store>(const Store*, std::int64_t, std::int64_t, std::int64_t, \
                                         std::int64_t, const float*, double, const double*,      \
                                         std::int64_t*, double*);

SELA_SINKHORN_INSTANTIATE(float)
SELA_SINKHORN_INSTANTIATE(Half)
SELA_SINKHORN_INSTANTIATE(BFloat16)

}  // namespace sela::assign
