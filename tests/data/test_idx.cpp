// IDX files and the idx: source: round trips (raw and gzipped), labels, pixel values, and
// every bad-input case giving its message (truncated raw, truncated gzip, wrong magic,
// wrong type, label count mismatch, missing file).
#include <doctest/doctest.h>

#include <random>

#include "engine/data/idx.h"
#include "tests/data/data_fixtures.h"

using namespace sela::data;
using namespace sela::data::testing;

namespace {

struct IdxPair {
  std::vector<std::uint8_t> images;  // (n, h, w)
  std::vector<std::uint8_t> labels;  // (n,)
};

IdxPair random_pair(std::int64_t n, int h, int w, int classes, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  IdxPair pair;
  for (std::int64_t i = 0; i < n; ++i) {
    Image image = random_image(h, w, 1, rng);
    pair.images.insert(pair.images.end(), image.pixels.begin(), image.pixels.end());
    pair.labels.push_back(static_cast<std::uint8_t>(rng() % static_cast<unsigned>(classes)));
  }
  return pair;
}

}  // namespace

TEST_CASE("idx round trip, raw and gzipped: dims, pixels and labels come back exactly") {
  TempDir dir;
  const std::int64_t n = 37;
  const int h = 28, w = 28;
  IdxPair pair = random_pair(n, h, w, 10, 11);
  for (bool gz : {false, true}) {
    CAPTURE(gz);
    std::string images = dir / (gz ? "img.idx3.gz" : "img.idx3");
    std::string labels = dir / (gz ? "lab.idx1.gz" : "lab.idx1");
    write_idx(images, {n, h, w}, pair.images.data(), gz);
    write_idx(labels, {n}, pair.labels.data(), gz);
    bool was_gz = !gz;
    read_maybe_gzipped(images, "test", &was_gz);
    CHECK(was_gz == gz);

    IdxArray back = read_idx(images);
    REQUIRE(back.dims == std::vector<std::int64_t>{n, h, w});
    REQUIRE(back.elements() == n * h * w);
    CHECK(std::equal(pair.images.begin(), pair.images.end(), back.data()));

    auto dataset = open_dataset("idx:" + images + "," + labels);
    REQUIRE(dataset->size() == n);
    CHECK(dataset->info().kind == "idx");
    CHECK(dataset->info().channels == 1);
    CHECK(dataset->info().height == h);
    CHECK(dataset->info().width == w);
    std::int64_t largest = *std::max_element(pair.labels.begin(), pair.labels.end());
    CHECK(dataset->num_classes() == largest + 1);
    std::vector<std::int64_t> counts(static_cast<std::size_t>(largest + 1), 0);
    for (std::int64_t i = 0; i < n; ++i) {
      CHECK(dataset->true_class(i) == pair.labels[static_cast<std::size_t>(i)]);
      ++counts[pair.labels[static_cast<std::size_t>(i)]];
      ImageView view = dataset->image(i, nullptr);
      REQUIRE(view.height == h);
      REQUIRE(view.width == w);
      REQUIRE(view.channels == 1);
      CHECK(std::equal(view.pixels, view.pixels + h * w, pair.images.data() + i * h * w));
    }
    CHECK(dataset->class_counts() == counts);

    // Normalisation of an idx source is measured on its pixels: check against a double loop.
    double sum = 0, sum_sq = 0;
    for (std::uint8_t v : pair.images) {
      sum += v / 255.0;
      sum_sq += (v / 255.0) * (v / 255.0);
    }
    double mean = sum / static_cast<double>(pair.images.size());
    double sd = std::sqrt(sum_sq / static_cast<double>(pair.images.size()) - mean * mean);
    CHECK(std::fabs(dataset->info().normalisation.mean[0] - mean) <= 1e-6 + 1e-5 * mean);
    CHECK(std::fabs(dataset->info().normalisation.std[0] - sd) <= 1e-6 + 1e-5 * sd);
  }
}

TEST_CASE("idx without labels: every true class is -1, no classes") {
  TempDir dir;
  IdxPair pair = random_pair(5, 8, 6, 3, 12);
  std::string images = dir / "img.idx3";
  write_idx(images, {5, 8, 6}, pair.images.data(), false);
  auto dataset = open_dataset("idx:" + images);
  CHECK(dataset->size() == 5);
  CHECK(!dataset->labelled());
  CHECK(dataset->num_classes() == 0);
  for (std::int64_t i = 0; i < 5; ++i) CHECK(dataset->true_class(i) == -1);
  CHECK(describe(*dataset).find("unlabelled") != std::string::npos);
}

TEST_CASE("idx with a channel dimension (N, H, W, 3) keeps interleaved pixels") {
  TempDir dir;
  std::mt19937_64 rng(13);
  Image a = random_image(4, 5, 3, rng), b = random_image(4, 5, 3, rng);
  std::vector<std::uint8_t> pixels(a.pixels);
  pixels.insert(pixels.end(), b.pixels.begin(), b.pixels.end());
  std::string images = dir / "rgb.idx";
  write_idx(images, {2, 4, 5, 3}, pixels.data(), true);
  auto dataset = open_dataset("idx:" + images);
  REQUIRE(dataset->info().channels == 3);
  ImageView view = dataset->image(1, nullptr);
  CHECK(std::equal(b.pixels.begin(), b.pixels.end(), view.pixels));
}

TEST_CASE("idx bad input: each case names the file and what was expected") {
  TempDir dir;
  IdxPair pair = random_pair(20, 28, 28, 10, 14);
  std::string raw = dir / "img.idx3";
  std::string gz = dir / "img.idx3.gz";
  std::string labels = dir / "lab.idx1";
  write_idx(raw, {20, 28, 28}, pair.images.data(), false);
  write_idx(gz, {20, 28, 28}, pair.images.data(), true);
  write_idx(labels, {20}, pair.labels.data(), false);

  SUBCASE("truncated raw file: expected and actual size") {
    const std::size_t full = 16 + 20 * 28 * 28;
    truncate_file(raw, full - 100);
    std::string message = error_of([&] { open_dataset("idx:" + raw + "," + labels); });
    CHECK(message.find(raw) != std::string::npos);
    CHECK(message.find("truncated") != std::string::npos);
    CHECK(message.find("expected " + std::to_string(full) + " bytes") != std::string::npos);
    CHECK(message.find("found " + std::to_string(full - 100)) != std::string::npos);
  }
  SUBCASE("truncated gzip file: the gzip stream ends early") {
    std::size_t size = read_bytes(gz).size();
    truncate_file(gz, size / 2);
    std::string message = error_of([&] { read_idx(gz); });
    CHECK(message.find(gz) != std::string::npos);
    CHECK(message.find("gzip data ends early") != std::string::npos);
  }
  SUBCASE("gzipped IDX whose payload is short: expected and actual size after gunzip") {
    std::vector<std::uint8_t> bytes = read_bytes(raw);
    const std::size_t full = bytes.size();
    bytes.resize(full - 28);  // one image row short, then gzipped intact
    write_maybe_gzipped(gz, bytes, true);
    std::string message = error_of([&] { open_dataset("idx:" + gz + "," + labels); });
    CHECK(message.find(gz) != std::string::npos);
    CHECK(message.find("expected " + std::to_string(full) + " bytes") != std::string::npos);
    CHECK(message.find("found " + std::to_string(full - 28) + " bytes (after gunzip)") !=
          std::string::npos);
  }
  SUBCASE("extra bytes after the payload") {
    std::vector<std::uint8_t> bytes = read_bytes(raw);
    bytes.push_back(1);
    write_bytes(raw, bytes);
    std::string message = error_of([&] { read_idx(raw); });
    CHECK(message.find("extra bytes") != std::string::npos);
  }
  SUBCASE("not an IDX file") {
    write_bytes(raw, {0x89, 'P', 'N', 'G', 0, 0, 0, 0});
    std::string message = error_of([&] { read_idx(raw); });
    CHECK(message.find("not an IDX file") != std::string::npos);
    CHECK(message.find(raw) != std::string::npos);
  }
  SUBCASE("an element type other than unsigned byte") {
    write_bytes(raw, {0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0});
    std::string message = error_of([&] { read_idx(raw); });
    CHECK(message.find("float32") != std::string::npos);
  }
  SUBCASE("label count differs from image count") {
    write_idx(labels, {19}, pair.labels.data(), false);
    std::string message = error_of([&] { open_dataset("idx:" + raw + "," + labels); });
    CHECK(message.find("19 labels") != std::string::npos);
    CHECK(message.find("20 images") != std::string::npos);
  }
  SUBCASE("missing file") {
    std::string message = error_of([&] { open_dataset("idx:" + (dir / "nope.idx")); });
    CHECK(message.find("nope.idx") != std::string::npos);
    CHECK(message.find("cannot open") != std::string::npos);
  }
  SUBCASE("idx has no splits") {
    std::string message = error_of([&] {
      OpenOptions options;
      options.split = "test";
      open_dataset("idx:" + raw, options);
    });
    CHECK(message.find("no splits") != std::string::npos);
  }
  SUBCASE("unknown source kind") {
    std::string message = error_of([&] { open_dataset("mnist:" + raw); });
    CHECK(message.find("unknown data source 'mnist'") != std::string::npos);
  }
}

TEST_CASE("fashion-mnist: folder layout, names and missing files, on test-made files") {
  TempDir dir;
  IdxPair train = random_pair(30, 28, 28, 10, 15);
  IdxPair test = random_pair(10, 28, 28, 10, 16);
  write_idx(dir / "train-images-idx3-ubyte.gz", {30, 28, 28}, train.images.data(), true);
  write_idx(dir / "train-labels-idx1-ubyte.gz", {30}, train.labels.data(), true);
  write_idx(dir / "t10k-images-idx3-ubyte", {10, 28, 28}, test.images.data(), false);
  write_idx(dir / "t10k-labels-idx1-ubyte", {10}, test.labels.data(), false);
  std::string spec = "fashion-mnist:" + dir.path().string();
  auto train_set = open_dataset(spec);
  CHECK(train_set->size() == 30);
  CHECK(train_set->info().split == "train");
  CHECK(train_set->num_classes() == 10);
  CHECK(train_set->info().class_names[9] == "Ankle boot");
  CHECK(train_set->info().normalisation.origin == Normalisation::fashion_mnist().origin);
  OpenOptions test_split;
  test_split.split = "test";
  auto test_set = open_dataset(spec, test_split);
  CHECK(test_set->size() == 10);
  CHECK(test_set->true_class(3) == test.labels[3]);
  ImageView view = test_set->image(9, nullptr);
  CHECK(std::equal(view.pixels, view.pixels + 28 * 28, test.images.data() + 9 * 28 * 28));

  std::filesystem::remove(dir / "t10k-labels-idx1-ubyte");
  std::string message = error_of([&] { open_dataset(spec, test_split); });
  CHECK(message.find("no test labels file") != std::string::npos);
  CHECK(message.find("t10k-labels-idx1-ubyte.gz") != std::string::npos);

  OpenOptions bad_split;
  bad_split.split = "val";
  CHECK(error_of([&] { open_dataset(spec, bad_split); }).find("unknown split 'val'") !=
        std::string::npos);
  CHECK(error_of([&] {
          open_dataset("fashion-mnist:" + (dir / "absent"));
        }).find("does not exist") != std::string::npos);
}
