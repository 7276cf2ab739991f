// conv_lab — times the float convolutions of the alexnet-32 training step (forward, backward
// to the input, backward to the weight and bias) for every implementation we have, in one
// process, and PyTorch's on the same shapes, so that SELA_CPU_CONV is a measured choice.
//
//   conv_lab [--batch 128] [--reps 5] [--threads 0] [--only conv2] [--torch]
//
// Implementations (each checked against im2col before it is timed, max relative error shown):
//   sela        sela::cpu::conv2d_* as this build ships them (conv2d_backend_name())
//   im2col      conv2d_*_im2col: im2col + sela::cpu::gemm_builtin, one region per call
//   dnnl        conv2d_*_dnnl: oneDNN primitives (convolution_auto) in their own blocked
//               layouts, with the reorders from / to our NCHW buffers (what `sela` runs
//               when built with dnnl; its implementation name is printed)
//   dnnl-core   the same primitive alone, operands already in the blocked layouts: what the
//               reorders cost is the difference to `dnnl`
//   dnnl-direct like dnnl-core with algorithm::convolution_direct (what PyTorch asks for)
//   dnnl-plain  oneDNN asked to work on NCHW / OIHW directly with the direct algorithm (no
//               reorders; it then picks its GEMM-based implementation)
//   torch       (--torch) PyTorch 1.13 in /usr/bin/python3 (F.conv2d and
//               aten::convolution_backward, torch.set_num_threads(threads)) in a child
//               process, timed (inside Python) in the same rounds as ours
// Timing: one warm-up call of every method, then `reps` rounds in which every method is
// timed once (round-robin, so that the varying load of a shared machine hits all alike);
// median and minimum (less disturbed by other processes) in milliseconds, and GFLOP/s from
// the median (2 * N*O*OH*OW*C*kh*kw per direction; the bias adds are not counted).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "tools/bench/lab_timing.h"
#include "tools/bench/python_child.h"

#if defined(SELA_CPU_CONV_DNNL)
#include <dnnl.hpp>
#endif

namespace {

using sela::cpu::Conv2dShape;

struct Layer {
  std::string name;
  Conv2dShape shape;
};

std::vector<Layer> alexnet32_layers(std::int64_t batch) {
  auto conv = [batch](std::int64_t c, std::int64_t hw, std::int64_t o, std::int64_t k,
                      std::int64_t pad) {
    Conv2dShape s{batch, c, hw, hw, o, k, k};
    s.pad_h = s.pad_w = pad;
    return s;
  };
  return {{"conv1", conv(3, 32, 64, 5, 2)},
          {"conv2", conv(64, 15, 192, 5, 2)},
          {"conv3", conv(192, 7, 384, 3, 1)},
          {"conv4", conv(384, 7, 256, 3, 1)},
          {"conv5", conv(256, 7, 256, 3, 1)}};
}

enum Direction { kForward = 0, kBackwardInput = 1, kBackwardWeight = 2 };
const char* const kDirectionNames[] = {"fwd", "bwd-data", "bwd-weight"};

// Buffers of one layer, random; outputs are written by the timed call.
struct Buffers {
  std::vector<float> input, weight, bias, output, grad_output, grad_input, grad_weight, grad_bias;
};

using Timing = sela::lab::LabStats;

std::vector<Timing> time_interleaved(const std::vector<std::function<double()>>& bodies, int reps) {
  return sela::lab::summarize_samples(sela::lab::time_interleaved_samples(bodies, reps));
}

// PyTorch in a child process (/usr/bin/python3), driven line by line so that its calls can
// be timed in the same rounds as ours: "layer N C H W O K STRIDE PAD" makes random tensors
// and answers "ok"; "run fwd|bwd-data|bwd-weight" makes one call, timed inside Python with
// perf_counter, and answers the milliseconds. Convolutions go through F.conv2d and
// aten::convolution_backward (what autograd calls), under no_grad.
class TorchWorker {
 public:
  bool start(int threads) {
    static const char* script =
        "import sys, time, torch\n"
        "import torch.nn.functional as F\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "print('torch', torch.__version__, 'threads', torch.get_num_threads(), 'mkldnn', "
        "torch.backends.mkldnn.is_available(), flush=True)\n"
        "cases = {}\n"
        "for line in sys.stdin:\n"
        "    f = line.split()\n"
        "    if f[0] == 'layer':\n"
        "        n, c, h, w, o, k, st, pad = map(int, f[1:])\n"
        "        x = torch.randn(n, c, h, w); wt = torch.randn(o, c, k, k); b = torch.randn(o)\n"
        "        dy = torch.randn_like(F.conv2d(x, wt, b, st, pad))\n"
        "        cases = {'fwd': lambda: F.conv2d(x, wt, b, st, pad),\n"
        "                 'bwd-data': lambda: torch.ops.aten.convolution_backward(dy, x, wt, [o], "
        "[st, st], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False]),\n"
        "                 'bwd-weight': lambda: torch.ops.aten.convolution_backward(dy, x, wt, "
        "[o], [st, st], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, True])}\n"
        "        print('ok', flush=True)\n"
        "    else:\n"
        "        with torch.no_grad():\n"
        "            t0 = time.perf_counter(); cases[f[1]](); t = time.perf_counter() - t0\n"
        "        print(t * 1e3, flush=True)\n";
    std::string banner;
    if (!child_.start(script, threads, &banner)) return false;
    if (banner.rfind("torch", 0) != 0) return false;
    std::printf("# %s\n", banner.c_str());
    return true;
  }
  bool layer(const Conv2dShape& s) {
    char line[160];
    std::snprintf(line, sizeof line, "layer %lld %lld %lld %lld %lld %lld %lld %lld",
                  (long long)s.batch, (long long)s.in_channels, (long long)s.in_height,
                  (long long)s.in_width, (long long)s.out_channels, (long long)s.kernel_h,
                  (long long)s.stride_h, (long long)s.pad_h);
    return child_.ask(line) == "ok";
  }
  double run(const char* direction) {
    return std::atof(child_.ask(std::string("run ") + direction).c_str());
  }
 private:
  sela::lab::PythonChild child_;
};

// The output of `direction` (what gets compared): output, grad_input, or grad_weight+bias.
std::vector<float> result_of(const Buffers& b, Direction direction) {
  if (direction == kForward) return b.output;
  if (direction == kBackwardInput) return b.grad_input;
  std::vector<float> r = b.grad_weight;
  r.insert(r.end(), b.grad_bias.begin(), b.grad_bias.end());
  return r;
}

double max_relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double scale = 0;
  for (float x : want) scale = std::max(scale, double(std::fabs(x)));
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double err =
        std::fabs(double(got[i]) - double(want[i])) / (1e-3 * scale + std::fabs(double(want[i])));
    if (!(err <= worst)) worst = err;  // NaN stays
  }
  return worst;
}

using Method = std::function<bool(const Conv2dShape&, Direction, Buffers&)>;  // false: n/a

bool run_sela(const Conv2dShape& s, Direction d, Buffers& b) {
  if (d == kForward)
    sela::cpu::conv2d_forward<float>(s, b.input.data(), b.weight.data(), b.bias.data(),
                                     b.output.data());
  if (d == kBackwardInput)
    sela::cpu::conv2d_backward_input<float>(s, b.grad_output.data(), b.weight.data(),
                                            b.grad_input.data());
  if (d == kBackwardWeight)
    sela::cpu::conv2d_backward_weight<float>(s, b.input.data(), b.grad_output.data(),
                                             b.grad_weight.data(), b.grad_bias.data());
  return true;
}

bool run_im2col(const Conv2dShape& s, Direction d, Buffers& b) {
  if (d == kForward)
    sela::cpu::conv2d_forward_im2col<float>(s, b.input.data(), b.weight.data(), b.bias.data(),
                                            b.output.data());
  if (d == kBackwardInput)
    sela::cpu::conv2d_backward_input_im2col<float>(s, b.grad_output.data(), b.weight.data(),
                                                   b.grad_input.data());
  if (d == kBackwardWeight)
    sela::cpu::conv2d_backward_weight_im2col<float>(s, b.input.data(), b.grad_output.data(),
                                                    b.grad_weight.data(), b.grad_bias.data());
  return true;
}

bool run_dnnl(const Conv2dShape& s, Direction d, Buffers& b) {
  if (d == kForward)
    return sela::cpu::conv2d_forward_dnnl(s, b.input.data(), b.weight.data(), b.bias.data(),
                                          b.output.data());
  if (d == kBackwardInput)
    return sela::cpu::conv2d_backward_input_dnnl(s, b.grad_output.data(), b.weight.data(),
                                                 b.grad_input.data());
  return sela::cpu::conv2d_backward_weight_dnnl(s, b.input.data(), b.grad_output.data(),
                                                b.grad_weight.data(), b.grad_bias.data());
}

#if defined(SELA_CPU_CONV_DNNL)
// Lab-only oneDNN variants: `plain` asks for NCHW/OIHW in the primitive itself; otherwise
// the primitive uses its own layouts and only the primitive is timed (`core`), its operands
// prepared once by reorders outside the timing. Throws dnnl::error when oneDNN declines.
struct DnnlVariant {
  std::string implementation;                  // the library's name for what it picked
  std::function<void()> run;                   // the primitive alone
  std::function<std::vector<float>()> result;  // output reordered back to our layout
};

DnnlVariant prepare_dnnl_variant(const Conv2dShape& s, Direction d, Buffers& b, bool plain,
                                 bool direct) {
  using dnnl::memory;
  using tag = memory::format_tag;
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  auto stream = std::make_shared<dnnl::stream>(engine);
  const auto f32 = memory::data_type::f32;
  const memory::dim oh = s.out_height(), ow = s.out_width();
  const memory::dims src_dims = {s.batch, s.in_channels, s.in_height, s.in_width};
  const memory::dims weight_dims = {s.out_channels, s.in_channels, s.kernel_h, s.kernel_w};
  const memory::dims dst_dims = {s.batch, s.out_channels, oh, ow};
  const memory::dims strides = {s.stride_h, s.stride_w}, pad_l = {s.pad_h, s.pad_w};
  const memory::dims pad_r = {(oh - 1) * s.stride_h + s.kernel_h - s.in_height - s.pad_h,
                              (ow - 1) * s.stride_w + s.kernel_w - s.in_width - s.pad_w};
  const memory::desc src_md(src_dims, f32, plain ? tag::nchw : tag::any);
  const memory::desc weight_md(weight_dims, f32, plain ? tag::oihw : tag::any);
  const memory::desc dst_md(dst_dims, f32, plain ? tag::nchw : tag::any);
  const memory::desc bias_md({s.out_channels}, f32, tag::x);
  const auto algorithm =
      direct ? dnnl::algorithm::convolution_direct : dnnl::algorithm::convolution_auto;
  dnnl::convolution_forward::primitive_desc forward_pd(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algorithm, src_md,
                                      weight_md, bias_md, dst_md, strides, pad_l, pad_r),
      engine);
  // Library-layout copies of our buffers (filled by reorder from the plain ones), owned by
  // the closures.
  // 64-byte aligned, as oneDNN's own allocations are (its Winograd kernels need it).
  auto storage = std::make_shared<std::vector<std::shared_ptr<void>>>();
  auto aligned = [&](std::size_t bytes) {
    storage->emplace_back(std::aligned_alloc(64, (bytes + 63) / 64 * 64), std::free);
    return storage->back().get();
  };
  auto library_memory = [&](const memory::desc& md, const memory::desc& plain_md,
                            float* plain_ptr) {
    memory m(md, engine, aligned(md.get_size()));
    memory p(plain_md, engine, plain_ptr);
    dnnl::reorder(p, m).execute(*stream, p, m);
    stream->wait();
    return m;
  };
  const memory::desc plain_src(src_dims, f32, tag::nchw), plain_weight(weight_dims, f32, tag::oihw),
      plain_dst(dst_dims, f32, tag::nchw);
  DnnlVariant v;
  dnnl::primitive primitive;
  std::unordered_map<int, memory> args;
  memory out_memory;
  memory::desc out_plain;
  float* out_ptr = nullptr;
  if (d == kForward) {
    primitive = dnnl::convolution_forward(forward_pd);
    v.implementation = forward_pd.impl_info_str();
    args = {{DNNL_ARG_SRC, library_memory(forward_pd.src_desc(), plain_src, b.input.data())},
            {DNNL_ARG_WEIGHTS,
             library_memory(forward_pd.weights_desc(), plain_weight, b.weight.data())},
            {DNNL_ARG_BIAS, memory(bias_md, engine, b.bias.data())}};
    out_memory = library_memory(forward_pd.dst_desc(), plain_dst, b.output.data());
    args[DNNL_ARG_DST] = out_memory;
    out_plain = plain_dst, out_ptr = b.output.data();
  } else if (d == kBackwardInput) {
    dnnl::convolution_backward_data::primitive_desc pd(
        dnnl::convolution_backward_data::desc(algorithm, src_md, weight_md, dst_md, strides, pad_l,
                                              pad_r),
        engine, forward_pd);
    primitive = dnnl::convolution_backward_data(pd);
    v.implementation = pd.impl_info_str();
    args = {
        {DNNL_ARG_DIFF_DST, library_memory(pd.diff_dst_desc(), plain_dst, b.grad_output.data())},
        {DNNL_ARG_WEIGHTS, library_memory(pd.weights_desc(), plain_weight, b.weight.data())}};
    out_memory = library_memory(pd.diff_src_desc(), plain_src, b.grad_input.data());
    args[DNNL_ARG_DIFF_SRC] = out_memory;
    out_plain = plain_src, out_ptr = b.grad_input.data();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        dnnl::convolution_backward_weights::desc(algorithm, src_md, weight_md, bias_md, dst_md,
                                                 strides, pad_l, pad_r),
        engine, forward_pd);
    primitive = dnnl::convolution_backward_weights(pd);
    v.implementation = pd.impl_info_str();
    args = {
        {DNNL_ARG_SRC, library_memory(pd.src_desc(), plain_src, b.input.data())},
        {DNNL_ARG_DIFF_DST, library_memory(pd.diff_dst_desc(), plain_dst, b.grad_output.data())},
        {DNNL_ARG_DIFF_BIAS, memory(bias_md, engine, b.grad_bias.data())}};
    out_memory = library_memory(pd.diff_weights_desc(), plain_weight, b.grad_weight.data());
    args[DNNL_ARG_DIFF_WEIGHTS] = out_memory;
    out_plain = plain_weight, out_ptr = b.grad_weight.data();
  }
  v.run = [primitive, args, stream, storage]() mutable {
    primitive.execute(*stream, args);
    stream->wait();
  };
  v.result = [out_memory, out_plain, out_ptr, stream, &b, d]() mutable {
    memory p(out_plain, engine, out_ptr);
    dnnl::reorder(out_memory, p).execute(*stream, out_memory, p);
    stream->wait();
    return result_of(b, d);
  };
  return v;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::int64_t batch = 128;
  int reps = 5, threads = 0;
  bool torch = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "--batch" && has_value)
      batch = std::stoll(argv[++i]);
    else if (arg == "--reps" && has_value)
      reps = std::stoi(argv[++i]);
    else if (arg == "--threads" && has_value)
      threads = std::stoi(argv[++i]);
    else if (arg == "--only" && has_value)
      only = argv[++i];
    else if (arg == "--torch")
      torch = true;
    else {
      std::fprintf(stderr,
                   "usage: conv_lab [--batch 128] [--reps 5] [--threads 0 (all)] "
                   "[--only NAME] [--torch]\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  sela::cpu::set_num_threads(threads);
  threads = sela::cpu::num_threads();
  std::printf(
      "# conv_lab: batch %lld, %d threads, %d timed reps after 1 warm-up; conv2d "
      "backend %s, gemm backend %s\n",
      (long long)batch, threads, reps, sela::cpu::conv2d_backend_name(),
      sela::cpu::gemm_backend_name());
  std::printf("%-6s %-10s %-11s %12s %12s %15s %s\n", "layer", "direction", "method", "median",
              "min", "rate (median)", "max rel err vs im2col");

  TorchWorker worker;
  bool torch_ready = false;
  if (torch) {
    torch_ready = worker.start(threads);
    if (!torch_ready) std::printf("# torch: could not start /usr/bin/python3 with torch\n");
  }
  std::vector<Layer> layers;
  for (const Layer& l : alexnet32_layers(batch))
    if (only.empty() || l.name == only) layers.push_back(l);

  struct Named {
    std::string name;
    Method method;
  };
  std::vector<Named> methods = {{"sela", run_sela}, {"im2col", run_im2col}, {"dnnl", run_dnnl}};
  std::vector<std::string> totals_names = {"sela",        "im2col",     "dnnl", "dnnl-core",
                                           "dnnl-direct", "dnnl-plain", "torch"};
  std::vector<double> totals(totals_names.size(), 0.0), totals_min(totals_names.size(), 0.0);

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& v, std::size_t size) {
    v.resize(size);
    for (float& x : v) x = normal(rng);
  };
  for (const Layer& layer : layers) {
    const Conv2dShape& s = layer.shape;
    std::int64_t oh = s.out_height(), ow = s.out_width();
    std::size_t in_size = s.batch * s.in_channels * s.in_height * s.in_width;
    std::size_t w_size = s.out_channels * s.in_channels * s.kernel_h * s.kernel_w;
    std::size_t out_size = s.batch * s.out_channels * oh * ow;
    Buffers b;
    fill(b.input, in_size), fill(b.weight, w_size), fill(b.bias, s.out_channels);
    fill(b.grad_output, out_size);
    b.output.assign(out_size, 0), b.grad_input.assign(in_size, 0);
    b.grad_weight.assign(w_size, 0), b.grad_bias.assign(s.out_channels, 0);
    double flop = 2.0 * double(out_size) * double(s.in_channels * s.kernel_h * s.kernel_w);
    std::printf("# %s: %s, %.2f GFLOP per direction\n", layer.name.c_str(),
                sela::cpu::conv2d_shape_text(s).c_str(), flop * 1e-9);
    if (torch_ready && !worker.layer(s)) {
      std::printf("# torch worker failed; continuing without it\n");
      torch_ready = false;
    }
    for (Direction d : {kForward, kBackwardInput, kBackwardWeight}) {
      run_im2col(s, d, b);
      const std::vector<float> reference = result_of(b, d);
      struct Entry {
        std::string name, note;
        std::function<double()> run;  // returns its own time in ms, or < 0
        double error;
      };
      std::vector<Entry> entries;
      for (const Named& m : methods) {
        if (!m.method(s, d, b)) continue;  // oneDNN not in this build
        double err = max_relative_error(result_of(b, d), reference);
        std::string note;
        if (m.name == "sela") {
          const sela::cpu::Conv2dDirection dirs[] = {sela::cpu::Conv2dDirection::forward,
                                                     sela::cpu::Conv2dDirection::backward_input,
                                                     sela::cpu::Conv2dDirection::backward_weight};
          note = sela::cpu::conv2d_implementation(s, dirs[d]);
        }
        entries.push_back({m.name, note,
                           [&, m, d] {
                             m.method(s, d, b);
                             return -1.0;
                           },
                           err});
      }
#if defined(SELA_CPU_CONV_DNNL)
      for (int variant = 0; variant < 3; ++variant) {
        bool plain = variant == 2, direct = variant >= 1;
        const char* name = variant == 0 ? "dnnl-core" : variant == 1 ? "dnnl-direct" : "dnnl-plain";
        try {
          DnnlVariant v = prepare_dnnl_variant(s, d, b, plain, direct);
          v.run();
          double err = max_relative_error(v.result(), reference);
          entries.push_back({name, v.implementation,
                             [run = v.run] {
                               run();
                               return -1.0;
                             },
                             err});
        } catch (const dnnl::error& e) {
          std::printf("%-6s %-10s %-11s declined: %s\n", layer.name.c_str(), kDirectionNames[d],
                      name, e.what());
        }
      }
#endif
      if (torch_ready) {
        entries.push_back({"torch", "F.conv2d / aten::convolution_backward",
                           [&worker, d] { return worker.run(kDirectionNames[d]); }, 0.0});
      }
      std::vector<std::function<double()>> bodies;
      for (const Entry& e : entries) bodies.push_back(e.run);
      std::vector<Timing> timings = time_interleaved(bodies, reps);
      for (std::size_t i = 0; i < entries.size(); ++i) {
        const Timing& t = timings[i];
        std::printf("%-6s %-10s %-11s %9.3f ms %9.3f ms %7.1f GFLOP/s %.2e %s\n",
                    layer.name.c_str(), kDirectionNames[d], entries[i].name.c_str(), t.median_ms,
                    t.min_ms, flop / t.median_ms * 1e-6, entries[i].error, entries[i].note.c_str());
        for (std::size_t k = 0; k < totals_names.size(); ++k)
          if (totals_names[k] == entries[i].name)
            totals[k] += t.median_ms, totals_min[k] += t.min_ms;
      }
      std::fflush(stdout);
    }
  }
  std::printf("# totals over the layers and directions shown:\n");
  for (std::size_t i = 0; i < totals.size(); ++i)
    if (totals[i] > 0)
      std::printf("# total %-11s %9.1f ms (sum of medians) %9.1f ms (sum of minima)\n",
                  totals_names[i].c_str(), totals[i], totals_min[i]);
  return 0;
}
