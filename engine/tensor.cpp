// Implementation of engine/tensor.h (construction, views, copies, element access).
#include "engine/tensor.h"

#include <cstring>
#include <sstream>

#include "engine/allocator.h"
#include "engine/autograd.h"

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

Storage::Storage(std::size_t bytes, Device device) : bytes_(bytes), device_(device) {
  SELA_CHECK(device.is_cpu(), "storage",
             "device " << device.str() << " is not available in this build (CPU only)");
  data_ = host_allocate(bytes);
}

Storage::~Storage() { host_free(data_, bytes_); }

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

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (std::int64_t d : shape) {
    SELA_CHECK(d >= 0, "empty", "negative dimension in shape " << shape_str(shape));
  }
  auto impl = std::make_shared<TensorImpl>();
  impl->storage =
      std::make_shared<Storage>(static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype),
                                device);
  impl->shape = shape;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

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
  return static_cast<char*>(impl().storage->data()) + impl().byte_offset;
}

template <typename T>
T* Tensor::data() const {
  SELA_CHECK(dtype() == dtype_of<T>(), "data",
             "asked for " << dtype_name(dtype_of<T>()) << " data of a " << describe());
  return static_cast<T*>(raw_data());
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  SELA_CHECK(device().is_cpu(), "to_vector", "tensor is on " << device().str());
  Tensor converted = dtype() == dtype_of<T>() ? *this : to(dtype_of<T>());
  const T* p = converted.data<T>();
  return std::vector<T>(p, p + numel());
}

double Tensor::item() const {
  SELA_CHECK(numel() == 1, "item", "item() needs one element, tensor is " << describe());
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
  Tensor out = empty(shape(), dtype(), device());
  std::memcpy(out.raw_data(), raw_data(), nbytes());
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return clone();
  Tensor out = empty(shape(), target, device());
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& source) {
  SELA_CHECK(source.shape() == shape(), "copy_from",
             "shapes differ: destination " << describe() << ", source " << source.describe());
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

void Tensor::fill_(double value) {
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

Tensor& Tensor::set_requires_grad(bool requires) {
  SELA_CHECK(!requires || is_floating(dtype()), "requires_grad",
             "only floating tensors can require gradients, got " << describe());
  impl().requires_grad = requires;
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
  template std::vector<T> Tensor::to_vector<T>() const;
SELA_INSTANTIATE_TENSOR(float)
SELA_INSTANTIATE_TENSOR(double)
SELA_INSTANTIATE_TENSOR(std::int32_t)
SELA_INSTANTIATE_TENSOR(std::int64_t)
SELA_INSTANTIATE_TENSOR(std::uint8_t)
#undef SELA_INSTANTIATE_TENSOR

}  // namespace sela
