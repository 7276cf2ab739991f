// Implementation of engine/data/dataset.h: the shared Dataset pieces and the spec parser.
#include "engine/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "engine/data/cifar.h"
#include "engine/data/folder.h"
#include "engine/data/idx.h"
#include "engine/error.h"

namespace sela::data {

Normalisation Normalisation::fashion_mnist() {
  return Normalisation{
      {0.2860f, 0.2860f, 0.2860f}, {0.3530f, 0.3530f, 0.3530f}, "Fashion-MNIST training set"};
}

Normalisation Normalisation::cifar() {
  return Normalisation{{0.4914f, 0.4822f, 0.4465f},
                       {0.2023f, 0.1994f, 0.2010f},
                       "CIFAR, as the reference code uses"};
}

Normalisation Normalisation::imagenet() {
  return Normalisation{{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}, "ImageNet"};
}

Dataset::Dataset(DatasetInfo info, std::vector<std::int64_t> classes)
    : info_(std::move(info)), classes_(std::move(classes)) {}

void Dataset::check_index(std::int64_t index) const {
  SELA_CHECK(
      index >= 0 && index < size(), info_.kind,
      "sample index " << index << " out of range; the data set holds " << size() << " samples");
}

std::int64_t Dataset::true_class(std::int64_t index) const {
  check_index(index);
  return classes_[static_cast<std::size_t>(index)];
}

std::vector<std::int64_t> Dataset::class_counts() const {
  std::vector<std::int64_t> counts(info_.class_names.size(), 0);
  for (std::int64_t c : classes_) {
    if (c >= 0 && c < static_cast<std::int64_t>(counts.size()))
      ++counts[static_cast<std::size_t>(c)];
  }
  return counts;
}

InMemoryDataset::InMemoryDataset(DatasetInfo info, std::vector<std::int64_t> classes,
                                 std::vector<std::uint8_t> storage, std::size_t offset)
    : Dataset(std::move(info), std::move(classes)), storage_(std::move(storage)), offset_(offset) {
  SELA_CHECK(info_.height > 0 && info_.width > 0 && (info_.channels == 1 || info_.channels == 3),
             info_.kind,
             "internal: in-memory images must have a size and 1 or 3 channels, got "
                 << info_.height << "x" << info_.width << "x" << info_.channels);
  image_bytes_ = static_cast<std::size_t>(info_.height) * static_cast<std::size_t>(info_.width) *
                 static_cast<std::size_t>(info_.channels);
  SELA_CHECK(offset_ + image_bytes_ * classes_.size() <= storage_.size(), info_.kind,
             "internal: " << classes_.size() << " images of " << image_bytes_
                          << " bytes do not fit in " << storage_.size() - offset_ << " bytes");
}

ImageView InMemoryDataset::image(std::int64_t index, Image*) const {
  check_index(index);
  return ImageView{pixels() + static_cast<std::size_t>(index) * image_bytes_, info_.height,
                   info_.width, info_.channels};
}

std::string InMemoryDataset::sample_name(std::int64_t index) const {
  std::string file = info_.files.empty() ? info_.kind : info_.files.front();
  return file + "[" + std::to_string(index) + "]";
}

Normalisation measure_normalisation(const std::uint8_t* pixels, std::int64_t count, int channels,
                                    std::string origin) {
  SELA_CHECK(channels == 1 || channels == 3, "data",
             "normalisation of " << channels << " channels");
  Normalisation norm;
  norm.origin = std::move(origin);
  for (int c = 0; c < channels; ++c) {
    // Exact integer sums: no rounding drift over tens of millions of pixels.
    std::uint64_t sum = 0, sum_sq = 0;
    for (std::int64_t i = 0; i < count; ++i) {
      std::uint64_t v = pixels[i * channels + c];
      sum += v;
      sum_sq += v * v;
    }
    double n = static_cast<double>(std::max<std::int64_t>(count, 1));
    double mean = static_cast<double>(sum) / n / 255.0;
    double var = static_cast<double>(sum_sq) / n / (255.0 * 255.0) - mean * mean;
    double sd = std::sqrt(std::max(var, 0.0));
    norm.mean[static_cast<std::size_t>(c)] = static_cast<float>(mean);
    norm.std[static_cast<std::size_t>(c)] = static_cast<float>(sd > 1e-6 ? sd : 1.0);
  }
  if (channels == 1) {
    norm.mean[1] = norm.mean[2] = norm.mean[0];
    norm.std[1] = norm.std[2] = norm.std[0];
  }
  return norm;
}

std::unique_ptr<Dataset> open_dataset(const std::string& spec, const OpenOptions& options) {
  const char* op = "--data";
  std::string split = options.split.empty() ? "train" : options.split;
  std::string kind = spec, arg;
  bool has_arg = false;
  auto colon = spec.find(':');
  if (colon != std::string::npos) {
    kind = spec.substr(0, colon);
    arg = spec.substr(colon + 1);
    has_arg = true;
  }
  const char* forms =
      "fashion-mnist[:DIR], idx:IMAGES[,LABELS], cifar10:DIR, cifar100:DIR, folder:DIR";
  auto no_splits = [&](const char* what) {
    SELA_CHECK(split == "train", op,
               "'" << spec << "': " << what << " sources have no splits, got --split " << split
                   << "; point the spec at the other split's "
                   << (kind == "folder" ? "folder (e.g. folder:DIR/val)" : "files"));
  };
  std::unique_ptr<Dataset> dataset;
  if (kind == "fashion-mnist") {
    dataset = open_fashion_mnist(has_arg && !arg.empty() ? arg : kFashionMnistDefaultDir, split);
  } else if (kind == "idx") {
    SELA_CHECK(!arg.empty(), op, "'" << spec << "': expected idx:IMAGES[,LABELS]");
    no_splits("idx");
    auto comma = arg.find(',');
    std::string images = arg.substr(0, comma);
    std::string labels = comma == std::string::npos ? "" : arg.substr(comma + 1);
    SELA_CHECK(!images.empty(), op, "'" << spec << "': expected idx:IMAGES[,LABELS]");
    dataset = open_idx(images, labels);
  } else if (kind == "cifar10" || kind == "cifar100") {
    SELA_CHECK(!arg.empty(), op, "'" << spec << "': expected " << kind << ":DIR");
    dataset = open_cifar(arg, kind == "cifar10" ? 10 : 100, split);
  } else if (kind == "folder") {
    SELA_CHECK(!arg.empty(), op, "'" << spec << "': expected folder:DIR");
    no_splits("folder");
    dataset = open_image_folder(arg, options.skip_bad);
  } else {
    SELA_FAIL_HINT(op, "unknown data source '" << kind << "' in '" << spec << "'",
                   std::string("expected one of ") + forms);
  }
  dataset->info_.spec = spec;  // the sources fill in everything else
  return dataset;
}

std::string describe(const Dataset& dataset) {
  const DatasetInfo& info = dataset.info();
  std::ostringstream out;
  out << "source      " << info.spec << " (" << info.kind
      << (info.split.empty() ? "" : ", split " + info.split) << ")\n";
  for (std::size_t i = 0; i < info.files.size(); ++i) {
    out << (i == 0 ? "files       " : "            ") << info.files[i] << "\n";
  }
  out << "samples     " << dataset.size() << "\n";
  out << "images      ";
  if (info.height > 0) {
    out << info.height << "x" << info.width;
  } else {
    out << "sizes vary (decoded per file)";
  }
  out << ", " << info.channels << " channel" << (info.channels == 1 ? "" : "s") << ", 8-bit\n";
  std::vector<std::int64_t> counts = dataset.class_counts();
  if (counts.empty()) {
    out << "classes     none (unlabelled: every true class is -1)\n";
  } else {
    auto [lo, hi] = std::minmax_element(counts.begin(), counts.end());
    out << "classes     " << counts.size() << " (" << *lo << " to " << *hi << " samples each)\n";
    std::size_t show = counts.size() <= 20 ? counts.size() : 10;
    for (std::size_t c = 0; c < show; ++c) {
      out << "  " << std::setw(4) << c << "  " << std::left << std::setw(24) << info.class_names[c]
          << std::right << std::setw(8) << counts[c] << "\n";
    }
    if (show < counts.size()) out << "  ... " << counts.size() - show << " more classes\n";
  }
  out << std::fixed << std::setprecision(4);
  out << "normalise   mean (";
  for (int c = 0; c < info.channels; ++c) out << (c ? ", " : "") << info.normalisation.mean[c];
  out << ") std (";
  for (int c = 0; c < info.channels; ++c) out << (c ? ", " : "") << info.normalisation.std[c];
  out << ")  [" << info.normalisation.origin << "]\n";
  if (info.kind == "folder") {
    out << "bad files   " << info.skipped_bad << " skipped at open";
    if (info.skipped_bad > 0) out << ":";
    out << "\n";
    for (const std::string& s : info.skipped_examples) out << "  " << s << "\n";
    if (info.skipped_bad > static_cast<std::int64_t>(info.skipped_examples.size())) {
      out << "  ... " << info.skipped_bad - static_cast<std::int64_t>(info.skipped_examples.size())
          << " more\n";
    }
  }
  return out.str();
}

}  // namespace sela::data
