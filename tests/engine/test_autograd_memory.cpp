// What the autograd graph keeps alive (engine/autograd.h, "Memory"), measured with the host
// allocator's current-bytes counter on 4 MiB tensors (1 << 20 floats), so that the few
// small allocations of the ops themselves cannot hide or fake a tensor:
//   * an intermediate that no backward needs is freed when the forward drops it (an edge
//     does not hold its input's storage);
//   * after backward, with the loss still alive, the saved tensors of the graph are freed
//     (backward releases the graph as it goes);
//   * the gradients are unchanged by this (a chain whose result is known in closed form);
//   * a second backward through a released graph is refused with a message saying what to do.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"

using namespace sela;

namespace {

constexpr std::int64_t kCount = 1 << 20;
constexpr double kTensorBytes = 4.0 * kCount;

double current_bytes() { return static_cast<double>(host_memory_stats().current_bytes); }

Tensor ramp_leaf() {  // values -0.5 .. 0.5: about half the ReLUs pass
  std::vector<float> values(kCount);
  for (std::int64_t i = 0; i < kCount; ++i)
    values[static_cast<std::size_t>(i)] = static_cast<float>(i) / kCount - 0.5f;
  Tensor x = Tensor::from_vector(values, {kCount});
  x.set_requires_grad(true);
  return x;
}

// sum(relu(relu(...relu(2 x)...))) with `depth` ReLUs; only the loss leaves this function,
// so every intermediate is held by the graph alone.
Tensor relu_chain_loss(const Tensor& x, int depth) {
  Tensor h = scale(x, 2.0);
  for (int i = 0; i < depth; ++i) h = relu(h);
  return sum(h);
}

}  // namespace

TEST_CASE("an intermediate no backward needs is freed when the forward drops it") {
  Tensor x = ramp_leaf();
  const double before = current_bytes();
  Tensor out;
  {
    Tensor doubled = scale(x, 2.0);  // scale's backward saves nothing
    out = relu(doubled);             // relu's backward saves its output, not its input
  }
  const double held = current_bytes() - before;
  INFO("bytes held by the graph after the forward: " << held);
  CHECK(held >= kTensorBytes);        // relu's output
  CHECK(held < 1.5 * kTensorBytes);   // and not `doubled`
}

TEST_CASE("backward frees the saved tensors of the graph as it goes") {
  Tensor x = ramp_leaf();
  const double before = current_bytes();
  Tensor loss = relu_chain_loss(x, 6);
  const double after_forward = current_bytes() - before;
  INFO("after the forward: " << after_forward << " bytes");
  CHECK(after_forward >= 6 * kTensorBytes);  // the six ReLU outputs are saved
  loss.backward();
  const double after_backward = current_bytes() - before;
  INFO("after the backward, the loss still alive: " << after_backward << " bytes");
  // x.grad (one tensor) remains; the six saved outputs are gone.
  CHECK(after_backward >= kTensorBytes);
  CHECK(after_backward < 1.5 * kTensorBytes);

  // The gradient is that of sum(relu(2x)): 2 where x > 0, else 0.
  const std::vector<float> values = x.to_vector<float>(), grad = x.grad().to_vector<float>();
  std::int64_t wrong = 0;
  for (std::size_t i = 0; i < values.size(); ++i) wrong += grad[i] != (values[i] > 0 ? 2.0f : 0.0f);
  CHECK(wrong == 0);
}

TEST_CASE("a second backward through a released graph is refused with a message") {
  Tensor x = ramp_leaf();
  Tensor loss = relu_chain_loss(x, 2);
  loss.backward();
  std::string message;
  try {
    loss.backward();
  } catch (const Error& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(message.find("already used by a backward") != std::string::npos);
  CHECK(message.find("run the forward again") != std::string::npos);
}

TEST_CASE("a refused second backward changes no gradient") {
  // Two losses over one shared trunk: the second backward reaches the trunk's released
  // graph and must be refused before its own head adds anything to w_b's gradient.
  Tensor x = ramp_leaf();
  Tensor w_a = Tensor::full({kCount}, 0.5).set_requires_grad();
  Tensor w_b = Tensor::full({kCount}, -1.5).set_requires_grad();
  Tensor trunk = relu(scale(x, 2.0));
  Tensor loss_a = sum(mul(trunk, w_a)), loss_b = sum(mul(trunk, w_b));
  trunk = Tensor();
  loss_a.backward();
  CHECK_THROWS_AS(loss_b.backward(), Error);
  CHECK_FALSE(w_b.grad().defined());  // untouched
}
