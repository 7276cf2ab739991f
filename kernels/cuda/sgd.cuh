// SGD on CUDA with the semantics of torch.optim.SGD — the twin of kernels/cpu/sgd.h (same
// SgdConfig, checks and update, plus the stream), and its fused multi-tensor form.
//
// sgd_update updates one tensor, like the CPU kernel. sgd_update_multi updates a whole list
// of parameter tensors in ONE launch: the optimiser keeps device arrays of the tensors'
// parameter, gradient and momentum-buffer pointers and sizes (built once; parameters do not
// move), so a step costs one launch and no host-to-device copy. Hyper-parameters are
// converted from double to T once on the host, as on the CPU. Results agree with the CPU
// kernel to an ulp or so (nvcc fuses the multiply-adds).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/sgd.h"

namespace sela::cuda {

using SgdConfig = cpu::SgdConfig;

// Updates param (n) in place from grad (n); momentum_buffer (n) as on the CPU.
template <typename T>
void sgd_update(std::int64_t n, T* param, const T* grad, T* momentum_buffer,
                const SgdConfig& config, bool first_step, cudaStream_t stream);

// The same for `tensors` tensors at once. params, grads, momentum_buffers and sizes are
// device arrays of `tensors` entries (momentum_buffers may be nullptr when config.momentum
// is 0); entry k describes a tensor of sizes[k] elements.
template <typename T>
void sgd_update_multi(std::int64_t tensors, T* const* params, const T* const* grads,
                      T* const* momentum_buffers, const std::int64_t* sizes,
                      const SgdConfig& config, bool first_step, cudaStream_t stream);

// destination[0, count) = values[0, count), written by kernels that carry the values in
// their arguments (64 per launch), not by a copy from host memory: queued at once (the
// values are taken when the call returns), and a CUDA graph that captures the call replays
// the same values. For the optimiser's pointer arrays (a few hundred values).
void write_int64_values(const std::int64_t* values, std::int64_t count, std::int64_t* destination,
                        cudaStream_t stream);

}  // namespace sela::cuda
