// The out-of-line half of cuda_check.h: message formatting and the hints for CUDA runtime
// statuses. Host code, compiled by the host compiler.
#include "kernels/cuda/cuda_check.h"

#include <cstdio>
#include <sstream>

namespace sela::cuda {

const char* StatusTraits<cudaError_t>::hint(cudaError_t status) {
  switch (status) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return "no usable GPU here: check nvidia-smi and the driver, or run on the CPU";
    case cudaErrorMemoryAllocation:
      return "the GPU is out of memory: reduce the batch size or free other work on the GPU";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return "the kernels were not compiled for this GPU: reconfigure with "
             "SELA_CUDA_ARCHITECTURES set to its compute capability (e.g. 90 for H100)";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
      return "a kernel touched memory it does not own (often an earlier one: errors are "
             "reported asynchronously); rerun with CUDA_LAUNCH_BLOCKING=1 to find it";
    case cudaErrorInvalidConfiguration:
      return "the launch configuration (grid, block or shared memory) is invalid for this GPU";
    default:
      return "";
  }
}

namespace detail {
namespace {

std::string describe(const char* library, long code, const char* name, const char* text,
                     const char* statement) {
  int device = -1;
  // Looked up without a check: the device query itself may fail in a broken context.
  const bool have_device = cudaGetDevice(&device) == cudaSuccess;
  std::ostringstream out;
  out << library << " error " << (name != nullptr ? name : "?") << " (" << code
      << "): " << (text != nullptr ? text : "?") << " in `" << statement << "`";
  if (have_device) out << " on cuda:" << device;
  return out.str();
}

}  // namespace

void throw_status_error(const char* library, long code, const char* name, const char* text,
                        const char* hint, const char* op, const char* statement, const char* file,
                        int line) {
  throw ::sela::Error(op, describe(library, code, name, text, statement), file, line,
                      hint != nullptr ? hint : "");
}

void warn_status_error(const char* library, long code, const char* name, const char* text,
                       const char* statement, const char* file, int line) noexcept {
  try {
    const std::string message = describe(library, code, name, text, statement);
    std::fprintf(stderr, "warning: %s [%s:%d]\n", message.c_str(), file, line);
  } catch (...) {
    std::fprintf(stderr, "warning: %s error %ld in `%s` [%s:%d]\n", library, code, statement, file,
                 line);
  }
}

}  // namespace detail
}  // namespace sela::cuda
