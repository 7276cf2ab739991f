// Implementation of engine/data/image_io.h, and the one place stb's code is compiled
// (STB_IMAGE_IMPLEMENTATION / STB_IMAGE_WRITE_IMPLEMENTATION): no libstb is linked, so a
// copied header folder is all a machine needs. stb keeps its failure reason per thread
// (STBI_THREAD_LOCAL), so the loader's workers can decode at the same time.
#include "engine/data/image_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "engine/error.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR           // 8-bit data sets only; HDR would be tone-mapped silently
#define STBI_FAILURE_USERMSG  // "Corrupt JPEG" rather than "bad huffman code" style codes
#include <stb/stb_image.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace sela::data {
namespace {

constexpr const char* kOp = "image";

bool is_jpeg(const std::uint8_t* bytes, std::size_t size) {
  return size >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF;
}

// Whether a JPEG's main image runs to its end-of-image marker. Walks the marker segments
// (skipped by their lengths, so an EXIF thumbnail inside APP1 is not mistaken for the end)
// and the entropy-coded data after each SOS (where 0xFF is always followed by 0x00 or a
// restart marker). A file cut anywhere before the EOI marker returns false; data appended
// after EOI is ignored. Malformed structure returns true and is left to the decoder.
bool jpeg_reaches_end(const std::uint8_t* bytes, std::size_t size) {
  std::size_t pos = 2;  // after SOI
  while (pos + 1 < size) {
    if (bytes[pos] != 0xFF) return true;  // not a marker: let stb judge
    std::uint8_t marker = bytes[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD9) return true;                             // EOI
    if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {  // standalone markers
      pos += 2;
      continue;
    }
    if (pos + 3 >= size) return false;
    std::size_t length = (static_cast<std::size_t>(bytes[pos + 2]) << 8) | bytes[pos + 3];
    if (length < 2) return true;
    pos += 2 + length;
    if (pos > size) return false;  // cut inside a segment
    if (marker == 0xDA) {          // SOS: entropy-coded data up to the next real marker
      while (pos + 1 < size && !(bytes[pos] == 0xFF && bytes[pos + 1] != 0x00 &&
                                 !(bytes[pos + 1] >= 0xD0 && bytes[pos + 1] <= 0xD7))) {
        ++pos;
      }
    }
  }
  return false;
}

// Fast path for the open-time probe: the EOI marker within the file's last bytes (0xFF 0xD9
// never occurs inside entropy-coded data). Only when it is absent is the whole file walked.
bool tail_has_end_marker(const std::uint8_t* tail, std::size_t size) {
  for (std::size_t i = size; i >= 2; --i) {
    if (tail[i - 2] == 0xFF && tail[i - 1] == 0xD9) return true;
  }
  return false;
}
constexpr std::size_t kJpegTail = 4096;

void check_channels(int channels, const std::string& name) {
  SELA_CHECK(channels == 0 || channels == 1 || channels == 3, kOp,
             name << ": asked to decode to " << channels << " channels; expected 0 (keep), 1 or 3");
}

void check_writable(const ImageView& image, const std::string& path) {
  SELA_CHECK(
      image.pixels != nullptr && image.height > 0 && image.width > 0, kOp,
      "cannot write " << path << ": image is empty (" << image.height << "x" << image.width << ")");
  SELA_CHECK(image.channels >= 1 && image.channels <= 4, kOp,
             "cannot write " << path << ": " << image.channels << " channels; expected 1 to 4");
}

}  // namespace

std::vector<std::uint8_t> read_file_bytes(const std::string& path, const char* op) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) SELA_FAIL(op, "cannot open " << path << ": " << std::strerror(errno));
  std::streamoff size = in.tellg();
  SELA_CHECK(size >= 0, op, "cannot read the size of " << path);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) {
    SELA_FAIL(op, "cannot read " << path << ": read failed after " << in.gcount() << " of " << size
                                 << " bytes");
  }
  return bytes;
}

Image decode_image_memory(const std::uint8_t* bytes, std::size_t size, const std::string& name,
                          int channels) {
  check_channels(channels, name);
  SELA_CHECK(size > 0, kOp, "cannot decode " << name << ": the file is empty (0 bytes)");
  SELA_CHECK(size <= static_cast<std::size_t>(0x7fffffff), kOp,
             "cannot decode " << name << ": " << size << " bytes is over stb_image's 2 GiB limit");
  if (is_jpeg(bytes, size)) {
    SELA_CHECK(jpeg_reaches_end(bytes, size), kOp,
               "cannot decode " << name << ": JPEG ends without its end-of-image marker "
                                << "(file truncated? " << size << " bytes)");
  }
  int width = 0, height = 0, file_channels = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(bytes, static_cast<int>(size), &width, &height, &file_channels,
                            channels),
      stbi_image_free);
  if (!pixels) {
    const char* reason = stbi_failure_reason();
    SELA_FAIL(kOp, "cannot decode " << name << ": " << (reason ? reason : "unknown reason")
                                    << " (stb_image, " << size << " bytes)");
  }
  SELA_CHECK(
      width > 0 && height > 0, kOp,
      "cannot decode " << name << ": decoder returned a " << height << "x" << width << " image");
  int out_channels = channels == 0 ? file_channels : channels;
  Image image(height, width, out_channels);
  std::memcpy(image.pixels.data(), pixels.get(), image.pixels.size());
  return image;
}

Image decode_image_file(const std::string& path, int channels) {
  check_channels(channels, path);
  std::vector<std::uint8_t> bytes = read_file_bytes(path, kOp);
  return decode_image_memory(bytes.data(), bytes.size(), path, channels);
}

bool probe_image_file(const std::string& path, std::string* reason) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) {
    *reason = std::string("cannot open: ") + std::strerror(errno);
    return false;
  }
  int width = 0, height = 0, file_channels = 0;
  if (!stbi_info_from_file(file.get(), &width, &height, &file_channels)) {
    const char* why = stbi_failure_reason();
    *reason = std::string("not a readable image: ") + (why ? why : "unknown reason");
    return false;
  }
  std::uint8_t head[3] = {0, 0, 0};
  std::fseek(file.get(), 0, SEEK_SET);
  std::size_t got = std::fread(head, 1, 3, file.get());
  if (is_jpeg(head, got)) {
    std::fseek(file.get(), 0, SEEK_END);
    long size = std::ftell(file.get());
    long tail = size < static_cast<long>(kJpegTail) ? size : static_cast<long>(kJpegTail);
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(tail));
    std::fseek(file.get(), size - tail, SEEK_SET);
    std::size_t read = std::fread(bytes.data(), 1, bytes.size(), file.get());
    if (!tail_has_end_marker(bytes.data(), read)) {
      bytes.resize(static_cast<std::size_t>(size));  // rare: walk the whole file
      std::fseek(file.get(), 0, SEEK_SET);
      read = std::fread(bytes.data(), 1, bytes.size(), file.get());
      if (!jpeg_reaches_end(bytes.data(), read)) {
        *reason = "JPEG ends without its end-of-image marker (file truncated?)";
        return false;
      }
    }
  }
  return true;
}

void write_png(const std::string& path, const ImageView& image) {
  check_writable(image, path);
  int ok = stbi_write_png(path.c_str(), image.width, image.height, image.channels, image.pixels,
                          image.width * image.channels);
  SELA_CHECK(ok != 0, kOp,
             "cannot write PNG " << path << " (" << image.height << "x" << image.width << ", "
                                 << image.channels << " channels): is the folder writable?");
}

void write_jpeg(const std::string& path, const ImageView& image, int quality) {
  check_writable(image, path);
  SELA_CHECK(quality >= 1 && quality <= 100, kOp,
             "JPEG quality for " << path << " must be 1..100, got " << quality);
  int ok = stbi_write_jpg(path.c_str(), image.width, image.height, image.channels, image.pixels,
                          quality);
  SELA_CHECK(ok != 0, kOp, "cannot write JPEG " << path << ": is the folder writable?");
}

void write_bmp(const std::string& path, const ImageView& image) {
  check_writable(image, path);
  int ok = stbi_write_bmp(path.c_str(), image.width, image.height, image.channels, image.pixels);
  SELA_CHECK(ok != 0, kOp, "cannot write BMP " << path << ": is the folder writable?");
}

void write_tga(const std::string& path, const ImageView& image) {
  check_writable(image, path);
  int ok = stbi_write_tga(path.c_str(), image.width, image.height, image.channels, image.pixels);
  SELA_CHECK(ok != 0, kOp, "cannot write TGA " << path << ": is the folder writable?");
}

}  // namespace sela::data
