// CUDA-graph capture of a whole training step (issue 3, "go further"): the step's ~150
// kernel launches are recorded once (cudaStreamBeginCapture on the device's one stream) and
// replayed as one cudaGraphLaunch, so the host no longer paces the GPU launch by launch.
//
// A replay repeats exactly what the capture queued: the same kernels with the same
// arguments on the same addresses. Everything that must differ from step to step therefore
// lives in device memory the step reads, and what the captured code does on the host
// happens once, at capture time. How each part of a SeLa step is made replayable:
//   - memory: while capturing, the caching allocator serves the device from a private pool
//     (kernels/cuda/device_allocator.h). Blocks the step frees again go back to that pool,
//     so nothing outside the graph can be handed memory a replay writes. Tensors made
//     during the capture and kept (the loss, the gradients set on the parameters) are the
//     graph's outputs: each replay rewrites them in place.
//   - inputs: the caller copies each batch into tensors made before the capture (static
//     inputs, e.g. with Tensor::copy_) and replays.
//   - refreshed values: captured code may ask for a device int64 that the graph rewrites
//     from a host function before every replay (one small kernel, outside the graph).
//     Dropout reads its counter offset from one, so replay r draws the masks the eager step
//     at the module's current call count would, also when eager steps are interleaved.
//   - host side effects of the captured code (a dropout module's call counter, BatchNorm's
//     batches-tracked count, the optimiser's record of its pointer arrays) register an
//     action run after every replay instead of happening at capture time, so that after R
//     replays the host state is that of R eager steps. Checks run before every replay (the
//     optimiser refuses a learning rate that differs from the captured one).
//   - deferred errors: a captured cross-entropy writes its target check into a slot the
//     graph owns; slots are read (and raised) at the next host wait after a replay. Each
//     replay overwrites the previous one's slots, so read something (the loss) after every
//     replay, as sela train and the benchmark do, or a bad target of an earlier replay goes
//     unreported.
// What must not happen while capturing: a host wait (item(), to_vector(), a download), a
// cuDNN algorithm search or the first use of a library handle (run one eager step first:
// plans and handles are cached), or anything that reads device data on the host. CUDA then
// reports the capture as invalidated and capture() throws, naming the stage.
//
// The objects the captured code used (model, optimiser, static inputs) must outlive the
// graph: it holds their addresses and calls back into them. Eager steps between replays are
// fine (tests/cuda/test_cuda_graph.cpp), but after one the parameters' grad() are that eager
// step's tensors, not the ones the replays write, until the step is captured again.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace sela {

class CudaGraph {
 public:
  explicit CudaGraph(Device device);  // a CUDA device (sela::Error otherwise)
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Records what `body` queues on the device's stream, without running it. A graph
  // captured before is discarded first. Throws sela::Error (and leaves no capture running)
  // when the body throws or does something a capture cannot record.
  void capture(const std::function<void()>& body);
  // Runs the captured work once (queued; returns without waiting for the device).
  void replay();

  bool captured() const;
  std::int64_t replays() const;
  std::int64_t kernel_nodes() const;  // kernels in the captured graph
  std::size_t pool_bytes() const;       // device memory the graph's private pool holds
  std::size_t pool_free_bytes() const;  // the part of it no tensor holds between replays

  struct State;  // engine/cuda_graph.cpp (the graph:: functions reach the capturing one)

 private:
  std::unique_ptr<State> state_;
};

// For code that may run inside a capture (ops, modules, the optimiser). All are no-ops or
// false when the calling thread is not capturing on that device.
namespace graph {

// Whether the calling thread is capturing a CUDA graph on `device`.
bool capturing(const Device& device);
// A number that identifies the capture running on `device` (never the same for two
// captures of the process); 0 when not capturing.
std::uint64_t capture_id(const Device& device);
// While capturing: a device int64 that the graph sets to value() before every replay.
const std::int64_t* refreshed_value(const Device& device, std::function<std::int64_t()> value);
// While capturing: `action` runs on the host after every replay.
void after_each_replay(const Device& device, std::function<void()> action);
// While capturing: `check` runs on the host before every replay (it throws to refuse one).
void before_each_replay(const Device& device, std::function<void()> check);
// While capturing: a device slot for a captured cross-entropy's target check (-1 or the
// first bad row), described by `logits` and `classes` for the error message.
std::int64_t* error_slot(const Device& device, const std::string& logits, std::int64_t classes);
// The message of the first bad target a replay of a live graph on `device` recorded since
// the last call ("" if none). Reads the slots (waits for the device); called by
// cuda_ops::raise_deferred_errors after every host wait.
std::string collect_replay_errors(int device);

}  // namespace graph
}  // namespace sela
