// Tensor: a shaped, typed view of a shared buffer, with autograd bookkeeping.
//
// Shape of the design:
//  - Storage owns one buffer: 64-byte aligned host memory from engine/allocator.h, page-locked
//    ("pinned") host memory for buffers the data loader fills and the GPU reads, or device
//    memory on cuda:N from the caching device allocator (kernels/cuda/device_allocator.h).
//    Tensors share Storage through shared_ptr, so reshape / row-slices / detach are views
//    that cost nothing, on every device.
//  - Tensors are always contiguous, row-major (NCHW for images): a view is (storage, byte
//    offset, shape, dtype). This keeps every kernel a plain pointer + sizes.
//  - TensorImpl carries the autograd state: requires_grad, the accumulated gradient of a leaf,
//    and grad_fn, the Node (engine/autograd.h) that produced a non-leaf tensor.
//  - Tensor is a handle (shared_ptr<TensorImpl>): copies alias, clone() copies data.
// Differentiable operations live in engine/ops.h; member functions here are the few that
// every layer needs (construction, views, copies, element access).
//
// Devices. A tensor on cuda:N is worked on by the one stream of that device
// (kernels/cuda/stream.h): every op, fill and copy is queued there and returns at once.
// The host waits only where it needs a value: item(), to_vector(), a copy to host memory.
// Host element access of a CUDA tensor is an Error: data<T>() / raw_data() are host
// pointers; CUDA code asks for device_data<T>() / raw_device_data(), which are an Error on
// a CPU tensor. In a build without the CUDA backend any cuda:N tensor is an Error saying
// how to get one.
//
// Host -> device copies (to(Device), copy_from, copy_from_host). From pinned memory the copy
// is queued asynchronously: the host must not overwrite the source until the device stream
// has passed the copy (the next item()/to_vector() or synchronize() does that; freeing a
// pinned tensor is safe at once: the pinned pool of kernels/cuda/device_allocator.h reuses a
// block only after the copies queued from it finished). From pageable memory the copy is
// followed by a wait on the stream. The CUDA documentation ("API synchronization behavior")
// says a cudaMemcpyAsync from pageable host memory "might be synchronous with respect to
// host" and may be staged through a driver buffer, so whether the source has been read when
// the call returns is not promised; the rule relied on here is only that after
// cudaStreamSynchronize every copy queued on that stream has completed, so the caller may
// free or reuse a pageable source as soon as the call returns.
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
  // `bytes` on `device`; `what` names the op that asked (a device out-of-memory error says
  // it). pinned: page-locked host memory (CPU only; plain host memory without CUDA).
  Storage(std::size_t bytes, Device device, const char* what = "tensor", bool pinned = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  bool pinned() const { return pinned_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  Device device_;
  bool pinned_ = false;
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
  // `what` names the op allocating (device out-of-memory errors name it).
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu(),
                      const char* what = "tensor");
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  static Tensor scalar(double value, DType dtype = DType::f32);
  // A CPU tensor in page-locked host memory (uploads from it are asynchronous); in a build
  // without CUDA, plain host memory. For buffers the data loader fills every step.
  static Tensor pinned(const Shape& shape, DType dtype = DType::f32);

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

  bool is_pinned() const { return impl().storage->pinned(); }

  // --- data access -------------------------------------------------------------------------
  // Host pointers: an Error for a tensor on a GPU (copy it with to(Device::cpu()) first).
  void* raw_data() const;
  template <typename T> T* data() const;  // checks that T matches dtype()
  // Device pointers of a tensor on cuda:N, for CUDA code: an Error for a CPU tensor.
  void* raw_device_data() const;
  template <typename T> T* device_data() const;  // checks that T matches dtype()
  // Values on the host, from any device (a CUDA tensor is copied and the host waits).
  template <typename T> std::vector<T> to_vector() const;
  double item() const;  // a one-element tensor's value as double

  // --- views and copies (not differentiable; see ops.h for reshape with autograd) ----------
  Tensor view(const Shape& shape) const;  // same storage, new shape; -1 allowed once
  Tensor rows(std::int64_t begin, std::int64_t end) const;  // view of [begin, end) along dim 0
  Tensor detach() const;  // same storage, no autograd history
  Tensor clone() const;   // new storage on the same device, same values, no autograd history
  Tensor to(DType dtype) const;    // a converted copy on the same device (a copy also when equal)
  Tensor to(Device device) const;  // a copy on `device` (a copy also when equal), no history
  void copy_from(const Tensor& source);  // same shape; converts dtype; across devices
  // Copies nbytes() bytes of this tensor's dtype from host memory (pinned or pageable, found
  // out by asking CUDA) into this tensor on any device; see the copy rules above.
  void copy_from_host(const void* source);
  void fill_(double value);
  // Converts in place: every handle to this tensor sees the new dtype (new storage).
  // Used to turn a whole model into float64 for gradient checks.
  void convert_(DType dtype);
  // Moves in place to `device`: every handle sees the new storage; requires_grad is kept and
  // an accumulated gradient moves along. Module::to(Device) uses it.
  void move_(Device device);
  void zero_() { fill_(0.0); }

  // --- autograd ---------------------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool enabled = true);
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

// Waits until every op queued on `device` has run (nothing for the CPU) and raises any
// error the device recorded meanwhile (engine/ops_cuda.h). Benchmarks time with it.
void synchronize(Device device);

// Errors unless every tensor is defined, on the CPU, and of a floating dtype f32/f64.
void check_cpu_floating(const char* op, const Tensor& tensor, const char* role);
// Errors unless the tensor is defined and float32/float64, on any device.
void check_floating(const char* op, const Tensor& tensor, const char* role);
// Errors unless `b` lives on the device of `a`, naming the op, both tensors and devices.
void check_same_device(const char* op, const Tensor& a, const char* role_a, const Tensor& b,
                       const char* role_b);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void check_shape(const char* op, const Tensor& tensor, const Shape& expected, const char* role);

}  // namespace sela
