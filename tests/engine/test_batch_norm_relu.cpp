// batch_norm_relu2d (engine/ops.h) against the composition relu(batch_norm2d(...)) on the
// CPU, where it must be that composition bit for bit: output, running statistics, and the
// gradients of x, gamma and beta, in training and eval mode, float and double, with and
// without affine parameters; and Sequential's fusion of BatchNorm2d + ReLU (engine/nn.h):
// the same bits with the switch on or off, one num_batches_tracked step per forward, and
// the switch really taking the fused op (its graph node is named batch_norm_relu2d).
// The CUDA kernels are compared with this CPU op in tests/cuda/test_engine_ops.cpp.
#include <doctest/doctest.h>

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
