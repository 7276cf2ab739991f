// The subcommands of the `sela` program. Each takes the arguments after its name and
// returns the process exit code; errors are thrown as sela::Error and reported by main().
#pragma once

#include <string>
#include <vector>

namespace sela::tools {

using Args = std::vector<std::string>;

int run_train(const Args& args);             // sela train
int run_label(const Args& args);             // sela label
int run_eval(const Args& args);              // sela eval
int run_viz(const Args& args);               // sela viz
int run_bench_train_step(const Args& args);  // sela bench train-step
int run_bench_sinkhorn(const Args& args);    // sela bench sinkhorn
int run_data_command(const Args& args);      // sela data

}  // namespace sela::tools
