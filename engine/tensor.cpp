// Implementation of engine/tensor.h (construction, views, copies, element access).
//
// The CUDA parts (device storage, fills, casts and copies on the device stream) sit behind
// `#if defined(SELA_HAVE_CUDA)`; in a CPU-only build a cuda:N Storage is an Error that says
// how to get the backend, so every other CUDA branch is unreachable there.
#include "engine/tensor.h"

#include <cstdio>
#include <cstring>
#include <sstream>

#include "engine/allocator.h"
#include "engine/autograd.h"

#if defined(SELA_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "engine/ops_cuda.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/device_allocator.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/stream.h"
#endif

namespace sela {

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "(";
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) out << ",";
  out << ")";
  return out.str();
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

namespace {

[[noreturn]] [[maybe_unused]] void fail_no_cuda_backend(const char* what, Device device) {
  SELA_FAIL_HINT(what,
                 "a tensor on " << device.str()
                                << " was requested, but this build of sela has no CUDA backend",
                 "configure with -DSELA_CUDA=ON on a machine with nvcc (the CUDA toolkit), "
                 "rebuild, and run on a machine with an NVIDIA GPU");
}

#if defined(SELA_HAVE_CUDA)

int usable_device_count() {
  static const int count = cuda::device_count();
  return count;
}

void check_cuda_device(Device device, const char* what) {
  const int count = usable_device_count();
  SELA_CHECK(device.index >= 0, what, "invalid device " << device.str());
  if (count == 0) {
    SELA_FAIL_HINT(what,
                   "a tensor on " << device.str() << " was requested, but no CUDA device is "
                                  << "usable here (" << cuda::no_device_reason() << ")",
                   "run on a machine with an NVIDIA GPU and its driver, or use the CPU");
  }
  SELA_CHECK(device.index < count, what,
             device.str() << " does not exist: this machine has " << count
                          << " CUDA device(s), cuda:0 ... cuda:" << count - 1);
}

// The device's one stream (device_stream also makes the device current for this thread).
cudaStream_t stream_for(Device device) { return cuda::device_stream(device.index); }

// The host waits for everything queued on the device, then learns of recorded errors.
void wait_for(Device device) {
  cuda::synchronize_device_stream(device.index);
  cuda_ops::raise_deferred_errors(device.index);
}

bool is_pinned_host_pointer(const void* pointer) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pointer) != cudaSuccess) {
    (void)cudaGetLastError();  // an unknown pointer is pageable memory; clear the error
    return false;
  }
  return attributes.type == cudaMemoryTypeHost;
}

// Host -> device. From pinned memory: queued only. From pageable memory: queued, then the
// host waits (see the rule in tensor.h), so the source may be reused as soon as this returns.
void upload(const void* host, bool host_pinned, void* device_pointer, std::size_t bytes,
            Device device) {
  if (bytes == 0) return;
  cudaStream_t stream = stream_for(device);
  SELA_CUDA_CHECK(cudaMemcpyAsync(device_pointer, host, bytes, cudaMemcpyHostToDevice, stream));
  if (!host_pinned) wait_for(device);
}

// Device -> host: the host waits for the copy (and for everything queued before it).
void download(const void* device_pointer, void* host, std::size_t bytes, Device device) {
  if (bytes > 0) {
    cudaStream_t stream = stream_for(device);
    SELA_CUDA_CHECK(cudaMemcpyAsync(host, device_pointer, bytes, cudaMemcpyDeviceToHost, stream));
  }
  wait_for(device);
}

// The dtype pairs kernels/cuda/elementwise.cuh converts on the device.
bool device_cast(DType from, DType to, std::int64_t n, const void* in, void* out,
                 cudaStream_t stream) {
  using std::int32_t;
  using std::int64_t;
  using std::uint8_t;
#define SELA_DEVICE_CAST(F, T, FROM_TYPE, TO_TYPE)                                     \
  if (from == DType::F && to == DType::T) {                                          \
    cuda::cast<FROM_TYPE, TO_TYPE>(n, static_cast<const FROM_TYPE*>(in),             \
                                   static_cast<TO_TYPE*>(out), stream);              \
    return true;                                                                     \
  }
  SELA_DEVICE_CAST(f32, f64, float, double)
  SELA_DEVICE_CAST(f64, f32, double, float)
  SELA_DEVICE_CAST(i32, i64, int32_t, int64_t)
  SELA_DEVICE_CAST(i64, i32, int64_t, int32_t)
  SELA_DEVICE_CAST(i64, f32, int64_t, float)
  SELA_DEVICE_CAST(i64, f64, int64_t, double)
  SELA_DEVICE_CAST(i32, f32, int32_t, float)
  SELA_DEVICE_CAST(i32, f64, int32_t, double)
  SELA_DEVICE_CAST(u8, f32, uint8_t, float)
#undef SELA_DEVICE_CAST
  return false;
}

#endif  // SELA_HAVE_CUDA

}  // namespace

Storage::Storage(std::size_t bytes, Device device, const char* what, bool pinned)
    : bytes_(bytes), device_(device), pinned_(pinned && device.is_cpu()) {
  if (device.is_cuda()) {
#if defined(SELA_HAVE_CUDA)
    check_cuda_device(device, what);
    if (bytes > 0) data_ = cuda::device_allocate(bytes, device.index, what);
    return;
#else
    fail_no_cuda_backend(what, device);
#endif
  }
  if (pinned_ && !pinned_memory_available()) pinned_ = false;  // nothing to pin for
  data_ = pinned_ ? pinned_allocate(bytes) : host_allocate(bytes);
}

Storage::~Storage() {
  try {
#if defined(SELA_HAVE_CUDA)
    if (device_.is_cuda()) {
      if (data_ != nullptr) cuda::device_free(data_, bytes_, device_.index);
      return;
    }
#endif
    if (pinned_) {  // the pinned pool reuses the block only after queued copies finished
      pinned_free(data_, bytes_);
      return;
    }
    host_free(data_, bytes_);
  } catch (const std::exception& e) {  // a destructor must not throw: report and go on
    std::fprintf(stderr, "sela: warning: freeing a %zu-byte buffer on %s failed: %s\n", bytes_,
                 device_.str().c_str(), e.what());
  }
}

namespace {

// Calls fn(T{}) with T the C++ type of dtype (integer and floating types).
template <typename Fn>
void visit_dtype(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); return;
    case DType::f64: fn(double{}); return;
    case DType::i32: fn(std::int32_t{}); return;
    case DType::i64: fn(std::int64_t{}); return;
    case DType::u8: fn(std::uint8_t{}); return;
    default: break;
  }
  SELA_FAIL(op, "dtype " << dtype_name(dtype) << " is not supported on the CPU yet");
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, const char* what) {
  for (std::int64_t d : shape) {
    SELA_CHECK(d >= 0, "empty", "negative dimension in shape " << shape_str(shape));
  }
  auto impl = std::make_shared<TensorImpl>();
  impl->storage =
      std::make_shared<Storage>(static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype),
                                device, what);
  impl->shape = shape;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device, "zeros");
  if (device.is_cuda()) {
#if defined(SELA_HAVE_CUDA)
    if (t.nbytes() > 0) {
      SELA_CUDA_CHECK(cudaMemsetAsync(t.raw_device_data(), 0, t.nbytes(), stream_for(device)));
    }
#endif
    return t;
  }
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device, "full");
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

Tensor Tensor::pinned(const Shape& shape, DType dtype) {
  for (std::int64_t d : shape) {
    SELA_CHECK(d >= 0, "pinned", "negative dimension in shape " << shape_str(shape));
  }
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(
      static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype), Device::cpu(), "pinned",
      /*pinned=*/true);
  impl->shape = shape;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  SELA_CHECK(static_cast<std::int64_t>(values.size()) == shape_numel(shape), "from_vector",
             values.size() << " values do not fill shape " << shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>());
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}

std::int64_t Tensor::size(std::int64_t d) const {
  std::int64_t n = dim();
  std::int64_t index = d < 0 ? d + n : d;
  SELA_CHECK(index >= 0 && index < n, "size",
             "dimension " << d << " out of range for shape " << shape_str(shape()));
  return shape()[static_cast<std::size_t>(index)];
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype())) + " " + shape_str(shape()) + " on " + device().str();
}

void* Tensor::raw_data() const {
  const TensorImpl& t = impl();
  if (!t.storage->device().is_cpu()) {
    SELA_FAIL_HINT("data", "host access to a " << describe() << ": its memory is on the GPU",
                   "copy it to the host with to(Device::cpu()) (or to_vector / item), or use "
                   "device_data<T>() in CUDA code");
  }
  return static_cast<char*>(t.storage->data()) + t.byte_offset;
}

template <typename T>
T* Tensor::data() const {
  SELA_CHECK(dtype() == dtype_of<T>(), "data",
             "asked for " << dtype_name(dtype_of<T>()) << " data of a " << describe());
  return static_cast<T*>(raw_data());
}

void* Tensor::raw_device_data() const {
  const TensorImpl& t = impl();
  SELA_CHECK(t.storage->device().is_cuda(), "device_data",
             "asked for the device pointer of a " << describe() << ", which is on the host");
  return static_cast<char*>(t.storage->data()) + t.byte_offset;
}

template <typename T>
T* Tensor::device_data() const {
  SELA_CHECK(dtype() == dtype_of<T>(), "device_data",
             "asked for " << dtype_name(dtype_of<T>()) << " data of a " << describe());
  return static_cast<T*>(raw_device_data());
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  if (!device().is_cpu()) return to(Device::cpu()).to_vector<T>();
  Tensor converted = dtype() == dtype_of<T>() ? *this : to(dtype_of<T>());
  const T* p = converted.data<T>();
  return std::vector<T>(p, p + numel());
}

double Tensor::item() const {
  SELA_CHECK(numel() == 1, "item", "item() needs one element, tensor is " << describe());
  if (!device().is_cpu()) return to(Device::cpu()).item();
  double value = 0;
  visit_dtype(dtype(), "item", [&](auto tag) {
    using T = decltype(tag);
    value = static_cast<double>(*static_cast<const T*>(raw_data()));
  });
  return value;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape resolved = shape;
  std::int64_t known = 1;
  int infer = -1;
  for (std::size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      SELA_CHECK(infer < 0, "view", "only one -1 allowed in " << shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      SELA_CHECK(resolved[i] >= 0, "view", "negative dimension in " << shape_str(shape));
      known *= resolved[i];
    }
  }
  if (infer >= 0) {
    SELA_CHECK(known > 0 && numel() % known == 0, "view",
               "cannot view " << describe() << " as " << shape_str(shape));
    resolved[static_cast<std::size_t>(infer)] = numel() / known;
  }
  SELA_CHECK(shape_numel(resolved) == numel(), "view",
             "cannot view " << describe() << " as " << shape_str(shape)
                            << ": element counts differ");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->byte_offset = impl_->byte_offset;
  impl->shape = resolved;
  impl->dtype = impl_->dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::rows(std::int64_t begin, std::int64_t end) const {
  SELA_CHECK(dim() >= 1 && 0 <= begin && begin <= end && end <= size(0), "rows",
             "rows [" << begin << ", " << end << ") out of range for " << describe());
  std::int64_t row_elements = size(0) == 0 ? 0 : numel() / size(0);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->byte_offset =
      impl_->byte_offset + static_cast<std::size_t>(begin * row_elements) * dtype_size(dtype());
  impl->shape = shape();
  impl->shape[0] = end - begin;
  impl->dtype = dtype();
  return Tensor(std::move(impl));
}

Tensor Tensor::detach() const { return view(shape()); }

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device(), "clone");
  if (device().is_cuda()) {
#if defined(SELA_HAVE_CUDA)
    if (nbytes() > 0) {
      SELA_CUDA_CHECK(cudaMemcpyAsync(out.raw_device_data(), raw_device_data(), nbytes(),
                                      cudaMemcpyDeviceToDevice, stream_for(device())));
    }
#endif
    return out;
  }
  std::memcpy(out.raw_data(), raw_data(), nbytes());
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return clone();
  Tensor out = empty(shape(), target, device(), "to");
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return clone();
  Tensor out = empty(shape(), dtype(), target, "to");
  out.copy_from(*this);
  return out;
}

namespace {

#if defined(SELA_HAVE_CUDA)
// copy_from where at least one side is on a GPU; shapes are checked.
void copy_with_cuda(const Tensor& destination, const Tensor& source) {
  const Device to = destination.device(), from = source.device();
  const std::size_t bytes = destination.nbytes();
  if (to.is_cuda() && from.is_cuda()) {
    if (to != from) {  // another GPU: the source's stream finishes, then a peer copy
      Tensor same_type = source.dtype() == destination.dtype() ? source
                                                               : source.to(destination.dtype());
      cuda::synchronize_device_stream(from.index);
      if (bytes > 0) {
        SELA_CUDA_CHECK(cudaMemcpyPeerAsync(destination.raw_device_data(), to.index,
                                            same_type.raw_device_data(), from.index, bytes,
                                            stream_for(to)));
      }
      wait_for(to);  // same_type may be a temporary of the other device's stream
      return;
    }
    cudaStream_t stream = stream_for(to);
    if (source.dtype() == destination.dtype()) {
      if (bytes == 0 || destination.raw_device_data() == source.raw_device_data()) return;
      const char* d = static_cast<const char*>(destination.raw_device_data());
      const char* s = static_cast<const char*>(source.raw_device_data());
      if (d < s + bytes && s < d + bytes) {  // overlapping views: go through a copy
        Tensor copy = source.clone();
        SELA_CUDA_CHECK(cudaMemcpyAsync(destination.raw_device_data(), copy.raw_device_data(),
                                        bytes, cudaMemcpyDeviceToDevice, stream));
        return;
      }
      SELA_CUDA_CHECK(cudaMemcpyAsync(destination.raw_device_data(), source.raw_device_data(),
                                      bytes, cudaMemcpyDeviceToDevice, stream));
      return;
    }
    if (device_cast(source.dtype(), destination.dtype(), source.numel(),
                    source.raw_device_data(), destination.raw_device_data(), stream)) {
      return;
    }
    // A pair the device kernels do not convert: through the host (waits; not a hot path).
    Tensor target = destination;
    target.copy_from(source.to(Device::cpu()).to(destination.dtype()));
    return;
  }
  if (to.is_cuda()) {  // host -> device: convert on the host, then upload
    Tensor same_type = source.dtype() == destination.dtype() ? source
                                                             : source.to(destination.dtype());
    upload(same_type.raw_data(), same_type.is_pinned(), destination.raw_device_data(), bytes, to);
    return;
  }
  // device -> host: convert on the device, then download
  Tensor same_type = source.dtype() == destination.dtype() ? source
                                                           : source.to(destination.dtype());
  download(same_type.raw_device_data(), destination.raw_data(), bytes, from);
}
#endif

}  // namespace

void Tensor::copy_from(const Tensor& source) {
  SELA_CHECK(source.shape() == shape(), "copy_from",
             "shapes differ: destination " << describe() << ", source " << source.describe());
  if (!device().is_cpu() || !source.device().is_cpu()) {
#if defined(SELA_HAVE_CUDA)
    copy_with_cuda(*this, source);
    return;
#else
    fail_no_cuda_backend("copy_from", device().is_cpu() ? source.device() : device());
#endif
  }
  if (source.dtype() == dtype()) {
    std::memmove(raw_data(), source.raw_data(), nbytes());
    return;
  }
  std::int64_t n = numel();
  visit_dtype(source.dtype(), "copy_from", [&](auto from_tag) {
    using From = decltype(from_tag);
    visit_dtype(dtype(), "copy_from", [&](auto to_tag) {
      using To = decltype(to_tag);
      const From* in = static_cast<const From*>(source.raw_data());
      To* out = static_cast<To*>(raw_data());
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<To>(in[i]);
    });
  });
}

void Tensor::copy_from_host(const void* source) {
  SELA_CHECK(source != nullptr || nbytes() == 0, "copy_from_host",
             "null source for " << describe());
  if (device().is_cpu()) {
    if (nbytes() > 0) std::memmove(raw_data(), source, nbytes());
    return;
  }
#if defined(SELA_HAVE_CUDA)
  upload(source, is_pinned_host_pointer(source), raw_device_data(), nbytes(), device());
#else
  fail_no_cuda_backend("copy_from_host", device());
#endif
}

void Tensor::fill_(double value) {
  if (device().is_cuda()) {
#if defined(SELA_HAVE_CUDA)
    cudaStream_t stream = stream_for(device());
    auto fill_as = [&](auto tag) {
      using T = decltype(tag);
      cuda::fill<T>(numel(), static_cast<T>(value), device_data<T>(), stream);
    };
    switch (dtype()) {
      case DType::f32: fill_as(float{}); return;
      case DType::f64: fill_as(double{}); return;
      case DType::i32: fill_as(std::int32_t{}); return;
      case DType::i64: fill_as(std::int64_t{}); return;
      case DType::u8: fill_as(std::uint8_t{}); return;
      default: break;
    }
    SELA_FAIL("fill_",
              "dtype " << dtype_name(dtype()) << " is not supported on " << device().str());
#endif
  }
  std::int64_t n = numel();
  visit_dtype(dtype(), "fill_", [&](auto tag) {
    using T = decltype(tag);
    T* p = static_cast<T*>(raw_data());
    T v = static_cast<T>(value);
    for (std::int64_t i = 0; i < n; ++i) p[i] = v;
  });
}

void Tensor::convert_(DType target) {
  if (target == dtype()) return;
  Tensor converted = to(target);
  impl().storage = converted.impl().storage;
  impl().byte_offset = 0;
  impl().dtype = target;
  impl().grad.reset();
}

void Tensor::move_(Device target) {
  if (target == device()) return;
  Tensor moved = to(target);
  impl().storage = moved.impl().storage;
  impl().byte_offset = 0;
  if (impl().grad) impl().grad = Tensor(impl().grad).to(target).impl_ptr();
}

Tensor& Tensor::set_requires_grad(bool enabled) {
  SELA_CHECK(!enabled || is_floating(dtype()), "requires_grad",
             "only floating tensors can require gradients, got " << describe());
  impl().requires_grad = enabled;
  return *this;
}

Tensor Tensor::grad() const { return Tensor(impl().grad); }

void Tensor::set_grad(const Tensor& grad) const {
  if (grad.defined()) {
    SELA_CHECK(grad.shape() == shape() && grad.dtype() == dtype(), "set_grad",
               "gradient " << grad.describe() << " does not match tensor " << describe());
  }
  impl().grad = grad.impl_ptr();
}

void Tensor::zero_grad() const { impl().grad.reset(); }

void Tensor::backward(const Tensor& grad_output) const { run_backward(*this, grad_output); }

void check_cpu_floating(const char* op, const Tensor& tensor, const char* role) {
  SELA_CHECK(tensor.defined(), op, role << " is undefined");
  SELA_CHECK(tensor.device().is_cpu(), op,
             role << " is on " << tensor.device().str() << "; this op runs on the CPU");
  SELA_CHECK(tensor.dtype() == DType::f32 || tensor.dtype() == DType::f64, op,
             role << " must be float32 or float64, got " << tensor.describe());
}

void synchronize(Device device) {
  if (device.is_cpu()) return;
#if defined(SELA_HAVE_CUDA)
  check_cuda_device(device, "synchronize");
  wait_for(device);
#else
  fail_no_cuda_backend("synchronize", device);
#endif
}

void check_floating(const char* op, const Tensor& tensor, const char* role) {
  SELA_CHECK(tensor.defined(), op, role << " is undefined");
  SELA_CHECK(tensor.dtype() == DType::f32 || tensor.dtype() == DType::f64, op,
             role << " must be float32 or float64, got " << tensor.describe());
}

void check_same_device(const char* op, const Tensor& a, const char* role_a, const Tensor& b,
                       const char* role_b) {
  if (a.device() == b.device()) return;
  SELA_FAIL_HINT(op,
                 "tensors on different devices: " << role_a << " is " << a.describe() << ", "
                                                   << role_b << " is " << b.describe(),
                 "move them to one device with to(Device) or Module::to(Device)");
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  SELA_CHECK(a.dtype() == b.dtype(), op,
             "dtypes differ: " << a.describe() << " vs " << b.describe());
}

void check_shape(const char* op, const Tensor& tensor, const Shape& expected, const char* role) {
  SELA_CHECK(tensor.shape() == expected, op,
             role << " must have shape " << shape_str(expected) << ", got "
                  << shape_str(tensor.shape()));
}

#define SELA_INSTANTIATE_TENSOR(T)                                             \
  template Tensor Tensor::from_vector<T>(const std::vector<T>&, const Shape&); \
  template T* Tensor::data<T>() const;                                         \
  template T* Tensor::device_data<T>() const;                                  \
  template std::vector<T> Tensor::to_vector<T>() const;
SELA_INSTANTIATE_TENSOR(float)
SELA_INSTANTIATE_TENSOR(double)
SELA_INSTANTIATE_TENSOR(std::int32_t)
SELA_INSTANTIATE_TENSOR(std::int64_t)
SELA_INSTANTIATE_TENSOR(std::uint8_t)
#undef SELA_INSTANTIATE_TENSOR

}  // namespace sela
