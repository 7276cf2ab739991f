// `sela label`: pseudo-labels for a data set from a trained network.
//
//   sela label --checkpoint RUNDIR [--data SPEC] [--split S] --out labels.csv [--lambda L]
//              [--batch-size B]
//
// The network of RUNDIR runs once over the data in eval mode (sela/evaluate.h run_network),
// each head's labels are re-solved as an equipartition by Sinkhorn-Knopp (the trainer's
// label step, with the run's λ and storage unless given), and the CSV `index,head0,...` is
// written atomically. Without --data the run's own training data (and sample limit) is used.
#include <cstdio>
#include <iostream>

#include "kernels/cpu/parallel.h"
#include "sela/assign/metrics.h"
#include "sela/assign/sinkhorn.h"
#include "sela/checkpoint_model.h"
#include "sela/device_choice.h"
#include "sela/evaluate.h"
#include "sela/run_files.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace sela::tools {

int run_label(const Args& args) {
  cli::Flags flags("sela label",
                   "Re-solves the pseudo-labels of a data set with a trained SeLa network: one "
                   "eval-mode pass over the data,\nthen Sinkhorn-Knopp per head (equal-sized "
                   "clusters), written as CSV `index,head0,head1,...`.");
  flags.add("checkpoint", "", "run folder of `sela train` (config.json, weights.safetensors)");
  flags.add("data", "", "data to label (default: the run's training data)");
  flags.add("split", "train", "split of --data: train | test (sources with splits)");
  flags.add("out", "", "CSV file to write (required)");
  flags.add("lambda", "", "Sinkhorn sharpness λ (default: the run's)");
  flags.add("sinkhorn-storage", "",
            "storage of the transport matrix: f32 | f16 | bf16 "
            "(default: the run's)");
  flags.add("batch-size", "256", "images per forward pass");
  flags.add("limit-samples", "0", "label only the first N samples (0 = all)");
  flags.add("device", "auto",
            "auto (a GPU when this build and the machine have one, else cpu) | cpu | cuda[:N]");
  flags.add("threads", "0", "compute threads (0 = all hardware threads)");
  flags.add("workers", "1", "data loader threads");
  if (!flags.parse(args)) return 0;
  const std::string command = "sela label";
  SELA_CHECK(!flags.get("checkpoint").empty(), command, "--checkpoint RUNDIR is required");
  check_output_folder(flags.get("out"), "--out", command);
  std::int64_t batch_size = flags.get_int("batch-size");
  int workers = static_cast<int>(flags.get_int("workers"));
  SELA_CHECK(batch_size >= 1, command, "--batch-size must be >= 1, got " << batch_size);
  SELA_CHECK(workers >= 1, command, "--workers must be >= 1, got " << workers);
  cpu::set_num_threads(static_cast<int>(flags.get_int("threads")));

  RunFolder run = read_run_folder(flags.get("checkpoint"), command);
  std::shared_ptr<SelaNet> model = load_run_model(run, command);
  const Device device = resolve_device(flags.get("device"));
  const std::string device_line = checked_device_description(device, command);
  if (!device.is_cpu()) {
    std::printf("sela label: %s\n", device_line.c_str());
    model->to(device);
  }
  std::unique_ptr<data::Dataset> dataset = open_run_data(run, flags.get("data"), flags.get("split"),
                                                         flags.get_int("limit-samples"), command);
  const std::int64_t n = dataset->size();
  const auto& clusters = run.model.clusters;
  for (std::int64_t k : clusters) {
    SELA_CHECK(k <= n, command,
               "a head has K = " << k << " clusters but " << dataset->info().spec << " holds only "
                                 << n << " samples: equal-sized clusters need N >= K");
  }
  assign::SinkhornOptions options;
  options.device = device;
  options.lambda = flags.has("lambda") ? flags.get_double("lambda") : run.lambda;
  SELA_CHECK(options.lambda > 0, command, "--lambda must be > 0, got " << options.lambda);
  options.storage = assign::parse_storage(
      flags.has("sinkhorn-storage") ? flags.get("sinkhorn-storage") : run.sinkhorn_storage);
  // The run's over-relaxation and iteration cap: a trained network's logits take thousands
  // of plain passes (docs/perf.md), more than the solver's default cap.
  options.over_relaxation = run.sinkhorn_omega;
  options.max_iters = run.sinkhorn_max_iters;
  std::printf("sela label: %s (%s width %.3g, heads K=", run.path.c_str(), run.model.arch.c_str(),
              run.model.width_mult);
  for (std::size_t t = 0; t < clusters.size(); ++t) {
    std::printf("%s%lld", t ? "," : "", static_cast<long long>(clusters[t]));
  }
  std::printf(") on %s, %lld samples, lambda %.3g, storage %s, omega %.3g\n",
              dataset->info().spec.c_str(), static_cast<long long>(n), options.lambda,
              assign::storage_name(options.storage), options.over_relaxation);
  std::fflush(stdout);

  NetworkOutputs outputs =
      run_network(*model, *dataset, batch_size, workers, true, false, "label: logits");
  assign::SinkhornSolver solver(options);
  std::vector<std::vector<std::int64_t>> labels;
  for (std::size_t t = 0; t < clusters.size(); ++t) {
    std::int64_t k = clusters[t];
    assign::SinkhornResult result =
        solver.solve(outputs.logits[t].data(), n, k, "head" + std::to_string(t));
    std::printf(
        "  head%zu K=%lld: %lld iterations%s %.2fs, marginal errors %.1e/%.1e, cluster sizes "
        "%lld..%lld (%lld empty)",
        t, static_cast<long long>(k), static_cast<long long>(result.iterations),
        result.converged ? "" : " (not converged)", result.total_seconds, result.row_marginal_error,
        result.col_marginal_error, static_cast<long long>(result.cluster_min),
        static_cast<long long>(result.cluster_max), static_cast<long long>(result.clusters_empty));
    if (dataset->labelled()) {
      ClusteringScores scores =
          score_clustering(result.labels, outputs.classes, k, dataset->num_classes());
      std::printf(", NMI/ARI(true) %.3f/%.3f", scores.nmi, scores.ari);
    }
    std::printf("\n");
    labels.push_back(std::move(result.labels));
  }
  write_file_atomic(flags.get("out"), labels_csv(labels));
  std::printf("wrote %s: %lld rows, %zu heads (forward %.1f s)\n", flags.get("out").c_str(),
              static_cast<long long>(n), labels.size(), outputs.seconds);
  return 0;
}

}  // namespace sela::tools
