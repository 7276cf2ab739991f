// gemm_lab — times every available float GEMM on the shapes the alexnet-32 training step
// runs, in one process, so that the choice made in cmake/SelaCpuGemm.cmake is a measured one.
//
//   gemm_lab [--batch 128] [--reps 5] [--threads 0] [--only SUBSTRING] [--skip blis,...]
//            [--torch]
//
// Backends, each checked against the builtin result before it is timed (max relative error
// printed):
//   sela      sela::cpu::gemm, i.e. whatever this build chose (gemm_backend_name())
//   builtin   sela::cpu::gemm_builtin, our own kernel
//   dnnl      oneDNN's dnnl_sgemm        } opened at run time with dlopen, so that all of
//   openblas  OpenBLAS's cblas_sgemm     } them are timed whichever one the build links; a
//   blis      BLIS's bli_sgemm           } library that is not installed is skipped
//   torch     (--torch) torch.mm in /usr/bin/python3, torch.set_num_threads(threads), in a
//             child process, timed (inside Python) in the same rounds as ours
// Shapes: the im2col GEMMs of the five convolutions over the whole batch (forward, backward
// data, backward filter orientation) and the three linear layers (the ten 128-wide heads
// as one 1280-wide GEMM), forward / backward data / backward weight.
// Timing: one warm-up call of every backend, then `reps` rounds in which every backend is
// timed once (round-robin, so that the varying load of a shared machine hits all alike);
// median and minimum in milliseconds, GFLOP/s = 2mnk / median.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "tools/bench/lab_timing.h"
#include "tools/bench/python_child.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

struct Shape {
  std::string name;
  bool transpose_a, transpose_b;
  std::int64_t m, n, k;
};

std::vector<Shape> alexnet32_shapes(std::int64_t batch) {
  struct Conv {
    const char* name;
    std::int64_t in_channels, out_channels, kernel, out_size;
  };
  const Conv convs[] = {{"conv1", 3, 64, 5, 32},
                        {"conv2", 64, 192, 5, 15},
                        {"conv3", 192, 384, 3, 7},
                        {"conv4", 384, 256, 3, 7},
                        {"conv5", 256, 256, 3, 7}};
  std::vector<Shape> shapes;
  for (const Conv& c : convs) {
    std::int64_t o = c.out_channels, kk = c.in_channels * c.kernel * c.kernel;
    std::int64_t p = batch * c.out_size * c.out_size;
    std::string n = c.name;
    shapes.push_back({n + " fwd     W.cols", false, false, o, p, kk});
    shapes.push_back({n + " bwd-dat W^T.dy", true, false, kk, p, o});
    shapes.push_back({n + " bwd-flt dy.cols^T", false, true, o, kk, p});
  }
  struct Linear {
    const char* name;
    std::int64_t in, out;
  };
  const Linear linears[] = {{"fc1", 2304, 4096}, {"fc2", 4096, 4096}, {"heads", 4096, 1280}};
  for (const Linear& l : linears) {
    std::string n = l.name;
    shapes.push_back({n + " fwd     x.W^T", false, true, batch, l.out, l.in});
    shapes.push_back({n + " bwd-dat dy.W", false, false, batch, l.in, l.out});
    shapes.push_back({n + " bwd-wgt dy^T.x", true, false, l.out, l.in, batch});
  }
  return shapes;
}

using GemmFn = std::function<void(const Shape&, const float*, std::int64_t, const float*,
                                  std::int64_t, float*, std::int64_t)>;

struct Backend {
  std::string name;
  std::string detail;
  GemmFn run;
};

// --- libraries opened at run time ------------------------------------------------------
void* open_library(const char* const* names, int flags) {
  for (const char* const* n = names; *n; ++n) {
    if (void* handle = dlopen(*n, flags)) return handle;
  }
  return nullptr;
}

void add_dnnl(std::vector<Backend>* backends) {
  const char* names[] = {"libdnnl.so.2", "libdnnl.so.3", "libdnnl.so", nullptr};
  void* lib = open_library(names, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::printf("# dnnl: not installed (%s)\n", dlerror());
    return;
  }
  using Fn = int (*)(char, char, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                     std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);
  auto fn = reinterpret_cast<Fn>(dlsym(lib, "dnnl_sgemm"));
  if (!fn) return;
  backends->push_back({"dnnl", "dnnl_sgemm (OpenMP threads)",
                       [fn](const Shape& s, const float* a, std::int64_t lda, const float* b,
                            std::int64_t ldb, float* c, std::int64_t ldc) {
                         int status = fn(s.transpose_a ? 'T' : 'N', s.transpose_b ? 'T' : 'N', s.m,
                                         s.n, s.k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
                         if (status != 0) std::printf("# dnnl_sgemm status %d\n", status);
                       }});
}

constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;  // CBLAS values

void add_openblas(std::vector<Backend>* backends, int threads) {
  const char* names[] = {"libopenblas.so.0", "libopenblas.so", nullptr};
  void* lib = open_library(names, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!lib) {
    std::printf("# openblas: not installed (%s)\n", dlerror());
    return;
  }
  using Fn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                      float, float*, int);
  auto fn = reinterpret_cast<Fn>(dlsym(lib, "cblas_sgemm"));
  auto set_threads = reinterpret_cast<void (*)(int)>(dlsym(lib, "openblas_set_num_threads"));
  auto core = reinterpret_cast<char* (*)()>(dlsym(lib, "openblas_get_corename"));
  auto config = reinterpret_cast<char* (*)()>(dlsym(lib, "openblas_get_config"));
  if (!fn || !set_threads) return;
  set_threads(threads);
  std::string detail = std::string(config ? config() : "?") + ", core " + (core ? core() : "?");
  backends->push_back({"openblas", detail,
                       [fn](const Shape& s, const float* a, std::int64_t lda, const float* b,
                            std::int64_t ldb, float* c, std::int64_t ldc) {
                         fn(kCblasRowMajor, s.transpose_a ? kCblasTrans : kCblasNoTrans,
                            s.transpose_b ? kCblasTrans : kCblasNoTrans, int(s.m), int(s.n),
                            int(s.k), 1.0f, a, int(lda), b, int(ldb), 0.0f, c, int(ldc));
                       }});
}

constexpr int kBlisNoTranspose = 0, kBlisTranspose = 8;  // trans_t values of blis.h 0.9

void add_blis(std::vector<Backend>* backends, int threads) {
  const char* names[] = {"libblis.so.4", "libblis.so.3", "libblis.so", nullptr};
  void* lib = open_library(names, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!lib) {
    std::printf("# blis: not installed (%s)\n", dlerror());
    return;
  }
  using Fn = void (*)(int, int, std::int64_t, std::int64_t, std::int64_t, const float*,
                      const float*, std::int64_t, std::int64_t, const float*, std::int64_t,
                      std::int64_t, const float*, float*, std::int64_t, std::int64_t);
  auto fn = reinterpret_cast<Fn>(dlsym(lib, "bli_sgemm"));
  auto set_threads =
      reinterpret_cast<void (*)(std::int64_t)>(dlsym(lib, "bli_thread_set_num_threads"));
  auto arch_id = reinterpret_cast<int (*)()>(dlsym(lib, "bli_arch_query_id"));
  auto arch_name = reinterpret_cast<const char* (*)(int)>(dlsym(lib, "bli_arch_string"));
  auto version = reinterpret_cast<const char* (*)()>(dlsym(lib, "bli_info_get_version_str"));
  if (!fn || !set_threads) return;
  set_threads(threads);
  std::string detail = std::string("BLIS ") + (version ? version() : "?") + ", sub-config " +
                       (arch_id && arch_name ? arch_name(arch_id()) : "?");
  backends->push_back({"blis", detail,
                       [fn](const Shape& s, const float* a, std::int64_t lda, const float* b,
                            std::int64_t ldb, float* c, std::int64_t ldc) {
                         const float one = 1.0f, zero = 0.0f;
                         fn(s.transpose_a ? kBlisTranspose : kBlisNoTranspose,
                            s.transpose_b ? kBlisTranspose : kBlisNoTranspose, s.m, s.n, s.k, &one,
                            a, lda, 1, b, ldb, 1, &zero, c, ldc, 1);
                       }});
}

// --- timing -----------------------------------------------------------------------------
using Stats = sela::lab::LabStats;

std::vector<Stats> time_interleaved(const std::vector<std::function<double()>>& bodies, int reps) {
  return sela::lab::summarize_samples(sela::lab::time_interleaved_samples(bodies, reps));
}

// PyTorch in a child process (/usr/bin/python3), driven line by line so that its calls are
// timed in the same rounds as ours: "shape TA TB M N K" makes random operands (transposed
// views where TA/TB say so, as our row-major operands are) and answers "ok"; "run" makes
// one torch.mm(a, b, out=c), timed inside Python with perf_counter, and answers the ms.
class TorchWorker {
 public:
  bool start(int threads) {
    static const char* script =
        "import sys, time, torch\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "print('torch', torch.__version__, 'threads', torch.get_num_threads(), flush=True)\n"
        "for line in sys.stdin:\n"
        "    f = line.split()\n"
        "    if f[0] == 'shape':\n"
        "        ta, tb, m, n, k = map(int, f[1:])\n"
        "        a = torch.randn(k, m).t() if ta else torch.randn(m, k)\n"
        "        b = torch.randn(n, k).t() if tb else torch.randn(k, n)\n"
        "        c = torch.empty(m, n)\n"
        "        print('ok', flush=True)\n"
        "    else:\n"
        "        t0 = time.perf_counter(); torch.mm(a, b, out=c); t = time.perf_counter() - t0\n"
        "        print(t * 1e3, flush=True)\n";
    std::string banner;
    if (!child_.start(script, threads, &banner)) return false;
    if (banner.rfind("torch", 0) != 0) return false;
    std::printf("# %s (torch.mm, BLAS as linked by Debian's PyTorch)\n", banner.c_str());
    return true;
  }
  bool shape(const Shape& s) {
    char line[128];
    std::snprintf(line, sizeof line, "shape %d %d %lld %lld %lld", s.transpose_a ? 1 : 0,
                  s.transpose_b ? 1 : 0, (long long)s.m, (long long)s.n, (long long)s.k);
    return child_.ask(line) == "ok";
  }
  double run() {
    return std::atof(child_.ask("run").c_str());
  }
 private:
  sela::lab::PythonChild child_;
};

}  // namespace

int main(int argc, char** argv) {
  std::int64_t batch = 128;
  int reps = 5;
  int threads = 0;
  bool torch = false;
  std::string only, skip;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gemm_lab: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--batch")
      batch = std::stoll(value());
    else if (arg == "--reps")
      reps = std::stoi(value());
    else if (arg == "--threads")
      threads = std::stoi(value());
    else if (arg == "--only")
      only = value();
    else if (arg == "--skip")
      skip = "," + value() + ",";
    else if (arg == "--torch")
      torch = true;
    else {
      std::fprintf(stderr,
                   "usage: gemm_lab [--batch 128] [--reps 5] [--threads 0 (all)] "
                   "[--only SUBSTRING] [--skip blis,openblas] [--torch]\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  sela::cpu::set_num_threads(threads);
  threads = sela::cpu::num_threads();

  std::vector<Backend> backends;
  backends.push_back({"sela", std::string("sela::cpu::gemm -> ") + sela::cpu::gemm_backend_name(),
                      [](const Shape& s, const float* a, std::int64_t lda, const float* b,
                         std::int64_t ldb, float* c, std::int64_t ldc) {
                        sela::cpu::gemm<float>(s.transpose_a, s.transpose_b, s.m, s.n, s.k, 1.0f, a,
                                               lda, b, ldb, 0.0f, c, ldc);
                      }});
  backends.push_back({"builtin", sela::cpu::gemm_builtin_tile_name<float>(),
                      [](const Shape& s, const float* a, std::int64_t lda, const float* b,
                         std::int64_t ldb, float* c, std::int64_t ldc) {
                        sela::cpu::gemm_builtin<float>(s.transpose_a, s.transpose_b, s.m, s.n, s.k,
                                                       1.0f, a, lda, b, ldb, 0.0f, c, ldc);
                      }});
  add_dnnl(&backends);
  add_openblas(&backends, threads);
  add_blis(&backends, threads);
  backends.erase(std::remove_if(backends.begin(), backends.end(),
                                [&](const Backend& b) {
                                  return skip.find("," + b.name + ",") != std::string::npos;
                                }),
                 backends.end());

  std::printf("# gemm_lab: batch %lld, %d threads, %d timed rounds after 1 warm-up round\n",
              static_cast<long long>(batch), threads, reps);
  for (const Backend& b : backends) std::printf("# %-9s %s\n", b.name.c_str(), b.detail.c_str());
  std::printf("%-24s %7s %7s %7s  %-9s %12s %12s %15s %s\n", "shape", "m", "n", "k", "backend",
              "median", "min", "rate (median)", "max rel err vs builtin");

  std::vector<Shape> shapes;
  for (const Shape& s : alexnet32_shapes(batch))
    if (only.empty() || s.name.find(only) != std::string::npos) shapes.push_back(s);

  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  TorchWorker worker;
  bool torch_ready = torch && worker.start(threads);
  if (torch && !torch_ready) std::printf("# torch: could not start /usr/bin/python3 with torch\n");
  std::vector<std::string> names;
  for (const Backend& b : backends) names.push_back(b.name);
  names.push_back("torch");
  std::vector<double> total_ms(names.size(), 0.0), total_min_ms(names.size(), 0.0);
  double total_flop = 0;
  for (const Shape& s : shapes) {
    // Stored A is (m, k) or (k, m) when transposed; B is (k, n) or (n, k).
    std::int64_t lda = s.transpose_a ? s.m : s.k, ldb = s.transpose_b ? s.k : s.n;
    std::vector<float> a(static_cast<std::size_t>(s.m * s.k)),
        b(static_cast<std::size_t>(s.k * s.n));
    for (float& x : a) x = uniform(rng);
    for (float& x : b) x = uniform(rng);
    std::vector<float> reference(static_cast<std::size_t>(s.m * s.n));
    sela::cpu::gemm_builtin<float>(s.transpose_a, s.transpose_b, s.m, s.n, s.k, 1.0f, a.data(), lda,
                                   b.data(), ldb, 0.0f, reference.data(), s.n);
    double flop = 2.0 * double(s.m) * double(s.n) * double(s.k);
    total_flop += flop;
    std::vector<std::vector<float>> outputs(backends.size());
    std::vector<double> errors(backends.size(), 0.0);
    std::vector<std::function<double()>> bodies;
    for (std::size_t bi = 0; bi < backends.size(); ++bi) {
      const Backend& backend = backends[bi];
      std::vector<float>& c = outputs[bi];
      c.assign(reference.size(), std::nanf(""));
      backend.run(s, a.data(), lda, b.data(), ldb, c.data(), s.n);
      double worst = 0;
      for (std::size_t i = 0; i < c.size(); ++i) {
        double err = std::fabs(double(c[i]) - double(reference[i])) /
                     (1e-3 * std::sqrt(double(s.k)) + std::fabs(double(reference[i])));
        if (!(err <= worst)) worst = err;  // NaN propagates as worst
      }
      errors[bi] = worst;
      bodies.push_back([&, bi] {
        backends[bi].run(s, a.data(), lda, b.data(), ldb, outputs[bi].data(), s.n);
        return -1.0;
      });
    }
    if (torch_ready) {
      torch_ready = worker.shape(s);
      if (torch_ready) bodies.push_back([&worker] { return worker.run(); });
    }
    std::vector<Stats> stats = time_interleaved(bodies, reps);
    for (std::size_t bi = 0; bi < stats.size(); ++bi) {
      total_ms[bi] += stats[bi].median_ms;
      total_min_ms[bi] += stats[bi].min_ms;
      std::printf("%-24s %7lld %7lld %7lld  %-9s %9.3f ms %9.3f ms %7.1f GFLOP/s %.2e\n",
                  s.name.c_str(), static_cast<long long>(s.m), static_cast<long long>(s.n),
                  static_cast<long long>(s.k), names[bi].c_str(), stats[bi].median_ms, stats[bi].min_ms,
                  flop / stats[bi].median_ms * 1e-6, bi < errors.size() ? errors[bi] : 0.0);
    }
    std::fflush(stdout);
  }
  std::printf("# totals over %zu shapes (%.1f GFLOP):\n", shapes.size(), total_flop * 1e-9);
  for (std::size_t bi = 0; bi < names.size(); ++bi)
    if (total_ms[bi] > 0)
      std::printf(
          "# total %-9s %9.1f ms (sum of medians) %7.1f GFLOP/s   %9.1f ms (sum of minima)\n",
          names[bi].c_str(), total_ms[bi], total_flop / total_ms[bi] * 1e-6, total_min_ms[bi]);
  return 0;
}
