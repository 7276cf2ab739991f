// CUDA-graph capture of the training step (engine/cuda_graph.h) and the allocator's private
// pools behind it (kernels/cuda/device_allocator.h).
//
// The step test runs two copies of the same model from the same weights on the same batches:
// one eagerly, one as replays of a captured step fed through static input tensors, with
// eager steps before the capture, between replays and after them. After every step the
// losses must agree, and at the end every parameter, momentum buffer and BatchNorm statistic
// and the batches-tracked counters. The batches differ from step to step and dropout
// (p 0.5) is on, so a replay that reused the captured batch, the captured dropout masks or a
// stale optimiser pointer array would be off by O(1). Tolerance (float32, TF32 off):
// |graph - eager| <= 1e-5 * max|eager| + 1e-8 + 1e-4 * |eager| per tensor: the two copies
// run the same kernels with the same algorithms on the same data, and differ at most by the
// order of atomic additions inside cuDNN's backward algorithms (a few ulps per step). The
// absolute 1e-8 is for the convolution biases that BatchNorm follows: their gradient is zero
// in exact arithmetic, so they and their momentum hold rounding noise (about 1e-10 on an
// H100) that differs between any two runs; a real bias update would be lr times a gradient
// of the weight gradients' order (1e-4 and more).
// Also: a dropout module called twice in a captured step draws the masks of two eager calls;
// a refused capture (a host wait, a first optimiser update) leaves no state behind; a
// replay with another lr is refused; a bad target in a replay is reported.
// Skipped, by name, without a GPU.
#include <cmath>
#include <string>
#include <vector>

#include "engine/cuda_graph.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/device_allocator.h"
#include "models/alexnet.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/models/small_model.h"

namespace {

using sela::Device;
using sela::DType;
using sela::Tensor;
using sela::test::check_close;
using sela::test::Tolerance;

const Device kGpu = Device::cuda(0);
constexpr std::int64_t kBatch = 6, kHeads = sela::test::kSmallHeads,
                       kClusters = sela::test::kSmallClusters;

sela::ModelConfig small_config() { return sela::test::small_alexnet32(11, 0.5); }

struct Batch {
  Tensor images;                 // host (kBatch, 3, 32, 32)
  std::vector<Tensor> targets;   // host (kBatch) int64 per head
};

Batch random_batch(sela::Rng& rng) {
  Batch batch;
  batch.images = sela::randn({kBatch, 3, 32, 32}, rng);
  for (std::int64_t t = 0; t < kHeads; ++t) {
    std::vector<std::int64_t> labels(kBatch);
    for (auto& label : labels) label = static_cast<std::int64_t>(rng.below(kClusters));
    batch.targets.push_back(Tensor::from_vector(labels, {kBatch}));
  }
  return batch;
}

// One model with its optimiser and the static (device) inputs its captured step reads.
struct Trained {
  std::shared_ptr<sela::SelaNet> model;
  std::unique_ptr<sela::Sgd> sgd;
  Tensor images;
  std::vector<Tensor> targets;
  Tensor loss;  // the last step's loss (a captured step's output when replayed)

  Trained() {
    model = sela::make_model(small_config());
    model->to(kGpu);
    model->train();
    sela::SgdOptions options;
    options.lr = 0.05;
    options.momentum = 0.9;
    options.weight_decay = 5e-4;
    sgd = std::make_unique<sela::Sgd>(model->parameters(), options);
    images = Tensor::empty({kBatch, 3, 32, 32}, DType::f32, kGpu);
    for (std::int64_t t = 0; t < kHeads; ++t)
      targets.push_back(Tensor::empty({kBatch}, DType::i64, kGpu));
  }
  void load(const Batch& batch) {
    images.copy_from(batch.images);
    for (std::int64_t t = 0; t < kHeads; ++t) targets[t].copy_from(batch.targets[t]);
  }
  void step_body() {
    sgd->zero_grad();
    loss = sela::sela_loss(model->forward_heads(images), targets);
    loss.backward();
    sgd->step();
  }
  double eager_step(const Batch& batch) {
    load(batch);
    step_body();
    return loss.item();
  }
};

void expect_same_state(Trained& graph_side, Trained& eager_side, const std::string& when) {
  const sela::NamedTensors got = graph_side.model->named_parameters();
  const sela::NamedTensors want = eager_side.model->named_parameters();
  REQUIRE(got.size() == want.size());
  auto compare = [&](const Tensor& g, const Tensor& w, const std::string& what) {
    std::vector<double> expected = w.to_vector<double>();
    double largest = 0;
    for (double v : expected) largest = std::max(largest, std::fabs(v));
    check_close(g.to_vector<double>(), expected, Tolerance{1e-5 * largest + 1e-8, 1e-4},
                what + " " + when);
  };
  for (std::size_t i = 0; i < got.size(); ++i) compare(got[i].second, want[i].second, got[i].first);
  const auto& got_momentum = graph_side.sgd->momentum_buffers();
  const auto& want_momentum = eager_side.sgd->momentum_buffers();
  for (std::size_t i = 0; i < got_momentum.size(); ++i) {
    REQUIRE(got_momentum[i].defined() == want_momentum[i].defined());
    if (got_momentum[i].defined())
      compare(got_momentum[i], want_momentum[i], "momentum of " + got[i].first);
  }
  const sela::NamedTensors got_buffers = graph_side.model->named_buffers();
  const sela::NamedTensors want_buffers = eager_side.model->named_buffers();
  REQUIRE(got_buffers.size() == want_buffers.size());
  for (std::size_t i = 0; i < got_buffers.size(); ++i) {
    if (!sela::is_floating(want_buffers[i].second.dtype())) {  // num_batches_tracked (host)
      INFO(got_buffers[i].first << " " << when);
      CHECK(got_buffers[i].second.item() == want_buffers[i].second.item());
      continue;
    }
    compare(got_buffers[i].second, want_buffers[i].second, got_buffers[i].first);
  }
}

void expect_same_loss(double graph_loss, double eager_loss, const std::string& when) {
  INFO("loss " << when << ": graph " << graph_loss << ", eager " << eager_loss);
  CHECK(std::isfinite(graph_loss));
  CHECK(std::fabs(graph_loss - eager_loss) <= 1e-5 + 1e-4 * std::fabs(eager_loss));
}

}  // namespace

SELA_CUDA_TEST("private pool: a capture's freed blocks stay its own until it is released",
               private_pool_blocks) {
  const int device = kGpu.index;
  const std::size_t bytes = 3 << 20;  // a class of its own in this test binary
  const std::uint64_t pool = sela::cuda::create_private_pool(device);
  sela::cuda::begin_private_pool(device, pool);
  void* temporary = sela::cuda::device_allocate(bytes, device, "test");
  void* kept = sela::cuda::device_allocate(bytes, device, "test");
  sela::cuda::device_free(temporary, bytes, device);
  void* again = sela::cuda::device_allocate(bytes, device, "test");
  CHECK(again == temporary);  // the pool reuses its own block within the capture
  sela::cuda::device_free(again, bytes, device);
  sela::cuda::end_private_pool(device);
  CHECK(sela::cuda::private_pool_bytes(device, pool) == 2 * sela::cuda::allocation_size_class(bytes));
  CHECK(sela::cuda::private_pool_free_bytes(device, pool) ==
        sela::cuda::allocation_size_class(bytes));

  void* outside = sela::cuda::device_allocate(bytes, device, "test");
  CHECK(outside != temporary);  // the pool's free block is not handed out
  CHECK(outside != kept);
  sela::cuda::release_private_pool(device, pool);
  void* after = sela::cuda::device_allocate(bytes, device, "test");
  CHECK(after == temporary);  // released: its free block joined the shared cache
  sela::cuda::device_free(kept, bytes, device);  // a released pool's live block goes there too
  void* last = sela::cuda::device_allocate(bytes, device, "test");
  CHECK(last == kept);
  for (void* p : {outside, after, last}) sela::cuda::device_free(p, bytes, device);
  CHECK_THROWS_AS(sela::cuda::release_private_pool(device, pool), sela::Error);
}

SELA_CUDA_TEST("CUDA graph: replays of a captured step equal eager steps (float32, dropout on)",
               graph_equals_eager) {
  sela::cuda::set_conv_tf32(false);
  sela::cuda::set_matmul_tf32(false);
  sela::cuda::set_conv_benchmark(false);
  Trained eager, replayed;
  sela::Rng rng(99);
  std::vector<Batch> batches;
  for (int i = 0; i < 8; ++i) batches.push_back(random_batch(rng));

  // Two eager steps on both (plans, handles and momentum buffers are made here).
  for (int i = 0; i < 2; ++i) {
    expect_same_loss(replayed.eager_step(batches[i]), eager.eager_step(batches[i]),
                     "eager step " + std::to_string(i));
  }
  sela::CudaGraph graph(kGpu);
  graph.capture([&]() { replayed.step_body(); });
  REQUIRE(graph.captured());
  CHECK(graph.kernel_nodes() > 50);
  CHECK(graph.pool_free_bytes() > 0);  // the step's temporaries stay with the graph
  Tensor captured_loss = replayed.loss;

  // Replays 0-2, an eager step on the graph side between replays, then two more replays
  // and a last eager step.
  std::vector<bool> replay_plan = {true, true, true, false, true, true, false};
  for (std::size_t i = 0; i < replay_plan.size(); ++i) {
    const Batch& batch = batches[(2 + i) % batches.size()];
    const std::string when = std::string(replay_plan[i] ? "replay" : "eager") + " at step " +
                             std::to_string(2 + i);
    double graph_side = 0;
    if (replay_plan[i]) {
      replayed.load(batch);
      graph.replay();
      graph_side = captured_loss.item();
    } else {
      graph_side = replayed.eager_step(batch);
    }
    expect_same_loss(graph_side, eager.eager_step(batch), when);
  }
  CHECK(graph.replays() == 5);
  expect_same_state(replayed, eager, "after 2 eager steps, 5 replays and 2 eager steps between");
}

SELA_CUDA_TEST("CUDA graph: a bad target in a replay is reported at the next host read",
               graph_bad_target) {
  Trained trained;
  sela::Rng rng(5);
  Batch batch = random_batch(rng);
  trained.eager_step(batch);
  sela::CudaGraph graph(kGpu);
  graph.capture([&]() { trained.step_body(); });
  Tensor loss = trained.loss;

  Batch bad = batch;
  std::vector<std::int64_t> labels = bad.targets[3].to_vector<std::int64_t>();
  labels[4] = kClusters;  // outside [0, K)
  bad.targets[3] = Tensor::from_vector(labels, {kBatch});
  trained.load(bad);
  graph.replay();
  CHECK_THROWS_WITH_AS(loss.item(), doctest::Contains("replay of a captured CUDA graph"),
                       sela::Error);

  // Reported once; a valid batch replays cleanly afterwards.
  trained.load(batch);
  graph.replay();
  CHECK_NOTHROW(loss.item());
}

SELA_CUDA_TEST("CUDA graph: a dropout module called twice in a step draws the eager masks",
               graph_dropout_twice) {
  sela::Dropout eager(0.5, 77), captured(0.5, 77);
  eager.train();
  captured.train();
  sela::Rng rng(8);
  Tensor x = sela::randn({4096}, rng).to(kGpu);
  (void)eager.forward(x);
  (void)captured.forward(x);
  Tensor first, second;
  sela::CudaGraph graph(kGpu);
  graph.capture([&]() {
    first = captured.forward(x);
    second = captured.forward(x);
  });
  for (int r = 0; r < 2; ++r) {
    graph.replay();
    const std::vector<float> want_first = eager.forward(x).to_vector<float>();
    const std::vector<float> want_second = eager.forward(x).to_vector<float>();
    INFO("replay " << r);
    CHECK(first.to_vector<float>() == want_first);
    CHECK(second.to_vector<float>() == want_second);
    CHECK(want_first != want_second);
  }
  CHECK(captured.calls == eager.calls);  // 1 + 2 per replay
}

SELA_CUDA_TEST("CUDA graph: a host wait inside the capture and a changed lr are refused",
               graph_refusals) {
  Trained trained;
  sela::Rng rng(6);
  Batch batch = random_batch(rng);
  {
    // Before any eager step the optimiser's first update is refused, and leaves no state.
    sela::CudaGraph graph(kGpu);
    trained.load(batch);
    CHECK_THROWS_WITH_AS(graph.capture([&]() { trained.step_body(); }),
                         doctest::Contains("first update inside a CUDA-graph capture"),
                         sela::Error);
    for (const Tensor& buffer : trained.sgd->momentum_buffers()) CHECK_FALSE(buffer.defined());
  }
  trained.eager_step(batch);
  {
    sela::CudaGraph graph(kGpu);
    CHECK_THROWS_AS(graph.capture([&]() {
                      trained.step_body();
                      (void)trained.loss.item();  // a host wait: not capturable
                    }),
                    sela::Error);
    CHECK_FALSE(graph.captured());
  }
  CHECK(std::isfinite(trained.eager_step(batch)));  // the stream works after the failure

  sela::CudaGraph graph(kGpu);
  graph.capture([&]() { trained.step_body(); });
  graph.replay();
  CHECK(std::isfinite(trained.loss.item()));
  trained.sgd->set_lr(0.01);
  CHECK_THROWS_WITH_AS(graph.replay(), doctest::Contains("capture the step again"), sela::Error);
}
