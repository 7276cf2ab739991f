// Shared helpers of the data-layer tests: a temporary folder that removes itself, random
// 8-bit images, and an in-memory data set built from them.
//
// Fixtures are always made by the tests, in a fresh mkdtemp folder under $TMPDIR (never in
// the repository), so every test states exactly what it reads.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/data/image.h"
#include "engine/error.h"
#include "tests/temp_folder.h"

namespace sela::data::testing {

// tests/temp_folder.h's folder, with the path and "/" the data tests use.
class TempDir {
 public:
  TempDir() : folder_("sela-data-test"), path_(folder_.path) {}
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  sela::test::TempFolder folder_;
  std::filesystem::path path_;
};

// Random pixels, every value used, never all zeros.
inline Image random_image(int height, int width, int channels, std::mt19937_64& rng) {
  Image image(height, width, channels);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& p : image.pixels) p = static_cast<std::uint8_t>(byte(rng));
  image.pixels[0] = 7;  // at least one non-zero value whatever the draw
  return image;
}

// A smooth random image (sum of a few sinusoids): JPEG keeps it close, so decoded values
// can be compared with a tolerance.
inline Image smooth_image(int height, int width, int channels, std::mt19937_64& rng) {
  Image image(height, width, channels);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int c = 0; c < channels; ++c) {
    double fy = 1 + 2 * u(rng), fx = 1 + 2 * u(rng), phase = 6.28 * u(rng),
           base = 60 + 120 * u(rng);
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        double v =
            base + 50 * std::sin(fy * 3.14159 * y / height + fx * 3.14159 * x / width + phase);
        image.at(y, x, c) =
            static_cast<std::uint8_t>(std::lround(std::min(255.0, std::max(0.0, v))));
      }
    }
  }
  return image;
}

// An in-memory data set of `count` random images with classes i % classes.
inline std::unique_ptr<InMemoryDataset> random_dataset(std::int64_t count, int height, int width,
                                                       int channels, int classes,
                                                       std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint8_t> pixels;
  std::vector<std::int64_t> labels;
  for (std::int64_t i = 0; i < count; ++i) {
    Image image = random_image(height, width, channels, rng);
    pixels.insert(pixels.end(), image.pixels.begin(), image.pixels.end());
    labels.push_back(i % classes);
  }
  DatasetInfo info;
  info.kind = "test";
  info.spec = "test:random";
  info.channels = channels;
  info.height = height;
  info.width = width;
  for (int c = 0; c < classes; ++c) info.class_names.push_back("class" + std::to_string(c));
  info.normalisation = channels == 1 ? Normalisation::fashion_mnist() : Normalisation::cifar();
  return std::make_unique<InMemoryDataset>(std::move(info), std::move(labels), std::move(pixels),
                                           0);
}

inline void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// Cuts a file to its first `keep` bytes.
inline void truncate_file(const std::string& path, std::size_t keep) {
  std::vector<std::uint8_t> bytes = read_bytes(path);
  REQUIRE(keep < bytes.size());
  bytes.resize(keep);
  write_bytes(path, bytes);
}

// Runs `action` and returns the sela::Error's text; fails the test when nothing is thrown.
template <typename Action>
std::string error_of(Action&& action) {
  try {
    action();
  } catch (const sela::Error& error) {
    return error.what();
  }
  FAIL("expected a sela::Error, nothing was thrown");
  return {};
}

}  // namespace sela::data::testing
