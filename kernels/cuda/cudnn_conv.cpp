// cuDNN convolution (see cudnn_conv.h). Host code, compiled by the host compiler.
//
// Per device: the cudnnHandle and the cached plans, under one mutex (a cuDNN handle must not
// be used by two host threads at once, and plans are made with the handle). A plan holds the
// four descriptors of one (dtype, math mode, search mode, direction, shape), the chosen
// algorithm, its workspace size and a one-line description. Plans are made on the first call
// that needs them, with that call's buffers (benchmark mode times the candidates on them),
// and kept for the process. The "last used" table behind conv2d_algorithm() has its own
// mutex, always taken after a device's (never the other way round).
#include "kernels/cuda/cudnn_conv.h"

#include <atomic>

#include "engine/error.h"

#if defined(SELA_HAVE_CUDNN)
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_allocator.h"
#include "kernels/cuda/stream.h"
#endif

namespace sela::cuda {
namespace {

std::atomic<bool> tf32_conv{true};
std::atomic<bool> benchmark_conv{false};
std::atomic<bool> deterministic_conv{false};

}  // namespace

void set_conv_tf32(bool allow) { tf32_conv.store(allow, std::memory_order_relaxed); }
bool conv_tf32() { return tf32_conv.load(std::memory_order_relaxed); }
void set_conv_benchmark(bool benchmark) {
  benchmark_conv.store(benchmark, std::memory_order_relaxed);
}
bool conv_benchmark() { return benchmark_conv.load(std::memory_order_relaxed); }
void set_conv_deterministic(bool deterministic) {
  deterministic_conv.store(deterministic, std::memory_order_relaxed);
}
bool conv_deterministic() { return deterministic_conv.load(std::memory_order_relaxed); }

#if defined(SELA_HAVE_CUDNN)

// How check_status reports cuDNN statuses (this file is the only user of cuDNN).
template <>
struct StatusTraits<cudnnStatus_t> {
  static constexpr const char* library = "cuDNN";
  static bool ok(cudnnStatus_t status) { return status == CUDNN_STATUS_SUCCESS; }
  static const char* name(cudnnStatus_t status) { return cudnnGetErrorString(status); }
  // cuDNN's own explanation of the last failure in this thread, when it has one.
  static const char* text(cudnnStatus_t) {
    thread_local char detail[1024];
    detail[0] = '\0';
    cudnnGetLastErrorString(detail, sizeof(detail));
    return detail[0] != '\0' ? detail : "no further detail from cuDNN";
  }
  static const char* hint(cudnnStatus_t status) {
    const int family = static_cast<int>(status) / 1000;
    if (status == CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
      return "cuDNN could not load one of its sub-libraries (libcudnn_cnn.so.9, "
             "libcudnn_engines_*.so.9): put cuDNN's lib folder (for a pip install: "
             "site-packages/nvidia/cudnn/lib) on LD_LIBRARY_PATH";
    if (status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ||
        status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
      return "out of memory inside cuDNN: reduce the batch size or the model width";
    if (status == CUDNN_STATUS_NOT_INITIALIZED)
      return "cuDNN could not start: check that a GPU is usable (nvidia-smi) and that the driver "
             "is as new as the CUDA toolkit";
    if (family == 2) return "cuDNN rejected an argument (shape, data type or pointer alignment)";
    if (family == 3) return "cuDNN has no kernel for this shape, data type or GPU";
    if (family == 5)
      return "a cuDNN kernel failed (often an earlier fault reported late); rerun with "
             "CUDA_LAUNCH_BLOCKING=1";
    return "";
  }
};

}  // namespace sela::cuda

#define SELA_CUDNN_CHECK(statement, op) \
  ::sela::cuda::check_status((statement), (op), #statement, __FILE__, __LINE__)

namespace sela::cuda {
namespace {

// Largest workspace an algorithm may use (bigger ones are skipped).
constexpr std::size_t kMaxWorkspaceBytes = std::size_t(1) << 30;

enum Direction { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };
const char* const kDirectionOp[] = {"conv2d_forward", "conv2d_backward_input",
                                    "conv2d_backward_weight"};

const char* algorithm_name(Direction direction, int algorithm) {
  static const char* const forward[] = {
      "implicit_gemm", "implicit_precomp_gemm", "gemm", "direct", "fft", "fft_tiling",
      "winograd",      "winograd_nonfused"};
  static const char* const backward_data[] = {"algo_0",     "algo_1",   "fft",
                                              "fft_tiling", "winograd", "winograd_nonfused"};
  static const char* const backward_filter[] = {
      "algo_0", "algo_1", "fft", "algo_3", "winograd", "winograd_nonfused", "fft_tiling"};
  switch (direction) {
    case kForward:
      if (algorithm >= 0 && algorithm < 8) return forward[algorithm];
      break;
    case kBackwardData:
      if (algorithm >= 0 && algorithm < 6) return backward_data[algorithm];
      break;
    case kBackwardFilter:
      if (algorithm >= 0 && algorithm < 7) return backward_filter[algorithm];
      break;
  }
  return "unknown";
}

const char* math_name(cudnnMathType_t math) {
  switch (math) {
    case CUDNN_DEFAULT_MATH:
      return "default math";
    case CUDNN_TENSOR_OP_MATH:
      return "tensor-op math";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION:
      return "tensor-op math with conversion";
    case CUDNN_FMA_MATH:
      return "fma math";
  }
  return "unknown math";
}

// One entry of cuDNN's ranked list, whatever the direction's perf struct.
struct Candidate {
  int algorithm;
  cudnnStatus_t status;
  std::size_t memory;
  cudnnDeterminism_t determinism;
  cudnnMathType_t math;
};

template <typename Perf>
std::vector<Candidate> to_candidates(const std::vector<Perf>& perf, int returned) {
  std::vector<Candidate> out;
  for (int i = 0; i < returned; ++i)
    out.push_back(Candidate{
        static_cast<int>(perf[static_cast<std::size_t>(i)].algo),
        perf[static_cast<std::size_t>(i)].status, perf[static_cast<std::size_t>(i)].memory,
        perf[static_cast<std::size_t>(i)].determinism, perf[static_cast<std::size_t>(i)].mathType});
  return out;
}

// The descriptors and the chosen algorithm of one (dtype, mode, direction, shape).
struct Plan {
  cudnnTensorDescriptor_t input = nullptr;   // (N, C, H, W)
  cudnnTensorDescriptor_t output = nullptr;  // (N, O, OH, OW)
  cudnnTensorDescriptor_t bias = nullptr;    // (1, O, 1, 1)
  cudnnFilterDescriptor_t weight = nullptr;  // (O, C, kh, kw)
  cudnnConvolutionDescriptor_t conv = nullptr;
  int algorithm = -1;
  std::size_t workspace_bytes = 0;
  std::string text;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // only runs when making a plan failed: cached plans live for the process
    if (input != nullptr)
      warn_status(cudnnDestroyTensorDescriptor(input), "destroy", __FILE__, __LINE__);
    if (output != nullptr)
      warn_status(cudnnDestroyTensorDescriptor(output), "destroy", __FILE__, __LINE__);
    if (bias != nullptr)
      warn_status(cudnnDestroyTensorDescriptor(bias), "destroy", __FILE__, __LINE__);
    if (weight != nullptr)
      warn_status(cudnnDestroyFilterDescriptor(weight), "destroy", __FILE__, __LINE__);
    if (conv != nullptr)
      warn_status(cudnnDestroyConvolutionDescriptor(conv), "destroy", __FILE__, __LINE__);
  }
};

using PlanKey = std::array<std::int64_t, 17>;   // device, dtype, tf32, benchmark, det., dir., shape
using ShapeKey = std::array<std::int64_t, 12>;  // direction, shape

ShapeKey shape_key(const Conv2dShape& s, Direction direction) {
  return ShapeKey{direction,  s.batch,    s.in_channels, s.in_height, s.in_width, s.out_channels,
                  s.kernel_h, s.kernel_w, s.stride_h,    s.stride_w,  s.pad_h,    s.pad_w};
}

struct CudnnDevice {
  std::mutex mutex;
  cudnnHandle_t handle = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
};

CudnnDevice& cudnn_device(int device) {
  static CudnnDevice* devices = new CudnnDevice[kMaxDevices];  // never destroyed
  return devices[device];
}

struct LastUsed {
  std::mutex mutex;
  std::map<ShapeKey, const Plan*> plans;
};

LastUsed& last_used() {
  static LastUsed* table = new LastUsed();
  return *table;
}

// The data type of a call's tensors (the math: float for f32 and bf16, double for f64).
enum class Data { f32 = 0, f64 = 1, bf16 = 2 };

template <typename T>
constexpr Data data_of() {
  return std::is_same<T, float>::value ? Data::f32 : Data::f64;
}

const char* data_name(Data data) {
  switch (data) {
    case Data::f32: return "float";
    case Data::f64: return "double";
    case Data::bf16: return "bfloat16";
  }
  return "?";
}

// What a call needs besides the plan: which data type and mode.
struct Mode {
  Data data;
  bool tf32;  // float only
  bool benchmark;
  bool deterministic;
};

// Throws unless cuDNN's int-based 4-d descriptors can describe the shape.
void check_int_limits(const Conv2dShape& s, const char* op) {
  const std::int64_t sizes[] = {
      s.batch,    s.in_channels, s.in_height, s.in_width, s.out_channels, s.kernel_h,   s.kernel_w,
      s.stride_h, s.stride_w,    s.pad_h,     s.pad_w,    s.out_height(), s.out_width()};
  for (std::int64_t size : sizes)
    SELA_CHECK(size <= INT_MAX, op, "a size exceeds cuDNN's int range in " << conv2d_shape_text(s));
  const std::int64_t limit = std::int64_t(1) << 31;
  const double input = static_cast<double>(s.batch) * s.in_channels * s.in_height * s.in_width;
  const double output =
      static_cast<double>(s.batch) * s.out_channels * s.out_height() * s.out_width();
  const double weight =
      static_cast<double>(s.out_channels) * s.in_channels * s.kernel_h * s.kernel_w;
  SELA_CHECK(input < limit && output < limit && weight < limit, op,
             "a tensor has 2^31 elements or more, beyond cuDNN's 4-d descriptors, in "
                 << conv2d_shape_text(s));
}

// Creates the descriptors of a plan (not yet the algorithm).
void describe(Plan& plan, const Conv2dShape& s, const Mode& mode, const char* op) {
  const cudnnDataType_t type = mode.data == Data::f32   ? CUDNN_DATA_FLOAT
                               : mode.data == Data::f64 ? CUDNN_DATA_DOUBLE
                                                        : CUDNN_DATA_BFLOAT16;
  // bfloat16 tensors are multiplied and summed in float (cuDNN's "pseudo bfloat16").
  const cudnnDataType_t compute = mode.data == Data::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  auto i = [](std::int64_t v) { return static_cast<int>(v); };
  SELA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.input), op);
  SELA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan.input, CUDNN_TENSOR_NCHW, type, i(s.batch),
                                              i(s.in_channels), i(s.in_height), i(s.in_width)),
                   op);
  SELA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan.weight), op);
  SELA_CUDNN_CHECK(
      cudnnSetFilter4dDescriptor(plan.weight, type, CUDNN_TENSOR_NCHW, i(s.out_channels),
                                 i(s.in_channels), i(s.kernel_h), i(s.kernel_w)),
      op);
  SELA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&plan.conv), op);
  SELA_CUDNN_CHECK(
      cudnnSetConvolution2dDescriptor(plan.conv, i(s.pad_h), i(s.pad_w), i(s.stride_h),
                                      i(s.stride_w), 1, 1, CUDNN_CROSS_CORRELATION, compute),
      op);
  const bool strict_fp32 = mode.data == Data::f32 && !mode.tf32;
  const cudnnMathType_t math = strict_fp32                ? CUDNN_FMA_MATH
                               : mode.data == Data::bf16 ? CUDNN_TENSOR_OP_MATH
                                                         : CUDNN_DEFAULT_MATH;
  SELA_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, math), op);
  int n = 0, c = 0, h = 0, w = 0;
  SELA_CUDNN_CHECK(
      cudnnGetConvolution2dForwardOutputDim(plan.conv, plan.input, plan.weight, &n, &c, &h, &w),
      op);
  SELA_CHECK(n == s.batch && c == s.out_channels && h == s.out_height() && w == s.out_width(), op,
             "cuDNN computes an output of " << n << "x" << c << "x" << h << "x" << w << " for "
                                            << conv2d_shape_text(s));
  SELA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.output), op);
  SELA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan.output, CUDNN_TENSOR_NCHW, type, n, c, h, w),
                   op);
  SELA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.bias), op);
  SELA_CUDNN_CHECK(
      cudnnSetTensor4dDescriptor(plan.bias, CUDNN_TENSOR_NCHW, type, 1, i(s.out_channels), 1, 1),
      op);
}

// Workspace of `algorithm` with the descriptors as they are now (math type included).
cudnnStatus_t workspace_size(cudnnHandle_t handle, const Plan& plan, Direction direction,
                             int algorithm, std::size_t* bytes) {
  switch (direction) {
    case kForward:
      return cudnnGetConvolutionForwardWorkspaceSize(
          handle, plan.input, plan.weight, plan.conv, plan.output,
          static_cast<cudnnConvolutionFwdAlgo_t>(algorithm), bytes);
    case kBackwardData:
      return cudnnGetConvolutionBackwardDataWorkspaceSize(
          handle, plan.weight, plan.output, plan.conv, plan.input,
          static_cast<cudnnConvolutionBwdDataAlgo_t>(algorithm), bytes);
    case kBackwardFilter:
      return cudnnGetConvolutionBackwardFilterWorkspaceSize(
          handle, plan.input, plan.output, plan.conv, plan.weight,
          static_cast<cudnnConvolutionBwdFilterAlgo_t>(algorithm), bytes);
  }
  return CUDNN_STATUS_BAD_PARAM;
}

// cuDNN's ranked candidates: heuristics, or (benchmark) timed trials on the call's buffers.
// x / w / y are the input, weight and output-side buffers of the direction (for backward
// data: w, dy, dx; backward filter: x, dy, dw); the one written is the call's output anyway.
std::vector<Candidate> rank_candidates(cudnnHandle_t handle, const Plan& plan, Direction direction,
                                       bool timed, const void* x, const void* w, const void* y,
                                       int device, cudaStream_t stream, const char* op) {
  int max_count = 0;
  std::vector<Candidate> heuristic;
  if (direction == kForward) {
    SELA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count), op);
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<std::size_t>(max_count));
    int returned = 0;
    SELA_CUDNN_CHECK(
        cudnnGetConvolutionForwardAlgorithm_v7(handle, plan.input, plan.weight, plan.conv,
                                               plan.output, max_count, &returned, perf.data()),
        op);
    heuristic = to_candidates(perf, returned);
  } else if (direction == kBackwardData) {
    SELA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count), op);
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<std::size_t>(max_count));
    int returned = 0;
    SELA_CUDNN_CHECK(
        cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, plan.weight, plan.output, plan.conv,
                                                    plan.input, max_count, &returned, perf.data()),
        op);
    heuristic = to_candidates(perf, returned);
  } else {
    SELA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle, &max_count), op);
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<std::size_t>(max_count));
    int returned = 0;
    SELA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                         handle, plan.input, plan.output, plan.conv, plan.weight, max_count,
                         &returned, perf.data()),
                     op);
    heuristic = to_candidates(perf, returned);
  }
  if (!timed) return heuristic;

  // Benchmark: one workspace big enough for every candidate that fits the cap (sizes asked
  // of cuDNN for each algorithm, not taken from the heuristics' list).
  std::size_t workspace_bytes = 0;
  for (const Candidate& c : heuristic) {
    std::size_t bytes = 0;
    if (c.status == CUDNN_STATUS_SUCCESS &&
        workspace_size(handle, plan, direction, c.algorithm, &bytes) == CUDNN_STATUS_SUCCESS &&
        bytes <= kMaxWorkspaceBytes)
      workspace_bytes = std::max(workspace_bytes, bytes);
  }
  void* workspace = device_allocate(workspace_bytes, device, "cuDNN algorithm search workspace");
  std::vector<Candidate> timed_list;
  try {
    int returned = 0;
    if (direction == kForward) {
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<std::size_t>(max_count));
      SELA_CUDNN_CHECK(
          cudnnFindConvolutionForwardAlgorithmEx(
              handle, plan.input, x, plan.weight, w, plan.conv, plan.output, const_cast<void*>(y),
              max_count, &returned, perf.data(), workspace, workspace_bytes),
          op);
      timed_list = to_candidates(perf, returned);
    } else if (direction == kBackwardData) {
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<std::size_t>(max_count));
      SELA_CUDNN_CHECK(
          cudnnFindConvolutionBackwardDataAlgorithmEx(
              handle, plan.weight, w, plan.output, y, plan.conv, plan.input, const_cast<void*>(x),
              max_count, &returned, perf.data(), workspace, workspace_bytes),
          op);
      timed_list = to_candidates(perf, returned);
    } else {
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<std::size_t>(max_count));
      SELA_CUDNN_CHECK(
          cudnnFindConvolutionBackwardFilterAlgorithmEx(
              handle, plan.input, x, plan.output, y, plan.conv, plan.weight, const_cast<void*>(w),
              max_count, &returned, perf.data(), workspace, workspace_bytes),
          op);
      timed_list = to_candidates(perf, returned);
    }
    SELA_CUDA_CHECK(cudaStreamSynchronize(stream));  // the trials are done with the workspace
  } catch (...) {
    device_free(workspace, workspace_bytes, device);
    throw;
  }
  // Up to 1 GiB of a size no later call asks for: back to the driver, not into the cache.
  device_free_to_driver(workspace, workspace_bytes, device);
  return timed_list;
}

// Picks the first acceptable candidate (see the header) and fixes the descriptor's math type.
void choose_algorithm(cudnnHandle_t handle, Plan& plan, const Conv2dShape& s, Direction direction,
                      const Mode& mode, const std::vector<Candidate>& candidates, const char* op) {
  const bool strict_fp32 = mode.data == Data::f32 && !mode.tf32;
  for (const Candidate& c : candidates) {
    if (c.status != CUDNN_STATUS_SUCCESS || c.memory > kMaxWorkspaceBytes) continue;
    if (c.math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;  // would compute in fp16
    if (strict_fp32 && c.math == CUDNN_TENSOR_OP_MATH) continue;    // TF32 is off
    if (mode.deterministic && c.determinism != CUDNN_DETERMINISTIC) continue;
    const cudnnMathType_t math = strict_fp32 ? CUDNN_FMA_MATH : c.math;
    SELA_CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, math), op);
    std::size_t bytes = 0;
    if (workspace_size(handle, plan, direction, c.algorithm, &bytes) != CUDNN_STATUS_SUCCESS ||
        bytes > kMaxWorkspaceBytes)
      continue;
    plan.algorithm = c.algorithm;
    plan.workspace_bytes = bytes;
    plan.text =
        std::string(mode.data == Data::f32 ? (mode.tf32 ? "float tf32 " : "float fp32 ")
                                           : std::string(data_name(mode.data)) + " ") +
        algorithm_name(direction, c.algorithm) + ", " + math_name(math) + ", workspace " +
        human_bytes(bytes) +
        (c.determinism == CUDNN_DETERMINISTIC ? ", deterministic" : ", non-deterministic") +
        (mode.benchmark ? " (timed)" : " (heuristic)");
    return;
  }
  SELA_FAIL_HINT(
      op,
      "cuDNN offers no usable algorithm for "
          << conv2d_shape_text(s) << " ("
          << (mode.data == Data::f32 ? (mode.tf32 ? "float, TF32" : "float, strict fp32")
                                     : data_name(mode.data))
          << (mode.deterministic ? ", deterministic only" : "") << "; " << candidates.size()
          << " candidates, none succeeded within a " << human_bytes(kMaxWorkspaceBytes)
          << " workspace)",
      "allow TF32 (set_conv_tf32) or non-deterministic algorithms, or change the shape");
}

// Takes `bytes` of workspace for one call; frees it when the scope ends (after waiting for a
// stream other than the device's own: see the header).
class CallWorkspace {
 public:
  CallWorkspace(std::size_t bytes, int device, cudaStream_t stream, const char* what)
      : bytes_(bytes), device_(device), stream_(stream) {
    pointer_ = device_allocate(bytes, device, what);
  }
  ~CallWorkspace() {
    if (pointer_ == nullptr) return;
    try {
      if (stream_ == nullptr || stream_ != created_device_stream(device_))
        SELA_CUDA_WARN(cudaStreamSynchronize(stream_));
      device_free(pointer_, bytes_, device_);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "warning: conv2d workspace not returned: %s\n", error.what());
    }
  }
  CallWorkspace(const CallWorkspace&) = delete;
  CallWorkspace& operator=(const CallWorkspace&) = delete;
  void* get() const { return pointer_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* pointer_ = nullptr;
  std::size_t bytes_;
  int device_;
  cudaStream_t stream_;
};

// Everything a call needs besides its buffers: the handle (pointed at the stream) and the
// plan. The caller has made `device` current and passes the lock that keeps the device's
// handle and plans to itself for the rest of the call.
struct CallSetup {
  cudnnHandle_t handle = nullptr;
  const Plan* plan = nullptr;
};

// The device of `stream`, checked against the handle table's size.
int call_device(cudaStream_t stream, const char* op) {
  const int device = stream_device(stream);
  SELA_CHECK(device >= 0 && device < kMaxDevices, op,
             "the stream's device cuda:" << device << " is beyond the " << kMaxDevices
                                         << " devices this build keeps handles for");
  return device;
}

CallSetup set_up_call(Data data, const Conv2dShape& s, Direction direction, int device,
                      cudaStream_t stream, const void* x, const void* w, const void* y,
                      std::unique_lock<std::mutex>& lock) {
  const char* op = kDirectionOp[direction];
  const Mode mode{data, data == Data::f32 && conv_tf32(), conv_benchmark(), conv_deterministic()};
  CudnnDevice& state = cudnn_device(device);
  lock = std::unique_lock<std::mutex>(state.mutex);
  if (state.handle == nullptr) SELA_CUDNN_CHECK(cudnnCreate(&state.handle), op);
  SELA_CUDNN_CHECK(cudnnSetStream(state.handle, stream), op);
  CallSetup setup;
  setup.handle = state.handle;

  const ShapeKey shape = shape_key(s, direction);
  PlanKey key{};
  key[0] = device;
  key[1] = static_cast<std::int64_t>(mode.data);
  key[2] = mode.tf32 ? 1 : 0;
  key[3] = mode.benchmark ? 1 : 0;
  key[4] = mode.deterministic ? 1 : 0;
  for (std::size_t i = 0; i < shape.size(); ++i) key[5 + i] = shape[i];
  auto found = state.plans.find(key);
  if (found == state.plans.end()) {
    auto plan = std::make_unique<Plan>();
    describe(*plan, s, mode, op);
    const std::vector<Candidate> candidates = rank_candidates(
        state.handle, *plan, direction, mode.benchmark, x, w, y, device, stream, op);
    choose_algorithm(state.handle, *plan, s, direction, mode, candidates, op);
    found = state.plans.emplace(key, std::move(plan)).first;
  }
  setup.plan = found->second.get();
  LastUsed& table = last_used();
  std::lock_guard<std::mutex> table_lock(table.mutex);
  table.plans[shape] = setup.plan;
  return setup;
}

void check_buffers(const Conv2dShape& s, const char* op, std::initializer_list<const void*> ptrs) {
  cpu::check_conv2d_shape(s);
  check_int_limits(s, op);
  int position = 0;
  for (const void* p : ptrs) {
    SELA_CHECK(p != nullptr, op,
               "buffer argument " << position << " is null for " << conv2d_shape_text(s));
    ++position;
  }
}

// The three directions for any data type: `Scale` is the type of cuDNN's alpha and beta
// (double for double data, float otherwise); the buffers are the data type's.
template <typename Scale>
void forward(Data data, const Conv2dShape& s, const void* input, const void* weight,
             const void* bias, void* output, cudaStream_t stream) {
  const char* op = kDirectionOp[kForward];
  check_buffers(s, op, {input, weight, output});
  const int device = call_device(stream, op);
  DeviceGuard guard(device);
  std::unique_lock<std::mutex> lock;
  const CallSetup setup = set_up_call(data, s, kForward, device, stream, input, weight, output, lock);
  const Plan& plan = *setup.plan;
  CallWorkspace workspace(plan.workspace_bytes, device, stream, "conv2d_forward workspace");
  const Scale one = 1, zero = 0;
  SELA_CUDNN_CHECK(
      cudnnConvolutionForward(setup.handle, &one, plan.input, input, plan.weight, weight, plan.conv,
                              static_cast<cudnnConvolutionFwdAlgo_t>(plan.algorithm),
                              workspace.get(), workspace.bytes(), &zero, plan.output, output),
      op);
  if (bias != nullptr)
    SELA_CUDNN_CHECK(cudnnAddTensor(setup.handle, &one, plan.bias, bias, &one, plan.output, output),
                     op);
}

template <typename Scale>
void backward_input(Data data, const Conv2dShape& s, const void* grad_output, const void* weight,
                    void* grad_input, cudaStream_t stream) {
  const char* op = kDirectionOp[kBackwardData];
  check_buffers(s, op, {grad_output, weight, grad_input});
  const int device = call_device(stream, op);
  DeviceGuard guard(device);
  std::unique_lock<std::mutex> lock;
  const CallSetup setup =
      set_up_call(data, s, kBackwardData, device, stream, grad_input, weight, grad_output, lock);
  const Plan& plan = *setup.plan;
  CallWorkspace workspace(plan.workspace_bytes, device, stream, "conv2d_backward_input workspace");
  const Scale one = 1, zero = 0;
  SELA_CUDNN_CHECK(cudnnConvolutionBackwardData(
                       setup.handle, &one, plan.weight, weight, plan.output, grad_output, plan.conv,
                       static_cast<cudnnConvolutionBwdDataAlgo_t>(plan.algorithm), workspace.get(),
                       workspace.bytes(), &zero, plan.input, grad_input),
                   op);
}

template <typename Scale>
void backward_weight(Data data, const Conv2dShape& s, const void* input, const void* grad_output,
                     void* grad_weight, void* grad_bias, cudaStream_t stream) {
  const char* op = kDirectionOp[kBackwardFilter];
  check_buffers(s, op, {input, grad_output, grad_weight});
  const int device = call_device(stream, op);
  DeviceGuard guard(device);
  std::unique_lock<std::mutex> lock;
  const CallSetup setup =
      set_up_call(data, s, kBackwardFilter, device, stream, input, grad_weight, grad_output, lock);
  const Plan& plan = *setup.plan;
  CallWorkspace workspace(plan.workspace_bytes, device, stream, "conv2d_backward_weight workspace");
  const Scale one = 1, zero = 0;
  SELA_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
                       setup.handle, &one, plan.input, input, plan.output, grad_output, plan.conv,
                       static_cast<cudnnConvolutionBwdFilterAlgo_t>(plan.algorithm),
                       workspace.get(), workspace.bytes(), &zero, plan.weight, grad_weight),
                   op);
  if (grad_bias != nullptr)
    SELA_CUDNN_CHECK(cudnnConvolutionBackwardBias(setup.handle, &one, plan.output, grad_output,
                                                  &zero, plan.bias, grad_bias),
                     op);
}

}  // namespace

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T* input, const T* weight, const T* bias, T* output,
                    cudaStream_t stream) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "conv2d is instantiated for float and double");
  forward<T>(data_of<T>(), s, input, weight, bias, output, stream);
}

template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T* grad_output, const T* weight,
                           T* grad_input, cudaStream_t stream) {
  backward_input<T>(data_of<T>(), s, grad_output, weight, grad_input, stream);
}

template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T* input, const T* grad_output,
                            T* grad_weight, T* grad_bias, cudaStream_t stream) {
  backward_weight<T>(data_of<T>(), s, input, grad_output, grad_weight, grad_bias, stream);
}

// bfloat16 data, float scaling factors (cuDNN's rule for every type but double).
void conv2d_forward_bfloat16(const Conv2dShape& s, const std::uint16_t* input,
                             const std::uint16_t* weight, std::uint16_t* output,
                             cudaStream_t stream) {
  forward<float>(Data::bf16, s, input, weight, nullptr, output, stream);
}

void conv2d_backward_input_bfloat16(const Conv2dShape& s, const std::uint16_t* grad_output,
                                    const std::uint16_t* weight, std::uint16_t* grad_input,
                                    cudaStream_t stream) {
  backward_input<float>(Data::bf16, s, grad_output, weight, grad_input, stream);
}

void conv2d_backward_weight_bfloat16(const Conv2dShape& s, const std::uint16_t* input,
                                     const std::uint16_t* grad_output, std::uint16_t* grad_weight,
                                     cudaStream_t stream) {
  backward_weight<float>(Data::bf16, s, input, grad_output, grad_weight, nullptr, stream);
}

std::string conv2d_algorithm(const Conv2dShape& s, int direction) {
  SELA_CHECK(
      direction >= 0 && direction <= 2, "conv2d_algorithm",
      "direction must be 0 (forward), 1 (backward data) or 2 (backward filter), got " << direction);
  LastUsed& table = last_used();
  std::lock_guard<std::mutex> lock(table.mutex);
  auto found = table.plans.find(shape_key(s, static_cast<Direction>(direction)));
  return found == table.plans.end() ? std::string() : found->second->text;
}

std::string cudnn_version_text() {
  const std::size_t version = cudnnGetVersion();  // major * 10000 + minor * 100 + patch (9.x)
  std::string text = "cuDNN " + std::to_string(version / 10000) + "." +
                     std::to_string(version % 10000 / 100) + "." + std::to_string(version % 100);
  if (version != static_cast<std::size_t>(CUDNN_VERSION))
    text += " (built against " + std::to_string(CUDNN_MAJOR) + "." + std::to_string(CUDNN_MINOR) +
            "." + std::to_string(CUDNN_PATCHLEVEL) + ")";
  return text;
}

bool have_cudnn() { return true; }

#else  // no cuDNN in this build

namespace {

[[noreturn]] void no_cudnn(const char* op) {
  SELA_FAIL_HINT(op, "this build has no cuDNN, so convolutions cannot run on the GPU",
                 "install cuDNN 9 (e.g. pip install nvidia-cudnn-cu13, or the cudnn9 packages) "
                 "and reconfigure with -DCUDNN_ROOT=/path/to/cudnn (the folder holding "
                 "include/cudnn_version.h and lib/libcudnn.so.9), or run on the CPU");
}

}  // namespace

template <typename T>
void conv2d_forward(const Conv2dShape& s, const T*, const T*, const T*, T*, cudaStream_t) {
  cpu::check_conv2d_shape(s);
  no_cudnn("conv2d_forward");
}
template <typename T>
void conv2d_backward_input(const Conv2dShape& s, const T*, const T*, T*, cudaStream_t) {
  cpu::check_conv2d_shape(s);
  no_cudnn("conv2d_backward_input");
}
template <typename T>
void conv2d_backward_weight(const Conv2dShape& s, const T*, const T*, T*, T*, cudaStream_t) {
  cpu::check_conv2d_shape(s);
  no_cudnn("conv2d_backward_weight");
}
void conv2d_forward_bfloat16(const Conv2dShape& s, const std::uint16_t*, const std::uint16_t*,
                             std::uint16_t*, cudaStream_t) {
  cpu::check_conv2d_shape(s);
  no_cudnn("conv2d_forward");
}
void conv2d_backward_input_bfloat16(const Conv2dShape& s, const std::uint16_t*,
                                    const std::uint16_t*, std::uint16_t*, cudaStream_t) {
  cpu::check_conv2d_shape(s);
  no_cudnn("conv2d_backward_input");
}
void conv2d_backward_weight_bfloat16(const Conv2dShape& s, const std::uint16_t*,
                                     const std::uint16_t*, std::uint16_t*, cudaStream_t) {
  cpu::check_conv2d_shape(s);
  no_cudnn("conv2d_backward_weight");
}
std::string conv2d_algorithm(const Conv2dShape&, int) { return std::string(); }
std::string cudnn_version_text() { return "cuDNN not in this build"; }
bool have_cudnn() { return false; }

#endif  // SELA_HAVE_CUDNN

template void conv2d_forward<float>(const Conv2dShape&, const float*, const float*, const float*,
                                    float*, cudaStream_t);
template void conv2d_forward<double>(const Conv2dShape&, const double*, const double*,
                                     const double*, double*, cudaStream_t);
template void conv2d_backward_input<float>(const Conv2dShape&, const float*, const float*, float*,
                                           cudaStream_t);
template void conv2d_backward_input<double>(const Conv2dShape&, const double*, const double*,
                                            double*, cudaStream_t);
template void conv2d_backward_weight<float>(const Conv2dShape&, const float*, const float*, float*,
                                            float*, cudaStream_t);
template void conv2d_backward_weight<double>(const Conv2dShape&, const double*, const double*,
                                             double*, double*, cudaStream_t);

}  // namespace sela::cuda
