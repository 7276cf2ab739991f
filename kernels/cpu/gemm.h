// CPU matrix multiply: one row-major GEMM entry point for every kernel that needs one.
//
// `gemm` forwards to the library chosen at configure time by cmake/SelaCpuGemm.cmake
// (oneDNN's dnnl_sgemm, BLIS, OpenBLAS, or our own kernel); the choice was made by
// measurement with tools/bench/gemm_lab.cpp (numbers in docs/perf.md). Libraries that only
// do float (dnnl_sgemm) leave double to the builtin kernel: double is used for tests and
// gradient checks, not for training.
//
// `gemm_builtin` is our own portable kernel, always compiled, so that the build works with
// no BLAS installed (the GPU machine has none) and so that tests and the lab can exercise it
// next to whichever library was chosen. It is a packed, cache-blocked GEMM whose register
// tile is written with GCC/Clang vector extensions, sized for the widest vector unit the
// compiler targets (AVX-512, AVX2 or 128-bit), threaded by splitting C between threads.
#pragma once

#include <cstdint>

namespace sela::cpu {

// Row-major C(m,n) = alpha * op(A)(m,k) * op(B)(k,n) + beta * C, op = transpose or not.
// lda/ldb/ldc are row strides of the matrices as stored. beta == 0 means C is not read
// (it may hold NaN). Threaded with num_threads().
template <typename T>
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
          T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc);
const char* gemm_backend_name();  // "dnnl", "blis", "openblas" or "builtin"

// The same contract, always computed by our own kernel (whatever the backend is).
template <typename T>
void gemm_builtin(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                  std::int64_t k, T alpha, const T* a, std::int64_t lda, const T* b,
                  std::int64_t ldb, T beta, T* c, std::int64_t ldc);

// Register tile of the builtin kernel for T on this build ("12x32 zmm" style), for labs.
template <typename T>
const char* gemm_builtin_tile_name();

// Checks the arguments of a gemm call (sizes non-negative, strides large enough, pointers
// present when used) and throws sela::Error naming `op` otherwise. gemm and gemm_builtin
// call it; exposed for wrappers that want the same message.
void check_gemm_arguments(const char* op, bool transpose_a, bool transpose_b, std::int64_t m,
                          std::int64_t n, std::int64_t k, const void* a, std::int64_t lda,
                          const void* b, std::int64_t ldb, const void* c, std::int64_t ldc);

}  // namespace sela::cpu
