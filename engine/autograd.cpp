// Implementation of engine/autograd.h.
#include "engine/autograd.h"

#include <unordered_map>
#include <utility>

#include "engine/ops.h"

namespace sela {
namespace {
thread_local bool t_grad_mode = true;
}  // namespace

bool grad_mode_enabled() { return t_grad_mode; }
NoGradGuard::NoGradGuard() : previous_(t_grad_mode) { t_grad_mode = false; }
NoGradGuard::~NoGradGuard() { t_grad_mode = previous_; }

namespace {

// The two overloads of each below share these: a range of input pointers (an
// initializer_list is read in place, so the ops' common path allocates nothing).
bool any_needs_grad(const Tensor* const* begin, const Tensor* const* end) {
  if (!t_grad_mode) return false;
  for (const Tensor* const* it = begin; it != end; ++it) {
    const Tensor* t = *it;
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

void attach_inputs(const Tensor& output, std::shared_ptr<Node> node, const Tensor* const* begin,
                   const Tensor* const* end) {
  for (const Tensor* const* it = begin; it != end; ++it) {
    const Tensor* t = *it;
    if (t == nullptr || !t->defined() || !t->requires_grad()) {
      node->inputs.push_back(nullptr);
    } else if (!t->grad_fn()) {
      node->inputs.push_back(t->impl_ptr());  // a leaf: its gradient accumulates there
    } else {
      // The edge to a non-leaf: its producer and its shape, not its storage.
      auto edge = std::make_shared<TensorImpl>();
      edge->shape = t->shape();
      edge->dtype = t->dtype();
      edge->requires_grad = true;
      edge->grad_fn = t->grad_fn();
      node->inputs.push_back(std::move(edge));
    }
  }
  output.impl_ptr()->grad_fn = std::move(node);
  output.impl_ptr()->requires_grad = true;
}

}  // namespace

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  return any_needs_grad(inputs.begin(), inputs.end());
}

bool needs_grad(const std::vector<const Tensor*>& inputs) {
  return any_needs_grad(inputs.data(), inputs.data() + inputs.size());
}

void attach_node(const Tensor& output, std::shared_ptr<Node> node,
                 std::initializer_list<const Tensor*> inputs) {
  attach_inputs(output, std::move(node), inputs.begin(), inputs.end());
}

void attach_node(const Tensor& output, std::shared_ptr<Node> node,
                 const std::vector<const Tensor*>& inputs) {
  attach_inputs(output, std::move(node), inputs.data(), inputs.data() + inputs.size());
}

namespace {

// Adds `grad` into a leaf's accumulated gradient. A gradient tensor that nobody else holds
// is adopted as is; one that may alias another tensor is copied first.
// The backward seed of a scalar loss is a host number even when the loss lives on a GPU
// (engine/ops_cuda.h: no round trip for the scalar head of the graph), so a gradient may
// reach a leaf or meet another gradient on the other device: it moves to the tensor's.
Tensor on_device_of(const TensorImpl& tensor, Tensor grad) {
  const Device device = tensor.storage->device();
  return grad.device() == device ? grad : grad.to(device);
}

void accumulate_leaf(TensorImpl& leaf, Tensor grad) {
  grad = on_device_of(leaf, std::move(grad));
  if (!leaf.grad) {
    bool exclusive = grad.impl_ptr().use_count() == 1 && grad.impl_ptr()->storage.use_count() == 1;
    leaf.grad = exclusive ? grad.detach().impl_ptr() : grad.clone().impl_ptr();
    return;
  }
  Tensor existing(leaf.grad);
  add_into(existing, grad);
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_root) {
  SELA_CHECK(root.requires_grad(), "backward",
             "the tensor does not require grad (no parameter or input with requires_grad "
             "took part, or it was computed under NoGradGuard)");
  Tensor seed = grad_root;
  if (!seed.defined()) {
    SELA_CHECK(root.numel() == 1, "backward",
               "backward() without a gradient needs a scalar, got " << root.describe());
    seed = Tensor::full(root.shape(), 1.0, root.dtype());
  }
  SELA_CHECK(seed.shape() == root.shape(), "backward",
             "gradient " << seed.describe() << " does not match " << root.describe());
  NoGradGuard no_grad;  // backward computations are not recorded

  if (!root.grad_fn()) {  // a leaf: its gradient is the seed
    accumulate_leaf(*root.impl_ptr(), seed.clone());
    return;
  }
  // Count, for every node, how many edges from other nodes point at it.
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack{root.grad_fn().get()};
  dependencies[root.grad_fn().get()] = 0;
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    // Refused here, before any gradient is accumulated, not when the node's turn comes.
    SELA_CHECK(!node->released, "backward",
               "the graph through " << node->name() << " was already used by a backward, "
                                    << "which freed its saved tensors; run the forward again "
                                       "for a second backward");
    for (const auto& input : node->inputs) {
      if (!input || !input->grad_fn) continue;
      Node* next = input->grad_fn.get();
      if (dependencies.count(next) == 0) {
        dependencies[next] = 0;
        stack.push_back(next);
      }
      dependencies[next]++;
    }
  }
  std::unordered_map<Node*, Tensor> pending;  // summed gradient of each node's output
  pending[root.grad_fn().get()] = seed;
  // Owning pointers: a Node whose edges were dropped may be held by nothing else, and is
  // destroyed (saved tensors freed) when its own turn is over. No Node is created during
  // backward (NoGradGuard), so the raw-pointer keys above cannot be reused.
  std::vector<std::shared_ptr<Node>> ready{root.grad_fn()};
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.back();
    ready.pop_back();
    // A node all of whose consumers sent no gradient still releases its inputs.
    std::vector<Tensor> grads(node->inputs.size());
    auto own = pending.find(node.get());
    if (own != pending.end()) {
      Tensor grad_output = own->second;
      pending.erase(own);
      grads = node->backward(grad_output);
      SELA_CHECK(grads.size() == node->inputs.size(), "backward",
                 node->name() << " returned " << grads.size() << " gradients for "
                              << node->inputs.size() << " inputs");
    }
    for (std::size_t i = 0; i < grads.size(); ++i) {
      const auto& input = node->inputs[i];
      if (!input) continue;
      if (grads[i].defined()) {
        SELA_CHECK(grads[i].shape() == input->shape, "backward",
                   node->name() << " produced gradient " << grads[i].describe()
                                << " for input " << i << " of shape "
                                << shape_str(input->shape));
      }
      if (!input->grad_fn) {
        // Moved, so that a fresh gradient nobody else holds is adopted, not copied.
        if (grads[i].defined()) accumulate_leaf(*input, std::move(grads[i]));
        continue;
      }
      Node* next = input->grad_fn.get();
      if (grads[i].defined()) {
        auto it = pending.find(next);
        if (it == pending.end()) {
          pending.emplace(next, grads[i]);
        } else {
          Tensor sum_so_far = it->second, more = grads[i];
          if (sum_so_far.device() != more.device()) {  // a host scalar meets a device one
            if (sum_so_far.device().is_cpu()) {
              sum_so_far = sum_so_far.to(more.device());
            } else {
              more = more.to(sum_so_far.device());
            }
          }
          it->second = add(sum_so_far, more);
        }
      }
      if (--dependencies[next] == 0) ready.push_back(input->grad_fn);
    }
    node->inputs.clear();  // frees what only this node held (see "Memory" in the header)
    node->inputs.shrink_to_fit();
    node->released = true;
  }
}

}  // namespace sela
