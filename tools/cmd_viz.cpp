// `sela viz`: pictures of a run (sela/viz.h).
//
//   sela viz --checkpoint RUNDIR [--data SPEC] --out clusters.png [--head H|stable]
//            [--clusters-shown C] [--per-cluster P]
//   sela viz --curves RUNDIR --out curves.png
//
// Clusters: the labels of head H are RUNDIR/labels.csv's column when the data is the run's
// own training data and the row count matches, else the head's argmax over the data (one
// eval-mode pass); rows are sorted by
// purity (true classes) or by mean softmax entropy (no classes; this needs the pass too).
// Curves: loss per epoch and NMI of head 0 per label step, from RUNDIR/metrics.jsonl.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sys/stat.h>

#include "engine/data/image_io.h"
#include "kernels/cpu/parallel.h"
#include "sela/checkpoint_model.h"
#include "sela/evaluate.h"
#include "sela/viz.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace sela::tools {

namespace {

int draw_curves(const cli::Flags& flags, const std::string& command) {
  std::string source = flags.get("curves");
  struct stat info {};
  std::string metrics = source;
  if (::stat(source.c_str(), &info) == 0 && S_ISDIR(info.st_mode))
    metrics = source + "/metrics.jsonl";
  SELA_CHECK(
      ::stat(metrics.c_str(), &info) == 0, command,
      "no " << metrics << ": --curves takes a run folder of `sela train` (or its metrics.jsonl)");
  TrainingCurves curves = read_training_curves(metrics);
  CurvesPicture picture = render_training_curves(curves, static_cast<int>(flags.get_int("width")),
                                                 static_cast<int>(flags.get_int("height")));
  data::write_png(flags.get("out"), picture.image.view());
  std::printf("wrote %s (%dx%d): loss of %zu epochs, NMI of head 0 at %zu label steps\n",
              flags.get("out").c_str(), picture.image.width, picture.image.height,
              curves.loss.size(), curves.step_x.size());
  return 0;
}

}  // namespace

int run_viz(const Args& args) {
  cli::Flags flags("sela viz",
                   "Pictures of a SeLa run. With --checkpoint: a PNG grid of sample images per "
                   "cluster of one head,\nrows sorted by purity (true classes) or by the entropy "
                   "of the head's predictions. With --curves:\nloss and label-quality curves over "
                   "training, from metrics.jsonl.");
  flags.add("checkpoint", "", "run folder of `sela train` (cluster grid)");
  flags.add("curves", "", "run folder (or metrics.jsonl) whose training curves to draw");
  flags.add("data", "", "data whose clusters to show (default: the run's training data)");
  flags.add("split", "train", "split of --data: train | test (sources with splits)");
  flags.add("out", "", "PNG file to write (required)");
  flags.add("head", "stable",
            "head whose clusters to show: a number, or stable (the most stable head of the "
            "smallest K, as `sela eval` marks it; head 0's K when the run has no stability)");
  flags.add("clusters-shown", "0", "rows (clusters) drawn after sorting (0 = all non-empty)");
  flags.add("per-cluster", "10", "sample images per row");
  flags.add("seed", "0", "seed of the sample choice");
  flags.add("width", "800", "curves: picture width in pixels");
  flags.add("height", "600", "curves: picture height in pixels");
  flags.add("batch-size", "256", "images per forward pass");
  flags.add("limit-samples", "0", "use only the first N samples (0 = all, or the run's limit)");
  flags.add("threads", "0", "compute threads (0 = all hardware threads)");
  flags.add("workers", "1", "data loader threads");
  if (!flags.parse(args)) return 0;
  const std::string command = "sela viz";
  check_output_folder(flags.get("out"), "--out", command);
  SELA_CHECK(flags.get("checkpoint").empty() != flags.get("curves").empty(), command,
             "give either --checkpoint RUNDIR (cluster grid) or --curves RUNDIR (training curves)");
  if (!flags.get("curves").empty()) return draw_curves(flags, command);

  std::int64_t batch_size = flags.get_int("batch-size");
  int workers = static_cast<int>(flags.get_int("workers"));
  SELA_CHECK(batch_size >= 1 && workers >= 1, command, "--batch-size and --workers must be >= 1");
  cpu::set_num_threads(static_cast<int>(flags.get_int("threads")));
  RunFolder run = read_run_folder(flags.get("checkpoint"), command);
  std::int64_t heads = static_cast<std::int64_t>(run.model.clusters.size());
  std::int64_t head = 0;
  if (flags.get("head") == "stable") {
    head = static_cast<std::int64_t>(default_display_head(
        run.model.clusters,
        label_stability_from_metrics(run.path + "/metrics.jsonl", run.model.clusters.size())));
  } else {
    head = flags.get_int("head");
  }
  SELA_CHECK(head >= 0 && head < heads, command,
             "--head " << head << " does not exist: the run has heads 0.." << heads - 1);
  const std::int64_t k = run.model.clusters[static_cast<std::size_t>(head)];
  std::shared_ptr<SelaNet> model = load_run_model(run, command);
  std::unique_ptr<data::Dataset> dataset = open_run_data(run, flags.get("data"), flags.get("split"),
                                                         flags.get_int("limit-samples"), command);
  const std::int64_t n = dataset->size();

  std::vector<std::int64_t> labels;
  std::string labels_source;
  std::vector<std::vector<std::int64_t>> run_labels = read_run_labels(run);
  // labels.csv holds labels of the run's own training data: used for that data only.
  bool own_data = flags.get("data").empty() || flags.get("data") == run.data;
  if (own_data && flags.get("split") == "train" &&
      static_cast<std::int64_t>(run_labels.size()) == heads &&
      static_cast<std::int64_t>(run_labels[static_cast<std::size_t>(head)].size()) == n) {
    labels = run_labels[static_cast<std::size_t>(head)];
    labels_source = run.labels_path();
  }
  std::vector<double> entropies;
  if (labels.empty() || !dataset->labelled()) {
    NetworkOutputs outputs =
        run_network(*model, *dataset, batch_size, workers, true, false, "viz: logits");
    const float* logits = outputs.logits[static_cast<std::size_t>(head)].data();
    entropies = softmax_entropies(logits, n, k);
    if (labels.empty()) {
      labels = argmax_rows(logits, n, k);
      labels_source = "argmax of head " + std::to_string(head);
    }
  }
  ClusterOrderOptions options;
  options.clusters_shown = flags.get_int("clusters-shown");
  options.per_cluster = flags.get_int("per-cluster");
  options.seed = static_cast<std::uint64_t>(flags.get_int("seed"));
  std::vector<ClusterRow> rows =
      order_clusters(labels, k, dataset->true_classes(), entropies, options);
  data::Image picture = render_cluster_grid(*dataset, rows, options.per_cluster,
                                            static_cast<int>(model->input_size()), true);
  data::write_png(flags.get("out"), picture.view());

  bool by_purity = dataset->labelled();
  std::printf(
      "sela viz: head %lld (K=%lld) of %s on %s, labels from %s; %zu clusters drawn, "
      "sorted by %s\n",
      static_cast<long long>(head), static_cast<long long>(k), run.path.c_str(),
      dataset->info().spec.c_str(), labels_source.c_str(), rows.size(),
      by_purity ? "purity" : "mean prediction entropy");
  std::printf("%4s %7s %6s %7s %8s  %s\n", "row", "cluster", "size", "purity", "entropy",
              "majority class");
  const auto& names = dataset->info().class_names;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const ClusterRow& row = rows[r];
    std::string majority =
        row.majority_class >= 0 && row.majority_class < static_cast<std::int64_t>(names.size())
            ? names[static_cast<std::size_t>(row.majority_class)]
            : "-";
    char purity[16] = "-", entropy[16] = "-";
    if (row.purity >= 0) std::snprintf(purity, sizeof purity, "%.1f%%", 100 * row.purity);
    if (row.mean_entropy >= 0) std::snprintf(entropy, sizeof entropy, "%.3f", row.mean_entropy);
    std::printf("%4zu %7lld %6lld %7s %8s  %s\n", r, static_cast<long long>(row.cluster),
                static_cast<long long>(row.size), purity, entropy, majority.c_str());
  }
  std::printf("wrote %s (%dx%d)\n", flags.get("out").c_str(), picture.width, picture.height);
  return 0;
}

}  // namespace sela::tools
