// Differentiable tensor operations: the engine's public op set.
//
// Each op checks its inputs (device, dtype, shapes — errors name the op and the shapes),
// allocates its output, calls the CPU kernel family in kernels/cpu/, and, when an input
// requires a gradient, records a Node whose fields are the saved tensors its backward needs
// (see the *Backward structs in ops.cpp). Floating ops run in float32 or float64 (float64
// exists for finite-difference gradient checks). Layouts are contiguous NCHW / row-major.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace sela {

// --- elementwise -------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);  // same shape and dtype
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, double factor);
Tensor relu(const Tensor& x);
void add_into(Tensor& destination, const Tensor& source);  // destination += source; no autograd

// --- shape ---------------------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);  // -1 allowed once
Tensor flatten(const Tensor& x);                       // (N, ...) -> (N, rest)
// Along dim 0: (N_i, ...) tensors of one trailing shape, dtype and device -> (sum N_i, ...),
// a copy; and rows [begin, end) of x, a copy. Both differentiable (one batch through a
// network for two losses: sela/trainer.cpp's joint rotation pass).
Tensor concat_rows(const std::vector<Tensor>& parts);
Tensor slice_rows(const Tensor& x, std::int64_t begin, std::int64_t end);

// --- reductions ----------------------------------------------------------------------------
Tensor sum(const Tensor& x);   // all elements -> shape ()
Tensor mean(const Tensor& x);  // all elements -> shape ()
Tensor argmax(const Tensor& x);  // (N, K) -> (N) int64, first maximum; not differentiable

// --- linear algebra ------------------------------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b);  // (m, k) x (k, n) -> (m, n)
// x (N, in), weight (out, in) as in PyTorch, bias (out) or undefined -> (N, out)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// --- convolutional network layers ----------------------------------------------------------
// x (N, C, H, W), weight (O, C, kh, kw), bias (O) or undefined -> (N, O, OH, OW)
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, std::int64_t stride,
              std::int64_t padding);
Tensor max_pool2d(const Tensor& x, std::int64_t kernel, std::int64_t stride,
                  std::int64_t padding = 0);
// x (N, C, H, W); gamma/beta (C) or undefined (affine off); running stats (C) or undefined.
// training: batch statistics, running stats updated in place (momentum as PyTorch).
// eval: running statistics (must be defined).
Tensor batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                    const Tensor& running_mean, const Tensor& running_var, bool training,
                    double momentum, double eps);
// relu(batch_norm2d(...)) as one op: the same values and gradients (bitwise on the CPU,
// where it is that composition; on CUDA one pass with the ReLU fused into the batch norm's
// elementwise pass and its mask into the backward), one tensor and two passes less over
// the activation. Eval mode is the composition.
Tensor batch_norm_relu2d(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                         const Tensor& running_mean, const Tensor& running_var, bool training,
                         double momentum, double eps);
// Training-mode batch_norm2d (or batch_norm_relu2d with `relu`) with the rows in two groups,
// [0, first_rows) and [first_rows, N): each group normalised with its own batch statistics,
// the running statistics updated from the first group, then from the second, as two calls
// on the groups would (same values and gradients up to the order of the gamma/beta sums),
// without copying either group. 1 <= first_rows < N.
Tensor batch_norm2d_grouped(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                            const Tensor& running_mean, const Tensor& running_var,
                            std::int64_t first_rows, bool relu, double momentum, double eps);
// bf16 mixed precision on the GPU: while on, conv2d and linear on float32 CUDA tensors round
// their input and weight to bfloat16, multiply on tensor cores with float32 accumulation
// (cuDNN / cuBLAS), and return float32; their backward does the same with the output
// gradient and returns float32 gradients. Everything else stays float32: the weights the
// optimiser updates (master weights), BatchNorm, the loss. Process-wide, off by default;
// float64 CUDA tensors are never affected. (Activations between layers stay float32: half
// the traffic of PyTorch's autocast is not taken yet.)
// On the CPU the mode is emulated, as the reference of the GPU's (no faster): conv2d and
// linear keep their dtype (float32 or float64) but round to bfloat16 values what the GPU
// rounds: input and weight, the convolution's result (before its bias), and, in the
// backward, the output gradient the products take and the convolutions' gradients; the bias
// and its gradient, and linear's result and gradients, are not rounded (float32 on the GPU).
void set_autocast_bfloat16(bool enabled);
bool autocast_bfloat16();

// Inverted dropout with a counter-based mask: element i is dropped according to
// (seed, offset + i) only. Identity when !training or p == 0.
// device_offset (GPU only, optional): a device int64 the kernel reads the offset from when it
// runs, instead of `offset` (a CUDA graph's refreshed value, engine/cuda_graph.h); it must
// equal `offset` modulo 4 (the kernel's launch shape is computed from `offset`).
Tensor dropout(const Tensor& x, double p, bool training, std::uint64_t seed,
               std::uint64_t offset, const std::int64_t* device_offset = nullptr);
// What an nn Dropout module adds to its offset per call (2^40 counters per call).
inline constexpr std::uint64_t kDropoutOffsetPerCall = std::uint64_t(1) << 40;

// --- losses --------------------------------------------------------------------------------
Tensor log_softmax(const Tensor& x);  // (N, K), along K
// logits (N, K), targets (N) int64 in [0, K) -> mean cross-entropy, shape ()
Tensor cross_entropy(const Tensor& logits, const Tensor& targets);

}  // namespace sela
