// Implementation of sela/assign/npy.h: a small parser for the header's dict literal, and
// raw reads/writes of the data block. Little-endian hosts only (checked at run time).
#include "sela/assign/npy.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>

#include "engine/error.h"

namespace sela::assign {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicBytes = 6;

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// A cursor over the header text with just enough of Python's literal syntax.
class HeaderText {
 public:
  HeaderText(std::string text, std::string path) : text_(std::move(text)), path_(std::move(path)) {}

  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool eat(char ch) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == ch) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char ch) {
    if (!eat(ch)) fail(std::string("expected '") + ch + "'");
  }
  std::string quoted() {
    skip_space();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"'))
      fail("expected a quoted string");
    char quote = text_[pos_++];
    std::size_t end = text_.find(quote, pos_);
    if (end == std::string::npos) fail("unterminated string");
    std::string value = text_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return value;
  }
  std::string word() {
    skip_space();
    std::size_t begin = pos_;
    while (pos_ < text_.size() && std::isalnum(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    return text_.substr(begin, pos_ - begin);
  }
  std::int64_t integer() {
    std::string digits = word();
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) {
      fail("expected a non-negative integer in the shape, got '" + digits + "'");
    }
    if (digits.size() > 18) fail("shape value " + digits + " is too large");
    return std::stoll(digits);
  }
  [[noreturn]] void fail(const std::string& what) const {
    SELA_FAIL_HINT(
        "npy",
        path_ << ": malformed header (" << what << " at character " << pos_ << "): " << text_,
        "write the file with numpy.save");
  }

 private:
  std::string text_;
  std::string path_;
  std::size_t pos_ = 0;
};

NpyHeader parse_header(const std::string& text, const std::string& path) {
  NpyHeader header;
  HeaderText in(text, path);
  bool have_descr = false, have_order = false, have_shape = false;
  in.expect('{');
  while (!in.eat('}')) {
    std::string key = in.quoted();
    in.expect(':');
    if (key == "descr") {
      header.descr = in.quoted();
      have_descr = true;
    } else if (key == "fortran_order") {
      std::string value = in.word();
      if (value != "True" && value != "False") in.fail("fortran_order must be True or False");
      header.fortran_order = value == "True";
      have_order = true;
    } else if (key == "shape") {
      in.expect('(');
      while (!in.eat(')')) {
        header.shape.push_back(in.integer());
        if (!in.eat(',')) {
          in.expect(')');
          break;
        }
      }
      have_shape = true;
    } else {
      in.fail("unknown key '" + key + "'");
    }
    if (!in.eat(',')) {
      in.expect('}');
      break;
    }
  }
  if (!have_descr || !have_order || !have_shape)
    in.fail("the keys descr, fortran_order and shape are all required");
  return header;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::ostringstream out;
  out << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) out << ",";
  out << ")";
  return out.str();
}

const char* dtype_meaning(const std::string& descr) {
  if (descr == "<f4") return "float32";
  if (descr == "<f8") return "float64";
  if (descr == "<i8") return "int64";
  if (descr == "<f2") return "float16";
  if (descr == "<i4") return "int32";
  if (descr == ">f4" || descr == ">f8" || descr == ">i8") return "big-endian";
  return "another dtype";
}

template <typename T>
std::vector<T> read_array(const std::string& path, const char* want_descr, const char* want_name,
                          std::vector<std::int64_t>* shape) {
  SELA_CHECK(host_is_little_endian(), "npy", "this reader needs a little-endian host");
  NpyHeader header = read_npy_header(path);
  if (header.descr != want_descr) {
    SELA_FAIL_HINT("npy",
                   path << ": holds dtype '" << header.descr << "' (" << dtype_meaning(header.descr)
                        << "), expected '" << want_descr << "' (" << want_name << ")",
                   std::string("convert it with array.astype(numpy.") + want_name + ")");
  }
  if (header.fortran_order) {
    SELA_FAIL_HINT("npy", path << ": is in Fortran (column-major) order; expected C order",
                   "save numpy.ascontiguousarray(array) instead");
  }
  const std::int64_t count = header.element_count();
  const std::uint64_t need = static_cast<std::uint64_t>(count) * sizeof(T);
  if (header.file_bytes < header.data_offset + need) {
    SELA_FAIL_HINT("npy",
                   path << ": truncated: shape " << shape_text(header.shape) << " needs " << need
                        << " bytes of data after the " << header.data_offset
                        << "-byte header, the file has " << header.file_bytes - header.data_offset,
                   "the file was cut short; write it again");
  }
  std::vector<T> data(static_cast<std::size_t>(count));
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(header.data_offset));
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(need));
  SELA_CHECK(in.good() || need == 0, "npy", path << ": read failed after the header");
  if (shape != nullptr) *shape = header.shape;
  return data;
}

template <typename T>
void write_array(const std::string& path, const T* data, const std::vector<std::int64_t>& shape,
                 const char* descr) {
  SELA_CHECK(host_is_little_endian(), "npy", "this writer needs a little-endian host");
  std::int64_t count = 1;
  for (std::int64_t d : shape) {
    SELA_CHECK(d >= 0, "npy", path << ": negative dimension in shape " << shape_text(shape));
    count *= d;
  }
  SELA_CHECK(count == 0 || data != nullptr, "npy", path << ": null data pointer");
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  // Pad so that magic + version + length field + dict + '\n' is a multiple of 64 bytes.
  int major = 1;
  std::size_t prefix = kMagicBytes + 2 + 2;
  std::size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  if (total - prefix > 65535) {
    major = 2;
    prefix = kMagicBytes + 2 + 4;
    total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  }
  std::string header_text = dict + std::string(total - prefix - dict.size() - 1, ' ') + "\n";
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  SELA_CHECK(out.good(), "npy", "cannot open " << path << " for writing");
  out.write(kMagic, kMagicBytes);
  out.put(static_cast<char>(major));
  out.put(0);
  const std::uint32_t length = static_cast<std::uint32_t>(header_text.size());
  if (major == 1) {
    out.put(static_cast<char>(length & 0xFF));
    out.put(static_cast<char>((length >> 8) & 0xFF));
  } else {
    for (int byte = 0; byte < 4; ++byte) out.put(static_cast<char>((length >> (8 * byte)) & 0xFF));
  }
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  out.write(reinterpret_cast<const char*>(data),
            static_cast<std::streamsize>(count * static_cast<std::int64_t>(sizeof(T))));
  out.close();
  SELA_CHECK(!out.fail(), "npy", "writing " << path << " failed (disk full?)");
}

}  // namespace

std::int64_t NpyHeader::element_count() const {
  std::int64_t count = 1;
  for (std::int64_t d : shape) count *= d;
  return count;
}

NpyHeader read_npy_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  SELA_CHECK(in.good(), "npy", "cannot open " << path);
  const std::uint64_t file_bytes = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  char magic[kMagicBytes + 2] = {};
  in.read(magic, sizeof(magic));
  if (!in.good() || std::memcmp(magic, kMagic, kMagicBytes) != 0) {
    SELA_FAIL_HINT("npy", path << ": not a NumPy .npy file (no \\x93NUMPY magic)",
                   "write it with numpy.save");
  }
  const int major = static_cast<unsigned char>(magic[6]);
  const int minor = static_cast<unsigned char>(magic[7]);
  SELA_CHECK(major >= 1 && major <= 3, "npy",
             path << ": unsupported .npy version " << major << "." << minor);
  unsigned char length_bytes[4] = {};
  const int length_size = major == 1 ? 2 : 4;
  in.read(reinterpret_cast<char*>(length_bytes), length_size);
  SELA_CHECK(in.good(), "npy", path << ": truncated header");
  std::uint64_t length = 0;
  for (int byte = length_size - 1; byte >= 0; --byte) length = (length << 8) | length_bytes[byte];
  const std::uint64_t offset = kMagicBytes + 2 + static_cast<std::uint64_t>(length_size) + length;
  SELA_CHECK(offset <= file_bytes, "npy",
             path << ": truncated header (" << length << " bytes announced)");
  std::string text(static_cast<std::size_t>(length), '\0');
  in.read(&text[0], static_cast<std::streamsize>(length));
  SELA_CHECK(in.good() || length == 0, "npy", path << ": truncated header");
  NpyHeader header = parse_header(text, path);
  header.major_version = major;
  header.minor_version = minor;
  header.data_offset = offset;
  header.file_bytes = file_bytes;
  return header;
}

std::vector<float> read_npy_f32(const std::string& path, std::vector<std::int64_t>* shape) {
  return read_array<float>(path, "<f4", "float32", shape);
}
std::vector<double> read_npy_f64(const std::string& path, std::vector<std::int64_t>* shape) {
  return read_array<double>(path, "<f8", "float64", shape);
}
std::vector<std::int64_t> read_npy_i64(const std::string& path, std::vector<std::int64_t>* shape) {
  return read_array<std::int64_t>(path, "<i8", "int64", shape);
}

void write_npy(const std::string& path, const float* data, const std::vector<std::int64_t>& shape) {
  write_array(path, data, shape, "<f4");
}
void write_npy(const std::string& path, const double* data,
               const std::vector<std::int64_t>& shape) {
  write_array(path, data, shape, "<f8");
}
void write_npy(const std::string& path, const std::int64_t* data,
               const std::vector<std::int64_t>& shape) {
  write_array(path, data, shape, "<i8");
}

}  // namespace sela::assign
