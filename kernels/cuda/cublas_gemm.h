// cuBLAS matrix multiply: the twin of kernels/cpu/gemm.h's `gemm` (same arguments, same
// row-major meaning, plus the stream), used by the linear layers on the GPU.
//
// Row-major through a column-major library: a row-major (r, c) matrix with row stride ld is,
// byte for byte, the column-major (c, r) matrix with leading dimension ld, i.e. its
// transpose. So C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: cuBLAS is called with
// the operands swapped (B first), m and n swapped, and the same transpose flags and leading
// dimensions. No copies, no extra transposes.
//
// Math mode for float (double always computes in double): matmul_tf32() false (the default,
// as PyTorch's torch.backends.cuda.matmul.allow_tf32 = False) selects CUBLAS_DEFAULT_MATH,
// true fp32 multiply-adds; true selects CUBLAS_TF32_TENSOR_OP_MATH, TF32 tensor cores
// (inputs rounded to a 10-bit mantissa, fp32 accumulation: ~1e-3 relative error per product).
//
// Handles: one cublasHandle per device, created on first use and never destroyed, guarded by
// a mutex per device (cuBLAS handles are not safe to share between host threads otherwise).
// On the device's own stream (device_stream) cuBLAS uses a 32 MiB workspace taken once from
// the caching allocator (cuBLAS's recommended size for Hopper); on any other stream it uses
// its own default workspace pool (cublasSetStream resets to it), so that two streams never
// share one workspace.
//
// Plain host header (no device code): usable from .cpp files compiled by the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace sela::cuda {

// Row-major C(m,n) = alpha * op(A)(m,k) * op(B)(k,n) + beta * C, op = transpose or not.
// lda/ldb/ldc are row strides as stored (checked exactly as the CPU gemm checks them, before
// any CUDA call). beta == 0 means C is not read (it may hold NaN); k == 0 gives C = beta * C.
// Pointers are device pointers on the stream's device; the call queues the work on `stream`
// and returns without waiting. The stream's device is made current during the call.
template <typename T>  // float, double
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
          T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc, cudaStream_t stream);

// The same with bfloat16 operands (their 16 bits, std::uint16_t: kernels/cpu/bfloat16.h) and
// a float32 C: cublasGemmEx with CUDA_R_16BF inputs, CUDA_R_32F output and
// CUBLAS_COMPUTE_32F, i.e. tensor cores with float32 accumulation. Every product of two
// bfloat16 values is exact in float32; the result differs from a float64 product of the
// same bfloat16 inputs by float32 summation only. For the bf16 mixed-precision mode.
void gemm_bfloat16(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                   std::int64_t k, float alpha, const std::uint16_t* a, std::int64_t lda,
                   const std::uint16_t* b, std::int64_t ldb, float beta, float* c,
                   std::int64_t ldc, cudaStream_t stream);

// fp32 matmul math mode (process-wide; read on every call). false (default): CUBLAS_DEFAULT_MATH,
// true fp32. true: TF32 tensor cores.
void set_matmul_tf32(bool allow);
bool matmul_tf32();

// The cuBLAS library loaded at run time, e.g. "cuBLAS 13.0.2" (cublasGetProperty: no GPU needed).
std::string cublas_version_text();

}  // namespace sela::cuda
