// `sela bench train-step`: times full SeLa training steps (forward through every head,
// mean cross-entropy over heads, backward, SGD with momentum and weight decay) on random
// data, after warm-up; reports the median step. The PyTorch twin of exactly this step is
// tools/bench/torch_train_step.py; tools/bench/compare_train_step.sh runs both in one
// invocation and prints the ratio (tools/gpu_check.sh does the same on a GPU).
// --rotation-batch R adds the rotation task of `sela train` (R more images, 4-way head on
// fc7, in the --rotation-pass chosen), so the passes can be compared on the step alone.
//
// On a GPU (--device cuda[:N]) the model, the batch and the labels live on the device; each
// step ends with loss.item(), which waits for the device, so the host clock around a step
// measures the whole step (the twin does the same). Printed besides: the device banner and
// library versions, the fp32 math modes (TF32 for cuDNN convolutions / cuBLAS matmuls, the
// cuDNN algorithm search), the peak device memory of the timed steps (the caching
// allocator's peak of memory handed to tensors, reset after warm-up; PyTorch's
// max_memory_allocated is the same notion), and whether the timed steps made any cudaMalloc
// (the steady state should make none).
//
// --cuda-graph on captures one step after the warm-up (engine/cuda_graph.h) and times its
// replays, each followed by loss.item() as the eager steps are. Its peak memory is taken over
// the capture and the timed replays: the capture allocates as an eager step does, and the
// replays allocate nothing. That is the peak of memory handed to tensors; the graph's private
// pool keeps every block the step used, and since the caching allocator matches size classes
// exactly (no splitting), those blocks add up to more than that peak: reserved_mib (what
// cudaMalloc holds, PyTorch's max_memory_reserved is the twin's) and graph_pool_mib show it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "engine/allocator.h"
#include "engine/cuda_graph.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "models/alexnet.h"
#include "sela/device_choice.h"
#include "sela/rotation.h"
#include "tools/cli.h"
#include "tools/commands.h"

#if defined(SELA_HAVE_CUDA)
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cudnn_conv.h"
#include "kernels/cuda/device_allocator.h"
#endif

namespace sela::tools {

namespace {

// The rotation task of `sela train` (sela/rotation.h), when --rotation-batch R > 0: R more
// images (random, as the batch) through the network in the chosen pass, a 4-way head on fc7.
struct RotationTask {
  std::shared_ptr<Linear> head;  // (4, fc7)
  Tensor turned;                 // (R, C, S, S)
  Tensor turns;                  // (R) int64 in 0..3
  RotationPass pass = RotationPass::grouped;
};

// The SeLa representation step's loss: mean over heads of each head's cross-entropy, plus
// the rotation task's cross-entropy (weight 1, the trainer's default) when `rotation`.
Tensor step_loss(SelaNet& model, const Tensor& images, const std::vector<Tensor>& targets,
                 const RotationTask* rotation) {
  if (!rotation) return sela_loss(model.forward_heads(images), targets);
  RotationForward both =
      forward_with_rotation(model, *rotation->head, images, rotation->turned, rotation->pass);
  return add(sela_loss(both.logits, targets), cross_entropy(both.turn_logits, rotation->turns));
}

double train_step(SelaNet& model, Sgd& optimizer, const Tensor& images,
                  const std::vector<Tensor>& targets, const RotationTask* rotation) {
  optimizer.zero_grad();
  Tensor loss = step_loss(model, images, targets, rotation);
  loss.backward();
  optimizer.step();
  return loss.item();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  std::size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// What the GPU side reports besides the timings.
struct DeviceReport {
  std::string banner, math;           // text lines
  std::string json;                   // extra JSON members, each starting with ", "
  double peak_mib = 0;
  long long mallocs_during_timed = 0;
};

}  // namespace

int run_bench_train_step(const Args& args) {
  cli::Flags flags("sela bench train-step",
                   "Times full training steps (forward, backward, SGD) of a SeLa model on "
                   "random data and prints images/s (median over the timed steps).");
  flags.add("arch", "alexnet-32", "alexnet | alexnet-small | alexnet-32");
  flags.add("width-mult", "1", "width multiplier of the conv and fc layers");
  flags.add("batch", "128", "images per step");
  flags.add("heads", "10", "number of heads T");
  flags.add("clusters", "128", "clusters per head K (one value for all heads)");
  flags.add("device", "cpu", "cpu, cuda or cuda:N (the N-th GPU; needs the CUDA backend)");
  flags.add("threads", "0", "CPU threads (0 = all hardware threads)");
  flags.add("tf32-conv", "on", "GPU: TF32 tensor cores for float32 cuDNN convolutions (on|off; "
                               "PyTorch's default is on)");
  flags.add("tf32-matmul", "off", "GPU: TF32 tensor cores for float32 cuBLAS matmuls (on|off; "
                                  "PyTorch's default is off)");
  flags.add("cudnn-benchmark", "on",
            "GPU: time cuDNN's algorithms once per shape (on|off; the PyTorch twin sets "
            "torch.backends.cudnn.benchmark the same)");
  flags.add("fuse-bn-relu", "on",
            "run each BatchNorm2d + ReLU as one op (on|off; off runs them one by one, for A/B)");
  flags.add("cuda-graph", "off",
            "GPU: capture one step as a CUDA graph after the warm-up and time its replays "
            "(on|off)");
  flags.add("precision", "fp32",
            "GPU: fp32, or bf16 (conv2d and linear multiply in bfloat16 with float32 "
            "accumulation; float32 weights, BatchNorm and loss; the PyTorch twin uses "
            "torch.autocast the same way)");
  flags.add("rotation-batch", "0",
            "images of the rotation task per step, as sela train --rotation-batch (0 = no "
            "rotation task; the PyTorch twin has none)");
  flags.add("rotation-pass", "grouped",
            "with --rotation-batch: grouped, joint or separate, as sela train --rotation-pass");
  flags.add("fc-batch-norm", "off",
            "BatchNorm after both fc layers, as sela train --fc-batch-norm (on|off; the "
            "PyTorch twin has none)");
  flags.add("warmup", "2", "untimed steps first");
  flags.add("steps", "6", "timed steps");
  flags.add("seed", "0", "seed of weights and data");
  flags.add_switch("json", "print one JSON object on the last line");
  flags.add_switch("memory-census",
                   "cuda: list what was in use at the peak of the timed steps, by op (slower)");
  if (!flags.parse(args)) return 0;

  Device device = Device::parse(flags.get("device"));
  // An unusable device is an Error here (sela/device_choice.h), before any work; for a GPU
  // the line is its banner (name, memory, CUDA/cuDNN/cuBLAS versions).
  const std::string device_line = checked_device_description(device, "sela bench train-step");
  std::int64_t batch = flags.get_int("batch"), heads = flags.get_int("heads");
  std::int64_t clusters = flags.get_int("clusters");
  std::int64_t warmup = flags.get_int("warmup"), steps = flags.get_int("steps");
  SELA_CHECK(batch >= 2, "sela bench train-step", "--batch must be >= 2 (BatchNorm), got " << batch);
  SELA_CHECK(heads >= 1 && clusters >= 1, "sela bench train-step",
             "--heads and --clusters must be >= 1");
  SELA_CHECK(steps >= 1 && warmup >= 0, "sela bench train-step", "--steps must be >= 1");
  const std::int64_t rotation_batch = flags.get_int("rotation-batch");
  SELA_CHECK(rotation_batch >= 0 && rotation_batch <= batch, "sela bench train-step",
             "--rotation-batch must be between 0 and --batch (" << batch << "), got " << rotation_batch);
  const RotationPass rotation_pass =
      parse_rotation_pass(flags.get("rotation-pass"), "sela bench train-step");
  const bool tf32_conv = flags.get_on_off("tf32-conv");
  const bool tf32_matmul = flags.get_on_off("tf32-matmul");
  const bool cudnn_benchmark = flags.get_on_off("cudnn-benchmark");
  const bool use_graph = flags.get_on_off("cuda-graph");
  const std::string precision = flags.get("precision");
  SELA_CHECK(precision == "fp32" || precision == "bf16", "sela bench train-step",
             "--precision expects fp32 or bf16, got '" << precision << "'");
  SELA_CHECK(precision == "fp32" || device.is_cuda(), "sela bench train-step",
             "--precision bf16 needs a GPU (--device cuda), got --device " << device.str());
#if defined(SELA_HAVE_CUDA)
  if (precision == "bf16") {
    int major = 0;
    SELA_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index));
    SELA_CHECK(major >= 8, "sela bench train-step",
               "--precision bf16 needs a GPU of compute capability 8.0 or newer (bfloat16 tensor "
               "cores); " << device.str() << " has " << major << ".x");
  }
#endif
  set_autocast_bfloat16(precision == "bf16");
  SELA_CHECK(!use_graph || device.is_cuda(), "sela bench train-step",
             "--cuda-graph on needs a GPU (--device cuda), got --device " << device.str());
  SELA_CHECK(!use_graph || warmup >= 1, "sela bench train-step",
             "--cuda-graph on needs --warmup >= 1: the eager warm-up makes the cuDNN plans and "
             "the first SGD update, which a capture cannot");
  set_fuse_batch_norm_relu(flags.get_on_off("fuse-bn-relu"));
  cpu::set_num_threads(static_cast<int>(flags.get_int("threads")));

  DeviceReport report;
  {
    std::ostringstream math;
    math << "BatchNorm2d + ReLU " << (fuse_batch_norm_relu() ? "fused" : "one by one")
         << "; float32 math: TF32 convolutions " << (tf32_conv ? "on" : "off")
         << ", TF32 matmuls " << (tf32_matmul ? "on" : "off") << ", cuDNN algorithm search "
         << (cudnn_benchmark ? "timed (benchmark)" : "heuristic")
         << (use_graph ? "; the step replayed as a CUDA graph" : "; eager steps")
         << (precision == "bf16" ? "; conv2d and linear in bfloat16 (float32 accumulation)" : "");
    report.math = math.str();
  }
#if defined(SELA_HAVE_CUDA)
  if (device.is_cuda()) {
    cuda::set_conv_tf32(tf32_conv);
    cuda::set_matmul_tf32(tf32_matmul);
    cuda::set_conv_benchmark(cudnn_benchmark);
    report.banner = device_line;
    if (flags.get_switch("memory-census")) cuda::set_device_memory_census(device.index, true);
  }
#endif

  ModelConfig config;
  config.arch = flags.get("arch");
  config.width_mult = flags.get_double("width-mult");
  config.clusters.assign(static_cast<std::size_t>(heads), clusters);
  config.seed = static_cast<std::uint64_t>(flags.get_int("seed"));
  config.fc_batch_norm = flags.get_on_off("fc-batch-norm");
  check_rotation_batch(config.fc_batch_norm, rotation_pass, rotation_batch,
                       "sela bench train-step");
  auto model = make_model(config);
  model->train();
  if (device.is_cuda()) model->to(device);
  std::unique_ptr<RotationTask> rotation;
  std::vector<Tensor> parameters = model->parameters();
  if (rotation_batch > 0) {
    rotation = std::make_unique<RotationTask>();
    rotation->head = std::make_shared<Linear>(model->feature_dim(), 4);
    rotation->pass = rotation_pass;
    Rng head_rng(config.seed + 54321);
    fill_normal(rotation->head->weight, head_rng, 0.0, 0.01);
    if (device.is_cuda()) rotation->head->to(device);
    for (const Tensor& p : rotation->head->parameters()) parameters.push_back(p);
  }
  SgdOptions sgd;  // lr 0.05, momentum 0.9, weight decay 5e-4 (the reference's defaults)
  Sgd optimizer(parameters, sgd);

  Rng rng(config.seed + 12345);
  std::int64_t size = model->input_size();
  Tensor images = randn({batch, config.in_channels, size, size}, rng);
  std::vector<Tensor> targets;
  for (std::int64_t t = 0; t < heads; ++t) {
    std::vector<std::int64_t> labels(static_cast<std::size_t>(batch));
    for (auto& label : labels) label = static_cast<std::int64_t>(rng.below(clusters));
    targets.push_back(Tensor::from_vector(labels, {batch}));
  }
  if (rotation) {
    rotation->turned = randn({rotation_batch, config.in_channels, size, size}, rng);
    std::vector<std::int64_t> turns(static_cast<std::size_t>(rotation_batch));
    for (std::size_t j = 0; j < turns.size(); ++j) turns[j] = static_cast<std::int64_t>(j % 4);
    rotation->turns = Tensor::from_vector(turns, {rotation_batch});
  }
  if (device.is_cuda()) {
    images = images.to(device);
    for (Tensor& t : targets) t = t.to(device);
    if (rotation) {
      rotation->turned = rotation->turned.to(device);
      rotation->turns = rotation->turns.to(device);
    }
  }

  bool json = flags.get_switch("json");
  std::cout << "sela bench train-step: " << config.arch << " width " << config.width_mult
            << ", batch " << batch << ", " << heads << " heads x " << clusters
            << " clusters, " << model->parameter_count() << " parameters, device "
            << device.str();
  if (rotation) {
    std::cout << ", rotation task on " << rotation_batch << " more images ("
              << flags.get("rotation-pass") << " pass)";
  }
  if (config.fc_batch_norm) std::cout << ", BatchNorm in the fc layers";
  if (device.is_cpu()) {
    std::cout << ", " << cpu::num_threads() << " threads, gemm " << cpu::gemm_backend_name();
  }
  std::cout << "\n";
  if (device.is_cuda()) std::cout << report.banner << "\n" << report.math << "\n";
  double loss = 0;
  for (std::int64_t i = 0; i < warmup; ++i) {
    loss = train_step(*model, optimizer, images, targets, rotation.get());
  }
  reset_host_peak();
#if defined(SELA_HAVE_CUDA)
  std::uint64_t mallocs_before = 0;
  if (device.is_cuda()) {
    synchronize(device);
    cuda::reset_device_peak(device.index);
  }
#endif
  // The captured step: the same train_step body without the host read.
  std::unique_ptr<CudaGraph> graph;
  Tensor graph_loss;
  double capture_ms = 0;
  if (use_graph) {
    graph = std::make_unique<CudaGraph>(device);
    auto start = std::chrono::steady_clock::now();
    graph->capture([&]() {
      optimizer.zero_grad();
      graph_loss = step_loss(*model, images, targets, rotation.get());
      graph_loss.backward();
      optimizer.step();
    });
    capture_ms = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() * 1e3;
    std::printf("captured one step as a CUDA graph: %lld kernels, %.1f ms to capture and "
                "instantiate, private pool %.1f MiB\n",
                static_cast<long long>(graph->kernel_nodes()), capture_ms,
                static_cast<double>(graph->pool_bytes()) / (1 << 20));
  }
#if defined(SELA_HAVE_CUDA)
  if (device.is_cuda()) mallocs_before = cuda::device_memory_stats(device.index).device_mallocs;
#endif
  std::vector<double> seconds;
  for (std::int64_t i = 0; i < steps; ++i) {
    auto start = std::chrono::steady_clock::now();
    if (graph) {
      graph->replay();
      loss = graph_loss.item();  // waits for the device
    } else {
      loss = train_step(*model, optimizer, images, targets, rotation.get());  // item() waits
    }
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!json) std::fprintf(stdout, "  step %lld: %.1f ms, loss %.4f\n", static_cast<long long>(i), seconds.back() * 1e3, loss);
  }
#if defined(SELA_HAVE_CUDA)
  if (device.is_cuda()) {
    cuda::DeviceMemoryStats stats = cuda::device_memory_stats(device.index);
    report.peak_mib = static_cast<double>(stats.peak_bytes) / (1 << 20);
    if (flags.get_switch("memory-census")) {
      std::cout << "memory in use at the peak of the timed steps ("
                << cuda::human_bytes(stats.peak_bytes) << "), by the op that allocated it:\n";
      for (const cuda::DeviceMemoryCensusEntry& entry :
           cuda::device_memory_census_at_peak(device.index)) {
        std::fprintf(stdout, "  %-40s %10.1f MiB in %zu blocks\n", entry.what.c_str(),
                     static_cast<double>(entry.bytes) / (1 << 20), entry.blocks);
      }
      std::fflush(stdout);
    }
    report.mallocs_during_timed = static_cast<long long>(stats.device_mallocs - mallocs_before);
    std::ostringstream extra;
    extra << ", \"gpu\": \"" << report.banner
          << "\", \"tf32_conv\": " << (tf32_conv ? "true" : "false") << ", \"tf32_matmul\": " << (tf32_matmul ? "true" : "false")
          << ", \"cudnn_benchmark\": " << (cudnn_benchmark ? "true" : "false")
          << ", \"fuse_bn_relu\": " << (fuse_batch_norm_relu() ? "true" : "false")
          << ", \"cuda_graph\": " << (graph ? "true" : "false")
          << ", \"precision\": \"" << precision << "\"";
    if (graph) {
      extra << ", \"graph_kernels\": " << graph->kernel_nodes()
            << ", \"graph_capture_ms\": " << capture_ms
            << ", \"graph_pool_mib\": " << static_cast<double>(graph->pool_bytes()) / (1 << 20);
    }
    extra
          << ", \"peak_mem_mib\": " << report.peak_mib
          << ", \"reserved_mib\": " << static_cast<double>(stats.reserved_bytes) / (1 << 20)
          << ", \"device_mallocs_timed\": " << report.mallocs_during_timed;
    report.json = extra.str();
  }
#endif
  SELA_CHECK(std::isfinite(loss), "sela bench train-step", "loss became " << loss);
  double step_s = median(seconds);
  // Images of the clustering batch per second, as `sela train` reports them; the flops count
  // the rotation task's images too.
  double images_per_s = static_cast<double>(batch) / step_s;
  // Forward multiply-adds x 2 flops x 3 (forward, backward-data, backward-weight).
  double gflops = model->forward_macs_per_image() * 2 * 3 *
                  static_cast<double>(batch + rotation_batch) / step_s / 1e9;
  double peak_mb = device.is_cuda()
                       ? report.peak_mib
                       : static_cast<double>(host_memory_stats().peak_bytes) / (1 << 20);
  std::fprintf(stdout,
               "median step %.1f ms  ->  %.1f images/s, %.1f GFLOP/s, peak %s memory %.0f MiB\n",
               step_s * 1e3, images_per_s, gflops, device.is_cuda() ? "device" : "tensor", peak_mb);
  if (device.is_cuda()) {
    if (report.mallocs_during_timed == 0) {
      std::fprintf(stdout, "steady state: no cudaMalloc during the %lld timed steps\n",
                   static_cast<long long>(steps));
    } else {
      std::fprintf(stdout, "WARNING: %lld cudaMalloc calls during the timed steps (the caching "
                           "allocator did not reach a steady state)\n",
                   report.mallocs_during_timed);
    }
  }
  if (json) {
    std::ostringstream out;
    out << "{\"arch\": \"" << config.arch << "\", \"width_mult\": " << config.width_mult
        << ", \"batch\": " << batch << ", \"heads\": " << heads << ", \"clusters\": " << clusters
        << ", \"rotation_batch\": " << rotation_batch << ", \"rotation_pass\": \""
        << (rotation ? flags.get("rotation-pass") : "none") << "\""
        << ", \"fc_batch_norm\": " << (config.fc_batch_norm ? "true" : "false")
        << ", \"device\": \"" << device.str() << "\", \"threads\": " << cpu::num_threads()
        << ", \"gemm\": \"" << cpu::gemm_backend_name() << "\", \"steps\": " << steps
        << ", \"step_ms\": " << step_s * 1e3 << ", \"images_per_s\": " << images_per_s
        << ", \"gflops\": " << gflops << ", \"peak_mib\": " << peak_mb << report.json
        << ", \"final_loss\": " << loss << "}";
    std::cout << out.str() << "\n";
  }
  return 0;
}

}  // namespace sela::tools
