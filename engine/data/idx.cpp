// Implementation of engine/data/idx.h.
#include "engine/data/idx.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/data/image_io.h"
#include "engine/error.h"

#ifdef SELA_DATA_HAVE_ZLIB
#include <zlib.h>
#endif

namespace sela::data {
namespace {

constexpr std::uint8_t kIdxUnsignedByte = 0x08;

const char* idx_type_name(std::uint8_t type) {
  switch (type) {
    case 0x08:
      return "unsigned byte";
    case 0x09:
      return "signed byte";
    case 0x0B:
      return "int16";
    case 0x0C:
      return "int32";
    case 0x0D:
      return "float32";
    case 0x0E:
      return "float64";
    default:
      return "unknown";
  }
}

std::uint32_t read_be32(const std::uint8_t* p) {
  return (static_cast<std::uint32_t>(p[0]) << 24) | (static_cast<std::uint32_t>(p[1]) << 16) |
         (static_cast<std::uint32_t>(p[2]) << 8) | static_cast<std::uint32_t>(p[3]);
}

void put_be32(std::vector<std::uint8_t>* out, std::uint32_t v) {
  out->push_back(static_cast<std::uint8_t>(v >> 24));
  out->push_back(static_cast<std::uint8_t>(v >> 16));
  out->push_back(static_cast<std::uint8_t>(v >> 8));
  out->push_back(static_cast<std::uint8_t>(v));
}

bool gzip_magic(const std::vector<std::uint8_t>& bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B;
}

#ifdef SELA_DATA_HAVE_ZLIB
// Inflates every gzip member of `in`. A stream that stops before its end is an error naming
// the file and how much came out, so a truncated .gz never passes as a short file.
std::vector<std::uint8_t> gunzip(const std::vector<std::uint8_t>& in, const std::string& path,
                                 const char* op) {
  std::vector<std::uint8_t> out;
  if (in.size() >= 18) {  // ISIZE trailer: uncompressed size mod 2^32 (little-endian)
    const std::uint8_t* t = &in[in.size() - 4];
    std::size_t isize = static_cast<std::size_t>(t[0]) | static_cast<std::size_t>(t[1]) << 8 |
                        static_cast<std::size_t>(t[2]) << 16 | static_cast<std::size_t>(t[3]) << 24;
    out.reserve(std::max(isize, in.size()));
  }
  z_stream stream;
  std::memset(&stream, 0, sizeof(stream));
  SELA_CHECK(inflateInit2(&stream, 16 + MAX_WBITS) == Z_OK, op,
             "zlib could not start inflating " << path);
  stream.next_in = const_cast<Bytef*>(in.data());
  stream.avail_in = static_cast<uInt>(in.size());
  std::vector<std::uint8_t> chunk(1 << 20);
  int status = Z_OK;
  while (true) {
    stream.next_out = chunk.data();
    stream.avail_out = static_cast<uInt>(chunk.size());
    status = inflate(&stream, Z_NO_FLUSH);
    std::size_t produced = chunk.size() - stream.avail_out;
    out.insert(out.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(produced));
    if (status == Z_STREAM_END) {
      // Another gzip member may follow (concatenated .gz files).
      if (stream.avail_in >= 2 && stream.next_in[0] == 0x1F && stream.next_in[1] == 0x8B) {
        inflateReset(&stream);
        continue;
      }
      break;
    }
    if (status == Z_OK) continue;
    if (status == Z_BUF_ERROR && stream.avail_in == 0) {
      inflateEnd(&stream);
      SELA_FAIL_HINT(op,
                     path << ": gzip data ends early (file truncated?): " << in.size()
                          << " compressed bytes gave " << out.size()
                          << " bytes before the stream stopped",
                     "download the file again");
    }
    std::string reason = stream.msg ? stream.msg : "zlib error " + std::to_string(status);
    inflateEnd(&stream);
    SELA_FAIL(op, path << ": corrupt gzip data after " << out.size()
                       << " decompressed bytes: " << reason);
  }
  inflateEnd(&stream);
  return out;
}
#endif

std::string join_dims(const std::vector<std::int64_t>& dims) {
  std::string s = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + ")";
}

std::vector<std::string> numbered_names(std::int64_t count) {
  std::vector<std::string> names;
  for (std::int64_t i = 0; i < count; ++i) names.push_back(std::to_string(i));
  return names;
}

// Builds the in-memory data set from an image IDX file and an optional label IDX file.
std::unique_ptr<InMemoryDataset> make_idx_dataset(const std::string& images_path,
                                                  const std::string& labels_path, DatasetInfo info,
                                                  const char* op) {
  IdxArray images = read_idx(images_path);
  SELA_CHECK(images.dims.size() == 3 || images.dims.size() == 4, op,
             images_path << ": image file has shape " << join_dims(images.dims)
                         << "; expected (N, H, W) or (N, H, W, C)");
  std::int64_t n = images.dims[0];
  std::int64_t height = images.dims[1], width = images.dims[2];
  std::int64_t channels = images.dims.size() == 4 ? images.dims[3] : 1;
  SELA_CHECK(channels == 1 || channels == 3, op,
             images_path << ": images have " << channels << " channels; expected 1 or 3");
  SELA_CHECK(n > 0 && height > 0 && width > 0, op,
             images_path << ": no images (shape " << join_dims(images.dims) << ")");

  std::vector<std::int64_t> classes(static_cast<std::size_t>(n), -1);
  info.files.push_back(images_path);
  if (!labels_path.empty()) {
    IdxArray labels = read_idx(labels_path);
    SELA_CHECK(
        labels.dims.size() == 1, op,
        labels_path << ": label file has shape " << join_dims(labels.dims) << "; expected (N,)");
    SELA_CHECK(labels.dims[0] == n, op,
               labels_path << " holds " << labels.dims[0] << " labels but " << images_path
                           << " holds " << n << " images");
    std::int64_t largest = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      classes[static_cast<std::size_t>(i)] = labels.data()[i];
      largest = std::max<std::int64_t>(largest, labels.data()[i]);
    }
    if (info.class_names.empty()) info.class_names = numbered_names(largest + 1);
    SELA_CHECK(largest < static_cast<std::int64_t>(info.class_names.size()), op,
               labels_path << ": label " << largest << " out of range; expected 0.."
                           << info.class_names.size() - 1);
    info.files.push_back(labels_path);
  } else {
    info.class_names.clear();
  }
  info.channels = static_cast<int>(channels);
  info.height = static_cast<int>(height);
  info.width = static_cast<int>(width);
  if (info.normalisation.origin.empty()) {
    // No known statistics for an arbitrary IDX set: measure them (one pass over the bytes).
    info.normalisation = measure_normalisation(images.data(), n * height * width, info.channels,
                                               "measured on " + images_path);
  }
  std::size_t offset = images.offset;
  return std::make_unique<InMemoryDataset>(std::move(info), std::move(classes),
                                           std::move(images.storage), offset);
}

}  // namespace

std::int64_t IdxArray::elements() const {
  std::int64_t count = 1;
  for (std::int64_t d : dims) count *= d;
  return count;
}

std::vector<std::uint8_t> read_maybe_gzipped(const std::string& path, const char* op,
                                             bool* was_gzipped) {
  std::vector<std::uint8_t> bytes = read_file_bytes(path, op);
  bool gz = gzip_magic(bytes);
  if (was_gzipped) *was_gzipped = gz;
  if (!gz) return bytes;
#ifdef SELA_DATA_HAVE_ZLIB
  return gunzip(bytes, path, op);
#else
  SELA_FAIL_HINT(op, path << " is gzipped, and this sela was built without zlib",
                 "gunzip the file, or rebuild with zlib (apt-get install zlib1g-dev, "
                 "-DSELA_DATA_ZLIB=ON)");
#endif
}

IdxArray read_idx(const std::string& path) {
  const char* op = "idx";
  bool gz = false;
  IdxArray array;
  array.storage = read_maybe_gzipped(path, op, &gz);
  const std::vector<std::uint8_t>& bytes = array.storage;
  const char* what = gz ? " (after gunzip)" : "";
  SELA_CHECK(bytes.size() >= 4, op,
             path << ": " << bytes.size() << " bytes" << what
                  << "; an IDX file needs at least a 4-byte header");
  SELA_CHECK(bytes[0] == 0 && bytes[1] == 0, op,
             path << ": not an IDX file: magic starts " << int(bytes[0]) << ", " << int(bytes[1])
                  << "; expected 0, 0");
  std::uint8_t type = bytes[2];
  std::size_t rank = bytes[3];
  SELA_CHECK(type == kIdxUnsignedByte, op,
             path << ": element type 0x" << std::hex << int(type) << std::dec << " ("
                  << idx_type_name(type) << "); sela reads unsigned-byte (0x08) IDX files");
  SELA_CHECK(rank >= 1, op, path << ": rank 0 in the header; expected 1 or more dimensions");
  std::size_t header = 4 + 4 * rank;
  SELA_CHECK(bytes.size() >= header, op,
             path << ": file truncated in its header: expected at least " << header
                  << " bytes for rank " << rank << ", found " << bytes.size() << " bytes" << what);
  std::uint64_t payload = 1;
  for (std::size_t i = 0; i < rank; ++i) {
    std::uint32_t d = read_be32(&bytes[4 + 4 * i]);
    array.dims.push_back(d);
    payload *= d;
    SELA_CHECK(payload < (std::uint64_t{1} << 40), op,
               path << ": header sizes " << join_dims(array.dims) << " are implausibly large");
  }
  std::uint64_t expected = header + payload;
  SELA_CHECK(bytes.size() == expected, op,
             path << ": " << (bytes.size() < expected ? "truncated" : "has extra bytes")
                  << ": header says " << join_dims(array.dims) << " so expected " << expected
                  << " bytes, found " << bytes.size() << " bytes" << what);
  array.offset = header;
  return array;
}

void write_idx(const std::string& path, const std::vector<std::int64_t>& dims,
               const std::uint8_t* data, bool gzip) {
  const char* op = "idx";
  SELA_CHECK(!dims.empty() && dims.size() < 256, op,
             "cannot write " << path << ": rank " << dims.size() << "; expected 1..255");
  std::vector<std::uint8_t> bytes = {0, 0, kIdxUnsignedByte,
                                     static_cast<std::uint8_t>(dims.size())};
  std::size_t count = 1;
  for (std::int64_t d : dims) {
    SELA_CHECK(d >= 0 && d <= 0xFFFFFFFFll, op, "cannot write " << path << ": size " << d);
    put_be32(&bytes, static_cast<std::uint32_t>(d));
    count *= static_cast<std::size_t>(d);
  }
  bytes.insert(bytes.end(), data, data + count);
  write_maybe_gzipped(path, bytes, gzip);
}

void write_maybe_gzipped(const std::string& path, const std::vector<std::uint8_t>& bytes,
                         bool gzip) {
  const char* op = "idx";
  if (gzip) {
#ifdef SELA_DATA_HAVE_ZLIB
    gzFile file = gzopen(path.c_str(), "wb6");
    SELA_CHECK(file != nullptr, op, "cannot create " << path);
    int written =
        bytes.empty() ? 0 : gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
    int closed = gzclose(file);
    SELA_CHECK(written == static_cast<int>(bytes.size()) && closed == Z_OK, op,
               "cannot write " << path << " (gzip)");
    return;
#else
    SELA_FAIL(op, "cannot write " << path << " gzipped: this sela was built without zlib");
#endif
  }
  std::ofstream out(path, std::ios::binary);
  SELA_CHECK(out.good(), op, "cannot create " << path);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  SELA_CHECK(out.good(), op, "cannot write " << path);
}

std::unique_ptr<InMemoryDataset> open_idx(const std::string& images_path,
                                          const std::string& labels_path) {
  DatasetInfo info;
  info.kind = "idx";
  info.normalisation.origin.clear();  // measured from the images
  return make_idx_dataset(images_path, labels_path, std::move(info), "idx");
}

std::unique_ptr<InMemoryDataset> open_fashion_mnist(const std::string& dir,
                                                    const std::string& split) {
  const char* op = "fashion-mnist";
  SELA_CHECK(split == "train" || split == "test", op,
             "unknown split '" << split << "'; expected train or test");
  namespace fs = std::filesystem;
  SELA_CHECK(fs::is_directory(dir), op,
             "folder " << dir << " does not exist"
                       << (dir == kFashionMnistDefaultDir
                               ? " (install Debian's dataset-fashion-mnist, or give "
                                 "fashion-mnist:DIR)"
                               : ""));
  std::string prefix = split == "train" ? "train" : "t10k";
  auto find = [&](const std::string& what, const std::string& idx) {
    std::vector<std::string> tried;
    for (const std::string& stem :
         {prefix + "-" + what + "-" + idx + "-ubyte", prefix + "-" + what + "." + idx + "-ubyte"}) {
      for (const std::string& ext : {std::string(".gz"), std::string()}) {
        fs::path candidate = fs::path(dir) / (stem + ext);
        if (fs::is_regular_file(candidate)) return candidate.string();
        tried.push_back(candidate.filename().string());
      }
    }
    std::string list;
    for (const auto& t : tried) list += (list.empty() ? "" : ", ") + t;
    SELA_FAIL(
        op, "no " << split << " " << what << " file in " << dir << " (looked for " << list << ")");
  };
  std::string images = find("images", "idx3");
  std::string labels = find("labels", "idx1");
  DatasetInfo info;
  info.kind = "fashion-mnist";
  info.split = split;
  info.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  info.normalisation = Normalisation::fashion_mnist();
  auto dataset = make_idx_dataset(images, labels, std::move(info), op);
  SELA_CHECK(dataset->info().channels == 1, op,
             images << ": Fashion-MNIST images have 1 channel, found " << dataset->info().channels);
  return dataset;
}

}  // namespace sela::data
