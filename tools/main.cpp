// The `sela` program: one binary, subcommands, `--help` on each (DESIGN.md, "The sela
// program"). main() only dispatches and turns sela::Error into one clear message and a
// non-zero exit; each subcommand lives in its own tools/*.cpp file.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <unistd.h>
#include <iostream>
#include <map>
#include <string>

#include "engine/error.h"
#include "tools/commands.h"

namespace {

const char* kUsage =
    "usage: sela <command> [flags]\n"
    "\n"
    "SeLa: self-labelling via simultaneous clustering and representation learning.\n"
    "\n"
    "commands:\n"
    "  train                train a network by self-labelling (no flags: the default run)\n"
    "  label                re-solve pseudo-labels of a data set with a trained run\n"
    "  eval                 clustering metrics, kNN and linear probes (--probes) of a run\n"
    "  viz                  cluster grid (--out) or training curves (--curves) as PNG\n"
    "  data                 summarise a data set, measure the loader, write a sample grid\n"
    "  bench train-step     time full training steps (forward, backward, SGD)\n"
    "  bench sinkhorn       time the Sinkhorn-Knopp label assignment\n"
    "\n"
    "Run `sela <command> --help` for the flags of each command.\n";

int run_bench(const sela::tools::Args& args) {
  static const char* kBenchUsage =
      "usage: sela bench <train-step|sinkhorn> [flags]\n"
      "  train-step   time training steps of a SeLa model on random data\n"
      "  sinkhorn     time the label assignment on random or given logits\n";
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kBenchUsage;
    return args.empty() ? 2 : 0;
  }
  sela::tools::Args rest(args.begin() + 1, args.end());
  if (args[0] == "train-step") return sela::tools::run_bench_train_step(rest);
  if (args[0] == "sinkhorn") return sela::tools::run_bench_sinkhorn(rest);
  SELA_FAIL_HINT("sela bench", "unknown benchmark '" << args[0] << "'",
                 "use train-step or sinkhorn");
}

// OpenMP threads that spin while waiting at a barrier are fast on an idle machine and
// catastrophic on a busy one: measured here with one other busy process on the 2 cores,
// a width-0.25 alexnet-32 step took 2.1 s with libgomp's default (spinning) policy and
// 0.25 s with OMP_WAIT_POLICY=passive (docs/perf.md). libgomp reads the variable when it
// is loaded, before main(), so the program sets it and re-executes itself once, unless the
// user chose a policy.
void prefer_passive_openmp_waits(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure: carry on with the default policy.
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_openmp_waits(argv);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  std::string command = argv[1];
  sela::tools::Args args(argv + 2, argv + argc);
  try {
    if (command == "train") return sela::tools::run_train(args);
    if (command == "label") return sela::tools::run_label(args);
    if (command == "eval") return sela::tools::run_eval(args);
    if (command == "viz") return sela::tools::run_viz(args);
    if (command == "bench") return run_bench(args);
    if (command == "data") return sela::tools::run_data_command(args);
    std::cerr << "error: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  } catch (const sela::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
