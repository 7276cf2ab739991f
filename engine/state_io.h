// Saving and loading a Module's state (parameters and buffers) as safetensors.
//
// Names are the module's PyTorch-style names, so a file written here loads into the
// PyTorch twin with load_state_dict(strict=True) and back. Loading is strict by default:
// every tensor the module has must be in the file with the same shape and dtype, and the
// file may not hold tensors the module lacks — each mismatch is listed in one Error that
// names the file. Values are copied into the module's existing tensors, so optimizers that
// hold them stay valid. A prefix selects a sub-namespace of the file ("init/" in the
// golden data).
#pragma once

#include <map>
#include <string>

#include "engine/nn.h"
#include "engine/safetensors.h"

namespace sela {

void save_state(const Module& module, const std::string& path,
                const std::map<std::string, std::string>& metadata = {});
void save_tensors(const NamedTensors& tensors, const std::string& path,
                  const std::map<std::string, std::string>& metadata = {});

struct LoadOptions {
  std::string prefix;   // names in the file are prefix + module name
  bool strict = true;   // refuse extra tensors under the prefix
  bool convert_dtype = false;  // allow float64 file -> float32 module and back
};
void load_state(Module& module, const SafetensorsFile& file, const LoadOptions& options = {});
void load_state(Module& module, const std::string& path, const LoadOptions& options = {});

// One tensor of a file as a Tensor (a copy of its bytes).
Tensor tensor_from_file(const SafetensorsFile& file, const std::string& name);

}  // namespace sela
