// Implementation of engine/state_io.h.
#include "engine/state_io.h"

#include <cstring>
#include <set>
#include <sstream>

namespace sela {

void save_tensors(const NamedTensors& tensors, const std::string& path,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<TensorView> views;
  std::vector<Tensor> host_copies;  // tensors on a GPU, copied to host memory to be written
  host_copies.reserve(tensors.size());
  views.reserve(tensors.size());
  for (const auto& entry : tensors) {
    const Tensor* host = &entry.second;
    if (!entry.second.device().is_cpu()) {
      host_copies.push_back(entry.second.to(Device::cpu()));
      host = &host_copies.back();
    }
    views.push_back(TensorView{entry.first, host->dtype(), host->shape(),
                               host->numel() ? host->raw_data() : nullptr});
  }
  save_safetensors(path, views, metadata);
}

void save_state(const Module& module, const std::string& path,
                const std::map<std::string, std::string>& metadata) {
  save_tensors(module.state_dict(), path, metadata);
}

Tensor tensor_from_file(const SafetensorsFile& file, const std::string& name) {
  const LoadedTensor& loaded = file.get(name);
  Tensor t = Tensor::empty(loaded.shape, loaded.dtype);
  SELA_CHECK(loaded.bytes.size() == t.nbytes(), "load_state",
             file.path() << ": " << name << " holds " << loaded.bytes.size() << " bytes, expected "
                         << t.nbytes());
  if (t.nbytes()) std::memcpy(t.raw_data(), loaded.bytes.data(), t.nbytes());
  return t;
}

void load_state(Module& module, const SafetensorsFile& file, const LoadOptions& options) {
  std::ostringstream problems;
  int problem_count = 0;
  std::set<std::string> expected;
  NamedTensors state = module.state_dict();
  for (auto& entry : state) {
    std::string key = options.prefix + entry.first;
    expected.insert(key);
    if (!file.contains(key)) {
      problems << "\n  missing " << key << " " << entry.second.describe();
      ++problem_count;
      continue;
    }
    const LoadedTensor& loaded = file.get(key);
    bool dtype_ok = loaded.dtype == entry.second.dtype() ||
                    (options.convert_dtype && is_floating(loaded.dtype) &&
                     is_floating(entry.second.dtype()));
    if (loaded.shape != entry.second.shape() || !dtype_ok) {
      problems << "\n  " << key << ": file has " << dtype_name(loaded.dtype) << " "
               << shape_str(loaded.shape) << ", model has " << entry.second.describe();
      ++problem_count;
    }
  }
  if (options.strict) {
    for (const std::string& name : file.names()) {
      if (name.rfind(options.prefix, 0) == 0 && !expected.count(name)) {
        problems << "\n  unexpected " << name << " (not in the model)";
        ++problem_count;
      }
    }
  }
  SELA_CHECK(problem_count == 0, "load_state",
             file.path() << " does not match the model (" << problem_count
                         << " problems; was it written for another --arch, --width-mult, "
                            "--heads or --clusters?):"
                         << problems.str());
  for (auto& entry : state) {
    Tensor source = tensor_from_file(file, options.prefix + entry.first);
    entry.second.copy_from(source);
  }
}

void load_state(Module& module, const std::string& path, const LoadOptions& options) {
  SafetensorsFile file(path);
  load_state(module, file, options);
}

}  // namespace sela
