// Implementation of engine/data/cifar.h.
#include "engine/data/cifar.h"

#include <filesystem>
#include <fstream>

#include "engine/data/image_io.h"
#include "engine/error.h"

namespace sela::data {
namespace {

constexpr int kSide = 32;
constexpr int kPlane = kSide * kSide;             // 1024
constexpr int kPixelBytes = 3 * kPlane;           // 3072
constexpr std::int64_t kRecordsPerBatch = 10000;  // in the public files

int label_bytes(int classes) { return classes == 10 ? 1 : 2; }

std::vector<std::string> cifar10_names() {
  return {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
}

// Class names from the text file that ships with the batches, when it is there.
std::vector<std::string> read_names(const std::filesystem::path& file, std::size_t expected) {
  std::vector<std::string> names;
  std::ifstream in(file);
  std::string line;
  while (in && std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (names.size() != expected) names.clear();
  return names;
}

}  // namespace

std::unique_ptr<InMemoryDataset> open_cifar(const std::string& dir, int classes,
                                            const std::string& split) {
  namespace fs = std::filesystem;
  const std::string op = classes == 10 ? "cifar10" : "cifar100";
  SELA_CHECK(classes == 10 || classes == 100, "cifar",
             "CIFAR has 10 or 100 classes, asked for " << classes);
  SELA_CHECK(split == "train" || split == "test", op,
             "unknown split '" << split << "'; expected train or test");
  SELA_CHECK(!dir.empty(), op, "no folder given; expected " << op << ":DIR");
  SELA_CHECK(fs::exists(dir), op, "folder " << dir << " does not exist");
  SELA_CHECK(fs::is_directory(dir), op, dir << " is not a folder");

  std::vector<std::string> names;
  if (classes == 10) {
    names = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
             "data_batch_5.bin"};
    if (split == "test") names = {"test_batch.bin"};
  } else {
    names = {split == "train" ? "train.bin" : "test.bin"};
  }
  // The batches sit in DIR, or in the folder the public archive unpacks to.
  fs::path folder = dir;
  fs::path archive_folder =
      fs::path(dir) / (classes == 10 ? "cifar-10-batches-bin" : "cifar-100-binary");
  if (!fs::exists(folder / names[0]) && fs::exists(archive_folder / names[0]))
    folder = archive_folder;

  const int labels_per_record = label_bytes(classes);
  const std::int64_t record = labels_per_record + kPixelBytes;
  std::vector<std::vector<std::uint8_t>> files;
  std::int64_t total = 0;
  DatasetInfo info;
  for (const std::string& name : names) {
    fs::path path = folder / name;
    SELA_CHECK(fs::is_regular_file(path), op,
               "missing " << path.string() << " (the " << split << " split needs " << names.size()
                          << " file" << (names.size() > 1 ? "s" : "")
                          << " from the binary version of "
                          << (classes == 10 ? "CIFAR-10" : "CIFAR-100") << ")");
    files.push_back(read_file_bytes(path.string(), op.c_str()));
    std::int64_t size = static_cast<std::int64_t>(files.back().size());
    SELA_CHECK(size > 0 && size % record == 0, op,
               path.string() << ": " << size << " bytes is not a whole number of " << record
                             << "-byte records (" << labels_per_record << " label byte"
                             << (labels_per_record > 1 ? "s" : "") << " + 32x32x3 pixels); "
                             << "expected " << (size / record + 1) * record << " bytes for "
                             << size / record + 1 << " records (the public batch holds "
                             << kRecordsPerBatch << " records = " << kRecordsPerBatch * record
                             << " bytes): file truncated?");
    total += size / record;
    info.files.push_back(path.string());
  }

  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(total) *
                                   kPixelBytes);  // (N, 32, 32, 3)
  std::vector<std::int64_t> labels(static_cast<std::size_t>(total));
  std::int64_t n = 0;
  for (std::size_t f = 0; f < files.size(); ++f) {
    const std::vector<std::uint8_t>& bytes = files[f];
    std::int64_t records = static_cast<std::int64_t>(bytes.size()) / record;
    for (std::int64_t r = 0; r < records; ++r, ++n) {
      const std::uint8_t* rec = bytes.data() + r * record;
      std::int64_t label = rec[labels_per_record - 1];  // CIFAR-100: the fine label
      SELA_CHECK(label < classes, op,
                 info.files[f] << ": record " << r << " has label " << label << "; expected 0.."
                               << classes - 1 << " (is this a " << op << " file?)");
      labels[static_cast<std::size_t>(n)] = label;
      const std::uint8_t* planes = rec + labels_per_record;  // (3, 32, 32)
      std::uint8_t* out = pixels.data() + n * kPixelBytes;   // (32, 32, 3)
      for (int p = 0; p < kPlane; ++p) {
        out[3 * p + 0] = planes[p];
        out[3 * p + 1] = planes[kPlane + p];
        out[3 * p + 2] = planes[2 * kPlane + p];
      }
    }
  }

  info.kind = op;
  info.split = split;
  info.channels = 3;
  info.height = kSide;
  info.width = kSide;
  info.normalisation = Normalisation::cifar();
  if (classes == 10) {
    info.class_names = read_names(folder / "batches.meta.txt", 10);
    if (info.class_names.empty()) info.class_names = cifar10_names();
  } else {
    info.class_names = read_names(folder / "fine_label_names.txt", 100);
    if (info.class_names.empty()) {
      for (int i = 0; i < 100; ++i) info.class_names.push_back(std::to_string(i));
    }
  }
  return std::make_unique<InMemoryDataset>(std::move(info), std::move(labels), std::move(pixels),
                                           0);
}

void write_cifar_batch(const std::string& path, int classes, const std::uint8_t* images,
                       const std::int64_t* labels, std::int64_t count) {
  SELA_CHECK(classes == 10 || classes == 100, "cifar",
             "classes must be 10 or 100, got " << classes);
  std::ofstream out(path, std::ios::binary);
  SELA_CHECK(out.good(), "cifar", "cannot create " << path);
  std::vector<std::uint8_t> rec(static_cast<std::size_t>(label_bytes(classes) + kPixelBytes));
  for (std::int64_t n = 0; n < count; ++n) {
    SELA_CHECK(labels[n] >= 0 && labels[n] < classes, "cifar",
               "label " << labels[n] << " out of range for " << path);
    std::size_t at = 0;
    if (classes == 100) rec[at++] = static_cast<std::uint8_t>(labels[n] / 5);
    rec[at++] = static_cast<std::uint8_t>(labels[n]);
    const std::uint8_t* img = images + n * kPixelBytes;  // (32, 32, 3)
    for (int p = 0; p < kPlane; ++p) {
      for (int c = 0; c < 3; ++c)
        rec[at + static_cast<std::size_t>(c * kPlane + p)] = img[3 * p + c];
    }
    out.write(reinterpret_cast<const char*>(rec.data()), static_cast<std::streamsize>(rec.size()));
  }
  SELA_CHECK(out.good(), "cifar", "cannot write " << path);
}

}  // namespace sela::data
