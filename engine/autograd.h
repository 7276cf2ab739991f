// Reverse-mode automatic differentiation on a dynamic tape.
//
// Every differentiable op (engine/ops.cpp) that sees an input requiring a gradient (and
// gradient mode on) creates a Node subclass holding exactly what its backward needs as
// named fields — its saved-tensor context — and records the op's inputs as edges. The
// output tensor points at the Node through grad_fn, so the graph is owned by the tensors
// that came out of it and disappears with them.
//
// run_backward() orders the Nodes reachable from the root topologically, feeds each one
// the sum of the gradients its output received, and accumulates leaf gradients into
// TensorImpl::grad (summing over repeated backward calls, as PyTorch does).
//
// Memory (what a training step holds at its peak):
//   * an edge to a non-leaf input holds that input's Node, its shape and dtype, never its
//     storage: an intermediate tensor that no backward needs (a BatchNorm output feeding a
//     ReLU, which saves only its own output) is freed as soon as the forward moves on;
//   * backward frees the graph as it goes: once a Node's backward has run, its edges are
//     dropped, and a Node nobody else holds is destroyed with its saved tensors (a Node
//     whose output tensor is still held, e.g. logits kept after the loss, keeps its own
//     saved tensors until that tensor goes). Any second backward through a graph is
//     refused with a message before it changes any gradient (PyTorch refuses it only where
//     saved tensors were freed); run the forward again instead.
#pragma once

#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace sela {

struct Node {
  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // Returns one gradient per entry of `inputs` (an undefined Tensor where none flows).
  virtual std::vector<Tensor> backward(const Tensor& grad_output) = 0;

  // Edges to the op's tensor inputs, one per input (null where no gradient flows): a leaf's
  // own TensorImpl (its gradient accumulates there), or for a non-leaf a storage-less
  // TensorImpl with the input's shape, dtype and grad_fn (see "Memory" above).
  std::vector<std::shared_ptr<TensorImpl>> inputs;
  bool released = false;  // backward has run and the edges were dropped
};

// Gradient recording is on by default; NoGradGuard turns it off in its scope (per thread).
bool grad_mode_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when an op over these inputs must record a Node.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<const Tensor*>& inputs);  // for a variable count

// Connects `output` to `node`: records the inputs as edges and marks the output as
// requiring grad. Call only when needs_grad() said so.
void attach_node(const Tensor& output, std::shared_ptr<Node> node,
                 std::initializer_list<const Tensor*> inputs);
void attach_node(const Tensor& output, std::shared_ptr<Node> node,
                 const std::vector<const Tensor*>& inputs);

void run_backward(const Tensor& root, const Tensor& grad_root);

}  // namespace sela
