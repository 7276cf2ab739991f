// The `sela` program: one binary, subcommands, `--help` on each (DESIGN.md, "The sela
// program"). main() only dispatches and turns sela::Error into one clear message and a
// non-zero exit; each subcommand lives in its own tools/*.cpp file.
#include <cstring>
#include <exception>
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  std::string command = argv[1];
  sela::tools::Args args(argv + 2, argv + argc);
  try {
    if (command == "train") return sela::tools::run_train(args);
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
