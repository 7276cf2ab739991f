// NumPy .npy files: the exchange format between `sela bench sinkhorn`, the NumPy twin of
// the published algorithm (tools/bench/sinkhorn_numpy.py) and users' own scripts (logits
// in, labels out).
//
// Format (numpy.lib.format): the magic "\x93NUMPY", a version byte pair (1.0: 2-byte
// header length; 2.0 and 3.0: 4-byte), then a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (200000, 1000), }
// padded with spaces and a newline, then the raw data. We read and write little-endian
// float32 ('<f4'), float64 ('<f8') and int64 ('<i8') arrays in C order; anything else —
// Fortran order, another dtype, a short file — is an Error naming the file and saying what
// was found, since silently reinterpreting bytes would produce plausible garbage.
//
// Why whole-array functions: the arrays here are read once at start-up and written once at
// the end; an 800 MB logits file is one contiguous read into a vector.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sela::assign {

struct NpyHeader {
  int major_version = 1, minor_version = 0;
  std::string descr;  // e.g. "<f4"
  bool fortran_order = false;
  std::vector<std::int64_t> shape;  // () for a scalar
  std::uint64_t data_offset = 0;    // bytes before the data
  std::uint64_t file_bytes = 0;
  std::int64_t element_count() const;  // product of shape (1 for a scalar)
};

// Parses the header (an Error for a file that is not .npy or whose header is malformed).
NpyHeader read_npy_header(const std::string& path);

// Read a whole C-order array of the named dtype; the shape comes back through `shape`.
std::vector<float> read_npy_f32(const std::string& path, std::vector<std::int64_t>* shape);
std::vector<double> read_npy_f64(const std::string& path, std::vector<std::int64_t>* shape);
std::vector<std::int64_t> read_npy_i64(const std::string& path, std::vector<std::int64_t>* shape);

// Write a C-order array (version 1.0 header, or 2.0 when the header needs it).
void write_npy(const std::string& path, const float* data, const std::vector<std::int64_t>& shape);
void write_npy(const std::string& path, const double* data, const std::vector<std::int64_t>& shape);
void write_npy(const std::string& path, const std::int64_t* data,
               const std::vector<std::int64_t>& shape);

}  // namespace sela::assign
