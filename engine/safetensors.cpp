// safetensors reading and writing; see engine/safetensors.h for the format and the contract.
//
// The reader takes the file in three steps, each checked before the next trusts it:
//   1. the 8-byte header length, against the file size and a 100 MB ceiling (the same one
//      the reference implementation uses), so a corrupt length cannot make us allocate
//      gigabytes or read past the end;
//   2. the JSON header, parsed by nlohmann-json (duplicate keys refused, every field's type
//      checked by hand so no nlohmann exception escapes as a crash), each entry turned into a
//      dtype, a shape and a byte range with overflow-checked arithmetic;
//   3. the byte ranges, sorted and walked once: they must tile the data buffer exactly (no
//      overlap, no hole, nothing past the end, nothing left over), which is what the Python
//      package demands too. Only then is each tensor's data read, with pread, into its own
//      buffer.
// The writer validates everything before it creates a file, then writes to a temporary file
// in the destination folder, fsyncs it and renames it over the destination, so a reader sees
// either the old file or the whole new one.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>

#include "engine/error.h"

namespace sela {
namespace {

using json = nlohmann::json;

constexpr const char* kOp = "safetensors";
constexpr const char* kMetadataKey = "__metadata__";
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // as the reference implementation
constexpr const char* kSupportedCodes = "F64 F32 F16 BF16 I64 I32 U8";

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first_byte = 0;
  std::memcpy(&first_byte, &probe, 1);
  return first_byte == 1;
}

void check_little_endian_host(const std::string& path) {
  SELA_CHECK(host_is_little_endian(), kOp,
             "'" << path << "': safetensors data is little-endian and this host is not; "
                 "sela only supports little-endian hosts");
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string errno_text() { return std::strerror(errno); }

// numel(shape) * element_size, or false when it does not fit in 64 bits.
bool checked_byte_count(const std::vector<std::int64_t>& shape, std::size_t element_size,
                        std::uint64_t* bytes) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  for (std::int64_t dim : shape) {
    if (dim == 0) {  // an empty tensor has no bytes, whatever its other dims
      *bytes = 0;
      return true;
    }
  }
  std::uint64_t count = element_size;
  for (std::int64_t dim : shape) {
    const auto d = static_cast<std::uint64_t>(dim);
    if (count > kMax / d) return false;
    count *= d;
  }
  *bytes = count;
  return true;
}

// --- file descriptors ------------------------------------------------------------------

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() { close_quietly(); }

  int get() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }
  // Closes and reports whether close succeeded (a failed close can mean lost writes).
  bool close() {
    const int fd = fd_;
    fd_ = -1;
    return fd < 0 || ::close(fd) == 0;
  }

 private:
  void close_quietly() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_;
};

// Reads exactly COUNT bytes at OFFSET; false (errno set, or 0 at end of file) otherwise.
bool read_exact_at(int fd, std::uint64_t offset, void* buffer, std::uint64_t count) {
  auto* out = static_cast<unsigned char*>(buffer);
  while (count > 0) {
    const std::size_t chunk =
        static_cast<std::size_t>(std::min<std::uint64_t>(count, std::uint64_t{1} << 30));
    const ssize_t got = ::pread(fd, out, chunk, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (got == 0) {
      errno = 0;
      return false;
    }
    out += got;
    offset += static_cast<std::uint64_t>(got);
    count -= static_cast<std::uint64_t>(got);
  }
  return true;
}

bool write_all(int fd, const void* buffer, std::uint64_t count) {
  const auto* in = static_cast<const unsigned char*>(buffer);
  while (count > 0) {
    const std::size_t chunk =
        static_cast<std::size_t>(std::min<std::uint64_t>(count, std::uint64_t{1} << 30));
    const ssize_t put = ::write(fd, in, chunk);
    if (put < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    in += put;
    count -= static_cast<std::uint64_t>(put);
  }
  return true;
}

// --- header parsing --------------------------------------------------------------------

// One header entry once checked: where its bytes are in the data buffer.
struct EntryRange {
  std::string name;
  std::uint64_t begin;
  std::uint64_t end;
};

// Parses the header text, refusing duplicate keys at any level (nlohmann would keep the
// last one silently, hiding a corrupt or hand-edited file).
json parse_header_json(const std::string& path, const std::string& text) {
  std::vector<std::set<std::string>> open_objects;  // keys seen in each open object
  std::string duplicate_key;
  auto note_keys = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!open_objects.back().insert(key).second && duplicate_key.empty()) duplicate_key = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, note_keys);
  } catch (const json::exception& e) {
    SELA_FAIL_HINT(kOp, "'" << path << "': the header is not valid JSON (" << e.what() << ")",
                   "the file is corrupt or not a safetensors file");
  }
  SELA_CHECK(duplicate_key.empty(), kOp,
             "'" << path << "': the header repeats the key '" << duplicate_key << "'");
  SELA_CHECK(header.is_object(), kOp,
             "'" << path << "': the header must be a JSON object, got a " << header.type_name());
  return header;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& value) {
  SELA_CHECK(value.is_object(), kOp,
             "'" << path << "': \"__metadata__\" must be an object of strings, got a "
                 << value.type_name());
  std::map<std::string, std::string> metadata;
  for (const auto& item : value.items()) {
    SELA_CHECK(item.value().is_string(), kOp,
               "'" << path << "': metadata value for '" << item.key()
                   << "' must be a string, got a " << item.value().type_name());
    metadata.emplace(item.key(), item.value().get<std::string>());
  }
  return metadata;
}

// Checks one tensor entry and fills TENSOR (dtype, shape) and RANGE (its byte range).
void parse_entry(const std::string& path, const std::string& name, const json& entry,
                 LoadedTensor* tensor, EntryRange* range) {
  const std::string where = "'" + path + "': tensor '" + name + "'";
  SELA_CHECK(entry.is_object(), kOp,
             where << " must be an object with dtype, shape and data_offsets, got a "
                   << entry.type_name());
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    SELA_CHECK(entry.contains(field), kOp, where << " has no \"" << field << "\"");
  }

  const json& dtype = entry["dtype"];
  SELA_CHECK(dtype.is_string(), kOp,
             where << ": \"dtype\" must be a string, got a " << dtype.type_name());
  const std::string code = dtype.get<std::string>();
  if (!parse_safetensors_dtype_code(code, &tensor->dtype)) {
    SELA_FAIL_HINT(kOp, where << " has dtype '" << code << "', which sela does not read",
                   std::string("sela reads ") + kSupportedCodes);
  }

  const json& shape = entry["shape"];
  SELA_CHECK(shape.is_array(), kOp,
             where << ": \"shape\" must be an array, got a " << shape.type_name());
  tensor->shape.clear();
  for (const json& dim : shape) {
    SELA_CHECK(dim.is_number_integer(), kOp,
               where << ": every dim of \"shape\" must be an integer, got " << dim.dump());
    if (dim.is_number_unsigned()) {
      const auto value = dim.get<std::uint64_t>();
      SELA_CHECK(value <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                 kOp, where << ": dim " << value << " is too large");
      tensor->shape.push_back(static_cast<std::int64_t>(value));
    } else {
      const auto value = dim.get<std::int64_t>();
      SELA_CHECK(value >= 0, kOp, where << " has a negative dim " << value << " in shape "
                                        << shape.dump());
      tensor->shape.push_back(value);
    }
  }

  const json& offsets = entry["data_offsets"];
  SELA_CHECK(offsets.is_array() && offsets.size() == 2, kOp,
             where << ": \"data_offsets\" must be [begin, end], got " << offsets.dump());
  for (const json& offset : offsets) {
    SELA_CHECK(offset.is_number_unsigned(), kOp,
               where << ": \"data_offsets\" must be non-negative integers, got "
                     << offsets.dump());
  }
  range->name = name;
  range->begin = offsets[0].get<std::uint64_t>();
  range->end = offsets[1].get<std::uint64_t>();
  SELA_CHECK(range->begin <= range->end, kOp,
             where << ": data_offsets " << offsets.dump() << " end before they begin");

  std::uint64_t needed = 0;
  SELA_CHECK(checked_byte_count(tensor->shape, dtype_size(tensor->dtype), &needed), kOp,
             where << ": shape " << shape_text(tensor->shape) << " is too large");
  SELA_CHECK(range->end - range->begin == needed, kOp,
             where << ": data_offsets " << offsets.dump() << " span "
                   << (range->end - range->begin) << " bytes but shape "
                   << shape_text(tensor->shape) << " of " << code << " needs " << needed);
}

// The ranges must tile [0, data_bytes) exactly: no overlap, no hole, nothing past the end.
void check_ranges_tile_buffer(const std::string& path, std::vector<EntryRange> ranges,
                              std::uint64_t data_bytes) {
  std::sort(ranges.begin(), ranges.end(), [](const EntryRange& a, const EntryRange& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t covered = 0;  // the data buffer is tiled up to here
  const EntryRange* previous = nullptr;
  for (const EntryRange& range : ranges) {
    SELA_CHECK(range.begin >= covered, kOp,
               "'" << path << "': tensor '" << range.name << "' (data_offsets [" << range.begin
                   << ", " << range.end << "]) overlaps tensor '"
                   << (previous ? previous->name : std::string("?")) << "' (data_offsets ["
                   << (previous ? previous->begin : 0) << ", " << covered << "])");
    SELA_CHECK(range.begin == covered, kOp,
               "'" << path << "': the data buffer has a hole of " << (range.begin - covered)
                   << " bytes before tensor '" << range.name << "' (data_offsets ["
                   << range.begin << ", " << range.end << "])");
    if (range.end > data_bytes) {
      SELA_FAIL_HINT(kOp,
                     "'" << path << "': tensor '" << range.name << "' (data_offsets ["
                         << range.begin << ", " << range.end
                         << "]) runs past the end of the data buffer, which holds "
                         << data_bytes << " bytes",
                     "the file is truncated, or its offsets are wrong");
    }
    covered = range.end;
    previous = &range;
  }
  SELA_CHECK(covered == data_bytes, kOp,
             "'" << path << "': the data buffer holds " << data_bytes
                 << " bytes but the tensors cover only " << covered << " ("
                 << (data_bytes - covered) << " bytes of trailing data)");
}

}  // namespace

// --- dtype codes -----------------------------------------------------------------------

const char* safetensors_dtype_code(DType dtype) {
  switch (dtype) {
    case DType::f64: return "F64";
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i64: return "I64";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
  }
  SELA_FAIL(kOp, "no safetensors code for dtype " << static_cast<int>(dtype));
}

bool parse_safetensors_dtype_code(const std::string& code, DType* dtype) {
  static const std::pair<const char*, DType> kCodes[] = {
      {"F64", DType::f64}, {"F32", DType::f32}, {"F16", DType::f16}, {"BF16", DType::bf16},
      {"I64", DType::i64}, {"I32", DType::i32}, {"U8", DType::u8}};
  for (const auto& entry : kCodes) {
    if (code == entry.first) {
      *dtype = entry.second;
      return true;
    }
  }
  return false;
}

// --- reading ---------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  check_little_endian_host(path);
  FileDescriptor file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file.is_open()) {
    SELA_FAIL_HINT(kOp, "cannot open '" << path << "': " << errno_text(),
                   "check the path and its permissions");
  }
  struct stat info {};
  SELA_CHECK(::fstat(file.get(), &info) == 0, kOp,
             "cannot stat '" << path << "': " << errno_text());
  SELA_CHECK(S_ISREG(info.st_mode), kOp, "'" << path << "' is not a regular file");
  const auto file_bytes = static_cast<std::uint64_t>(info.st_size);

  SELA_CHECK(file_bytes >= 8, kOp,
             "'" << path << "' is " << file_bytes
                 << " bytes long, shorter than the 8-byte header length of a safetensors file");
  unsigned char length_bytes[8];
  SELA_CHECK(read_exact_at(file.get(), 0, length_bytes, 8), kOp,
             "cannot read '" << path << "': " << errno_text());
  std::uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
  SELA_CHECK(header_bytes <= kMaxHeaderBytes, kOp,
             "'" << path << "': header length " << header_bytes
                 << " is absurd (more than 100 MB); this is not a safetensors file");
  SELA_CHECK(header_bytes <= file_bytes - 8, kOp,
             "'" << path << "': header length " << header_bytes << " is larger than the file ("
                 << file_bytes << " bytes)");

  std::string header_text(static_cast<std::size_t>(header_bytes), '\0');
  SELA_CHECK(read_exact_at(file.get(), 8, header_text.data(), header_bytes), kOp,
             "cannot read the header of '" << path << "': " << errno_text());
  const json header = parse_header_json(path, header_text);

  std::vector<EntryRange> ranges;
  for (const auto& item : header.items()) {
    if (item.key() == kMetadataKey) {
      metadata_ = parse_metadata(path, item.value());
      continue;
    }
    LoadedTensor tensor;
    EntryRange range;
    parse_entry(path, item.key(), item.value(), &tensor, &range);
    ranges.push_back(range);
    tensors_.emplace(item.key(), std::move(tensor));
  }
  const std::uint64_t data_start = 8 + header_bytes;
  check_ranges_tile_buffer(path, ranges, file_bytes - data_start);

  for (const EntryRange& range : ranges) {
    LoadedTensor& tensor = tensors_.at(range.name);
    tensor.bytes.resize(static_cast<std::size_t>(range.end - range.begin));
    SELA_CHECK(read_exact_at(file.get(), data_start + range.begin, tensor.bytes.data(),
                             range.end - range.begin),
               kOp, "cannot read tensor '" << range.name << "' of '" << path << "': "
                                           << (errno ? errno_text() : "the file shrank"));
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& item : tensors_) names.push_back(item.first);  // std::map: already sorted
  return names;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return tensors_.count(name) != 0;
}

const LoadedTensor& SafetensorsFile::get(const std::string& name) const {
  const auto found = tensors_.find(name);
  if (found == tensors_.end()) {
    SELA_FAIL_HINT(kOp, "'" << path_ << "' has no tensor named '" << name << "'",
                   "it holds " + std::to_string(tensors_.size()) +
                       " tensors; list them with names()");
  }
  return found->second;
}

// --- writing ---------------------------------------------------------------------------

void save_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  check_little_endian_host(path);

  // Validate everything before a file is touched.
  std::set<std::string> seen;
  std::vector<std::uint64_t> byte_counts(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    SELA_CHECK(!t.name.empty(), kOp,
               "cannot write '" << path << "': tensor #" << i << " has an empty name");
    SELA_CHECK(t.name != kMetadataKey, kOp,
               "cannot write '" << path << "': \"__metadata__\" is reserved, not a tensor name");
    SELA_CHECK(seen.insert(t.name).second, kOp,
               "cannot write '" << path << "': two tensors are named '" << t.name << "'");
    for (std::int64_t dim : t.shape) {
      SELA_CHECK(dim >= 0, kOp,
                 "cannot write '" << path << "': tensor '" << t.name << "' has shape "
                                  << shape_text(t.shape) << " with a negative dim");
    }
    SELA_CHECK(checked_byte_count(t.shape, dtype_size(t.dtype), &byte_counts[i]), kOp,
               "cannot write '" << path << "': tensor '" << t.name << "' shape "
                                << shape_text(t.shape) << " is too large");
    SELA_CHECK(t.data != nullptr || byte_counts[i] == 0, kOp,
               "cannot write '" << path << "': tensor '" << t.name << "' has "
                                << byte_counts[i] << " bytes but a null data pointer");
  }

  // Data order: element size (largest first), then name, so each tensor is aligned to its
  // element size in the 8-aligned buffer. The JSON object itself sorts its keys by name.
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const std::size_t size_a = dtype_size(tensors[a].dtype);
    const std::size_t size_b = dtype_size(tensors[b].dtype);
    return size_a != size_b ? size_a > size_b : tensors[a].name < tensors[b].name;
  });

  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::uint64_t offset = 0;
  for (std::size_t i : order) {
    const TensorView& t = tensors[i];
    header[t.name] = {{"dtype", safetensors_dtype_code(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + byte_counts[i]}}};
    offset += byte_counts[i];
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const json::exception& e) {  // invalid UTF-8 in a name or in the metadata
    SELA_FAIL(kOp, "cannot write '" << path << "': a tensor name or metadata text is not valid "
                                       "UTF-8 ("
                                    << e.what() << ")");
  }
  while ((8 + header_text.size()) % 8 != 0) header_text.push_back(' ');
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) {
    length_bytes[i] = static_cast<unsigned char>(header_text.size() >> (8 * i));
  }

  // Write to a temporary file beside PATH; it is removed unless it was renamed into place.
  const std::string temp_path = path + ".tmp-" + std::to_string(::getpid());
  FileDescriptor file(::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666));
  if (!file.is_open()) {
    SELA_FAIL_HINT(kOp, "cannot write '" << path << "': cannot create '" << temp_path
                                         << "': " << errno_text(),
                   "check that the folder exists and is writable");
  }
  struct TempFileRemover {
    const std::string& temp_path;
    bool renamed = false;
    ~TempFileRemover() {
      if (!renamed) ::unlink(temp_path.c_str());
    }
  } remover{temp_path};

  bool ok = write_all(file.get(), length_bytes, 8) &&
            write_all(file.get(), header_text.data(), header_text.size());
  for (std::size_t k = 0; ok && k < order.size(); ++k) {
    ok = write_all(file.get(), tensors[order[k]].data, byte_counts[order[k]]);
  }
  SELA_CHECK(ok, kOp, "cannot write '" << temp_path << "': " << errno_text());
  SELA_CHECK(::fsync(file.get()) == 0, kOp,
             "cannot flush '" << temp_path << "' to disk: " << errno_text());
  SELA_CHECK(file.close(), kOp, "cannot close '" << temp_path << "': " << errno_text());
  SELA_CHECK(::rename(temp_path.c_str(), path.c_str()) == 0, kOp,
             "cannot rename '" << temp_path << "' to '" << path << "': " << errno_text());
  remover.renamed = true;

  // Make the rename itself durable (best effort: some file systems refuse fsync on folders).
  const std::size_t slash = path.find_last_of('/');
  const std::string folder =
      slash == std::string::npos ? std::string(".") : (slash == 0 ? "/" : path.substr(0, slash));
  FileDescriptor folder_fd(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (folder_fd.is_open()) ::fsync(folder_fd.get());
}

}  // namespace sela
