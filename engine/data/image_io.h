// Image files in and out: decoding with stb_image, writing PNG/JPEG/BMP/TGA with
// stb_image_write.
//
// The only file that sees stb. Decoding never returns a silent blank: a file that cannot be
// read, is not an image, or is cut short is an Error naming the path and the decoder's
// reason. stb's JPEG decoder pads a truncated file with zeros and calls it a success, so a
// JPEG must also reach its end-of-image marker (a walk over its marker segments).
// Writers are for the `--grid` picture and for the fixtures tests build for themselves.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/image.h"

namespace sela::data {

// Decodes an image file to 8-bit (H, W, channels). channels = 0 keeps the file's own count
// (1..4); 1 or 3 converts (stb's luminance / replication). Throws sela::Error with the path
// and reason.
Image decode_image_file(const std::string& path, int channels = 3);

// The same from bytes already in memory; `name` is used in messages.
Image decode_image_memory(const std::uint8_t* bytes, std::size_t size, const std::string& name,
                          int channels = 3);

// Cheap check without decoding pixels: the header parses and, for JPEG, the end-of-image
// marker is there. Returns true when the file looks decodable; otherwise fills `reason`.
bool probe_image_file(const std::string& path, std::string* reason);

// Writers; the format follows the function, not the extension. Throw on failure.
void write_png(const std::string& path, const ImageView& image);
void write_jpeg(const std::string& path, const ImageView& image, int quality = 95);
void write_bmp(const std::string& path, const ImageView& image);
void write_tga(const std::string& path, const ImageView& image);

// Reads a whole file; Error naming the path when it cannot be opened or read.
std::vector<std::uint8_t> read_file_bytes(const std::string& path, const char* op);

}  // namespace sela::data
