// Data sets: what every source (IDX, CIFAR, image folders) looks like to augmentation, the
// loader and the `sela` subcommands, and the one spec string that names a source.
//
// A Dataset is a fixed, ordered list of samples. Sample i has a dataset index i (SeLa's
// pseudo-labels are per index, so the order never changes once opened) and a true class or
// -1 (evaluation only). Pixels come out as 8-bit (H, W, C) through image(): sources that fit
// in memory (IDX, CIFAR) hold them decoded and hand out views; image folders decode the file
// on each call into the caller's scratch Image, so that worker threads can decode in
// parallel. Everything else about the source (files, size, class names, normalisation) is
// plain data in DatasetInfo.
//
// Specs (one for every subcommand's --data):
//   fashion-mnist[:DIR]       IDX files, .gz or raw; DIR defaults to
//                             /usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist)
//   idx:IMAGES[,LABELS]       any unsigned-byte IDX pair (labels optional)
//   cifar10:DIR, cifar100:DIR the public binary batches (DIR or DIR/cifar-10-batches-bin ...)
//   folder:DIR                DIR/<class>/<image> (classes sorted by name) or a flat folder
//                             of images without labels; decoded with stb_image
// Splits: fashion-mnist and cifar have train|test; idx and folder have none (a split other
// than train is an error that says how to point at another split's files).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/image.h"

namespace sela::data {

// Per-channel mean and standard deviation in [0, 1] pixel units, applied after
// augmentation: x = (pixel/255 - mean[c]) / std[c].
struct Normalisation {
  std::array<float, 3> mean{0.5f, 0.5f, 0.5f};
  std::array<float, 3> std{0.5f, 0.5f, 0.5f};
  std::string origin;  // where the values come from, for the summary

  // Fashion-MNIST training set (60,000 images, 28x28 before padding), measured by
  // tests/data/test_fashion_mnist.cpp on the Debian files: mean 0.2860, std 0.3530.
  static Normalisation fashion_mnist();
  // CIFAR: the values the reference code (yukimasano/self-label, cifar.py) uses for both
  // CIFAR-10 and CIFAR-100: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
  static Normalisation cifar();
  // ImageNet: torchvision's mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
  static Normalisation imagenet();
};

struct DatasetInfo {
  std::string spec;                      // as given to open_dataset
  std::string kind;                      // fashion-mnist | idx | cifar10 | cifar100 | folder
  std::string split;                     // train | test, or "" where the source has no splits
  std::vector<std::string> files;        // files read (IDX, CIFAR) or the folder's root
  int channels = 0;                      // 1 or 3
  int height = 0, width = 0;             // 0 when images differ in size (folders)
  std::vector<std::string> class_names;  // empty when the source has no labels
  Normalisation normalisation;
  std::int64_t skipped_bad = 0;               // files left out at open (folder with skip_bad)
  std::vector<std::string> skipped_examples;  // the first few "path: reason"
};

struct OpenOptions {
  std::string split = "train";  // train | test; "" = the source's default (train)
  bool skip_bad = false;        // folders: leave out files that fail a header probe
};

class Dataset;

// Opens the source a spec names (see the top of this file). Errors name the spec, the path
// and what was expected.
std::unique_ptr<Dataset> open_dataset(const std::string& spec, const OpenOptions& options = {});

class Dataset {
 public:
  virtual ~Dataset() = default;
  Dataset(const Dataset&) = delete;
  Dataset& operator=(const Dataset&) = delete;

  const DatasetInfo& info() const { return info_; }
  std::int64_t size() const { return static_cast<std::int64_t>(classes_.size()); }
  std::int64_t num_classes() const { return static_cast<std::int64_t>(info_.class_names.size()); }
  bool labelled() const { return !info_.class_names.empty(); }
  // True class of sample `index`, or -1 when the source has no labels.
  std::int64_t true_class(std::int64_t index) const;
  const std::vector<std::int64_t>& true_classes() const { return classes_; }  // (N,)
  // Samples per class, (num_classes,).
  std::vector<std::int64_t> class_counts() const;

  // Sample `index` as 8-bit (H, W, C): a view into the data set's memory, or into `scratch`
  // after decoding a file. Throws sela::Error naming the file when it cannot be decoded.
  // Safe to call from several threads at once with different scratch images.
  virtual ImageView image(std::int64_t index, Image* scratch) const = 0;
  // Where the sample comes from, for messages: "DIR/cat/001.jpg", "FILE[123]".
  virtual std::string sample_name(std::int64_t index) const = 0;

 protected:
  Dataset(DatasetInfo info, std::vector<std::int64_t> classes);
  friend std::unique_ptr<Dataset> open_dataset(const std::string& spec, const OpenOptions& options);
  void check_index(std::int64_t index) const;

  DatasetInfo info_;
  std::vector<std::int64_t> classes_;  // (N,) true class or -1
};

// A data set whose images are all decoded, equal-sized, in one buffer.
class InMemoryDataset : public Dataset {
 public:
  // storage[offset ...] holds N images of (info.height, info.width, info.channels) bytes,
  // N = classes.size(). `storage` may carry a file header before `offset` (IDX), so a
  // gigabyte-sized file is not copied once more.
  InMemoryDataset(DatasetInfo info, std::vector<std::int64_t> classes,
                  std::vector<std::uint8_t> storage, std::size_t offset);

  ImageView image(std::int64_t index, Image* scratch) const override;
  std::string sample_name(std::int64_t index) const override;
  const std::uint8_t* pixels() const { return storage_.data() + offset_; }  // (N, H, W, C)

 private:
  std::vector<std::uint8_t> storage_;
  std::size_t offset_ = 0;
  std::size_t image_bytes_ = 0;
};

// Per-channel mean and std in [0, 1] units of `pixels` interleaved (count, channels) bytes
// (for `idx:` sources, which carry no known statistics).
Normalisation measure_normalisation(const std::uint8_t* pixels, std::int64_t count, int channels,
                                    std::string origin);

// Multi-line human-readable summary: source, split, files, samples, image size, channels,
// classes with their counts, normalisation, skipped files.
std::string describe(const Dataset& dataset);

}  // namespace sela::data
