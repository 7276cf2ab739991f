// cuBLAS GEMM (see cublas_gemm.h). Host code, compiled by the host compiler.
//
// Per device: the handle, whether it is set up for the device's own stream (then the 32 MiB
// workspace from the caching allocator is attached: cublasSetStream resets the workspace to
// cuBLAS's default pool, so the workspace is attached again after every stream change), and
// the math mode last set. In the steady state (device stream, same math mode) a call is a
// mutex lock and the cublas<t>gemm_64 launch: no cuBLAS set-up calls.
//
// k == 0 is handled here (C = beta * C; zeros when beta == 0, without reading C) so that the
// result never depends on how cuBLAS treats an empty inner dimension.
#include "kernels/cuda/cublas_gemm.h"

#include <cublas_v2.h>
#include <library_types.h>

#include <atomic>
#include <mutex>
#include <type_traits>

#include "engine/error.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_allocator.h"
#include "kernels/cuda/stream.h"

namespace sela::cuda {

// How check_status reports cuBLAS statuses (this file is the only user of cuBLAS).
template <>
struct StatusTraits<cublasStatus_t> {
  static constexpr const char* library = "cuBLAS";
  static bool ok(cublasStatus_t status) { return status == CUBLAS_STATUS_SUCCESS; }
  static const char* name(cublasStatus_t status) { return cublasGetStatusName(status); }
  static const char* text(cublasStatus_t status) { return cublasGetStatusString(status); }
  static const char* hint(cublasStatus_t status) {
    switch (status) {
      case CUBLAS_STATUS_NOT_INITIALIZED:
        return "cuBLAS could not start: check that a GPU is usable (nvidia-smi) and that the "
               "driver is as new as the CUDA toolkit";
      case CUBLAS_STATUS_ALLOC_FAILED:
        return "the GPU is out of memory: reduce the batch size or the model width";
      case CUBLAS_STATUS_ARCH_MISMATCH:
        return "this GPU lacks a feature the call needs (e.g. TF32 needs compute capability 8.0)";
      case CUBLAS_STATUS_EXECUTION_FAILED:
        return "a cuBLAS kernel failed (often an earlier fault reported late); rerun with "
               "CUDA_LAUNCH_BLOCKING=1";
      case CUBLAS_STATUS_INVALID_VALUE:
        return "an argument is out of range for cuBLAS (sizes, leading dimensions)";
      default:
        return "";
    }
  }
};

}  // namespace sela::cuda

#define SELA_CUBLAS_CHECK(statement, op) \
  ::sela::cuda::check_status((statement), (op), #statement, __FILE__, __LINE__)

namespace sela::cuda {
namespace {

// cuBLAS's recommended workspace for Hopper (4 MiB suffices before it).
constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;

std::atomic<bool> tf32_matmul{false};

struct CublasDevice {
  std::mutex mutex;
  cublasHandle_t handle = nullptr;
  bool on_device_stream = false;  // stream = device_stream(device), own workspace attached
  void* workspace = nullptr;      // kWorkspaceBytes from device_allocate, kept for the process
  int math_mode = -1;             // cublasMath_t last set, -1 = none yet
};

CublasDevice& cublas_device(int device) {
  static CublasDevice* devices = new CublasDevice[kMaxDevices];  // never destroyed (see header)
  return devices[device];
}

// Creates the handle if needed and points it at `stream` with the right workspace and math
// mode. The device is current and state.mutex is held.
void prepare_handle(CublasDevice& state, int device, cudaStream_t stream, cublasMath_t math) {
  if (state.handle == nullptr) {
    SELA_CUBLAS_CHECK(cublasCreate(&state.handle), "gemm");
    state.on_device_stream = false;
    state.math_mode = -1;
  }
  const bool device_stream_given = stream != nullptr && stream == created_device_stream(device);
  if (!device_stream_given || !state.on_device_stream) {
    SELA_CUBLAS_CHECK(cublasSetStream(state.handle, stream), "gemm");  // resets the workspace
    state.on_device_stream = false;
    if (device_stream_given) {
      if (state.workspace == nullptr)
        state.workspace = device_allocate(kWorkspaceBytes, device, "cuBLAS workspace");
      SELA_CUBLAS_CHECK(cublasSetWorkspace(state.handle, state.workspace, kWorkspaceBytes), "gemm");
      state.on_device_stream = true;
    }
  }
  if (state.math_mode != static_cast<int>(math)) {
    SELA_CUBLAS_CHECK(cublasSetMathMode(state.handle, math), "gemm");
    state.math_mode = static_cast<int>(math);
  }
}

cublasStatus_t gemm_call(cublasHandle_t handle, cublasOperation_t op_first,
                         cublasOperation_t op_second, std::int64_t rows, std::int64_t cols,
                         std::int64_t inner, const float* alpha, const float* first,
                         std::int64_t ld_first, const float* second, std::int64_t ld_second,
                         const float* beta, float* out, std::int64_t ld_out) {
  return cublasSgemm_64(handle, op_first, op_second, rows, cols, inner, alpha, first, ld_first,
                        second, ld_second, beta, out, ld_out);
}
cublasStatus_t gemm_call(cublasHandle_t handle, cublasOperation_t op_first,
                         cublasOperation_t op_second, std::int64_t rows, std::int64_t cols,
                         std::int64_t inner, const double* alpha, const double* first,
                         std::int64_t ld_first, const double* second, std::int64_t ld_second,
                         const double* beta, double* out, std::int64_t ld_out) {
  return cublasDgemm_64(handle, op_first, op_second, rows, cols, inner, alpha, first, ld_first,
                        second, ld_second, beta, out, ld_out);
}

// Column-major out(rows, cols) = alpha * out (in place: geam with A = B = C).
cublasStatus_t scale_in_place(cublasHandle_t handle, std::int64_t rows, std::int64_t cols,
                              const float* alpha, float* out, std::int64_t ld) {
  const float zero = 0.0f;
  return cublasSgeam_64(handle, CUBLAS_OP_N, CUBLAS_OP_N, rows, cols, alpha, out, ld, &zero, out,
                        ld, out, ld);
}
cublasStatus_t scale_in_place(cublasHandle_t handle, std::int64_t rows, std::int64_t cols,
                              const double* alpha, double* out, std::int64_t ld) {
  const double zero = 0.0;
  return cublasDgeam_64(handle, CUBLAS_OP_N, CUBLAS_OP_N, rows, cols, alpha, out, ld, &zero, out,
                        ld, out, ld);
}

}  // namespace

template <typename T>
void gemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
          T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc, cudaStream_t stream) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "gemm is instantiated for float and double");
  cpu::check_gemm_arguments("gemm (cuBLAS)", transpose_a, transpose_b, m, n, k, a, lda, b, ldb, c,
                            ldc);
  if (m == 0 || n == 0) return;
  const int device = stream_device(stream);
  SELA_CHECK(device >= 0 && device < kMaxDevices, "gemm (cuBLAS)",
             "the stream's device cuda:" << device << " is beyond the " << kMaxDevices
                                         << " devices this build keeps handles for");
  DeviceGuard guard(device);
  CublasDevice& state = cublas_device(device);
  std::lock_guard<std::mutex> lock(state.mutex);
  const cublasMath_t math = std::is_same<T, float>::value && matmul_tf32()
                                ? CUBLAS_TF32_TENSOR_OP_MATH
                                : CUBLAS_DEFAULT_MATH;
  prepare_handle(state, device, stream, math);

  // Row-major C (m, n) is column-major C^T (n, m): C^T = op(B)^T op(A)^T.
  if (k == 0) {
    if (beta == T(0)) {
      SELA_CUDA_CHECK(cudaMemset2DAsync(c, static_cast<std::size_t>(ldc) * sizeof(T), 0,
                                        static_cast<std::size_t>(n) * sizeof(T),
                                        static_cast<std::size_t>(m), stream));
    } else {
      SELA_CUBLAS_CHECK(scale_in_place(state.handle, n, m, &beta, c, ldc), "gemm (cuBLAS)");
    }
    return;
  }
  const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  SELA_CUBLAS_CHECK(
      gemm_call(state.handle, op_b, op_a, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc),
      "gemm (cuBLAS)");
}

template void gemm<float>(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                          std::int64_t, const float*, std::int64_t, float, float*, std::int64_t,
                          cudaStream_t);
template void gemm<double>(bool, bool, std::int64_t, std::int64_t, std::int64_t, double,
                           const double*, std::int64_t, const double*, std::int64_t, double,
                           double*, std::int64_t, cudaStream_t);

void gemm_bfloat16(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n,
                   std::int64_t k, float alpha, const std::uint16_t* a, std::int64_t lda,
                   const std::uint16_t* b, std::int64_t ldb, float beta, float* c,
                   std::int64_t ldc, cudaStream_t stream) {
  const char* op = "gemm_bfloat16 (cuBLAS)";
  cpu::check_gemm_arguments(op, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, c, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C: the float path does exactly that
    gemm<float>(transpose_a, transpose_b, m, n, 0, alpha, nullptr, lda, nullptr, ldb, beta, c,
                ldc, stream);
    return;
  }
  const int device = stream_device(stream);
  SELA_CHECK(device >= 0 && device < kMaxDevices, op,
             "the stream's device cuda:" << device << " is beyond the " << kMaxDevices
                                         << " devices this build keeps handles for");
  DeviceGuard guard(device);
  CublasDevice& state = cublas_device(device);
  std::lock_guard<std::mutex> lock(state.mutex);
  prepare_handle(state, device, stream, CUBLAS_DEFAULT_MATH);
  // Row-major C (m, n) is column-major C^T (n, m): C^T = op(B)^T op(A)^T (see the header).
  const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  SELA_CUBLAS_CHECK(cublasGemmEx_64(state.handle, op_b, op_a, n, m, k, &alpha, b, CUDA_R_16BF,
                                    ldb, a, CUDA_R_16BF, lda, &beta, c, CUDA_R_32F, ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                    op);
}

void set_matmul_tf32(bool allow) { tf32_matmul.store(allow, std::memory_order_relaxed); }
bool matmul_tf32() { return tf32_matmul.load(std::memory_order_relaxed); }

std::string cublas_version_text() {
  int major = 0, minor = 0, patch = 0;
  SELA_CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &major), "cublas_version_text");
  SELA_CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &minor), "cublas_version_text");
  SELA_CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &patch), "cublas_version_text");
  return "cuBLAS " + std::to_string(major) + "." + std::to_string(minor) + "." +
         std::to_string(patch);
}

}  // namespace sela::cuda
