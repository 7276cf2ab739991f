// Finite-difference gradient checks in float64 for every differentiable op of engine/ops.h,
// through the autograd tape (so the Node wiring is checked, not only the kernels). See
// tests/engine/gradcheck.h for the method and the tolerances.
#include <doctest/doctest.h>

#include "tests/engine/gradcheck.h"

using namespace sela;
using sela::test::gradcheck;
using sela::test::spaced_values;

namespace {
Tensor rand64(const Shape& shape, Rng& rng) { return randn(shape, rng, DType::f64); }
}  // namespace

TEST_CASE("gradcheck: elementwise, shape and reductions") {
  Rng rng(101);
  gradcheck("add", [](const std::vector<Tensor>& x) { return add(x[0], x[1]); },
            {rand64({3, 5}, rng), rand64({3, 5}, rng)}, rng);
  gradcheck("mul", [](const std::vector<Tensor>& x) { return mul(x[0], x[1]); },
            {rand64({4, 7}, rng), rand64({4, 7}, rng)}, rng);
  gradcheck("mul same operand", [](const std::vector<Tensor>& x) { return mul(x[0], x[0]); },
            {rand64({9}, rng)}, rng);
  gradcheck("scale", [](const std::vector<Tensor>& x) { return scale(x[0], -2.5); },
            {rand64({2, 3, 4}, rng)}, rng);
  gradcheck("relu", [](const std::vector<Tensor>& x) { return relu(x[0]); },
            {spaced_values({5, 11}, rng)}, rng);
  gradcheck("reshape+flatten",
            [](const std::vector<Tensor>& x) { return flatten(reshape(x[0], {2, 3, -1})); },
            {rand64({6, 4}, rng)}, rng);
  gradcheck("concat_rows",
            [](const std::vector<Tensor>& x) { return concat_rows({x[0], x[1], x[2]}); },
            {rand64({2, 3, 2}, rng), rand64({1, 3, 2}, rng), rand64({4, 3, 2}, rng)}, rng);
  gradcheck("slice_rows", [](const std::vector<Tensor>& x) { return slice_rows(x[0], 1, 4); },
            {rand64({5, 3}, rng)}, rng);
  // One tensor sliced twice and put back together: the two gradients meet and add.
  gradcheck("slice_rows twice, concat_rows",
            [](const std::vector<Tensor>& x) {
              return concat_rows({slice_rows(x[0], 3, 6), slice_rows(x[0], 0, 4)});
            },
            {rand64({6, 2}, rng)}, rng);
  gradcheck("sum", [](const std::vector<Tensor>& x) { return sum(x[0]); }, {rand64({3, 4}, rng)},
            rng);
  gradcheck("mean", [](const std::vector<Tensor>& x) { return mean(x[0]); },
            {rand64({5, 2, 3}, rng)}, rng);
}

TEST_CASE("gradcheck: matmul and linear") {
  Rng rng(202);
  gradcheck("matmul", [](const std::vector<Tensor>& x) { return matmul(x[0], x[1]); },
            {rand64({5, 7}, rng), rand64({7, 3}, rng)}, rng);
  gradcheck("linear with bias",
            [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); },
            {rand64({6, 9}, rng), rand64({4, 9}, rng), rand64({4}, rng)}, rng);
  gradcheck("linear without bias",
            [](const std::vector<Tensor>& x) { return linear(x[0], x[1], Tensor()); },
            {rand64({1, 3}, rng), rand64({8, 3}, rng)}, rng);
}

TEST_CASE("gradcheck: conv2d over strides, paddings and kernel sizes") {
  Rng rng(303);
  struct Case {
    Shape input, weight;
    std::int64_t stride, padding;
  };
  std::vector<Case> cases = {
      {{2, 3, 7, 7}, {4, 3, 3, 3}, 1, 1},   {{1, 2, 9, 8}, {3, 2, 5, 5}, 1, 2},
      {{2, 1, 11, 11}, {2, 1, 3, 3}, 2, 0}, {{1, 3, 15, 13}, {2, 3, 11, 11}, 4, 2},
      {{3, 2, 5, 6}, {5, 2, 1, 1}, 1, 0},
  };
  for (const Case& c : cases) {
    std::string label = "conv2d input " + shape_str(c.input) + " weight " + shape_str(c.weight) +
                        " stride " + std::to_string(c.stride) + " pad " + std::to_string(c.padding);
    gradcheck(label,
              [&](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], x[2], c.stride, c.padding); },
              {rand64(c.input, rng), rand64(c.weight, rng), rand64({c.weight[0]}, rng)}, rng);
  }
  gradcheck("conv2d without bias",
            [](const std::vector<Tensor>& x) { return conv2d(x[0], x[1], Tensor(), 1, 1); },
            {rand64({2, 2, 5, 5}, rng), rand64({3, 2, 3, 3}, rng)}, rng);
}

TEST_CASE("gradcheck: max_pool2d (inputs spaced away from ties)") {
  Rng rng(404);
  gradcheck("max_pool2d k3 s2", [](const std::vector<Tensor>& x) { return max_pool2d(x[0], 3, 2); },
            {spaced_values({2, 3, 15, 15}, rng)}, rng);
  gradcheck("max_pool2d k2 s2 p1",
            [](const std::vector<Tensor>& x) { return max_pool2d(x[0], 2, 2, 1); },
            {spaced_values({1, 2, 7, 6}, rng)}, rng);
  gradcheck("max_pool2d k3 s1 (overlapping windows)",
            [](const std::vector<Tensor>& x) { return max_pool2d(x[0], 3, 1); },
            {spaced_values({1, 1, 6, 6}, rng)}, rng);
}

TEST_CASE("gradcheck: batch_norm2d in training and eval mode") {
  Rng rng(505);
  Tensor running_mean = rand64({3}, rng);
  Tensor running_var = Tensor::full({3}, 1.5, DType::f64);
  // Training mode through the batch statistics; the running stats are updated on every
  // call but do not feed the output, so repeated evaluation is fine.
  gradcheck("batch_norm2d train affine",
            [&](const std::vector<Tensor>& x) {
              return batch_norm2d(x[0], x[1], x[2], running_mean, running_var, true, 0.1, 1e-5);
            },
            {rand64({4, 3, 3, 2}, rng), rand64({3}, rng), rand64({3}, rng)}, rng);
  gradcheck("batch_norm2d train without affine, 2-D input",
            [&](const std::vector<Tensor>& x) {
              return batch_norm2d(x[0], Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
            },
            {rand64({6, 3}, rng)}, rng);
  gradcheck("batch_norm2d eval",
            [&](const std::vector<Tensor>& x) {
              return batch_norm2d(x[0], x[1], x[2], running_mean, running_var, false, 0.1, 1e-5);
            },
            {rand64({2, 3, 2, 2}, rng), rand64({3}, rng), rand64({3}, rng)}, rng);
}

TEST_CASE("gradcheck: dropout with a fixed mask") {
  Rng rng(606);
  // The mask depends only on (seed, offset), so every evaluation uses the same mask.
  gradcheck("dropout p=0.3",
            [](const std::vector<Tensor>& x) { return dropout(x[0], 0.3, true, 7, 1000); },
            {rand64({4, 25}, rng)}, rng);
}

TEST_CASE("gradcheck: log_softmax and cross_entropy") {
  Rng rng(707);
  gradcheck("log_softmax", [](const std::vector<Tensor>& x) { return log_softmax(x[0]); },
            {rand64({5, 7}, rng)}, rng);
  Tensor targets = Tensor::from_vector<std::int64_t>({0, 6, 3, 3, 1}, {5});
  gradcheck("cross_entropy",
            [&](const std::vector<Tensor>& x) { return cross_entropy(x[0], targets); },
            {rand64({5, 7}, rng)}, rng);
  gradcheck("cross_entropy one class",
            [&](const std::vector<Tensor>& x) {
              return cross_entropy(x[0], Tensor::from_vector<std::int64_t>({0, 0}, {2}));
            },
            {rand64({2, 1}, rng)}, rng);
}

TEST_CASE("gradcheck: a small composite network reuses tensors across branches") {
  Rng rng(808);
  Tensor targets = Tensor::from_vector<std::int64_t>({1, 0, 2}, {3});
  gradcheck("conv-bn-pool-linear-ce x2 heads",
            [&](const std::vector<Tensor>& x) {
              Tensor h = conv2d(x[0], x[1], Tensor(), 1, 1);
              h = batch_norm2d(h, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
              h = flatten(max_pool2d(h, 2, 2));
              Tensor a = cross_entropy(linear(h, x[2], Tensor()), targets);
              Tensor b = cross_entropy(linear(h, x[3], Tensor()), targets);
              return scale(add(a, b), 0.5);
            },
            {rand64({3, 2, 4, 4}, rng), rand64({3, 2, 3, 3}, rng), rand64({3, 12}, rng),
             rand64({3, 12}, rng)},
            rng, 1e-6, 1e-4);
}
