// Implementation of engine/optim.h: the fused CPU kernel cpu::sgd_update per parameter on
// the host, and one cuda::sgd_update_multi launch per (device, dtype, first step) group of
// parameters on GPUs.
#include "engine/optim.h"

#include <map>
#include <tuple>

#include "kernels/cpu/sgd.h"

#if defined(SELA_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "engine/cuda_graph.h"
#include "kernels/cuda/sgd.cuh"
#include "kernels/cuda/stream.h"
#endif

namespace sela {

#if defined(SELA_HAVE_CUDA)
// The pointer arrays of each fused launch. A group's device array is
//   [param pointers | grad pointers | momentum-buffer pointers | sizes]   (4 * count int64)
// written by cuda::write_int64_values, whose kernels carry the values in their arguments:
// no staging buffer to guard, and a CUDA graph that captures a step (engine/cuda_graph.h)
// replays the pointers of its own gradients, whatever the eager steps around it uploaded.
struct Sgd::DeviceArrays {
  struct Group {
    std::vector<std::int64_t> uploaded;  // what the device array holds now
    Tensor device_array;                 // (capacity) int64 on the device
    int device = 0;

    // Makes the device array hold `values` (writes only when they changed). In a capture
    // it always writes (eager steps between replays may write other values), and what the
    // array holds is known again only after the next eager write.
    void update(const std::vector<std::int64_t>& values, cudaStream_t stream, bool capturing) {
      if (!capturing && values == uploaded) return;
      const auto count = static_cast<std::int64_t>(values.size());
      if (!device_array.defined() || device_array.numel() < count) {
        device_array = Tensor::empty({count}, DType::i64, Device::cuda(device), "sgd");
      }
      cuda::write_int64_values(values.data(), count, device_array.device_data<std::int64_t>(),
                               stream);
      uploaded = capturing ? std::vector<std::int64_t>() : values;
    }
  };

  // (device, dtype, launch number in the step) -> group. Keyed by the launch number, not by
  // "first step", so that the second step reuses the first step's arrays (no allocation).
  std::map<std::tuple<int, DType, int>, Group> groups;
  // Momentum buffers of GPU parameters, allocated when the optimiser is made (index as the
  // parameters; undefined for CPU ones) and handed to momentum_buffers() at each
  // parameter's first update. Allocating them (and the pointer arrays) before the first
  // step, not during it, makes the first step's memory use the same as every later one's,
  // so the caching allocator needs no cudaMalloc after step 1.
  std::vector<Tensor> momentum_reserve;
};
#else
struct Sgd::DeviceArrays {};
#endif

Sgd::Sgd(std::vector<Tensor> parameters, SgdOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  SELA_CHECK(options.lr >= 0 && options.momentum >= 0 && options.weight_decay >= 0, "sgd",
             "lr, momentum and weight decay must be >= 0 (lr " << options.lr << ", momentum "
                                                               << options.momentum << ", wd "
                                                               << options.weight_decay << ")");
  SELA_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0), "sgd",
             "Nesterov momentum needs momentum > 0 and zero dampening");
  for (const Tensor& p : parameters_) {
    check_floating("sgd", p, "parameter");
    SELA_CHECK(p.is_leaf(), "sgd", "can only optimise leaf tensors, got a computed "
                                       << p.describe());
  }
  momentum_buffers_.resize(parameters_.size());
#if defined(SELA_HAVE_CUDA)
  std::map<std::pair<int, DType>, std::int64_t> counts;  // GPU parameters per (device, dtype)
  for (const Tensor& p : parameters_) {
    if (p.device().is_cuda()) counts[{p.device().index, p.dtype()}]++;
  }
  if (!counts.empty()) {
    device_arrays_ = std::make_unique<DeviceArrays>();
    device_arrays_->momentum_reserve.resize(parameters_.size());
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Tensor& p = parameters_[i];
      if (p.device().is_cuda() && options_.momentum != 0) {
        device_arrays_->momentum_reserve[i] =
            Tensor::empty(p.shape(), p.dtype(), p.device(), "sgd");
      }
    }
    for (const auto& entry : counts) {
      DeviceArrays::Group& group =
          device_arrays_->groups[{entry.first.first, entry.first.second, 0}];
      group.device = entry.first.first;
      group.device_array =
          Tensor::empty({4 * entry.second}, DType::i64, Device::cuda(entry.first.first), "sgd");
    }
  }
#endif
}

Sgd::~Sgd() = default;
Sgd::Sgd(Sgd&&) noexcept = default;
Sgd& Sgd::operator=(Sgd&&) noexcept = default;

void Sgd::step() {
  cpu::SgdConfig config;
  config.lr = options_.lr;
  config.momentum = options_.momentum;
  config.dampening = options_.dampening;
  config.weight_decay = options_.weight_decay;
  config.nesterov = options_.nesterov;
  bool any_cuda = false;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    Tensor& p = parameters_[i];
    if (p.device().is_cuda()) {
      any_cuda = true;
      continue;
    }
    Tensor g = p.grad();
    if (!g.defined()) continue;
    bool first = false;
    if (options_.momentum != 0 && !momentum_buffers_[i].defined()) {
      momentum_buffers_[i] = Tensor::empty(p.shape(), p.dtype());
      first = true;
    }
    Tensor& buffer = momentum_buffers_[i];
    if (buffer.defined() && buffer.device() != p.device()) buffer.move_(p.device());
    if (p.dtype() == DType::f32) {
      cpu::sgd_update<float>(p.numel(), p.data<float>(), g.data<float>(),
                             buffer.defined() ? buffer.data<float>() : nullptr, config, first);
    } else {
      cpu::sgd_update<double>(p.numel(), p.data<double>(), g.data<double>(),
                              buffer.defined() ? buffer.data<double>() : nullptr, config, first);
    }
  }
  if (any_cuda) step_cuda(config);
}

#if defined(SELA_HAVE_CUDA)
void Sgd::step_cuda(const cpu::SgdConfig& config) {
  cpu::check_sgd_config(config);
  if (!device_arrays_) device_arrays_ = std::make_unique<DeviceArrays>();
  device_arrays_->momentum_reserve.resize(parameters_.size());
  // One list per (device, dtype, first step): params, grads, buffers, sizes.
  struct Lists {
    std::vector<std::int64_t> params, grads, buffers, sizes;
  };
  std::map<std::tuple<int, DType, bool>, Lists> lists;
  auto address = [](const Tensor& t) {
    return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(t.raw_device_data()));
  };
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    Tensor& p = parameters_[i];
    if (!p.device().is_cuda()) continue;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (g.device() != p.device()) {  // e.g. a host gradient of a 0-d parameter
      g = g.to(p.device());
      p.set_grad(g);
    }
    bool first = false;
    Tensor& buffer = momentum_buffers_[i];
    if (options_.momentum != 0 && !buffer.defined()) {
      // Refused before any state changes: the captured update would treat every replay as
      // the first, and a buffer taken from the reserve here would stay unwritten.
      SELA_CHECK(!graph::capturing(p.device()), "sgd",
                 "a parameter takes its first update inside a CUDA-graph capture (the captured "
                 "update would treat every replay as the first); run one eager step first");
      Tensor& reserved = device_arrays_->momentum_reserve[i];
      if (reserved.defined() && reserved.device() == p.device() && reserved.dtype() == p.dtype() &&
          reserved.shape() == p.shape()) {
        buffer = reserved;
        reserved = Tensor();
      } else {  // the parameter moved or changed type after the optimiser was made
        buffer = Tensor::empty(p.shape(), p.dtype(), p.device(), "sgd");
      }
      first = true;
    }
    // A buffer given from outside (a resumed checkpoint) makes the reserved one unneeded.
    if (buffer.defined()) device_arrays_->momentum_reserve[i] = Tensor();
    if (buffer.defined() && buffer.device() != p.device()) buffer.move_(p.device());
    Lists& l = lists[{p.device().index, p.dtype(), first}];
    l.params.push_back(address(p));
    l.grads.push_back(address(g));
    l.buffers.push_back(buffer.defined() ? address(buffer) : 0);
    l.sizes.push_back(p.numel());
  }
  std::map<std::pair<int, DType>, int> launches;  // per (device, dtype) so far this step
  for (auto& entry : lists) {
    const int device = std::get<0>(entry.first);
    const DType dtype = std::get<1>(entry.first);
    const bool first = std::get<2>(entry.first);
    const int launch_number = launches[{device, dtype}]++;
    const Lists& l = entry.second;
    const std::int64_t count = static_cast<std::int64_t>(l.params.size());
    std::vector<std::int64_t> values;
    values.reserve(4 * l.params.size());
    for (const auto* part : {&l.params, &l.grads, &l.buffers, &l.sizes}) {
      values.insert(values.end(), part->begin(), part->end());
    }
    cudaStream_t stream = cuda::device_stream(device);
    DeviceArrays::Group& group = device_arrays_->groups[{device, dtype, launch_number}];
    group.device = device;
    const bool capturing = graph::capturing(Device::cuda(device));
    group.update(values, stream, capturing);
    if (capturing) {
      // A replay writes the captured pointers into the array it was captured with: the
      // action keeps that array alive (an eager step with more parameters may replace the
      // group's), and marks the host's record of the group's array stale.
      graph::after_each_replay(Device::cuda(device),
                               [&group, array = group.device_array]() {
                                 (void)array;  // held, not read
                                 group.uploaded.clear();
                               });
      // The hyper-parameters are kernel arguments, fixed at capture time.
      graph::before_each_replay(Device::cuda(device), [this, config]() {
        SELA_CHECK(options_.lr == config.lr && options_.momentum == config.momentum &&
                       options_.weight_decay == config.weight_decay &&
                       options_.dampening == config.dampening &&
                       options_.nesterov == config.nesterov,
                   "sgd", "the learning rate or another SGD option changed since the step was "
                          "captured (lr " << config.lr << " then, " << options_.lr
                                          << " now); capture the step again");
      });
    }
    std::int64_t* base = group.device_array.device_data<std::int64_t>();
    auto launch = [&](auto tag) {
      using T = decltype(tag);
      T* const* buffers =
          options_.momentum != 0 ? reinterpret_cast<T* const*>(base + 2 * count) : nullptr;
      cuda::sgd_update_multi<T>(count, reinterpret_cast<T* const*>(base),
                                reinterpret_cast<const T* const*>(base + count), buffers,
                                base + 3 * count, config, first, stream);
    };
    if (dtype == DType::f32) {
      launch(float{});
    } else {
      launch(double{});
    }
  }
}
#else
void Sgd::step_cuda(const cpu::SgdConfig&) {
  SELA_FAIL_HINT("sgd", "a parameter is on a GPU, but this build has no CUDA backend",
                 "configure with -DSELA_CUDA=ON on a machine with nvcc and rebuild");
}
#endif

void Sgd::zero_grad() {
  for (Tensor& p : parameters_) p.zero_grad();
}

double step_learning_rate(double base_lr, std::int64_t epoch,
                          const std::vector<std::int64_t>& drop_epochs, double factor) {
  double lr = base_lr;
  for (std::int64_t drop : drop_epochs) {
    if (epoch >= drop) lr *= factor;
  }
  return lr;
}

}  // namespace sela
