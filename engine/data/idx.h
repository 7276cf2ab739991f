// IDX files (the MNIST / Fashion-MNIST format) and gzip, and the Fashion-MNIST source.
//
// An IDX file is a 4-byte magic (0, 0, element type, rank), `rank` big-endian uint32 sizes,
// then the elements. Only unsigned bytes (type 0x08) are read: that is what image and label
// files hold. A file is taken whole into memory, gunzipped first when it starts with the
// gzip magic (whatever its name), and its size is checked exactly against the header, so a
// truncated or padded file is an error naming the file, the expected and the actual size.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"

namespace sela::data {

struct IdxArray {
  std::vector<std::int64_t> dims;     // e.g. (N, 28, 28) images, (N,) labels
  std::vector<std::uint8_t> storage;  // the whole (decompressed) file
  std::size_t offset = 0;             // where the elements start in `storage`

  const std::uint8_t* data() const { return storage.data() + offset; }
  std::int64_t elements() const;
};

// Reads an unsigned-byte IDX file, raw or gzipped.
IdxArray read_idx(const std::string& path);

// Writes an unsigned-byte IDX file (gzipped when `gzip`); for tests and tools.
void write_idx(const std::string& path, const std::vector<std::int64_t>& dims,
               const std::uint8_t* data, bool gzip);

// Writes `bytes` to `path`, gzipped when `gzip` (the inverse of read_maybe_gzipped).
void write_maybe_gzipped(const std::string& path, const std::vector<std::uint8_t>& bytes,
                         bool gzip);

// A file's bytes, gunzipped when it starts with the gzip magic (1f 8b). `op` names the
// caller in errors.
std::vector<std::uint8_t> read_maybe_gzipped(const std::string& path, const char* op,
                                             bool* was_gzipped = nullptr);

// idx:IMAGES[,LABELS]: images of rank 3 (N, H, W) or rank 4 (N, H, W, C) with C = 1 or 3;
// labels of rank 1 (N,). Classes are 0..max(label), named "0", "1", ...; without labels,
// every true class is -1. Normalisation: measured on the images (no known statistics).
std::unique_ptr<InMemoryDataset> open_idx(const std::string& images_path,
                                          const std::string& labels_path);

// fashion-mnist[:DIR], split train (60,000) or test (10,000). Looks for
// {train,t10k}-{images-idx3,labels-idx1}-ubyte with or without .gz (also the
// "images.idx3-ubyte" spelling).
std::unique_ptr<InMemoryDataset> open_fashion_mnist(const std::string& dir,
                                                    const std::string& split);

// Where Debian's dataset-fashion-mnist package puts the files.
constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";

}  // namespace sela::data
