// The model zoo against DESIGN.md: layer shapes, PyTorch-style names, parameter counts
// computed by hand from the spec, the reference initialisation's statistics, and a state
// round trip through safetensors (including a refused mismatching file).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <unistd.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/state_io.h"
#include "models/alexnet.h"

using namespace sela;

namespace {

std::map<std::string, Shape> shapes_of(const NamedTensors& tensors) {
  std::map<std::string, Shape> out;
  for (auto& entry : tensors) out[entry.first] = entry.second.shape();
  return out;
}

// Parameters of conv (with bias) + BN (affine) layers, then classifier and heads.
std::int64_t expected_parameters(const std::vector<std::int64_t>& widths,
                                 const std::vector<std::int64_t>& kernels, std::int64_t in,
                                 std::int64_t flat, std::int64_t fc,
                                 const std::vector<std::int64_t>& clusters) {
  std::int64_t total = 0, channels = in;
  for (std::size_t i = 0; i < widths.size(); ++i) {
    total += widths[i] * channels * kernels[i] * kernels[i] + widths[i] + 2 * widths[i];
    channels = widths[i];
  }
  total += flat * fc + fc + fc * fc + fc;
  for (std::int64_t k : clusters) total += fc * k + k;
  return total;
}

}  // namespace

TEST_CASE("alexnet-32 at full width has the DESIGN.md shapes and names") {
  ModelConfig config;
  config.arch = "alexnet-32";
  config.clusters = {128, 128, 10};
  SelaNet model(config);
  auto shapes = shapes_of(model.state_dict());
  CHECK(shapes["features.0.weight"] == Shape{64, 3, 5, 5});
  CHECK(shapes["features.1.running_var"] == Shape{64});
  CHECK(shapes["features.1.num_batches_tracked"] == Shape{});
  CHECK(shapes["features.4.weight"] == Shape{192, 64, 5, 5});
  CHECK(shapes["features.8.weight"] == Shape{384, 192, 3, 3});
  CHECK(shapes["features.11.weight"] == Shape{256, 384, 3, 3});
  CHECK(shapes["features.14.weight"] == Shape{256, 256, 3, 3});
  CHECK(shapes["classifier.1.weight"] == Shape{4096, 2304});
  CHECK(shapes["classifier.4.weight"] == Shape{4096, 4096});
  CHECK(shapes["top_layer0.weight"] == Shape{128, 4096});
  CHECK(shapes["top_layer2.bias"] == Shape{10});
  CHECK(model.parameter_count() ==
        expected_parameters({64, 192, 384, 256, 256}, {5, 5, 3, 3, 3}, 3, 2304, 4096,
                            {128, 128, 10}));
  // About 1.24 GFLOP per training image (DESIGN.md): 3 x forward multiply-adds x 2.
  double training_gflop = model.forward_macs_per_image() * 2 * 3 / 1e9;
  CHECK(training_gflop == doctest::Approx(1.24).epsilon(0.05));
}

TEST_CASE("alexnet and alexnet-small flatten to 9216 features") {
  for (const char* arch : {"alexnet", "alexnet-small"}) {
    ModelConfig config;
    config.arch = arch;
    SelaNet model(config);
    auto shapes = shapes_of(model.state_dict());
    CHECK(shapes["classifier.1.weight"] == Shape{4096, 9216});
    CHECK(shapes["features.0.weight"][2] == 11);
    CHECK(model.input_size() == 224);
  }
  ModelConfig big;
  big.arch = "alexnet";
  big.clusters = {3000};
  CHECK(SelaNet(big).parameter_count() ==
        expected_parameters({96, 256, 384, 384, 256}, {11, 5, 3, 3, 3}, 3, 9216, 4096, {3000}));
}

TEST_CASE("a narrow alexnet-32 runs forward with the right output shapes") {
  ModelConfig config;
  config.width_mult = 0.125;
  config.in_channels = 1;
  config.clusters = {10, 7};
  auto model = make_model(config);
  Rng rng(5);
  Tensor x = randn({2, 1, 32, 32}, rng);
  auto logits = model->forward_heads(x);
  REQUIRE(logits.size() == 2);
  CHECK(logits[0].shape() == Shape{2, 10});
  CHECK(logits[1].shape() == Shape{2, 7});
  CHECK(model->forward_fc7(x).shape() == Shape{2, 512});
  auto blocks = model->forward_conv_blocks(x);
  REQUIRE(blocks.size() == 5);
  CHECK(blocks[0].shape() == Shape{2, 8, 32, 32});
  CHECK(blocks[4].shape() == Shape{2, 32, 7, 7});
  bool threw = false;
  try {
    model->forward_heads(randn({2, 3, 32, 32}, rng));
  } catch (const Error& e) {
    threw = std::string(e.what()).find("(N, 1, 32, 32)") != std::string::npos;
  }
  CHECK(threw);
}

TEST_CASE("the reference initialisation: conv N(0, sqrt(2/(k*k*out))), linear N(0, 0.01)") {
  ModelConfig config;
  config.clusters = {128};
  auto model = make_model(config);
  auto stats = [](const Tensor& t) {
    std::vector<float> v = t.to_vector<float>();
    double mean = 0, sq = 0;
    for (float x : v) mean += x;
    mean /= static_cast<double>(v.size());
    for (float x : v) sq += (x - mean) * (x - mean);
    return std::make_pair(mean, std::sqrt(sq / static_cast<double>(v.size())));
  };
  auto params = model->named_parameters();
  std::map<std::string, Tensor> by_name(params.begin(), params.end());
  auto conv = stats(by_name["features.4.weight"]);  // 307,200 values
  CHECK(conv.second == doctest::Approx(std::sqrt(2.0 / (5 * 5 * 192))).epsilon(0.01));
  CHECK(std::fabs(conv.first) < 0.01 * conv.second);
  auto fc = stats(by_name["classifier.4.weight"]);
  CHECK(fc.second == doctest::Approx(0.01).epsilon(0.01));
  CHECK(by_name["classifier.4.bias"].to_vector<float>() == std::vector<float>(4096, 0.0f));
  // Same seed, same weights; another seed, other weights.
  auto again = make_model(config);
  CHECK(again->named_parameters()[0].second.to_vector<float>() ==
        params[0].second.to_vector<float>());
  config.seed = 1;
  CHECK(make_model(config)->named_parameters()[0].second.to_vector<float>() !=
        params[0].second.to_vector<float>());
}

TEST_CASE("state round trip through safetensors, and a mismatching file is refused") {
  ModelConfig config;
  config.width_mult = 0.0625;
  config.clusters = {10, 5};
  config.seed = 3;
  auto model = make_model(config);
  std::string path = "/tmp/sela_test_state_" + std::to_string(::getpid()) + ".safetensors";
  save_state(*model, path, {{"arch", "alexnet-32"}});
  config.seed = 4;
  auto other = make_model(config);
  load_state(*other, path);
  auto a = model->state_dict();
  auto b = other->state_dict();
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].first == b[i].first);
    CHECK(a[i].second.to_vector<double>() == b[i].second.to_vector<double>());
  }
  config.clusters = {10, 6};
  auto mismatched = make_model(config);
  std::string message;
  try {
    load_state(*mismatched, path);
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK(message.find("top_layer1.weight") != std::string::npos);
  CHECK(message.find(path) != std::string::npos);
  std::remove(path.c_str());
}
