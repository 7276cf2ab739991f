// kernels/cpu/gemm.h: argument checks and the dispatch to the configured GEMM library.
//
// Exactly one of SELA_CPU_GEMM_{DNNL,BLIS,OPENBLAS,BUILTIN} is defined by
// cmake/SelaCpuGemm.cmake. Each library is given our thread count (num_threads()) before a
// call, and only when it changed, so that the library never runs more threads than we do:
//   dnnl      oneDNN built on OpenMP (Debian's is): it follows omp_get_max_threads(), which
//             we keep equal to num_threads(). Float only; double goes to the builtin kernel.
//   blis      BLIS (Debian's OpenMP build): bli_thread_set_num_threads; strided typed API.
//   openblas  OpenBLAS (Debian's pthread build): openblas_set_num_threads; CBLAS row-major.
// Inside a parallel_for body the OpenMP-based libraries run on one thread (no nesting); the
// pthread OpenBLAS does not know about OpenMP, so kernels call gemm outside parallel bodies.
#include "kernels/cpu/gemm.h"

#include <atomic>
#include <limits>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

#if defined(SELA_CPU_GEMM_DNNL)
#include <dnnl.h>
#elif defined(SELA_CPU_GEMM_BLIS)
#include <blis.h>
#elif defined(SELA_CPU_GEMM_OPENBLAS)
#include <cblas.h>
#elif !defined(SELA_CPU_GEMM_BUILTIN)
#error "cmake/SelaCpuGemm.cmake defines one SELA_CPU_GEMM_<BACKEND>"
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sela::cpu {

void check_gemm_arguments(const char* op, bool transpose_a, bool transpose_b, std::int64_t m,
                          std::int64_t n, std::int64_t k, const void* a, std::int64_t lda,
                          const void* b, std::int64_t ldb, const void* c, std::int64_t ldc) {
  SELA_CHECK(m >= 0 && n >= 0 && k >= 0, op,
             "sizes must be non-negative, got m=" << m << " n=" << n << " k=" << k);
  // Row-major op(A) is (m, k): stored (m, k) with row stride lda >= k, or (k, m) with lda >= m.
  std::int64_t a_row = transpose_a ? m : k;
  std::int64_t b_row = transpose_b ? k : n;
  SELA_CHECK(lda >= std::max<std::int64_t>(1, a_row), op,
             "lda=" << lda << " is shorter than a row of A (" << a_row
                    << (transpose_a ? ", A transposed" : "") << ") for m=" << m << " n=" << n
                    << " k=" << k);
  SELA_CHECK(ldb >= std::max<std::int64_t>(1, b_row), op,
             "ldb=" << ldb << " is shorter than a row of B (" << b_row
                    << (transpose_b ? ", B transposed" : "") << ") for m=" << m << " n=" << n
                    << " k=" << k);
  SELA_CHECK(ldc >= std::max<std::int64_t>(1, n), op,
             "ldc=" << ldc << " is shorter than a row of C (" << n << ") for m=" << m << " n=" << n
                    << " k=" << k);
  if (m > 0 && n > 0) {
    SELA_CHECK(c != nullptr, op, "C is null for m=" << m << " n=" << n);
    if (k > 0) SELA_CHECK(a != nullptr && b != nullptr, op, "A or B is null for k=" << k);
  }
}

namespace {

#if defined(SELA_CPU_GEMM_BLIS) || defined(SELA_CPU_GEMM_OPENBLAS)
// Gives the library our thread count when it changed since the last call.
template <typename SetThreads>
void sync_library_threads(SetThreads set_threads) {
  static std::atomic<int> given{0};
  int wanted = num_threads();
  if (given.load() != wanted) {
    set_threads(wanted);
    given.store(wanted);
  }
}
#endif

#if defined(SELA_CPU_GEMM_DNNL)
void sync_openmp_threads() {
#ifdef _OPENMP
  // omp_set_num_threads is per calling thread: keep this thread's value equal to ours.
  if (!omp_in_parallel() && omp_get_max_threads() != num_threads())
    omp_set_num_threads(num_threads());
#endif
}
#endif

#if defined(SELA_CPU_GEMM_OPENBLAS)
void check_int_range(std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t lda,
                     std::int64_t ldb, std::int64_t ldc) {
  constexpr std::int64_t kMax = std::numeric_limits<blasint>::max();
  SELA_CHECK(m <= kMax && n <= kMax && k <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax,
             "gemm", "sizes exceed OpenBLAS's integer type: m=" << m << " n=" << n << " k=" << k);
}
#endif

}  // namespace

const char* gemm_backend_name() {
#if defined(SELA_CPU_GEMM_DNNL)
  return "dnnl";
#elif defined(SELA_CPU_GEMM_BLIS)
  return "blis";
#elif defined(SELA_CPU_GEMM_OPENBLAS)
  return "openblas";
#else
  return "builtin";
#endif
}

namespace {

// The library call for float and for double; arguments already checked, m and n > 0.
void library_gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                  std::int64_t k, float alpha, const float* a, std::int64_t lda, const float* b,
                  std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
#if defined(SELA_CPU_GEMM_DNNL)
  if (k == 0) {  // dnnl_sgemm treats k == 0 as an error on some versions; keep BLAS semantics
    gemm_builtin<float>(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  sync_openmp_threads();
  dnnl_status_t status = dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k,
                                    alpha, a, lda, b, ldb, beta, c, ldc);
  SELA_CHECK(status == dnnl_success, "gemm",
             "dnnl_sgemm failed with status " << static_cast<int>(status) << " for m=" << m
                                              << " n=" << n << " k=" << k);
#elif defined(SELA_CPU_GEMM_BLIS)
  sync_library_threads([](int t) { bli_thread_set_num_threads(t); });
  bli_sgemm(transpose_a ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
            transpose_b ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &alpha,
            const_cast<float*>(a), lda, 1, const_cast<float*>(b), ldb, 1, &beta, c, ldc, 1);
#elif defined(SELA_CPU_GEMM_OPENBLAS)
  check_int_range(m, n, k, lda, ldb, ldc);
  sync_library_threads([](int t) { openblas_set_num_threads(t); });
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
              transpose_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda),
              b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
#else
  gemm_builtin<float>(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

void library_gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                  std::int64_t k, double alpha, const double* a, std::int64_t lda, const double* b,
                  std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
#if defined(SELA_CPU_GEMM_BLIS)
  sync_library_threads([](int t) { bli_thread_set_num_threads(t); });
  bli_dgemm(transpose_a ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
            transpose_b ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &alpha,
            const_cast<double*>(a), lda, 1, const_cast<double*>(b), ldb, 1, &beta, c, ldc, 1);
#elif defined(SELA_CPU_GEMM_OPENBLAS)
  check_int_range(m, n, k, lda, ldb, ldc);
  sync_library_threads([](int t) { openblas_set_num_threads(t); });
  cblas_dgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
              transpose_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a, static_cast<blasint>(lda),
              b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
#else  // builtin, and dnnl (whose GEMM is float only)
  gemm_builtin<double>(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

}  // namespace

template <typename T>
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
          T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc) {
  check_gemm_arguments("gemm", transpose_a, transpose_b, m, n, k, a, lda, b, ldb, c, ldc);
  if (m == 0 || n == 0) return;
  library_gemm(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                          std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                           const double*, std::int64_t, const double*, std::int64_t, double,
                           double*, std::int64_t);

}  // namespace sela::cpu
