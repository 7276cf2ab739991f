// Tensor: a shaped, typed view of a shared buffer, with autograd bookkeeping.
//
// Shape of the design:
//  - Storage owns one buffer (64-byte aligned host memory from engine/allocator.h; the CUDA
//    backend adds device storage). Tensors share Storage through shared_ptr, so reshape /
//    row-slices / detach are views that cost nothing.
//  - Tensors are always contiguous, row-major (NCHW for images): a view is (storage, byte
//    offset, shape, dtype). This keeps every kernel a plain pointer + sizes.
//  - TensorImpl carries the autograd state: requires_grad, the accumulated gradient of a leaf,
//    and grad_fn, the Node (engine/autograd.h) that produced a non-leaf tensor.
//  - Tensor is a handle (shared_ptr<TensorImpl>): copies alias, clone() copies data.
// Differentiable operations live in engine/ops.h; member functions here are the few that
// every layer needs (construction, views, copies, element access).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/error.h"

namespace sela {

using Shape = std::vector<std::int64_t>;
std::string shape_str(const Shape& shape);  // "(128, 3, 32, 32)"
std::int64_t shape_numel(const Shape& shape);

class Storage {
 public:
  Storage(std::size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  Device device_;
};

struct Node;
class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  std::size_t byte_offset = 0;
  Shape shape;
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient of a leaf (same shape, dtype)
  std::shared_ptr<Node> grad_fn;     // producer of a non-leaf tensor; null for leaves
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- construction ----------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  static Tensor scalar(double value, DType dtype = DType::f32);

  // --- description -----------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  std::int64_t dim() const { return static_cast<std::int64_t>(impl().shape.size()); }
  std::int64_t size(std::int64_t d) const;  // negative d counts from the end
  std::int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype()); }
  std::string describe() const;  // "float32 (128, 10) on cpu"

  // --- data access (CPU) -----------------------------------------------------------------
  void* raw_data() const;
  template <typename T> T* data() const;  // checks that T matches dtype()
  template <typename T> std::vector<T> to_vector() const;
  double item() const;  // a one-element tensor's value as double

  // --- views and copies (not differentiable; see ops.h for reshape with autograd) ----------
  Tensor view(const Shape& shape) const;  // same storage, new shape; -1 allowed once
  Tensor rows(std::int64_t begin, std::int64_t end) const;  // view of [begin, end) along dim 0
  Tensor detach() const;  // same storage, no autograd history
  Tensor clone() const;   // new storage, same values, no autograd history
  Tensor to(DType dtype) const;
  void copy_from(const Tensor& source);  // same shape; converts dtype
  void fill_(double value);
  // Converts in place: every handle to this tensor sees the new dtype (new storage).
  // Used to turn a whole model into float64 for gradient checks.
  void convert_(DType dtype);
  void zero_() { fill_(0.0); }

  // --- autograd ---------------------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool requires = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  Tensor grad() const;  // undefined Tensor when none accumulated yet
  void set_grad(const Tensor& grad) const;
  void zero_grad() const;  // drops the gradient
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  // Reverse-mode sweep from this tensor. A scalar gets gradient 1; otherwise pass one.
  void backward(const Tensor& grad_output = Tensor()) const;

  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same_storage(const Tensor& other) const {
    return impl().storage == other.impl().storage;
  }

 private:
  TensorImpl& impl() const {
    SELA_CHECK(impl_ != nullptr, "tensor", "use of an undefined tensor");
    return *impl_;
  }
  std::shared_ptr<TensorImpl> impl_;
};

// Errors unless every tensor is defined, on the CPU, and of a floating dtype f32/f64.
void check_cpu_floating(const char* op, const Tensor& tensor, const char* role);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void check_shape(const char* op, const Tensor& tensor, const Shape& expected, const char* role);

}  // namespace sela
