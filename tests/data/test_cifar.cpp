// CIFAR-10/100 binary batches made by the test: counts, labels, planar-to-interleaved pixel
// order, class names, the archive sub-folder, and the bad-input messages (truncated batch,
// missing batch, label out of range).
#include <doctest/doctest.h>

#include <random>

#include "engine/data/cifar.h"
#include "tests/data/data_fixtures.h"

using namespace sela::data;
using namespace sela::data::testing;

namespace {

struct Records {
  std::vector<std::uint8_t> images;  // (n, 32, 32, 3)
  std::vector<std::int64_t> labels;  // (n,)
};

Records random_records(std::int64_t n, int classes, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Records r;
  for (std::int64_t i = 0; i < n; ++i) {
    Image image = random_image(32, 32, 3, rng);
    r.images.insert(r.images.end(), image.pixels.begin(), image.pixels.end());
    r.labels.push_back(static_cast<std::int64_t>(rng() % static_cast<unsigned>(classes)));
  }
  return r;
}

}  // namespace

TEST_CASE("cifar10: five train batches and a test batch, pixels reordered exactly") {
  TempDir dir;
  std::filesystem::path folder = dir.path() / "cifar-10-batches-bin";  // the archive layout
  std::filesystem::create_directory(folder);
  std::vector<Records> batches;
  for (int b = 1; b <= 5; ++b) {
    batches.push_back(random_records(3 + b, 10, 100 + static_cast<std::uint64_t>(b)));
    write_cifar_batch((folder / ("data_batch_" + std::to_string(b) + ".bin")).string(), 10,
                      batches.back().images.data(), batches.back().labels.data(),
                      static_cast<std::int64_t>(batches.back().labels.size()));
  }
  Records test = random_records(7, 10, 200);
  write_cifar_batch((folder / "test_batch.bin").string(), 10, test.images.data(),
                    test.labels.data(), 7);

  // The file layout itself: label byte, then the R plane, G plane, B plane.
  std::vector<std::uint8_t> raw = read_bytes((folder / "test_batch.bin").string());
  REQUIRE(raw.size() == 7u * 3073u);
  CHECK(raw[0] == test.labels[0]);
  CHECK(raw[1 + 5 * 32 + 9] == test.images[(5 * 32 + 9) * 3 + 0]);
  CHECK(raw[1 + 1024 + 5 * 32 + 9] == test.images[(5 * 32 + 9) * 3 + 1]);
  CHECK(raw[1 + 2048 + 5 * 32 + 9] == test.images[(5 * 32 + 9) * 3 + 2]);

  auto train = open_dataset("cifar10:" + dir.path().string());  // finds the sub-folder
  REQUIRE(train->size() == 4 + 5 + 6 + 7 + 8);
  CHECK(train->info().channels == 3);
  CHECK(train->info().height == 32);
  CHECK(train->num_classes() == 10);
  CHECK(train->info().class_names[0] == "airplane");
  std::int64_t i = 0;
  for (const Records& r : batches) {
    for (std::size_t k = 0; k < r.labels.size(); ++k, ++i) {
      CHECK(train->true_class(i) == r.labels[k]);
      ImageView view = train->image(i, nullptr);
      CHECK(std::equal(view.pixels, view.pixels + 3072, r.images.data() + k * 3072));
    }
  }
  OpenOptions split;
  split.split = "test";
  auto test_set = open_dataset("cifar10:" + folder.string(), split);
  REQUIRE(test_set->size() == 7);
  ImageView view = test_set->image(6, nullptr);
  CHECK(std::equal(view.pixels, view.pixels + 3072, test.images.data() + 6 * 3072));
  std::vector<std::int64_t> counts(10, 0);
  for (std::int64_t label : test.labels) ++counts[static_cast<std::size_t>(label)];
  CHECK(test_set->class_counts() == counts);
}

TEST_CASE("cifar100: fine labels, names from fine_label_names.txt") {
  TempDir dir;
  Records train = random_records(9, 100, 300);
  Records test = random_records(4, 100, 301);
  write_cifar_batch(dir / "train.bin", 100, train.images.data(), train.labels.data(), 9);
  write_cifar_batch(dir / "test.bin", 100, test.images.data(), test.labels.data(), 4);
  {
    std::ofstream names(dir / "fine_label_names.txt");
    for (int c = 0; c < 100; ++c) names << "name" << c << "\n";
  }
  auto dataset = open_dataset("cifar100:" + dir.path().string());
  REQUIRE(dataset->size() == 9);
  CHECK(dataset->num_classes() == 100);
  CHECK(dataset->info().class_names[42] == "name42");
  for (std::int64_t i = 0; i < 9; ++i) {
    CHECK(dataset->true_class(i) == train.labels[static_cast<std::size_t>(i)]);
  }
  ImageView view = dataset->image(8, nullptr);
  CHECK(std::equal(view.pixels, view.pixels + 3072, train.images.data() + 8 * 3072));
  CHECK(dataset->info().normalisation.origin == Normalisation::cifar().origin);
}

TEST_CASE("cifar bad input: truncated, missing, out-of-range label, missing folder") {
  TempDir dir;
  Records r = random_records(5, 10, 400);
  std::string path = dir / "test_batch.bin";
  write_cifar_batch(path, 10, r.images.data(), r.labels.data(), 5);
  OpenOptions split;
  split.split = "test";
  std::string spec = "cifar10:" + dir.path().string();

  SUBCASE("truncated batch: names the file, the expected and the actual size") {
    truncate_file(path, 5 * 3073 - 1000);
    std::string message = error_of([&] { open_dataset(spec, split); });
    CHECK(message.find(path) != std::string::npos);
    CHECK(message.find(std::to_string(5 * 3073 - 1000) + " bytes") != std::string::npos);
    CHECK(message.find("expected " + std::to_string(5 * 3073) + " bytes") != std::string::npos);
    CHECK(message.find("truncated") != std::string::npos);
  }
  SUBCASE("a train batch missing") {
    std::string message = error_of([&] { open_dataset(spec); });
    CHECK(message.find("data_batch_1.bin") != std::string::npos);
    CHECK(message.find("missing") != std::string::npos);
  }
  SUBCASE("label out of range (a CIFAR-100 file read as CIFAR-10)") {
    std::vector<std::uint8_t> bytes = read_bytes(path);
    bytes[3073 * 2] = 57;
    write_bytes(path, bytes);
    std::string message = error_of([&] { open_dataset(spec, split); });
    CHECK(message.find("record 2 has label 57") != std::string::npos);
  }
  SUBCASE("folder does not exist") {
    std::string message = error_of([&] { open_dataset("cifar10:" + (dir / "gone"), split); });
    CHECK(message.find("does not exist") != std::string::npos);
  }
}
