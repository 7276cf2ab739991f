// Implementation of engine/cuda_graph.h. Without the CUDA backend a CudaGraph cannot be
// made (no CUDA device exists) and the graph:: functions report "not capturing".
#include "engine/cuda_graph.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include "engine/error.h"

#if defined(SELA_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_allocator.h"
#include "kernels/cuda/sgd.cuh"
#include "kernels/cuda/stream.h"
#endif

namespace sela {

#if defined(SELA_HAVE_CUDA)

namespace {
// Capacity of a graph's refreshed values and error slots (a SeLa step uses two and one per
// head; a step that needs more is refused with this number in the message).
constexpr std::int64_t kRefreshedValues = 256, kErrorSlots = 1024;

struct CaptureCheck {
  std::string logits;
  std::int64_t classes = 0;
};
}  // namespace

struct CudaGraph::State {
  Device device;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::uint64_t pool = 0;  // the private pool (0: none)
  std::uint64_t capture_id = 0;  // of the latest capture (graph::capture_id)
  std::int64_t replays = 0, kernel_nodes = 0;

  Tensor refreshed;  // (kRefreshedValues) int64
  std::vector<std::function<std::int64_t()>> refreshed_sources;
  std::vector<std::function<void()>> after_actions, before_checks;
  Tensor error_slots;  // (kErrorSlots) int64
  std::vector<CaptureCheck> checks;
  bool unchecked_replay = false;  // a replay ran since the slots were last read

  void destroy() {
    if (exec != nullptr) SELA_CUDA_WARN(cudaGraphExecDestroy(exec));
    if (graph != nullptr) SELA_CUDA_WARN(cudaGraphDestroy(graph));
    exec = nullptr;
    graph = nullptr;
    // Stream order makes this safe without a wait: whatever reuses the pool's blocks next is
    // queued after every replay.
    if (pool != 0) cuda::release_private_pool(device.index, pool);
    pool = 0;
    replays = kernel_nodes = 0;
    refreshed_sources.clear();
    after_actions.clear();
    before_checks.clear();
    checks.clear();
    unchecked_replay = false;
  }
};

namespace {

thread_local CudaGraph::State* g_capturing = nullptr;
std::atomic<std::uint64_t> g_next_capture_id{1};

// Live graphs with error slots, for collect_replay_errors.
struct LiveGraphs {
  std::mutex mutex;
  std::vector<CudaGraph::State*> graphs;
};
LiveGraphs& live_graphs() {
  static LiveGraphs* instance = new LiveGraphs();  // never destroyed (outlives graphs)
  return *instance;
}

CudaGraph::State* capture_on(const Device& device) {
  CudaGraph::State* state = g_capturing;
  return state != nullptr && state->device == device ? state : nullptr;
}

}  // namespace

CudaGraph::CudaGraph(Device device) : state_(std::make_unique<State>()) {
  SELA_CHECK(device.is_cuda(), "CudaGraph",
             "CUDA graphs need a CUDA device, got " << device.str());
  cuda::check_device_index(device.index, "CudaGraph");
  state_->device = device;
  LiveGraphs& live = live_graphs();
  std::lock_guard<std::mutex> lock(live.mutex);
  live.graphs.push_back(state_.get());
}

CudaGraph::~CudaGraph() {
  {
    LiveGraphs& live = live_graphs();
    std::lock_guard<std::mutex> lock(live.mutex);
    for (auto& graph : live.graphs) {
      if (graph == state_.get()) {
        graph = live.graphs.back();
        live.graphs.pop_back();
        break;
      }
    }
  }
  try {
    state_->destroy();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "sela: warning: releasing a CUDA graph failed: %s\n", error.what());
  }
}

void CudaGraph::capture(const std::function<void()>& body) {
  State& state = *state_;
  SELA_CHECK(g_capturing == nullptr, "CudaGraph::capture",
             "a capture is already running on this thread (captures do not nest)");
  state.destroy();
  const int device = state.device.index;
  cudaStream_t stream = cuda::device_stream(device);
  if (!state.refreshed.defined()) {
    state.refreshed = Tensor::empty({kRefreshedValues}, DType::i64, state.device, "cuda graph");
    state.error_slots = Tensor::empty({kErrorSlots}, DType::i64, state.device, "cuda graph");
  }
  state.capture_id = g_next_capture_id++;
  state.pool = cuda::create_private_pool(device);
  cuda::begin_private_pool(device, state.pool);
  g_capturing = &state;
  // Relaxed: the caching allocator may call cudaMalloc for the private pool mid-capture.
  cudaError_t begun = cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
  std::string failure;
  if (begun != cudaSuccess) {
    failure = std::string("cudaStreamBeginCapture failed: ") + cudaGetErrorString(begun);
  } else {
    try {
      body();
    } catch (const std::exception& error) {
      failure = error.what();
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    if (failure.empty() && ended != cudaSuccess) {
      failure = std::string("cudaStreamEndCapture failed: ") + cudaGetErrorString(ended) +
                " (the captured code did something a capture cannot record)";
    }
    state.graph = graph;
  }
  g_capturing = nullptr;
  cuda::end_private_pool(device);
  (void)cudaGetLastError();  // a failed capture leaves its error as the last one
  if (failure.empty()) {
    const cudaError_t made = cudaGraphInstantiate(&state.exec, state.graph, 0);
    if (made != cudaSuccess) {
      (void)cudaGetLastError();
      failure = std::string("cudaGraphInstantiate failed: ") + cudaGetErrorString(made);
    }
  }
  if (!failure.empty()) {
    state.destroy();
    SELA_FAIL_HINT("CudaGraph::capture", "capturing on " << state.device.str() << " failed: "
                                                         << failure,
                   "run one eager step before capturing (cuDNN plans and library handles are "
                   "made then), and keep host waits (item(), to_vector()) out of the step");
  }
  std::size_t nodes = 0;
  SELA_CUDA_CHECK(cudaGraphGetNodes(state.graph, nullptr, &nodes));
  std::vector<cudaGraphNode_t> all(nodes);
  if (nodes > 0) SELA_CUDA_CHECK(cudaGraphGetNodes(state.graph, all.data(), &nodes));
  for (cudaGraphNode_t node : all) {
    cudaGraphNodeType type{};
    SELA_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
    if (type == cudaGraphNodeTypeKernel) ++state.kernel_nodes;
  }
}

void CudaGraph::replay() {
  State& state = *state_;
  SELA_CHECK(state.exec != nullptr, "CudaGraph::replay",
             "nothing was captured (call capture() first)");
  for (const auto& check : state.before_checks) check();
  cudaStream_t stream = cuda::device_stream(state.device.index);
  if (!state.refreshed_sources.empty()) {
    std::vector<std::int64_t> values;
    values.reserve(state.refreshed_sources.size());
    for (const auto& source : state.refreshed_sources) values.push_back(source());
    cuda::write_int64_values(values.data(), static_cast<std::int64_t>(values.size()),
                             state.refreshed.device_data<std::int64_t>(), stream);
  }
  SELA_CUDA_CHECK(cudaGraphLaunch(state.exec, stream));
  ++state.replays;
  if (!state.checks.empty()) state.unchecked_replay = true;
  for (const auto& action : state.after_actions) action();
}

bool CudaGraph::captured() const { return state_->exec != nullptr; }
std::int64_t CudaGraph::replays() const { return state_->replays; }
std::int64_t CudaGraph::kernel_nodes() const { return state_->kernel_nodes; }
std::size_t CudaGraph::pool_bytes() const {
  return state_->pool == 0 ? 0 : cuda::private_pool_bytes(state_->device.index, state_->pool);
}
std::size_t CudaGraph::pool_free_bytes() const {
  return state_->pool == 0 ? 0
                           : cuda::private_pool_free_bytes(state_->device.index, state_->pool);
}

namespace graph {

bool capturing(const Device& device) { return capture_on(device) != nullptr; }

std::uint64_t capture_id(const Device& device) {
  CudaGraph::State* state = capture_on(device);
  return state == nullptr ? 0 : state->capture_id;
}

const std::int64_t* refreshed_value(const Device& device, std::function<std::int64_t()> value) {
  CudaGraph::State* state = capture_on(device);
  if (state == nullptr) return nullptr;
  const auto index = static_cast<std::int64_t>(state->refreshed_sources.size());
  SELA_CHECK(index < kRefreshedValues, "CudaGraph::capture",
             "the captured step asks for more than " << kRefreshedValues
                                                     << " refreshed values (dropout calls)");
  state->refreshed_sources.push_back(std::move(value));
  return state->refreshed.device_data<std::int64_t>() + index;
}

void after_each_replay(const Device& device, std::function<void()> action) {
  if (CudaGraph::State* state = capture_on(device)) state->after_actions.push_back(std::move(action));
}

void before_each_replay(const Device& device, std::function<void()> check) {
  if (CudaGraph::State* state = capture_on(device)) state->before_checks.push_back(std::move(check));
}

std::int64_t* error_slot(const Device& device, const std::string& logits, std::int64_t classes) {
  CudaGraph::State* state = capture_on(device);
  if (state == nullptr) return nullptr;
  const auto index = static_cast<std::int64_t>(state->checks.size());
  SELA_CHECK(index < kErrorSlots, "CudaGraph::capture",
             "the captured step makes more than " << kErrorSlots << " cross-entropy calls");
  state->checks.push_back({logits, classes});
  return state->error_slots.device_data<std::int64_t>() + index;
}

std::string collect_replay_errors(int device) {
  LiveGraphs& live = live_graphs();
  std::lock_guard<std::mutex> lock(live.mutex);
  for (CudaGraph::State* state : live.graphs) {
    if (state->device.index != device || !state->unchecked_replay) continue;
    state->unchecked_replay = false;
    std::vector<std::int64_t> rows(state->checks.size());
    cudaStream_t stream = cuda::device_stream(device);
    SELA_CUDA_CHECK(cudaMemcpyAsync(rows.data(), state->error_slots.device_data<std::int64_t>(),
                                    rows.size() * sizeof(std::int64_t), cudaMemcpyDeviceToHost,
                                    stream));
    SELA_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] < 0) continue;
      std::ostringstream message;
      message << "the target of row " << rows[i] << " is outside [0, " << state->checks[i].classes
              << ") for logits " << state->checks[i].logits
              << " (in a replay of a captured CUDA graph, found at the next host read; the loss "
                 "was NaN)";
      return message.str();
    }
  }
  return "";
}

}  // namespace graph

#else  // no CUDA backend

struct CudaGraph::State {};

CudaGraph::CudaGraph(Device device) {
  SELA_FAIL_HINT("CudaGraph", "CUDA graphs need a CUDA device (" << device.str()
                                                                 << " given), and this build "
                                                                    "has no CUDA backend",
                 "configure with -DSELA_CUDA=ON on a machine with nvcc and rebuild");
}
CudaGraph::~CudaGraph() = default;
void CudaGraph::capture(const std::function<void()>&) {}
void CudaGraph::replay() {}
bool CudaGraph::captured() const { return false; }
std::int64_t CudaGraph::replays() const { return 0; }
std::int64_t CudaGraph::kernel_nodes() const { return 0; }
std::size_t CudaGraph::pool_bytes() const { return 0; }
std::size_t CudaGraph::pool_free_bytes() const { return 0; }

namespace graph {
bool capturing(const Device&) { return false; }
std::uint64_t capture_id(const Device&) { return 0; }
const std::int64_t* refreshed_value(const Device&, std::function<std::int64_t()>) {
  return nullptr;
}
void after_each_replay(const Device&, std::function<void()>) {}
void before_each_replay(const Device&, std::function<void()>) {}
std::int64_t* error_slot(const Device&, const std::string&, std::int64_t) { return nullptr; }
std::string collect_replay_errors(int) { return ""; }
}  // namespace graph

#endif

}  // namespace sela
