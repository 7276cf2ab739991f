// batch_norm_relu2d (engine/ops.h) against the composition relu(batch_norm2d(...)) on the
// CPU, where it must be that composition bit for bit: output, running statistics, and the
// gradients of x, gamma and beta, in training and eval mode, float and double, with and
// without affine parameters; and Sequential's fusion of BatchNorm2d + ReLU (engine/nn.h):
// the same bits with the switch on or off, one num_batches_tracked step per forward, and
// the switch really taking the fused op (its graph node is named batch_norm_relu2d).
// batch_norm2d_grouped (two row groups, each with its own statistics) against the ops run on
// each group's rows (slice_rows, then concat_rows of the two outputs): the same bits for the
// output, the running statistics and every gradient; and Sequential::forward_grouped.
// BatchNorm1d (the same ops on an (N, C, 1, 1) view of (N, C) rows) against PyTorch's
// BatchNorm1d formulas in float64, fused with its ReLU in a Sequential, grouped in training
// and in eval mode.
// The CUDA kernels are compared with this CPU op in tests/cuda/test_engine_ops.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/random.h"

using namespace sela;

namespace {

template <typename T>
void check_same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  INFO(what);
  REQUIRE(a.defined());
  REQUIRE(b.defined());
  REQUIRE(a.shape() == b.shape());
  const std::vector<T> x = a.template to_vector<T>(), y = b.template to_vector<T>();
  std::size_t differing = 0;
  for (std::size_t i = 0; i < x.size(); ++i) differing += std::memcmp(&x[i], &y[i], sizeof(T)) != 0;
  CHECK_MESSAGE(differing == 0, differing << " of " << x.size() << " values differ");
}

struct Case {
  Shape shape;
  bool affine, training;
};

template <typename T>
void fused_equals_composition(const Case& c, std::uint64_t seed) {
  const DType dtype = sizeof(T) == 4 ? DType::f32 : DType::f64;
  const std::string tag = shape_str(c.shape) + (c.affine ? " affine" : "") +
                          (c.training ? " train" : " eval") + (sizeof(T) == 4 ? " f32" : " f64");
  const std::int64_t channels = c.shape[1];
  Rng rng(seed);
  const Tensor x0 = randn(c.shape, rng, dtype);
  const Tensor gamma0 = randn({channels}, rng, dtype), beta0 = randn({channels}, rng, dtype);
  const Tensor mean0 = randn({channels}, rng, dtype);
  const Tensor var0 = add(mul(mean0, mean0), Tensor::full({channels}, 0.5, dtype));  // > 0
  const Tensor grad_output = randn(c.shape, rng, dtype);

  // Two independent copies of every input, one per side.
  struct Side {
    Tensor x, gamma, beta, mean, var, y;
  };
  auto make_side = [&]() {
    Side s{x0.clone().set_requires_grad(), Tensor(), Tensor(), mean0.clone(), var0.clone(), {}};
    if (c.affine) {
      s.gamma = gamma0.clone().set_requires_grad();
      s.beta = beta0.clone().set_requires_grad();
    }
    return s;
  };
  Side fused = make_side(), composed = make_side();
  fused.y = batch_norm_relu2d(fused.x, fused.gamma, fused.beta, fused.mean, fused.var, c.training,
                              0.1, 1e-5);
  composed.y = relu(batch_norm2d(composed.x, composed.gamma, composed.beta, composed.mean,
                                 composed.var, c.training, 0.1, 1e-5));
  check_same_bits<T>(fused.y, composed.y, "output " + tag);
  check_same_bits<T>(fused.mean, composed.mean, "running mean " + tag);
  check_same_bits<T>(fused.var, composed.var, "running var " + tag);
  std::int64_t negative = 0;
  for (T v : fused.y.template to_vector<T>()) negative += v < T(0);
  CHECK(negative == 0);

  fused.y.backward(grad_output);
  composed.y.backward(grad_output);
  check_same_bits<T>(fused.x.grad(), composed.x.grad(), "gradient of x " + tag);
  if (c.affine) {
    check_same_bits<T>(fused.gamma.grad(), composed.gamma.grad(), "gradient of gamma " + tag);
    check_same_bits<T>(fused.beta.grad(), composed.beta.grad(), "gradient of beta " + tag);
  }
}

// Turns Sequential's fusion off for its scope (back on even when the scope throws).
struct FusionOff {
  FusionOff() { set_fuse_batch_norm_relu(false); }
  ~FusionOff() { set_fuse_batch_norm_relu(true); }
};

// conv -> batch norm -> relu -> pool -> conv -> batch norm -> relu.
std::shared_ptr<Sequential> small_network(std::uint64_t seed) {
  auto net = std::make_shared<Sequential>();
  net->add(std::make_shared<Conv2d>(3, 6, 3, 1, 1));
  net->add(std::make_shared<BatchNorm2d>(6));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<MaxPool2d>(3, 2));
  net->add(std::make_shared<Conv2d>(6, 5, 3, 1, 1));
  net->add(std::make_shared<BatchNorm2d>(5));
  net->add(std::make_shared<ReLU>());
  Rng rng(seed);
  for (auto& [name, p] : net->named_parameters()) {
    p.copy_from(randn(p.shape(), rng));
  }
  return net;
}

}  // namespace

TEST_CASE("batch_norm_relu2d is relu(batch_norm2d) bit for bit on the CPU") {
  std::uint64_t seed = 300;
  for (const Case& c : {Case{{4, 3, 5, 5}, true, true}, Case{{7, 2, 3, 1}, false, true},
                        Case{{6, 4}, true, true}, Case{{5, 3, 4, 4}, true, false},
                        Case{{16, 8, 12, 12}, true, true}}) {
    fused_equals_composition<float>(c, ++seed);
    fused_equals_composition<double>(c, ++seed);
  }
}

TEST_CASE("Sequential fuses BatchNorm2d + ReLU: same bits, one count per forward") {
  REQUIRE(fuse_batch_norm_relu());  // the default
  auto fused_net = small_network(11), plain_net = small_network(11);
  Rng rng(12);
  const Tensor images = randn({4, 3, 9, 9}, rng);
  const Tensor grad_output = randn({4, 5, 4, 4}, rng);

  Tensor y_fused = fused_net->forward(images);
  REQUIRE(y_fused.grad_fn());
  CHECK(std::string(y_fused.grad_fn()->name()) == "batch_norm_relu2d");  // the fused op ran
  Tensor y_plain;
  {
    FusionOff off;
    y_plain = plain_net->forward(images);
  }
  CHECK(std::string(y_plain.grad_fn()->name()) == "relu");
  check_same_bits<float>(y_fused, y_plain, "output");

  y_fused.backward(grad_output);
  y_plain.backward(grad_output);
  const NamedTensors a = fused_net->named_parameters(), b = plain_net->named_parameters();
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    check_same_bits<float>(a[i].second.grad(), b[i].second.grad(), "gradient of " + a[i].first);
  const NamedTensors buffers_a = fused_net->named_buffers(), buffers_b = plain_net->named_buffers();
  for (std::size_t i = 0; i < buffers_a.size(); ++i) {
    if (buffers_a[i].second.dtype() == DType::i64) {
      CHECK(buffers_a[i].second.item() == 1.0);  // num_batches_tracked: one forward
      CHECK(buffers_b[i].second.item() == 1.0);
    } else {
      check_same_bits<float>(buffers_a[i].second, buffers_b[i].second, buffers_a[i].first);
    }
  }
}

namespace {

// batch_norm2d_grouped(x, first_rows) against the composition concat_rows(op(x[0:g]),
// op(x[g:N])) with independent copies of every input.
template <typename T>
void grouped_equals_composition(const Shape& shape, std::int64_t first_rows, bool relu,
                                bool affine, std::uint64_t seed) {
  const DType dtype = sizeof(T) == 4 ? DType::f32 : DType::f64;
  const std::string tag = shape_str(shape) + " groups of " + std::to_string(first_rows) + " and " +
                          std::to_string(shape[0] - first_rows) + (relu ? " relu" : "") +
                          (affine ? " affine" : "") + (sizeof(T) == 4 ? " f32" : " f64");
  const std::int64_t channels = shape[1];
  Rng rng(seed);
  // The second group shifted and scaled, so that statistics over all rows would differ.
  Tensor x0 = randn(shape, rng, dtype);
  T* values = x0.data<T>();
  const std::int64_t row = x0.numel() / shape[0];
  for (std::int64_t i = first_rows * row; i < x0.numel(); ++i) values[i] = T(3) * values[i] + T(2);
  const Tensor gamma0 = randn({channels}, rng, dtype), beta0 = randn({channels}, rng, dtype);
  const Tensor mean0 = randn({channels}, rng, dtype);
  const Tensor var0 = add(mul(mean0, mean0), Tensor::full({channels}, 0.5, dtype));
  const Tensor grad_output = randn(shape, rng, dtype);
  struct Side {
    Tensor x, gamma, beta, mean, var, y;
  };
  auto make_side = [&]() {
    Side s{x0.clone().set_requires_grad(), Tensor(), Tensor(), mean0.clone(), var0.clone(), {}};
    if (affine) {
      s.gamma = gamma0.clone().set_requires_grad();
      s.beta = beta0.clone().set_requires_grad();
    }
    return s;
  };
  Side grouped = make_side(), composed = make_side();
  grouped.y = batch_norm2d_grouped(grouped.x, grouped.gamma, grouped.beta, grouped.mean,
                                   grouped.var, first_rows, relu, 0.1, 1e-5);
  auto op = [&](const Tensor& rows) {
    return relu ? batch_norm_relu2d(rows, composed.gamma, composed.beta, composed.mean,
                                    composed.var, true, 0.1, 1e-5)
                : batch_norm2d(rows, composed.gamma, composed.beta, composed.mean, composed.var,
                               true, 0.1, 1e-5);
  };
  Tensor first = op(slice_rows(composed.x, 0, first_rows));  // updates the running stats first
  Tensor second = op(slice_rows(composed.x, first_rows, shape[0]));
  composed.y = concat_rows({first, second});
  check_same_bits<T>(grouped.y, composed.y, "output " + tag);
  check_same_bits<T>(grouped.mean, composed.mean, "running mean " + tag);
  check_same_bits<T>(grouped.var, composed.var, "running var " + tag);
  // Statistics over all rows would give another output.
  Tensor whole = batch_norm2d(x0, affine ? gamma0 : Tensor(), affine ? beta0 : Tensor(),
                              mean0.clone(), var0.clone(), true, 0.1, 1e-5);
  if (relu) whole = sela::relu(whole);
  const std::vector<T> a = whole.template to_vector<T>(), b = grouped.y.template to_vector<T>();
  double largest_difference = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    largest_difference = std::max(largest_difference, std::abs(double(a[i]) - double(b[i])));
  }
  CHECK(largest_difference > 0.1);

  grouped.y.backward(grad_output);
  composed.y.backward(grad_output);
  check_same_bits<T>(grouped.x.grad(), composed.x.grad(), "gradient of x " + tag);
  if (affine) {
    check_same_bits<T>(grouped.gamma.grad(), composed.gamma.grad(), "gradient of gamma " + tag);
    check_same_bits<T>(grouped.beta.grad(), composed.beta.grad(), "gradient of beta " + tag);
  }
}

}  // namespace

TEST_CASE("batch_norm2d_grouped is the ops on each group's rows, bit for bit on the CPU") {
  std::uint64_t seed = 400;
  struct GroupCase {
    Shape shape;
    std::int64_t first_rows;
  };
  for (const GroupCase& c : {GroupCase{{10, 3, 5, 5}, 6}, GroupCase{{7, 4, 3, 2}, 1},
                             GroupCase{{9, 5}, 4}, GroupCase{{20, 8, 12, 12}, 16}}) {
    for (bool relu : {false, true}) {
      for (bool affine : {true, false}) {
        grouped_equals_composition<float>(c.shape, c.first_rows, relu, affine, ++seed);
        grouped_equals_composition<double>(c.shape, c.first_rows, relu, affine, ++seed);
      }
    }
  }
  // Errors name the op, the rows and the shape.
  Rng rng(5);
  Tensor x = randn({6, 3, 4, 4}, rng), gamma = randn({3}, rng), beta = randn({3}, rng);
  for (std::int64_t bad : {0, 6, -1}) {
    CAPTURE(bad);
    try {
      batch_norm2d_grouped(x, gamma, beta, Tensor(), Tensor(), bad, false, 0.1, 1e-5);
      FAIL("no error for first_rows " << bad);
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("first_rows " + std::to_string(bad)) != std::string::npos);
      CHECK(std::string(e.what()).find("(6, 3, 4, 4)") != std::string::npos);
    }
  }
  // A group of one row with one value per channel has no variance.
  Tensor flat = randn({5, 3}, rng);
  try {
    batch_norm2d_grouped(flat, Tensor(), Tensor(), Tensor(), Tensor(), 4, true, 0.1, 1e-5);
    FAIL("no error for a group of one value per channel");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("in a group of 1 rows") != std::string::npos);
  }
}

namespace {

// After one grouped forward and the two groups' forwards one after the other: the same
// running statistics, bit for bit, and every batch counter at 2 (two groups, two batches).
void check_two_group_buffers(Sequential& grouped, Sequential& split) {
  const NamedTensors buffers_a = grouped.named_buffers(), buffers_b = split.named_buffers();
  REQUIRE(buffers_a.size() == buffers_b.size());
  for (std::size_t i = 0; i < buffers_a.size(); ++i) {
    if (buffers_a[i].second.dtype() == DType::i64) {
      CHECK(buffers_a[i].second.item() == 2.0);
      CHECK(buffers_b[i].second.item() == 2.0);
    } else {
      check_same_bits<float>(buffers_a[i].second, buffers_b[i].second, buffers_a[i].first);
    }
  }
}

}  // namespace

TEST_CASE("Sequential::forward_grouped: per-group BatchNorm, two counts, eval mode unchanged") {
  for (bool fuse : {true, false}) {
    CAPTURE(fuse);
    set_fuse_batch_norm_relu(fuse);
    auto grouped_net = small_network(21), split_net = small_network(21);
    Rng rng(22);
    const Tensor images = randn({7, 3, 9, 9}, rng);
    const Tensor grad_output = randn({7, 5, 4, 4}, rng);
    Tensor y_grouped = grouped_net->forward_grouped(images, 3);
    Tensor y_split = concat_rows({split_net->forward(slice_rows(images, 0, 3)),
                                  split_net->forward(slice_rows(images, 3, 7))});
    // The convolutions see 7 rows or 3 and 4: the same sums per row, so the same bits.
    check_same_bits<float>(y_grouped, y_split, "output");
    y_grouped.backward(grad_output);
    y_split.backward(grad_output);
    const NamedTensors a = grouped_net->named_parameters(), b = split_net->named_parameters();
    REQUIRE(a.size() == b.size());
    std::vector<double> largest(a.size(), 0.0), difference(a.size(), 0.0);  // per parameter
    for (std::size_t i = 0; i < a.size(); ++i) {
      const std::vector<float> ga = a[i].second.grad().to_vector<float>();
      const std::vector<float> gb = b[i].second.grad().to_vector<float>();
      for (std::size_t j = 0; j < ga.size(); ++j) {
        largest[i] = std::max(largest[i], std::abs(double(gb[j])));
        difference[i] = std::max(difference[i], std::abs(double(ga[j]) - double(gb[j])));
      }
    }
    const double overall = *std::max_element(largest.begin(), largest.end());
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO("gradient of " << a[i].first);
      // Weight gradients sum over 7 rows or over 3 and then 4: rounding only (measured: within
      // 4e-7 of their largest entry). A conv bias before BatchNorm has a zero gradient in exact
      // arithmetic, so both sides are rounding noise, compared with the largest gradient of
      // the network (measured: 3.4e-7 against 6.3).
      const bool conv_bias_before_norm = a[i].first == "0.bias" || a[i].first == "4.bias";
      CHECK(difference[i] <= 1e-5 * (conv_bias_before_norm ? 0.1 * overall : largest[i]));
    }
    check_two_group_buffers(*grouped_net, *split_net);
    // Eval mode: running statistics, no groups.
    grouped_net->eval();
    check_same_bits<float>(grouped_net->forward_grouped(images, 3), grouped_net->forward(images),
                           "eval output");
  }
  set_fuse_batch_norm_relu(true);
  auto net = small_network(23);
  Rng rng(24);
  CHECK_THROWS_AS(net->forward_grouped(randn({4, 3, 9, 9}, rng), 4), Error);
}

namespace {

// Linear -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d, as the classifier with
// fc_batch_norm (the second without its ReLU, so that both Sequential paths run).
std::shared_ptr<Sequential> fc_network(std::uint64_t seed) {
  auto net = std::make_shared<Sequential>();
  net->add(std::make_shared<Linear>(7, 6));
  net->add(std::make_shared<BatchNorm1d>(6));
  net->add(std::make_shared<ReLU>());
  net->add(std::make_shared<Linear>(6, 5));
  net->add(std::make_shared<BatchNorm1d>(5));
  Rng rng(seed);
  for (auto& [name, p] : net->named_parameters()) p.copy_from(randn(p.shape(), rng));
  return net;
}

}  // namespace

TEST_CASE("BatchNorm1d on (N, C) rows: BatchNorm1d's formulas, fused with ReLU, grouped, eval") {
  // One module against the formulas in float64: per feature, the batch mean and biased
  // variance normalise; the running variance takes the unbiased one (momentum 0.1).
  BatchNorm1d norm(4);
  Rng rng(41);
  norm.weight.copy_from(randn({4}, rng));
  norm.bias.copy_from(randn({4}, rng));
  const Tensor x = randn({6, 4}, rng);
  const Tensor y = norm.forward(x);
  REQUIRE(y.shape() == Shape{6, 4});
  const std::vector<double> xs = x.to_vector<double>(), ys = y.to_vector<double>();
  const std::vector<double> gamma = norm.weight.to_vector<double>(), beta = norm.bias.to_vector<double>();
  const std::vector<double> running_mean = norm.running_mean.to_vector<double>();
  const std::vector<double> running_var = norm.running_var.to_vector<double>();
  for (int c = 0; c < 4; ++c) {
    double mean = 0, squares = 0;
    for (int n = 0; n < 6; ++n) mean += xs[n * 4 + c] / 6;
    for (int n = 0; n < 6; ++n) squares += (xs[n * 4 + c] - mean) * (xs[n * 4 + c] - mean);
    for (int n = 0; n < 6; ++n) {
      const double want = (xs[n * 4 + c] - mean) / std::sqrt(squares / 6 + 1e-5) * gamma[c] + beta[c];
      CHECK(std::abs(ys[n * 4 + c] - want) <= 1e-5 * (1 + std::abs(want)));
    }
    CHECK(std::abs(running_mean[c] - 0.1 * mean) <= 1e-6);
    CHECK(std::abs(running_var[c] - (0.9 + 0.1 * squares / 5)) <= 1e-6);
  }
  CHECK(*norm.num_batches_tracked.data<std::int64_t>() == 1);
  CHECK_THROWS_AS(norm.forward(randn({6, 4, 1, 1}, rng)), Error);  // rows only
  CHECK_THROWS_AS(norm.forward(randn({6, 3}, rng)), Error);        // 4 features

  // In a Sequential: fused with the ReLU or not, the same bits.
  auto fused_net = fc_network(42), plain_net = fc_network(42);
  const Tensor rows = randn({8, 7}, rng), grad_output = randn({8, 5}, rng);
  Tensor y_fused = fused_net->forward(rows);
  Tensor y_plain;
  {
    FusionOff off;
    y_plain = plain_net->forward(rows);
  }
  check_same_bits<float>(y_fused, y_plain, "output");
  y_fused.backward(grad_output);
  y_plain.backward(grad_output);
  const NamedTensors a = fused_net->named_parameters(), b = plain_net->named_parameters();
  for (std::size_t i = 0; i < a.size(); ++i)
    check_same_bits<float>(a[i].second.grad(), b[i].second.grad(), "gradient of " + a[i].first);

  // Grouped in training mode: the two groups' forwards one after the other, the same bits,
  // two batches counted; in eval mode the plain forward.
  auto grouped_net = fc_network(43), split_net = fc_network(43);
  Tensor y_grouped = grouped_net->forward_grouped(rows, 3);
  Tensor y_split = concat_rows({split_net->forward(slice_rows(rows, 0, 3)),
                                split_net->forward(slice_rows(rows, 3, 8))});
  check_same_bits<float>(y_grouped, y_split, "grouped output");
  check_two_group_buffers(*grouped_net, *split_net);
  grouped_net->eval();
  check_same_bits<float>(grouped_net->forward_grouped(rows, 3), grouped_net->forward(rows),
                         "eval output");
  // And the module's own grouped call in eval mode (Sequential does not reach it there).
  auto* first_norm = static_cast<BatchNorm1d*>(grouped_net->layers()[1].get());
  const Tensor h = static_cast<Linear&>(*grouped_net->layers()[0]).forward(rows);
  check_same_bits<float>(first_norm->forward_grouped(h, 3, true), first_norm->forward_relu(h),
                         "eval grouped with relu");
  check_same_bits<float>(first_norm->forward_grouped(h, 3, false), first_norm->forward(h),
                         "eval grouped");
}
