// The CUDA half of the engine's ops (engine/ops.h): the kernel calls of every op and of its
// backward, on tensors that live on cuda:N.
//
// Why a separate layer: engine/ops.cpp keeps one body per op — checks, output allocation,
// the autograd Node — and branches once on the device at the point where the CPU path calls
// its kernel; the CUDA branch calls the function of the same name here. These functions
// know nothing about autograd: their inputs are already checked (defined, float32/float64
// where floating, one device, shapes matching) and their outputs are allocated by the
// caller on the same device; they queue kernels on the device's one stream
// (kernels/cuda/stream.h) and return without waiting for the GPU. Nothing here synchronises
// the host.
//
// Errors that only the GPU can see (a cross-entropy target outside [0, K)) are recorded on
// the device and raised as sela::Error at the next host wait on that device (item(),
// to_vector(), a download, synchronize()): raise_deferred_errors() is called there.
//
// In a build without the CUDA backend (SELA_HAVE_CUDA undefined) no CUDA tensor can exist
// (Storage refuses them), ops.cpp wraps each call in `if constexpr (cuda_ops::kAvailable)`,
// and none of these functions is defined.
#pragma once

#include <cstdint>

#include "engine/tensor.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/pool.h"

namespace sela::cuda_ops {

#if defined(SELA_HAVE_CUDA)
inline constexpr bool kAvailable = true;
#else
inline constexpr bool kAvailable = false;
#endif

// --- plumbing ----------------------------------------------------------------------------
// Raises (once) the first device-side error recorded since the last call, for `device`;
// call only after the host has waited for that device's stream.
void raise_deferred_errors(int device);

// --- elementwise (a, b, out: same shape) ---------------------------------------------------
void add(const Tensor& a, const Tensor& b, const Tensor& out);
void mul(const Tensor& a, const Tensor& b, const Tensor& out);
void scale(const Tensor& a, double factor, const Tensor& out);
void add_into(const Tensor& destination, const Tensor& source);  // destination += source
void relu_forward(const Tensor& x, const Tensor& out);
void relu_backward(const Tensor& output, const Tensor& grad, const Tensor& grad_x);

// --- reductions ----------------------------------------------------------------------------
// out () = factor * sum of x, in the order of kernels/cuda/reduce.cuh (deterministic).
void sum(const Tensor& x, double factor, const Tensor& out);
// out[i] = factor * value for a 0-d device tensor `value` (broadcast without a host read).
void broadcast_scalar(const Tensor& value, double factor, const Tensor& out);
void argmax_rows(const Tensor& x, const Tensor& out);  // x (N, K) -> out (N) int64

// --- linear algebra ------------------------------------------------------------------------
// c (m, n) = op(a) op(b), contiguous row-major operands (cuBLAS, math mode as configured).
void matmul(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
            const Tensor& a, const Tensor& b, const Tensor& c);
void add_row_bias(const Tensor& bias, const Tensor& out);  // out (rows, cols) += bias (cols)
void sum_rows(const Tensor& x, const Tensor& out);         // out (cols) = column sums of x

// --- convolution and pooling (shapes as the CPU kernels'; bias / grad_bias may be undefined)
void conv2d_forward(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& weight,
                    const Tensor& bias, const Tensor& out);
void conv2d_backward_input(const cpu::Conv2dShape& s, const Tensor& grad, const Tensor& weight,
                           const Tensor& grad_x);
void conv2d_backward_weight(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& grad,
                            const Tensor& grad_weight, const Tensor& grad_bias);
void max_pool2d_forward(const cpu::Pool2dShape& s, const Tensor& x, const Tensor& out,
                        const Tensor& argmax);
void max_pool2d_backward(const cpu::Pool2dShape& s, const Tensor& grad, const Tensor& argmax,
                         const Tensor& grad_x);

// --- batch normalisation (x (N, C, spatial); optional tensors may be undefined) ------------
// With `relu`, out = max(0, batch norm) in the same pass (batch_norm_relu2d).
void batch_norm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                              double momentum, const Tensor& running_mean,
                              const Tensor& running_var, const Tensor& out, const Tensor& save_mean,
                              const Tensor& save_invstd, bool relu = false);
void batch_norm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             const Tensor& running_mean, const Tensor& running_var, double eps,
                             const Tensor& out);
// With relu_output defined (the fused forward's out), grad is masked where it is not > 0.
void batch_norm_backward_train(const Tensor& x, const Tensor& grad, const Tensor& gamma,
                               const Tensor& save_mean, const Tensor& save_invstd,
                               const Tensor& grad_x, const Tensor& grad_gamma,
                               const Tensor& grad_beta, const Tensor& relu_output = Tensor());
void batch_norm_backward_eval(const Tensor& grad, const Tensor& gamma, const Tensor& running_var,
                              double eps, const Tensor& grad_x);
// dgamma = sum dy (x - running_mean) / sqrt(running_var + eps), dbeta = sum dy, per channel
// (either output may be undefined).
void batch_norm_eval_parameter_grads(const Tensor& x, const Tensor& grad,
                                     const Tensor& running_mean, const Tensor& running_var,
                                     double eps, const Tensor& grad_gamma, const Tensor& grad_beta);

// --- bf16 mixed precision (autocast_bfloat16, engine/ops.h) --------------------------------
// bfloat16 tensors (DType::bf16) hold the 16 bits of each value (kernels/cpu/bfloat16.h).
Tensor to_bfloat16(const Tensor& x);  // float32 -> a new bfloat16 tensor (round to nearest even)
// out (N, O, OH, OW) float32 = conv(x, weight) (both bfloat16, float math) + bias (float32 or
// undefined).
void conv2d_forward_bfloat16(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& weight,
                             const Tensor& bias, const Tensor& out);
// From the float32 gradient of the output: grad_x, grad_w, grad_b in float32 (each may be
// undefined: not computed); x and weight are the forward's bfloat16 operands.
void conv2d_backward_bfloat16(const cpu::Conv2dShape& s, const Tensor& x, const Tensor& weight,
                              const Tensor& grad, const Tensor& grad_x, const Tensor& grad_w,
                              const Tensor& grad_b);
// out (N, out) float32 = x (N, in) weight (out, in)^T + bias, x and weight bfloat16.
void linear_forward_bfloat16(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             const Tensor& out);
void linear_backward_bfloat16(const Tensor& x, const Tensor& weight, const Tensor& grad,
                              const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b);

// --- dropout (the counter-based mask of kernels/cuda/dropout.cuh, equal to the CPU's) -------
// device_offset: nullptr, or a device int64 read as the offset when the kernel runs.
void dropout_forward(const Tensor& x, double p, std::uint64_t seed, std::uint64_t offset,
                     const std::int64_t* device_offset, const Tensor& out, const Tensor& mask);
void dropout_backward(const Tensor& grad, const Tensor& mask, double p, const Tensor& grad_x);

// --- losses --------------------------------------------------------------------------------
void log_softmax_forward(const Tensor& x, const Tensor& out);
void log_softmax_backward(const Tensor& output, const Tensor& grad, const Tensor& grad_x);
// loss () = mean cross-entropy, log_probs (N, K) written; an invalid target makes the loss
// NaN and is raised at the next host wait (raise_deferred_errors).
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& log_probs,
                           const Tensor& loss);
// grad_logits = grad_loss / N * (softmax - onehot): grad_loss from the host, or a 0-d tensor
// on the device (then multiplied on the device, no host read).
void cross_entropy_backward(const Tensor& log_probs, const Tensor& targets, double grad_loss,
                            const Tensor& grad_logits);
void cross_entropy_backward(const Tensor& log_probs, const Tensor& targets, const Tensor& grad_loss,
                            const Tensor& grad_logits);

}  // namespace sela::cuda_ops
