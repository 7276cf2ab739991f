// Implementation of sela/device_choice.h.
#include "sela/device_choice.h"

#include "engine/error.h"

#if defined(SELA_HAVE_CUDA)
#include "kernels/cuda/device.cuh"
#endif

namespace sela {

Device resolve_device(const std::string& text) {
  if (text != "auto") return Device::parse(text);
#if defined(SELA_HAVE_CUDA)
  if (cuda::device_count() > 0) return Device::cuda(0);
#endif
  return Device::cpu();
}

std::string checked_device_description(Device device, const std::string& command) {
  if (device.is_cpu()) return "cpu";
#if defined(SELA_HAVE_CUDA)
  const int count = cuda::device_count();
  SELA_CHECK(device.index < count, command,
             "--device " << device.str() << " is not available: "
                         << (count == 0 ? "no CUDA device (" + cuda::no_device_reason() + ")"
                                        : std::to_string(count) + " CUDA device(s)")
                         << "; use --device cpu");
  return cuda::device_banner(device.index);
#else
  SELA_FAIL_HINT(command,
                 "--device " << device.str() << " is not available: this build has no CUDA backend",
                 "configure with -DSELA_CUDA=ON on a machine with nvcc, or use --device cpu");
#endif
}

}  // namespace sela
