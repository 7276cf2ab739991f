// The real Fashion-MNIST files from Debian's dataset-fashion-mnist package: 60,000 train and
// 10,000 test images of 28x28, 6,000 and 1,000 per class, and the normalisation constants
// stated in engine/data/dataset.cpp measured on the training pixels. Skipped, by name, when
// the package is not installed (.ci/run installs it).
#include <doctest/doctest.h>

#include <filesystem>

#include "engine/data/idx.h"
#include "engine/data/loader.h"
#include "tests/data/data_fixtures.h"

using namespace sela::data;

namespace {

bool have_fashion_mnist() {
  return std::filesystem::exists(std::string(kFashionMnistDefaultDir) +
                                 "/train-images-idx3-ubyte.gz") ||
         std::filesystem::exists(std::string(kFashionMnistDefaultDir) + "/train-images-idx3-ubyte");
}

}  // namespace

TEST_CASE("fashion-mnist package present (else the real-data tests are SKIPPED)") {
  if (!have_fashion_mnist()) {
    MESSAGE("SKIPPED: real Fashion-MNIST tests: "
            << kFashionMnistDefaultDir << " is absent (apt-get install dataset-fashion-mnist)");
  }
}

TEST_CASE("real Fashion-MNIST: 60,000/10,000 samples, 6,000/1,000 per class, 28x28" *
          doctest::skip(!have_fashion_mnist())) {
  OpenOptions train_split, test_split;
  test_split.split = "test";
  auto train = open_dataset("fashion-mnist", train_split);
  auto test = open_dataset("fashion-mnist", test_split);
  REQUIRE(train->size() == 60000);
  REQUIRE(test->size() == 10000);
  CHECK(train->info().height == 28);
  CHECK(train->info().width == 28);
  CHECK(train->info().channels == 1);
  CHECK(train->num_classes() == 10);
  CHECK(train->class_counts() == std::vector<std::int64_t>(10, 6000));
  CHECK(test->class_counts() == std::vector<std::int64_t>(10, 1000));

  // The stated normalisation is what the training pixels give.
  const auto* memory = dynamic_cast<const InMemoryDataset*>(train.get());
  REQUIRE(memory != nullptr);
  Normalisation measured =
      measure_normalisation(memory->pixels(), 60000LL * 28 * 28, 1, "measured");
  Normalisation stated = Normalisation::fashion_mnist();
  MESSAGE("Fashion-MNIST train pixels: mean " << measured.mean[0] << ", std " << measured.std[0]);
  CHECK(std::fabs(measured.mean[0] - stated.mean[0]) <= 5e-5 + 5e-4 * stated.mean[0]);
  CHECK(std::fabs(measured.std[0] - stated.std[0]) <= 5e-5 + 5e-4 * stated.std[0]);

  // One augmented batch of the real data: finite and padded to 32x32.
  AugmentConfig augment = default_augment(train->info(), true);
  LoaderConfig config;
  config.batch_size = 128;
  Loader loader(*train, augment, config);
  loader.start_epoch(0);
  Batch batch;
  REQUIRE(loader.next(&batch));
  CHECK(batch.size == 128);
  CHECK(batch.height == 32);
  CHECK(batch.width == 32);
  for (std::size_t i = 0; i < 128 * batch.image_floats(); ++i)
    REQUIRE(std::isfinite(batch.images.data()[i]));
}
