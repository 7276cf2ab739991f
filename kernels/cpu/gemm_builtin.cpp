// Our own GEMM (kernels/cpu/gemm.h: gemm_builtin): portable, packed, cache-blocked, threaded.
//
// Shape of the algorithm (the classic Goto/BLIS layering, written for row-major C):
//   for each block of rows of C       (kBlockRows rows of op(A), packed once, lives in L3)
//     for each slice of k             (kDepth values; C is updated slice by slice)
//       pack op(A)[rows, slice] into slabs of kTileRows rows, stored k-major
//       for each block of columns     (kBlockCols columns of op(B), packed, lives in L2)
//         pack op(B)[slice, cols] into slabs of kTileCols columns, stored k-major
//         for each A slab (stays in L1) x each B slab: register tile kTileRows x kTileCols
// The register tile keeps kTileRows x 2 vector accumulators; every k step loads two vectors
// of B and broadcasts kTileRows values of A. Packing pads the edges with zeros, so the tile
// loop has no edge cases; only the store of a partial tile goes through a small buffer.
//
// Why vector extensions rather than intrinsics: `T __attribute__((vector_size(N)))` lets one
// source serve float and double and every x86 (and ARM) target; the vector width and tile
// height are picked from the compiler's target macros so that the accumulators fit the
// register file (AVX-512: 32 registers, 12x2 tile; AVX2 and 128-bit: 16 registers, 6x2).
// cmake/SelaCpuGemm.cmake compiles this file with -ffp-contract=fast so that `acc += a*b`
// becomes one fused multiply-add (ISO C++ mode would otherwise forbid the contraction).
//
// Threads: C is cut into contiguous bands along its longer side, one per thread, each band
// a whole serial GEMM with its own packing buffers (thread-local, grown on demand and kept,
// so that no call allocates once warm). Results do not depend on the thread count: every
// element of C is always summed in the same order.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>

#include "engine/error.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace sela::cpu {
namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
constexpr int kTileRows = 12;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
constexpr int kTileRows = 6;
#else
constexpr int kVectorBytes = 16;
constexpr int kTileRows = 6;
#endif
constexpr int kTileVectors = 2;  // vectors of accumulators per tile row

template <typename T>
struct VectorOf;
template <>
struct VectorOf<float> {
  typedef float type __attribute__((vector_size(kVectorBytes)));
};
template <>
struct VectorOf<double> {
  typedef double type __attribute__((vector_size(kVectorBytes)));
};

// Blocking for element type T: register tile, k slice and cache blocks (in elements).
template <typename T>
struct Blocking {
  using Vector = typename VectorOf<T>::type;
  static constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));
  static constexpr int kTileCols = kLanes * kTileVectors;
  // One slab of packed B (kDepth x kTileCols) is 48 KiB for float and double on AVX-512:
  // it streams from L2 while the A slab (kTileRows x kDepth) stays in L1.
  static constexpr std::int64_t kDepth = sizeof(T) == 4 ? 384 : 256;
  static constexpr std::int64_t kBlockCols = sizeof(T) == 4 ? 512 : 384;  // B block ~ L2
  static constexpr std::int64_t kBlockRows = kTileRows * 256;             // A block ~ L3
};

// A grow-only 64-byte-aligned buffer, one per thread and element type.
template <typename T>
T* thread_scratch(int which, std::size_t count) {
  struct Buffer {
    struct Free {
      void operator()(void* p) const { std::free(p); }
    };
    std::unique_ptr<void, Free> data;
    std::size_t capacity = 0;  // in elements
  };
  thread_local Buffer buffers[2];
  Buffer& buffer = buffers[which];
  if (buffer.capacity < count) {
    std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    SELA_CHECK(p != nullptr, "gemm", "cannot allocate " << bytes << " bytes of packing scratch");
    buffer.data.reset(p);
    buffer.capacity = count;
  }
  return static_cast<T*>(buffer.data.get());
}

// packed(slab s, depth p, row r) = op(A)(row0 + s*kTileRows + r, depth0 + p), 0 past `rows`.
template <typename T>
void pack_a(bool transpose_a, const T* a, std::int64_t lda, std::int64_t row0, std::int64_t rows,
            std::int64_t depth0, std::int64_t depth, T* packed) {
  constexpr int R = kTileRows;
  for (std::int64_t s = 0; s * R < rows; ++s) {
    T* slab = packed + s * depth * R;  // (depth, R)
    std::int64_t valid = std::min<std::int64_t>(R, rows - s * R);
    if (transpose_a) {  // op(A)(i, p) = a[p*lda + i]: rows of the slab are contiguous
      for (std::int64_t p = 0; p < depth; ++p) {
        const T* src = a + (depth0 + p) * lda + row0 + s * R;
        T* dst = slab + p * R;
        for (std::int64_t r = 0; r < valid; ++r) dst[r] = src[r];
        for (std::int64_t r = valid; r < R; ++r) dst[r] = T(0);
      }
    } else {  // op(A)(i, p) = a[i*lda + p]
      for (std::int64_t r = 0; r < valid; ++r) {
        const T* src = a + (row0 + s * R + r) * lda + depth0;
        for (std::int64_t p = 0; p < depth; ++p) slab[p * R + r] = src[p];
      }
      for (std::int64_t r = valid; r < R; ++r)
        for (std::int64_t p = 0; p < depth; ++p) slab[p * R + r] = T(0);
    }
  }
}

// packed(slab s, depth p, col c) = op(B)(depth0 + p, col0 + s*NR + c), 0 past `cols`.
template <typename T>
void pack_b(bool transpose_b, const T* b, std::int64_t ldb, std::int64_t depth0, std::int64_t depth,
            std::int64_t col0, std::int64_t cols, T* packed) {
  constexpr int NR = Blocking<T>::kTileCols;
  for (std::int64_t s = 0; s * NR < cols; ++s) {
    T* slab = packed + s * depth * NR;  // (depth, NR)
    std::int64_t valid = std::min<std::int64_t>(NR, cols - s * NR);
    if (!transpose_b) {  // op(B)(p, j) = b[p*ldb + j]: slab rows are contiguous
      for (std::int64_t p = 0; p < depth; ++p) {
        const T* src = b + (depth0 + p) * ldb + col0 + s * NR;
        T* dst = slab + p * NR;
        for (std::int64_t c = 0; c < valid; ++c) dst[c] = src[c];
        for (std::int64_t c = valid; c < NR; ++c) dst[c] = T(0);
      }
    } else {  // op(B)(p, j) = b[j*ldb + p]
      for (std::int64_t c = 0; c < valid; ++c) {
        const T* src = b + (col0 + s * NR + c) * ldb + depth0;
        for (std::int64_t p = 0; p < depth; ++p) slab[p * NR + c] = src[p];
      }
      for (std::int64_t c = valid; c < NR; ++c)
        for (std::int64_t p = 0; p < depth; ++p) slab[p * NR + c] = T(0);
    }
  }
}

// One register tile: C[0:rows, 0:cols] = alpha * (A_slab . B_slab) + beta * C, where
// read_c == false means C is not read (beta == 0 on the first k slice).
template <typename T>
inline void tile_kernel(std::int64_t depth, const T* __restrict a_slab, const T* __restrict b_slab,
                        T alpha, T beta, bool read_c, T* __restrict c, std::int64_t ldc,
                        std::int64_t rows, std::int64_t cols) {
  using B = Blocking<T>;
  using Vector = typename B::Vector;
  constexpr int R = kTileRows;
  constexpr int NV = kTileVectors;
  constexpr int L = B::kLanes;
  Vector acc[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vector{} + T(0);
  for (std::int64_t p = 0; p < depth; ++p) {
    Vector bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      std::memcpy(&bv[v], b_slab + p * B::kTileCols + v * L, sizeof(Vector));
    const T* ap = a_slab + p * R;
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      Vector av = Vector{} + ap[r];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  if (rows == R && cols == B::kTileCols) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* dst = c + r * ldc + v * L;
        Vector out = acc[r][v] * alpha;
        if (read_c) {
          Vector old;
          std::memcpy(&old, dst, sizeof(Vector));
          out += old * beta;
        }
        std::memcpy(dst, &out, sizeof(Vector));
      }
    }
    return;
  }
  alignas(64) T tile[R * B::kTileCols];  // (R, NR)
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      std::memcpy(tile + r * B::kTileCols + v * L, &acc[r][v], sizeof(Vector));
  for (std::int64_t r = 0; r < rows; ++r) {
    T* dst = c + r * ldc;
    const T* src = tile + r * B::kTileCols;
    if (read_c) {
      for (std::int64_t j = 0; j < cols; ++j) dst[j] = alpha * src[j] + beta * dst[j];
    } else {
      for (std::int64_t j = 0; j < cols; ++j) dst[j] = alpha * src[j];
    }
  }
}

// A whole serial GEMM on the band C[row_begin:row_end, col_begin:col_end].
template <typename T>
void gemm_band(bool transpose_a, bool transpose_b, std::int64_t row_begin, std::int64_t row_end,
               std::int64_t col_begin, std::int64_t col_end, std::int64_t k, T alpha, const T* a,
               std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  using B = Blocking<T>;
  constexpr int R = kTileRows;
  constexpr int NR = B::kTileCols;
  for (std::int64_t row0 = row_begin; row0 < row_end; row0 += B::kBlockRows) {
    std::int64_t rows = std::min(B::kBlockRows, row_end - row0);
    std::int64_t row_slabs = (rows + R - 1) / R;
    for (std::int64_t depth0 = 0; depth0 < k; depth0 += B::kDepth) {
      std::int64_t depth = std::min(B::kDepth, k - depth0);
      bool read_c = depth0 > 0 || beta != T(0);
      T beta_here = depth0 > 0 ? T(1) : beta;
      T* a_packed = thread_scratch<T>(0, static_cast<std::size_t>(row_slabs * R * depth));
      pack_a(transpose_a, a, lda, row0, rows, depth0, depth, a_packed);
      for (std::int64_t col0 = col_begin; col0 < col_end; col0 += B::kBlockCols) {
        std::int64_t cols = std::min(B::kBlockCols, col_end - col0);
        std::int64_t col_slabs = (cols + NR - 1) / NR;
        T* b_packed = thread_scratch<T>(1, static_cast<std::size_t>(col_slabs * NR * depth));
        pack_b(transpose_b, b, ldb, depth0, depth, col0, cols, b_packed);
        for (std::int64_t rs = 0; rs < row_slabs; ++rs) {
          std::int64_t tile_rows = std::min<std::int64_t>(R, rows - rs * R);
          const T* a_slab = a_packed + rs * R * depth;
          for (std::int64_t cs = 0; cs < col_slabs; ++cs) {
            std::int64_t tile_cols = std::min<std::int64_t>(NR, cols - cs * NR);
            T* c_tile = c + (row0 + rs * R) * ldc + col0 + cs * NR;
            tile_kernel<T>(depth, a_slab, b_packed + cs * NR * depth, alpha, beta_here, read_c,
                           c_tile, ldc, tile_rows, tile_cols);
          }
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void gemm_builtin(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                  std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
                  std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
  check_gemm_arguments("gemm", transpose_a, transpose_b, m, n, k, a, lda, b, ldb, c, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == T(0)) {  // C = beta * C, C not read when beta == 0
    for (std::int64_t i = 0; i < m; ++i) {
      T* row = c + i * ldc;
      if (beta == T(0)) {
        std::fill(row, row + n, T(0));
      } else {
        for (std::int64_t j = 0; j < n; ++j) row[j] *= beta;
      }
    }
    return;
  }
  using B = Blocking<T>;
  // Cut C into bands along its longer side, in whole tiles; small problems stay serial.
  bool split_rows = m > n;
  std::int64_t unit = split_rows ? kTileRows : B::kTileCols;
  std::int64_t extent = split_rows ? m : n;
  std::int64_t units = (extent + unit - 1) / unit;
  double flops_per_unit = 2.0 * static_cast<double>(unit) *
                          static_cast<double>(split_rows ? n : m) * static_cast<double>(k);
  constexpr double kMinFlopsPerThread = 4.0e6;  // below this, a thread costs more than it saves
  auto grain = static_cast<std::int64_t>(std::max(1.0, kMinFlopsPerThread / flops_per_unit));
  parallel_for(0, units, grain, [&](std::int64_t u0, std::int64_t u1) {
    std::int64_t begin = u0 * unit;
    std::int64_t end = std::min(extent, u1 * unit);
    if (split_rows) {
      gemm_band<T>(transpose_a, transpose_b, begin, end, 0, n, k, alpha, a, lda, b, ldb, beta, c,
                   ldc);
    } else {
      gemm_band<T>(transpose_a, transpose_b, 0, m, begin, end, k, alpha, a, lda, b, ldb, beta, c,
                   ldc);
    }
  });
}

template <typename T>
const char* gemm_builtin_tile_name() {
  static const std::string name = [] {
    std::ostringstream out;
    out << kTileRows << "x" << Blocking<T>::kTileCols << " tile of " << kVectorBytes
        << "-byte vectors, k slice " << Blocking<T>::kDepth;
    return out.str();
  }();
  return name.c_str();
}

template void gemm_builtin<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float,
                                  const float*, std::int64_t, const float*, std::int64_t, float,
                                  float*, std::int64_t);
template void gemm_builtin<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                                   const double*, std::int64_t, const double*, std::int64_t, double,
                                   double*, std::int64_t);
template const char* gemm_builtin_tile_name<float>();
template const char* gemm_builtin_tile_name<double>();

}  // namespace sela::cpu
