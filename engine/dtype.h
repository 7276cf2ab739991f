// Element types and devices of sela tensors.
//
// DType names the element type of a buffer; Device names where it lives. Both are small
// value types so that kernels, serialization and the data loader can share them without
// knowing about Tensor. 16-bit floats (f16, bf16) have a slot so that storage and the
// safetensors reader can carry them, though no CPU op computes in them yet.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/error.h"

namespace sela {

enum class DType : std::uint8_t { f32, f64, i32, i64, f16, bf16, u8 };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

// Names as PyTorch prints them ("float32"), used in error messages.
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::u8: return "uint8";
  }
  return "?";
}

inline bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::f16 || t == DType::bf16;
}

// Maps a C++ element type to its DType: dtype_of<float>() == DType::f32.
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::u8; }

enum class DeviceType : std::uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }

  std::string str() const {
    return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
  }

  // Parses "cpu", "cuda", "cuda:N"; anything else is an Error naming the text.
  static Device parse(const std::string& text) {
    if (text == "cpu") return cpu();
    if (text == "cuda") return cuda(0);
    if (text.rfind("cuda:", 0) == 0) {
      try {
        std::size_t used = 0;
        int index = std::stoi(text.substr(5), &used);
        if (used == text.size() - 5 && index >= 0) return cuda(index);
      } catch (const std::exception&) {
      }
    }
    SELA_FAIL_HINT("device", "unknown device '" << text << "'", "use cpu, cuda or cuda:N");
  }
};

}  // namespace sela
