// Linear probes (sela/probe.h): the pool-size rule against the reference's AlexNet sizes and
// hand-computed cases; adaptive max pooling against hand-listed windows; the bfloat16
// feature cache against float32 within its rounding; a probe on separable synthetic features
// reaches high test accuracy and on shuffled labels stays at chance; and on a real (random)
// network the grouped, multi-pass caching gives exactly the single-pass results.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <unistd.h>

#include "engine/data/idx.h"
#include "kernels/cpu/parallel.h"
#include "sela/probe.h"
#include "tests/temp_folder.h"

using namespace sela;

namespace {

// n samples of `classes` Gaussian clusters in `dims` dimensions: class c's mean (from
// class_means) plus N(0, 1) noise.
void gaussian_clusters(std::int64_t n, std::int64_t dims, std::int64_t classes, std::uint32_t seed,
                       const std::vector<double>& means, FeatureMatrix* features,
                       std::vector<std::int64_t>* labels) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0.0, 1.0);
  *features = FeatureMatrix(n, dims, FeatureStorage::f32);
  labels->assign(static_cast<std::size_t>(n), 0);
  std::vector<float> row(static_cast<std::size_t>(dims));
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t c = static_cast<std::int64_t>(rng() % static_cast<std::uint32_t>(classes));
    (*labels)[static_cast<std::size_t>(i)] = c;
    for (std::int64_t d = 0; d < dims; ++d) {
      row[static_cast<std::size_t>(d)] =
          static_cast<float>(means[static_cast<std::size_t>(c * dims + d)] + noise(rng));
    }
    features->set_row(i, row.data());
  }
}

std::vector<double> class_means(std::int64_t dims, std::int64_t classes, double separation,
                                std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, separation);
  std::vector<double> means(static_cast<std::size_t>(dims * classes));
  for (double& m : means) m = normal(rng);
  return means;
}

// Small problems run on one thread: a thread team per op only waits on a busy machine.
struct OneThread {
  OneThread() { cpu::set_num_threads(1); }
  ~OneThread() { cpu::set_num_threads(0); }
};

ProbeOptions quiet_options() {
  ProbeOptions options;
  options.epochs = 5;
  options.batch_size = 64;
  options.verbose = false;
  return options;
}

}  // namespace

TEST_CASE("pool-size choice: about 9000 numbers per block; the reference's AlexNet sizes") {
  // AlexNet on 224 inputs: conv1 96x55x55, conv2 256x27x27, conv3/4 384x13x13, conv5 256x13x13
  // -> the reference protocol's 96x10x10, 256x6x6, 384x5x5, 384x5x5, 256x6x6.
  struct Case {
    std::int64_t c, h, expected_side, expected_dims;
  };
  for (Case k : {Case{96, 55, 10, 9600}, Case{256, 27, 6, 9216}, Case{384, 13, 5, 9600},
                 Case{256, 13, 6, 9216}}) {
    ProbePool pool = choose_probe_pool(k.c, k.h, k.h);
    CHECK(pool.out_height == k.expected_side);
    CHECK(pool.out_width == k.expected_side);
    CHECK(pool.dims() == k.expected_dims);
    CHECK(pool.pooled());
  }
  // alexnet-32 at width 0.25 (Fashion-MNIST default): 16x32x32 -> 24x24 (round(sqrt(562.5))),
  // 48x15x15 -> 14x14 (round(sqrt(187.5))), 96x7x7 = 4704 stays (sqrt(93.75) ~ 9.7 > 7).
  CHECK(choose_probe_pool(16, 32, 32).dims() == 16 * 24 * 24);
  CHECK(choose_probe_pool(48, 15, 15).dims() == 48 * 14 * 14);
  ProbePool small = choose_probe_pool(96, 7, 7);
  CHECK_FALSE(small.pooled());
  CHECK(small.dims() == 96 * 49);
  // Non-square blocks are clamped per side; a huge C pools to 1x1.
  ProbePool wide = choose_probe_pool(4, 3, 100);
  CHECK(wide.out_height == 3);
  CHECK(wide.out_width == 47);
  CHECK(choose_probe_pool(20000, 8, 8).dims() == 20000);
  CHECK_THROWS_AS(choose_probe_pool(0, 8, 8), Error);
}

TEST_CASE("adaptive max pooling: hand-listed windows, exact maxima, NaN propagates") {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> uniform(-5.0, 5.0);
  // 7 -> 3: rows/columns [0,3) [2,5) [4,7); 5 -> 2: [0,3) [2,5).
  const std::int64_t planes = 3, h = 7, w = 5, oh = 3, ow = 2;
  std::vector<double> input(static_cast<std::size_t>(planes * h * w));
  for (double& v : input) v = uniform(rng);
  std::vector<double> output(static_cast<std::size_t>(planes * oh * ow),
                             std::numeric_limits<double>::quiet_NaN());
  adaptive_max_pool2d(input.data(), planes, h, w, oh, ow, output.data());
  const int row_windows[3][2] = {{0, 3}, {2, 5}, {4, 7}};
  const int col_windows[2][2] = {{0, 3}, {2, 5}};
  for (std::int64_t p = 0; p < planes; ++p) {
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 2; ++j) {
        double best = -1e300;
        for (int y = row_windows[i][0]; y < row_windows[i][1]; ++y) {
          for (int x = col_windows[j][0]; x < col_windows[j][1]; ++x) {
            best = std::max(best, input[static_cast<std::size_t>((p * h + y) * w + x)]);
          }
        }
        double got = output[static_cast<std::size_t>((p * oh + i) * ow + j)];
        REQUIRE(std::isfinite(got));
        CHECK(got == best);
      }
    }
  }
  // Divisible sides: plain non-overlapping blocks (6 -> 3 is 2x2 blocks), float.
  std::vector<float> block(36), pooled(9, std::numeric_limits<float>::quiet_NaN());
  for (float& v : block) v = static_cast<float>(uniform(rng));
  adaptive_max_pool2d(block.data(), 1, 6, 6, 3, 3, pooled.data());
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      float best = std::max(std::max(block[static_cast<std::size_t>(12 * i + 2 * j)],
                                     block[static_cast<std::size_t>(12 * i + 2 * j + 1)]),
                            std::max(block[static_cast<std::size_t>(12 * i + 6 + 2 * j)],
                                     block[static_cast<std::size_t>(12 * i + 6 + 2 * j + 1)]));
      CHECK(pooled[static_cast<std::size_t>(3 * i + j)] == best);
    }
  }
  block[7] = std::numeric_limits<float>::quiet_NaN();  // row 1, column 1: window (0, 0)
  adaptive_max_pool2d(block.data(), 1, 6, 6, 3, 3, pooled.data());
  CHECK(std::isnan(pooled[0]));
  CHECK(std::isfinite(pooled[1]));
}

TEST_CASE("feature cache: float32 exact, bfloat16 within its rounding (|err| <= 2^-8 |x|)") {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const std::int64_t rows = 17, dims = 33;
  std::vector<float> values(static_cast<std::size_t>(rows * dims));
  for (float& v : values) v = normal(rng);
  FeatureMatrix exact(rows, dims, FeatureStorage::f32), half(rows, dims, FeatureStorage::bf16);
  for (std::int64_t r = 0; r < rows; ++r) {
    exact.set_row(r, values.data() + r * dims);
    half.set_row(r, values.data() + r * dims);
  }
  CHECK(half.bytes() * 2 == exact.bytes());
  std::vector<std::int64_t> pick{16, 0, 5, 5};
  std::vector<float> a(pick.size() * dims, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> b(a);
  exact.gather(pick.data(), static_cast<std::int64_t>(pick.size()), a.data());
  half.gather(pick.data(), static_cast<std::int64_t>(pick.size()), b.data());
  for (std::size_t i = 0; i < pick.size(); ++i) {
    for (std::int64_t d = 0; d < dims; ++d) {
      float ref = values[static_cast<std::size_t>(pick[i] * dims + d)];
      float got_exact = a[i * dims + static_cast<std::size_t>(d)];
      float got_half = b[i * dims + static_cast<std::size_t>(d)];
      REQUIRE(std::isfinite(got_half));
      CHECK(got_exact == ref);
      CHECK(std::abs(got_half - ref) <= std::ldexp(1.0f, -8) * std::abs(ref));
    }
  }
  std::int64_t bad = rows;
  CHECK_THROWS_AS(exact.gather(&bad, 1, a.data()), Error);
}

TEST_CASE("a probe on separable features reaches high accuracy; on shuffled labels, chance") {
  const std::int64_t dims = 200, classes = 10;
  std::vector<double> means = class_means(dims, classes, 1.0, 11);
  FeatureMatrix train, test;
  std::vector<std::int64_t> train_labels, test_labels;
  gaussian_clusters(2000, dims, classes, 21, means, &train, &train_labels);
  gaussian_clusters(2000, dims, classes, 22, means, &test, &test_labels);
  ProbeOptions options = quiet_options();
  OneThread one_thread;

  // Class means ~20 noise standard deviations apart (sqrt(2 * 200)): a linear classifier separates
  // them.
  ProbeResult separable =
      train_linear_probe(train, train_labels, test, test_labels, classes, options, "sep");
  CHECK(separable.test_top1 >= 0.97);
  CHECK(separable.train_top1 >= 0.97);
  REQUIRE(separable.epoch_losses.size() == 5);
  CHECK(separable.epoch_losses.back() < separable.epoch_losses.front());
  for (double loss : separable.epoch_losses) CHECK(std::isfinite(loss));

  // The same features with the training labels shuffled: nothing to learn that carries to
  // the test split. Chance is 0.1; with 2000 test samples its standard deviation is 0.007,
  // so [0.05, 0.16] is ~7 sigma wide.
  std::vector<std::int64_t> shuffled = train_labels;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(99));
  ProbeResult chance =
      train_linear_probe(train, shuffled, test, test_labels, classes, options, "shuffled");
  CHECK(chance.test_top1 >= 0.05);
  CHECK(chance.test_top1 <= 0.16);

  // Unlabelled rows (-1) are left out, not counted.
  std::vector<std::int64_t> partly = test_labels;
  for (std::size_t i = 0; i < partly.size(); i += 2) partly[i] = -1;
  ProbeResult half =
      train_linear_probe(train, train_labels, test, partly, classes, options, "half");
  CHECK(half.test_top1 >= 0.97);

  // bfloat16 storage changes the accuracy by rounding only.
  FeatureMatrix train_bf16(train.rows(), dims, FeatureStorage::bf16);
  std::vector<float> row(static_cast<std::size_t>(dims));
  for (std::int64_t i = 0; i < train.rows(); ++i) {
    train.gather(&i, 1, row.data());
    train_bf16.set_row(i, row.data());
  }
  ProbeResult rounded =
      train_linear_probe(train_bf16, train_labels, test, test_labels, classes, options, "bf16");
  CHECK(std::abs(rounded.test_top1 - separable.test_top1) <= 0.01);

  // Bad input: a class outside [0, K), mismatched sizes.
  std::vector<std::int64_t> wrong = train_labels;
  wrong[3] = classes;
  CHECK_THROWS_AS(train_linear_probe(train, wrong, test, test_labels, classes, options, "x"),
                  Error);
  CHECK_THROWS_AS(train_linear_probe(train, std::vector<std::int64_t>(5, 0), test, test_labels,
                                     classes, options, "x"),
                  Error);
}

TEST_CASE("probes on a network: pools per block; grouped passes give the single-pass results") {
  sela::test::TempFolder folder("sela_probe_test");
  // 96 train and 48 test 28x28 images of 3 classes (a bright block at a class position).
  auto write = [&](const std::string& stem, int n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::uint8_t> images(static_cast<std::size_t>(n) * 28 * 28),
        labels(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      int c = i % 3;
      labels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(c);
      for (int y = 0; y < 28; ++y) {
        for (int x = 0; x < 28; ++x) {
          int v = static_cast<int>(rng() % 50);
          if (y >= 4 + 7 * c && y < 11 + 7 * c && x >= 6 && x < 20) v += 170;
          images[static_cast<std::size_t>((i * 28 + y) * 28 + x)] = static_cast<std::uint8_t>(v);
        }
      }
    }
    data::write_idx(folder.path + "/" + stem + "-images.idx", {n, 28, 28}, images.data(), false);
    data::write_idx(folder.path + "/" + stem + "-labels.idx", {n}, labels.data(), false);
    return "idx:" + folder.path + "/" + stem + "-images.idx," + folder.path + "/" + stem +
           "-labels.idx";
  };
  auto train = data::open_dataset(write("train", 96, 1));
  auto test = data::open_dataset(write("test", 48, 2));
  ModelConfig config;
  config.arch = "alexnet-32";
  config.width_mult = 0.25;
  config.in_channels = 1;
  config.clusters = {3};
  config.seed = 4;
  auto model = make_model(config);
  OneThread one_thread;

  ProbeOptions options = quiet_options();
  options.epochs = 3;
  options.batch_size = 32;
  options.network_batch_size = 32;
  options.storage = FeatureStorage::f32;
  ProbeReport one = run_linear_probes(*model, *train, *test, options);
  REQUIRE(one.layers.size() == 5);
  CHECK(one.network_passes == 1);
  // alexnet-32 at width 0.25: 16x32x32, 48x15x15, 96x7x7, 64x7x7, 64x7x7.
  const std::int64_t expected_dims[5] = {16 * 24 * 24, 48 * 14 * 14, 96 * 49, 64 * 49, 64 * 49};
  for (std::size_t l = 0; l < 5; ++l) {
    CHECK(one.layers[l].layer == "conv" + std::to_string(l + 1));
    CHECK(one.layers[l].pool.dims() == expected_dims[l]);
    CHECK(one.layers[l].test_top1 >= 0.0);
    CHECK(one.layers[l].test_top1 <= 1.0);
  }
  // Even a random network keeps the class's bright block visible to a linear probe on conv1.
  CHECK(one.layers[0].test_top1 >= 0.8);

  // A budget of conv2's features alone (9408 per image) groups the blocks greedily as
  // {conv1: 9216} {conv2: 9408} {conv3 + conv4: 4704 + 3136} {conv5: 3136}: four passes,
  // identical numbers.
  options.memory_budget_bytes =
      FeatureMatrix::bytes_for(96 + 48, 48 * 14 * 14, FeatureStorage::f32);
  ProbeReport grouped = run_linear_probes(*model, *train, *test, options);
  CHECK(grouped.network_passes == 4);
  REQUIRE(grouped.layers.size() == 5);
  for (std::size_t l = 0; l < 5; ++l) {
    CHECK(grouped.layers[l].test_top1 == one.layers[l].test_top1);
    CHECK(grouped.layers[l].epoch_losses == one.layers[l].epoch_losses);
  }
  CHECK(one.to_json().find("\"test_top1\"") != std::string::npos);

  // Too small a budget for any block is an error that says what to do.
  options.memory_budget_bytes = 1000;
  try {
    run_linear_probes(*model, *train, *test, options);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("--probe-train-samples") != std::string::npos);
  }
}
