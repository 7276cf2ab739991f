// Reading and writing the safetensors format (the weights format PyTorch users exchange).
//
// Layout of a file: an 8-byte little-endian unsigned header length H, then H bytes of UTF-8
// JSON, then the data buffer. The JSON maps each tensor name to
//   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// (offsets relative to the start of the data buffer) and may hold a "__metadata__" object of
// string -> string. The data buffer is the concatenation of every tensor's bytes, raw and
// little-endian, with no holes; the header is padded with spaces so the buffer starts 8-byte
// aligned.
//
// The API works on raw views (a name, a dtype, a shape and a pointer) so that it does not
// depend on the Tensor class: the checkpoint code above it turns tensors into views and
// loaded bytes back into tensors. Reading is strict: a file that PyTorch's `safetensors`
// package would refuse (holes, overlaps, sizes that do not match shape x dtype, a truncated
// buffer) is refused here too, with a sela::Error that names the file and what is wrong; no
// input file can make the reader read out of bounds. Dtype codes outside sela's DType (BOOL,
// I8, I16, U16, U32, U64, F8_*) are refused with an error naming the tensor and the code.
//
// Writing is atomic: the bytes go to PATH.tmp-<pid> in the same folder, are fsync'ed, and the
// temporary file is renamed over PATH, so an existing file survives a failure midway. Header
// keys are sorted by name; the data buffer is ordered by element size (largest first), then
// by name, as the Python package does, so that every tensor starts aligned to its element
// size. Only little-endian hosts are supported (checked at run time).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace sela {

// What is written: a name, a dtype, a shape and the bytes (numel * dtype_size(dtype) of them,
// contiguous, row-major). `data` may be null only when the tensor has no elements.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;  // [] for a scalar
  const void* data;
};

// Writes TENSORS (and METADATA as "__metadata__") to PATH atomically. Names must be unique,
// non-empty and not "__metadata__"; dims must be non-negative. Throws sela::Error (naming the
// path) on invalid input or any I/O failure; PATH is then left as it was.
void save_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// One tensor as read: its dtype, its shape and its raw little-endian bytes
// (numel * dtype_size(dtype) of them).
struct LoadedTensor {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};

// A whole safetensors file, read and validated at construction (throws sela::Error naming
// the file and what is wrong).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throws sela::Error naming the file and the tensor when NAME is absent.
  const LoadedTensor& get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::map<std::string, LoadedTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The safetensors dtype code of DTYPE ("F32", "BF16", ...), and back. The parse returns false
// for codes sela does not support.
const char* safetensors_dtype_code(DType dtype);
bool parse_safetensors_dtype_code(const std::string& code, DType* dtype);

}  // namespace sela
