// `sela bench sinkhorn`: times the SeLa label assignment (Sinkhorn-Knopp from logits).
//
// Logits come from a NumPy .npy file (float32, N x K: --logits) or are generated here with
// the same structured model as tools/bench/sinkhorn_numpy.py --make-logits:
//   M latent centres mu_m ~ N(0, 1)^K (M = --centres, default 3K), each sample picks a
//   centre uniformly and adds N(0, noise^2) per logit (--noise, default 0.5),
// so that the equipartition constraint has real work to do (centres are not evenly spread
// over the clusters) while rows still have clear winners. Generation is not timed.
//
// Timing is end to end from logits in memory to labels: storing A, the iterations, the
// argmax; reading the .npy file is reported apart. --repeat R runs the whole solve R times
// (the first one warms the pages up) and reports the median. With --reference the float64
// reference also runs (small problems only) and the label agreement is printed. With
// --json the last line is one JSON object. --absorb 0 turns off the stabilisation by
// absorption (sinkhorn.h), to time the plain fast path or to see the floor's effect.
//
// --device cuda (CUDA builds): the logits are put in device memory first (not timed: read
// or generated, then uploaded — reported apart as upload_s) and solved with solve_device,
// so the time is from logits on the GPU to labels on the host, as the PyTorch twin
// (tools/bench/sinkhorn_torch.py) measures its own. Without --logits they are generated on
// the device (--generate device, the default there) with the same structured model drawn
// from a counter-based hash: the same distribution as the host generator, not the same
// numbers (--generate host keeps the host generator and uploads). The run also measures
// the device-to-device copy bandwidth in the same process (cudaMemcpy of min(2 GB, the
// bytes of A), one warm-up, median of 5, counting read + write: copy_gbps = 2·bytes/time)
// and reports floor_ratio = ms_per_iter / (N·K·element bytes / copy_gbps): how far one
// pass is from the time needed to read A once at the copy's rate (the goal: ≤ 1.25).
//
// --warm-from EARLIER.npy (CPU or GPU): the logits of an earlier label step of the same head (same
// N and K). They are solved first, from the reference's start (not timed; its iteration
// count is printed), and every timed solve then starts from that answer's r
// (SinkhornSolver::warm_start), as `sela train --sinkhorn-warm-start on` does.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#include "sela/assign/npy.h"
#include "sela/assign/sinkhorn.h"
#include "tools/cli.h"
#include "tools/commands.h"

#if defined(SELA_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.cuh"
#include "sela/assign/sinkhorn_cuda.cuh"
#endif

namespace sela::tools {
namespace {

// splitmix64: a small, well-mixed generator; one stream per row keeps generation
// deterministic whatever the thread count.
struct SplitMix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() {
    return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  // Two standard normals by Box-Muller.
  void normal_pair(float* a, float* b) {
    double radius = std::sqrt(-2.0 * std::log(uniform()));
    double angle = 6.283185307179586 * uniform();
    *a = static_cast<float>(radius * std::cos(angle));
    *b = static_cast<float>(radius * std::sin(angle));
  }
};

std::vector<float> make_logits(std::int64_t n, std::int64_t k, std::int64_t centres, double noise,
                               std::uint64_t seed) {
  const std::size_t cols = static_cast<std::size_t>(k);
  std::vector<float> mu(static_cast<std::size_t>(centres) * cols + 1);  // (M, K)
  SplitMix64 centre_rng{seed * 0x632BE59BD9B4E019ull + 1};
  for (std::size_t i = 0; i + 1 < mu.size(); i += 2) centre_rng.normal_pair(&mu[i], &mu[i + 1]);
  std::vector<float> logits(static_cast<std::size_t>(n) * cols);  // (N, K)
  const float sigma = static_cast<float>(noise);
  sela::cpu::parallel_for(0, n, 512, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> eps(cols + 1);
    for (std::int64_t i = begin; i < end; ++i) {
      SplitMix64 rng{(seed + 1) * 0x9E3779B97F4A7C15ull ^
                     (static_cast<std::uint64_t>(i) * 0xD1B54A32D192ED03ull)};
      const std::size_t m =
          static_cast<std::size_t>(rng.next() % static_cast<std::uint64_t>(centres));
      for (std::size_t j = 0; j < cols; j += 2) rng.normal_pair(&eps[j], &eps[j + 1]);
      float* row = logits.data() + static_cast<std::size_t>(i) * cols;
      const float* centre = mu.data() + m * cols;
      for (std::size_t j = 0; j < cols; ++j) row[j] = centre[j] + sigma * eps[j];
    }
  });
  return logits;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

#if defined(SELA_HAVE_CUDA)
// Device-to-device copy bandwidth (read + write counted): `bytes` copied once to warm up,
// then 5 times, each timed with events; returns 2·bytes / median time in GB/s.
double measure_copy_gbps(std::uint64_t bytes) {
  bytes = std::max<std::uint64_t>(bytes, 1 << 20);
  sela::cuda::DeviceBuffer<char> source(static_cast<std::int64_t>(bytes)),
      target(static_cast<std::int64_t>(bytes));
  SELA_CUDA_CHECK(cudaMemset(source.data(), 1, bytes));
  cudaEvent_t start = nullptr, stop = nullptr;
  SELA_CUDA_CHECK(cudaEventCreate(&start));
  SELA_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> seconds;
  for (int rep = 0; rep < 6; ++rep) {
    SELA_CUDA_CHECK(cudaEventRecord(start));
    SELA_CUDA_CHECK(cudaMemcpyAsync(target.data(), source.data(), bytes, cudaMemcpyDeviceToDevice));
    SELA_CUDA_CHECK(cudaEventRecord(stop));
    SELA_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    SELA_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (rep > 0) seconds.push_back(static_cast<double>(ms) * 1e-3);
  }
  SELA_CUDA_WARN(cudaEventDestroy(start));
  SELA_CUDA_WARN(cudaEventDestroy(stop));
  return 2.0 * static_cast<double>(bytes) / median(seconds) / 1e9;
}
#endif

}  // namespace

int run_bench_sinkhorn(const Args& args) {
  cli::Flags flags(
      "sela bench sinkhorn",
      "Times the SeLa label assignment (fused Sinkhorn-Knopp from logits) end to end.");
  flags.add("n", "200000", "number of samples N (ignored with --logits)");
  flags.add("k", "1000", "number of clusters K (ignored with --logits)");
  flags.add("lambda", "25", "sharpness lambda (A = softmax(z)^lambda)");
  flags.add("tol", "0.1", "stop when sum_i |c_i/c_new_i - 1| <= tol");
  flags.add("check-every", "10", "measure the stopping rule every this many iterations");
  flags.add("max-iters", "2000", "iteration cap (reaching it is a warning)");
  flags.add("omega", "1",
            "over-relaxation omega in [1, 2) with a safeguard (1: off, the published algorithm)");
  flags.add("device", "cpu", "cpu or cuda");
  flags.add("storage", "bf16", "how A is stored: f32, f16 or bf16");
  flags.add("absorb", "1",
            "1: stabilise by absorption where the storage's floor would limit the answer "
            "(the default); 0: the plain fast path");
  flags.add("threads", "0", "CPU threads (0: all)");
  flags.add("seed", "1", "seed of the random logits");
  flags.add("centres", "0", "latent centres of the random logits (0: 3K)");
  flags.add("noise", "0.5", "noise standard deviation of the random logits");
  flags.add("logits", "", "read float32 N x K logits from this .npy file instead");
  flags.add("generate", "auto",
            "where random logits are made: host, device (cuda only; same model, other "
            "numbers), or auto (device for --device cuda)");
  flags.add("labels-out", "", "write the labels (int64, N) to this .npy file");
  flags.add("save-logits", "", "write the logits used (float32, N x K) to this .npy file");
  flags.add("repeat", "1", "solve this many times and report the median");
  flags.add("warm-from", "",
            "solve these earlier logits of the same head (.npy, N x K) first and start "
            "every timed solve from that answer's column scaling (a warm start)");
  flags.add("verbose", "0", "1: print the memory plan and a summary per solve");
  flags.add_switch("reference",
                   "also run the float64 reference (small N x K only) and compare labels");
  flags.add_switch("json", "print one JSON object on the last line");
  if (!flags.parse(args)) return 0;

  sela::cpu::set_num_threads(static_cast<int>(flags.get_int("threads")));
  assign::SinkhornOptions options;
  options.lambda = flags.get_double("lambda");
  options.tol = flags.get_double("tol");
  options.check_every = flags.get_int("check-every");
  options.max_iters = flags.get_int("max-iters");
  options.over_relaxation = flags.get_double("omega");
  options.storage = assign::parse_storage(flags.get("storage"));
  options.absorb = flags.get_int("absorb") != 0;
  options.device = Device::parse(flags.get("device"));
  options.verbose = static_cast<int>(flags.get_int("verbose"));
  const std::int64_t repeat = flags.get_int("repeat");
  SELA_CHECK(repeat >= 1, "sela bench sinkhorn", "--repeat must be >= 1, got " << repeat);

  // Fail early and clearly on an unusable device, before making or reading logits.
  if (options.device.is_cuda()) {
    assign::SinkhornSolver probe(options);
    probe.begin_head(1, 1, "probe");
  }

  std::int64_t n = flags.get_int("n"), k = flags.get_int("k");
  std::vector<float> logits;
  std::string source;
  double read_seconds = 0.0;
  const std::string generate = flags.get("generate");
  SELA_CHECK(generate == "auto" || generate == "host" || generate == "device",
             "sela bench sinkhorn",
             "--generate must be auto, host or device, got '" << generate << "'");
  const bool on_device = options.device.is_cuda();
  const bool generate_on_device = on_device && flags.get("logits").empty() && generate != "host";
  SELA_CHECK(on_device || generate != "device", "sela bench sinkhorn",
             "--generate device needs --device cuda");
  if (!flags.get("logits").empty()) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::int64_t> shape;
    logits = assign::read_npy_f32(flags.get("logits"), &shape);
    read_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    SELA_CHECK(shape.size() == 2, "sela bench sinkhorn",
               flags.get("logits")
                   << ": logits must be 2-D (N, K), got " << shape.size() << " dimensions");
    n = shape[0];
    k = shape[1];
    std::ostringstream text;
    text << "file " << flags.get("logits") << " (read in " << std::fixed << std::setprecision(2)
         << read_seconds << " s)";
    source = text.str();
  } else {
    SELA_CHECK(n >= 1 && k >= 1, "sela bench sinkhorn", "--n and --k must be >= 1");
    std::int64_t centres = flags.get_int("centres");
    if (centres <= 0) centres = 3 * k;
    const double noise = flags.get_double("noise");
    if (!generate_on_device)
      logits = make_logits(n, k, centres, noise, static_cast<std::uint64_t>(flags.get_int("seed")));
    std::ostringstream text;
    text << "random" << (generate_on_device ? " (generated on the device)" : "") << ": " << centres
         << " latent centres N(0,1), noise " << noise << ", seed " << flags.get_int("seed");
    source = text.str();
  }

  // --device cuda: the logits in device memory (not timed), copy bandwidth of this GPU.
  double upload_seconds = 0.0, copy_gbps = 0.0;
  const float* device_logits = nullptr;
  std::string device_banner;
#if defined(SELA_HAVE_CUDA)
  sela::cuda::DeviceBuffer<float> device_logits_buffer;
  if (on_device) {
    SELA_CUDA_CHECK(cudaSetDevice(options.device.index));
    device_banner = sela::cuda::device_banner(options.device.index);
    const auto start = std::chrono::steady_clock::now();
    device_logits_buffer = sela::cuda::DeviceBuffer<float>(n * k);
    if (generate_on_device) {
      std::int64_t centres = flags.get_int("centres");
      if (centres <= 0) centres = 3 * k;
      assign::cuda::sinkhorn_random_logits(device_logits_buffer.data(), n, k, centres,
                                           flags.get_double("noise"),
                                           static_cast<std::uint64_t>(flags.get_int("seed")), 0);
    } else {
      SELA_CUDA_CHECK(cudaMemcpy(device_logits_buffer.data(), logits.data(),
                                 logits.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
    SELA_CUDA_CHECK(cudaDeviceSynchronize());
    upload_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    device_logits = device_logits_buffer.data();
    const std::uint64_t a_bytes = static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(k) *
                                  assign::storage_element_bytes(options.storage);
    copy_gbps = measure_copy_gbps(std::min<std::uint64_t>(a_bytes, 2000000000ull));
  }
  // Host logits for --save-logits and --reference when they were made on the device.
  auto fetch_logits = [&]() {
    if (!logits.empty() || device_logits == nullptr) return;
    logits.resize(static_cast<std::size_t>(n * k));
    SELA_CUDA_CHECK(cudaMemcpy(logits.data(), device_logits, logits.size() * sizeof(float),
                               cudaMemcpyDeviceToHost));
  };
#else
  auto fetch_logits = []() {};
#endif
  if (!flags.get("save-logits").empty()) {
    fetch_logits();
    assign::write_npy(flags.get("save-logits"), logits.data(), {n, k});
  }

  std::cout << "sela bench sinkhorn: N=" << n << " K=" << k << " lambda=" << options.lambda
            << " tol=" << options.tol << " storage=" << assign::storage_name(options.storage)
            << " threads=" << sela::cpu::num_threads() << " device=" << options.device.str()
            << " absorb=" << (options.absorb ? 1 : 0);
  if (options.over_relaxation != 1.0)
    std::cout << " over-relaxation omega=" << options.over_relaxation;
  std::cout << "\n";
  std::cout << "logits: " << source << "\n";
  if (on_device) {
    std::cout << "device: " << device_banner << "\n";
    std::cout << "logits in device memory in " << upload_seconds
              << " s (not timed); device-to-device copy " << copy_gbps << " GB/s (read + write)\n";
  }

  assign::SinkhornSolver solver(options);
  std::vector<double> warm_r;
  std::int64_t warm_from_iterations = -1;
  if (!flags.get("warm-from").empty()) {
    const std::string path = flags.get("warm-from");
    std::vector<std::int64_t> shape;
    const std::vector<float> earlier = assign::read_npy_f32(path, &shape);
    SELA_CHECK(shape.size() == 2 && shape[0] == n && shape[1] == k, "sela bench sinkhorn",
               "--warm-from " << path << ": expected float32 logits of shape (" << n << ", " << k
                              << "), the shape of the logits solved");
    const assign::SinkhornResult first = solver.solve(earlier.data(), n, k, "head0");
    warm_r = first.r;
    warm_from_iterations = first.iterations;
    std::cout << "warm start from " << path << ": its solve from the reference's start took "
              << first.iterations << " iterations" << (first.converged ? "" : " (NOT converged)")
              << "\n";
  }
  assign::SinkhornResult result;
  std::vector<double> totals, iterates;
  for (std::int64_t rep = 0; rep < repeat; ++rep) {
    if (!warm_r.empty()) solver.warm_start(warm_r);
    result = on_device ? solver.solve_device(device_logits, n, k, "head0")
                       : solver.solve(logits.data(), n, k, "head0");
    totals.push_back(result.total_seconds);
    iterates.push_back(result.iterate_seconds);
  }
  const double total_s = median(totals), iterate_s = median(iterates);
  const double ms_per_iter = 1000.0 * iterate_s / static_cast<double>(result.iterations);
  const double gbps = static_cast<double>(result.bytes_per_iteration) / (ms_per_iter * 1e-3) / 1e9;
  // The floor: reading N·K elements of A once at the copy's bandwidth.
  const double a_bytes = static_cast<double>(n) * static_cast<double>(k) *
                         static_cast<double>(assign::storage_element_bytes(options.storage));
  const double floor_ms = copy_gbps > 0.0 ? a_bytes / (copy_gbps * 1e9) * 1e3 : 0.0;
  const double floor_ratio = floor_ms > 0.0 ? ms_per_iter / floor_ms : 0.0;

  std::cout << std::setprecision(4);
  std::cout << "prepare (logits -> A): " << result.prepare_seconds << " s\n";
  std::cout << "iterations: " << result.iterations
            << (result.converged ? " (converged" : " (NOT converged") << ", stop error "
            << result.stop_error << "), " << ms_per_iter << " ms/iter, " << gbps
            << " GB/s effective (" << result.bytes_per_iteration / 1e6 << " MB of A per pass)\n";
  std::cout << "labels: " << result.label_seconds << " s; marginal errors row "
            << result.row_marginal_error << " column " << result.col_marginal_error
            << "; clusters min/max/empty " << result.cluster_min << "/" << result.cluster_max << "/"
            << result.clusters_empty << "\n";
  if (result.absorptions > 0) {
    std::cout << "absorptions: " << result.absorptions << " (the last before iteration "
              << result.last_absorption_at << "); floor mass " << result.floor_mass << "\n";
  }
  if (result.over_relaxation_stopped_at >= 0) {
    std::cout << "over-relaxation stopped by the safeguard at iteration "
              << result.over_relaxation_stopped_at << "\n";
  }
  if (on_device) {
    std::cout << "floor (A read once at the copy bandwidth): " << floor_ms << " ms; ratio "
              << floor_ratio << "\n";
  }
  std::cout << "total: " << total_s << " s (median of " << repeat << ")\n";

  double agreement = -1.0;
  if (flags.get_switch("reference")) {
    fetch_logits();
    assign::SinkhornResult ref = assign::sinkhorn_reference(logits.data(), n, k, options, "head0");
    std::int64_t same = 0;
    for (std::size_t i = 0; i < ref.labels.size(); ++i)
      same += ref.labels[i] == result.labels[i] ? 1 : 0;
    agreement = static_cast<double>(same) / static_cast<double>(n);
    std::cout << "reference (float64, C++): " << ref.iterations << " iterations, "
              << ref.total_seconds << " s; labels identical " << 100.0 * agreement << "%\n";
  }
  if (!flags.get("labels-out").empty()) {
    assign::write_npy(flags.get("labels-out"), result.labels.data(), {n});
    std::cout << "labels written to " << flags.get("labels-out") << "\n";
  }
  if (flags.get_switch("json")) {
    std::ostringstream json;
    json << std::setprecision(6);
    json << "{\"n\": " << n << ", \"k\": " << k << ", \"lambda\": " << options.lambda
         << ", \"tol\": " << options.tol << ", \"storage\": \""
         << assign::storage_name(options.storage) << "\", \"device\": \"" << options.device.str()
         << "\", \"threads\": " << sela::cpu::num_threads()
         << ", \"iterations\": " << result.iterations
         << ", \"converged\": " << (result.converged ? "true" : "false")
         << ", \"stop_error\": " << result.stop_error << ", \"ms_per_iter\": " << ms_per_iter
         << ", \"gbps\": " << gbps << ", \"prepare_s\": " << result.prepare_seconds
         << ", \"iterate_s\": " << iterate_s << ", \"label_s\": " << result.label_seconds
         << ", \"total_s\": " << total_s << ", \"read_s\": " << read_seconds
         << ", \"row_error\": " << result.row_marginal_error
         << ", \"col_error\": " << result.col_marginal_error
         << ", \"cluster_min\": " << result.cluster_min
         << ", \"cluster_max\": " << result.cluster_max
         << ", \"clusters_empty\": " << result.clusters_empty
         << ", \"omega\": " << options.over_relaxation
         << ", \"omega_stopped_at\": " << result.over_relaxation_stopped_at
         << ", \"floor_mass\": " << result.floor_mass
         << ", \"absorb\": " << (options.absorb ? "true" : "false")
         << ", \"absorptions\": " << result.absorptions << ", \"repeat\": " << repeat
         << ", \"bytes_per_iteration\": " << result.bytes_per_iteration;
    if (on_device) {
      json << ", \"upload_s\": " << upload_seconds << ", \"copy_gbps\": " << copy_gbps
           << ", \"floor_ms\": " << floor_ms << ", \"floor_ratio\": " << floor_ratio
           << ", \"logits_on_device\": \"" << (generate_on_device ? "generated" : "uploaded")
           << "\"";
    }
    if (agreement >= 0.0) json << ", \"reference_agreement\": " << agreement;
    if (warm_from_iterations >= 0) json << ", \"warm_from_iterations\": " << warm_from_iterations;
    json << "}";
    std::cout << json.str() << std::endl;
  }
  return 0;  // a run that hit the iteration cap has printed its warning
}

}  // namespace sela::tools
