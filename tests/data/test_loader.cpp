// The threaded loader: the same batch bytes with 1, 2 and 3 workers; every index once per
// epoch in the (seed, epoch) order; drop_last; no shuffle; batches equal the synchronous
// load_samples; caller-supplied allocator used and buffers recycled; abandoning an epoch.
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <random>

#include "engine/data/image_io.h"
#include "engine/data/loader.h"
#include "tests/data/data_fixtures.h"

using namespace sela::data;
using namespace sela::data::testing;

namespace {

struct Copy {
  std::int64_t size, channels, height, width, epoch, number;
  std::vector<float> images;
  std::vector<std::int64_t> indices, classes;
};

std::vector<Copy> run_epoch(Loader& loader, std::int64_t epoch) {
  loader.start_epoch(epoch);
  std::vector<Copy> out;
  Batch batch;
  while (loader.next(&batch)) {
    Copy c{batch.size,
           batch.channels,
           batch.height,
           batch.width,
           batch.epoch,
           batch.number,
           std::vector<float>(batch.images.data(),
                              batch.images.data() + batch.size * batch.image_floats()),
           batch.indices,
           batch.classes};
    for (float v : c.images) REQUIRE(std::isfinite(v));
    out.push_back(std::move(c));
  }
  return out;
}

void check_same(const std::vector<Copy>& a, const std::vector<Copy>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    REQUIRE(a[i].size == b[i].size);
    CHECK(a[i].number == b[i].number);
    CHECK(a[i].indices == b[i].indices);
    CHECK(a[i].classes == b[i].classes);
    REQUIRE(a[i].images.size() == b[i].images.size());
    CHECK(std::memcmp(a[i].images.data(), b[i].images.data(), a[i].images.size() * sizeof(float)) ==
          0);
  }
}

}  // namespace

TEST_CASE("same seed, same batch bytes with 1, 2 and 3 workers (in-memory, grayscale and colour)") {
  for (int channels : {1, 3}) {
    CAPTURE(channels);
    auto dataset =
        random_dataset(700, channels == 1 ? 28 : 32, channels == 1 ? 28 : 32, channels, 10, 41);
    AugmentConfig augment = default_augment(dataset->info(), true);
    std::vector<std::vector<Copy>> runs;
    for (int workers : {1, 2, 3}) {
      LoaderConfig config;
      config.batch_size = 64;
      config.seed = 1234;
      config.workers = workers;
      config.prefetch = workers == 3 ? 1 : 0;  // also the tightest ring
      Loader loader(*dataset, augment, config);
      std::vector<Copy> epoch0 = run_epoch(loader, 0);
      std::vector<Copy> epoch1 = run_epoch(loader, 1);
      epoch0.insert(epoch0.end(), epoch1.begin(), epoch1.end());
      runs.push_back(std::move(epoch0));
    }
    check_same(runs[0], runs[1]);
    check_same(runs[0], runs[2]);
  }
}

TEST_CASE("an epoch holds every index once, in shuffled_order(seed, epoch); classes match") {
  auto dataset = random_dataset(1000, 28, 28, 1, 7, 42);
  AugmentConfig augment = default_augment(dataset->info(), true);
  LoaderConfig config;
  config.batch_size = 96;
  config.seed = 77;
  Loader loader(*dataset, augment, config);
  CHECK(loader.batches_per_epoch() == 11);
  std::vector<std::int64_t> previous;
  for (std::int64_t epoch = 0; epoch < 2; ++epoch) {
    std::vector<Copy> batches = run_epoch(loader, epoch);
    REQUIRE(batches.size() == 11);
    CHECK(batches.back().size == 1000 - 10 * 96);
    std::vector<std::int64_t> order;
    for (const Copy& b : batches) {
      CHECK(b.epoch == epoch);
      CHECK(b.channels == 1);
      CHECK(b.height == 32);
      for (std::size_t k = 0; k < b.indices.size(); ++k) {
        CHECK(b.classes[k] == dataset->true_class(b.indices[k]));
        order.push_back(b.indices[k]);
      }
    }
    CHECK(order == shuffled_order(1000, 77, epoch));
    std::vector<std::int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (std::int64_t i = 0; i < 1000; ++i) REQUIRE(sorted[static_cast<std::size_t>(i)] == i);
    CHECK(order != previous);
    previous = order;
    LoaderStats stats = loader.stats();
    CHECK(stats.batches == 11);
    CHECK(stats.samples == 1000);
    CHECK(stats.wait_seconds >= 0);
    CHECK(stats.epoch_seconds >= stats.wait_seconds * 0.999);
  }
}

TEST_CASE("a batch equals load_samples on the same indices (the loader adds no randomness)") {
  auto dataset = random_dataset(300, 32, 32, 3, 10, 43);
  AugmentConfig augment = default_augment(dataset->info(), true);
  LoaderConfig config;
  config.batch_size = 50;
  config.seed = 9;
  Loader loader(*dataset, augment, config);
  std::vector<Copy> batches = run_epoch(loader, 4);
  const Copy& b = batches[3];
  std::vector<float> direct(b.images.size(), std::numeric_limits<float>::quiet_NaN());
  std::vector<std::int64_t> indices(b.indices.size()), classes(b.indices.size());
  std::int64_t kept = load_samples(*dataset, augment, 9, 4, b.indices.data(), b.size, direct.data(),
                                   indices.data(), classes.data());
  CHECK(kept == b.size);
  CHECK(indices == b.indices);
  CHECK(classes == b.classes);
  CHECK(std::memcmp(direct.data(), b.images.data(), direct.size() * sizeof(float)) == 0);
}

TEST_CASE("drop_last and no shuffle") {
  auto dataset = random_dataset(250, 28, 28, 1, 5, 44);
  AugmentConfig augment = default_augment(dataset->info(), false);
  LoaderConfig config;
  config.batch_size = 64;
  config.shuffle = false;
  config.drop_last = true;
  Loader loader(*dataset, augment, config);
  CHECK(loader.batches_per_epoch() == 3);
  CHECK(loader.samples_per_epoch() == 192);
  std::vector<Copy> batches = run_epoch(loader, 0);
  REQUIRE(batches.size() == 3);
  std::int64_t expected = 0;
  for (const Copy& b : batches) {
    CHECK(b.size == 64);
    for (std::int64_t index : b.indices) CHECK(index == expected++);
  }
  config.batch_size = 251;
  CHECK(error_of([&] { Loader too_big(*dataset, augment, config); }).find("leaves no batch") !=
        std::string::npos);
}

TEST_CASE("the caller's allocator provides every image buffer, and buffers are recycled") {
  auto dataset = random_dataset(640, 28, 28, 1, 10, 45);
  AugmentConfig augment = default_augment(dataset->info(), true);
  std::atomic<int> allocations{0}, releases{0};
  LoaderConfig config;
  config.batch_size = 32;
  config.workers = 2;
  config.prefetch = 3;
  config.allocator.name = "counting";
  config.allocator.allocate = [&](std::size_t floats) {
    ++allocations;
    float* p = new float[floats];
    std::fill(p, p + floats, std::numeric_limits<float>::quiet_NaN());  // poisoned
    return p;
  };
  config.allocator.release = [&](float* p, std::size_t) {
    ++releases;
    delete[] p;
  };
  {
    Loader loader(*dataset, augment, config);
    Batch batch;
    for (std::int64_t epoch = 0; epoch < 3; ++epoch) {
      loader.start_epoch(epoch);
      std::int64_t seen = 0;
      while (loader.next(&batch)) {
        for (std::size_t i = 0; i < static_cast<std::size_t>(batch.size) * batch.image_floats();
             ++i) {
          REQUIRE(std::isfinite(batch.images.data()[i]));
        }
        seen += batch.size;
      }
      CHECK(seen == 640);
    }
    // 60 batches, but only the ring's buffers plus the one the caller holds were made.
    CHECK(allocations.load() <= 3 + 1);
  }
  CHECK(allocations.load() == releases.load());
}

TEST_CASE("abandoning an epoch part-way, then a full epoch; next() before start_epoch") {
  auto dataset = random_dataset(500, 28, 28, 1, 10, 46);
  AugmentConfig augment = default_augment(dataset->info(), true);
  LoaderConfig config;
  config.batch_size = 25;
  config.workers = 2;
  Loader loader(*dataset, augment, config);
  Batch batch;
  CHECK(error_of([&] { loader.next(&batch); }).find("start_epoch") != std::string::npos);
  loader.start_epoch(0);
  REQUIRE(loader.next(&batch));
  REQUIRE(loader.next(&batch));
  std::vector<Copy> full = run_epoch(loader, 1);  // restarts while workers are busy
  std::int64_t total = 0;
  for (const Copy& b : full) total += b.size;
  CHECK(total == 500);
  LoaderConfig fresh_config = config;
  Loader fresh(*dataset, augment, fresh_config);
  check_same(full, run_epoch(fresh, 1));
}

TEST_CASE("folder source: same bytes with 1 and 2 workers") {
  TempDir dir;
  std::mt19937_64 rng(47);
  for (int c = 0; c < 3; ++c) {
    std::filesystem::create_directories(dir.path() / ("c" + std::to_string(c)));
    for (int i = 0; i < 5; ++i) {
      std::string name =
          dir / ("c" + std::to_string(c) + "/" + std::to_string(i) + (i % 2 ? ".jpg" : ".png"));
      Image image = smooth_image(30 + 7 * i, 40 + 3 * c, 3, rng);
      if (i % 2)
        write_jpeg(name, image.view(), 90);
      else
        write_png(name, image.view());
    }
  }
  auto dataset = open_dataset("folder:" + dir.path().string());
  AugmentConfig augment = default_augment(dataset->info(), true, 24);
  std::vector<std::vector<Copy>> runs;
  for (int workers : {1, 2}) {
    LoaderConfig config;
    config.batch_size = 4;
    config.workers = workers;
    Loader loader(*dataset, augment, config);
    runs.push_back(run_epoch(loader, 3));
  }
  check_same(runs[0], runs[1]);
}
