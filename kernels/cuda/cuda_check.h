// Error checks for CUDA calls and kernel launches, all made from one template.
//
// check_status<Status>() turns a failed status of any GPU library into a sela::Error that
// records the library, the status name and text, the statement as written, the source
// file and line, and the current device. What differs between libraries (what "success"
// is, how a status is named and described, what to suggest) lives in a StatusTraits
// specialisation; this file provides the one for the CUDA runtime (cudaError_t). A cuBLAS
// or cuDNN wrapper adds its own specialisation next to its code and defines its macro the
// same way, e.g.
//   template <> struct StatusTraits<cublasStatus_t> { ... };
//   #define SELA_CUBLAS_CHECK(statement)
//       ::sela::cuda::check_status((statement), "cublas", #statement, __FILE__, __LINE__)
//
//   SELA_CUDA_CHECK(cudaMemcpyAsync(...));     throws on failure
//   SELA_CUDA_CHECK_LAUNCH("relu_forward");    after every kernel launch, names the op
//   SELA_CUDA_WARN(cudaFree(p));               for destructors: prints, never throws
//
// Plain host header (no device code): usable from .cpp files compiled by the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include "engine/error.h"

namespace sela::cuda {

// What check_status needs to know about a library's status type.
template <typename Status>
struct StatusTraits;

template <>
struct StatusTraits<cudaError_t> {
  static constexpr const char* library = "CUDA";
  static bool ok(cudaError_t status) { return status == cudaSuccess; }
  static const char* name(cudaError_t status) { return cudaGetErrorName(status); }
  static const char* text(cudaError_t status) { return cudaGetErrorString(status); }
  static const char* hint(cudaError_t status);  // "" when there is nothing useful to say
};

namespace detail {

// Formats and throws the error (out of line, so a check costs a compare at the call site).
// op is what the caller was doing ("cuda" for a plain call, the kernel's name after a
// launch); the current device is looked up here, without throwing.
[[noreturn]] void throw_status_error(const char* library, long code, const char* name,
                                     const char* text, const char* hint, const char* op,
                                     const char* statement, const char* file, int line);

// Prints the same message to stderr instead of throwing (destructors, cleanup paths).
void warn_status_error(const char* library, long code, const char* name, const char* text,
                       const char* statement, const char* file, int line) noexcept;

}  // namespace detail

template <typename Status>
inline void check_status(Status status, const char* op, const char* statement, const char* file,
                         int line) {
  using Traits = StatusTraits<Status>;
  if (Traits::ok(status)) return;
  detail::throw_status_error(Traits::library, static_cast<long>(status), Traits::name(status),
                             Traits::text(status), Traits::hint(status), op, statement, file, line);
}

template <typename Status>
inline void warn_status(Status status, const char* statement, const char* file, int line) noexcept {
  using Traits = StatusTraits<Status>;
  if (Traits::ok(status)) return;
  detail::warn_status_error(Traits::library, static_cast<long>(status), Traits::name(status),
                            Traits::text(status), statement, file, line);
}

}  // namespace sela::cuda

#define SELA_CUDA_CHECK(statement) \
  ::sela::cuda::check_status((statement), "cuda", #statement, __FILE__, __LINE__)

// The launch error of the kernel just launched (bad configuration, no kernel image for this
// GPU, ...) or an earlier asynchronous failure reported now; op names the kernel family.
#define SELA_CUDA_CHECK_LAUNCH(op) \
  ::sela::cuda::check_status(cudaGetLastError(), (op), "kernel launch", __FILE__, __LINE__)

#define SELA_CUDA_WARN(statement) \
  ::sela::cuda::warn_status((statement), #statement, __FILE__, __LINE__)
