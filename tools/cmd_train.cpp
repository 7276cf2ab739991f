// `sela train`: the SeLa method end to end (sela/trainer.h). With no flags it runs the
// default job: Fashion-MNIST (Debian's dataset-fashion-mnist), alexnet-32 at width 0.25,
// BatchNorm in its fc layers, heads K = 10,10,10,10,300,300, no dropout and the rotation
// task (its turned images in the batch's pass), 40 epochs with 80 label steps from recorded
// logits, on the CPU when no GPU is present, then evaluates on the test split (and names the most stable K = 10 head). The
// defaults live in TrainConfig (sela/trainer.h); the flags show them.
#include <cmath>
#include <iostream>
#include <sstream>

#include "sela/trainer.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace sela::tools {
namespace {

std::string number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string join(const std::vector<std::int64_t>& values) {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) out += (i ? "," : "") + std::to_string(values[i]);
  return out;
}

}  // namespace

int run_train(const Args& args) {
  TrainConfig defaults;
  cli::Flags flags("sela train",
                   "Trains a network by self-labelling (SeLa, Asano et al. ICLR 2020): SGD on "
                   "pseudo-labels that are re-solved\nas an equipartitioned optimal-transport "
                   "problem (Sinkhorn-Knopp) at scheduled label steps.\nOutputs go to --out: "
                   "config.json, checkpoint.safetensors, weights.safetensors, labels.csv,\n"
                   "metrics.jsonl, eval.json (and labels/step_NNN.csv with --label-history on).");
  flags.add("data", defaults.data, "training data: fashion-mnist[:DIR] | cifar10:DIR | "
                                   "cifar100:DIR | folder:DIR | idx:IMAGES[,LABELS]");
  flags.add("test-data", "", "evaluation data (default: the test split of --data)");
  flags.add("arch", defaults.arch, "alexnet | alexnet-small | alexnet-32");
  flags.add("width-mult", number(defaults.width_mult), "width multiplier of conv and fc layers");
  flags.add("heads", "", "number of heads T (with a single --clusters value)");
  flags.add("clusters", join(defaults.clusters), "K per head, comma-separated (or one K for all --heads)");
  flags.add("lambda", number(defaults.lambda), "Sinkhorn sharpness λ (paper: 25 ImageNet, 10 CIFAR)");
  flags.add("label-steps", std::to_string(defaults.label_steps), "number of self-labelling steps over the run");
  flags.add("label-spacing", defaults.label_spacing,
            "linear (as the reference's CIFAR code) or quadratic (its ImageNet code)");
  flags.add("label-logits", defaults.label_logits,
            "where a label step's logits come from: fresh (an eval pass over the data set) or "
            "recorded (each sample's logits from its last training step: label steps cost only "
            "the Sinkhorn solves)");
  flags.add("label-history", defaults.label_history ? "on" : "off",
            "also keep every label step's labels as RUNDIR/labels/step_NNN.csv (on|off); "
            "labels.csv always holds the latest");
  flags.add("epochs", std::to_string(defaults.epochs), "training epochs");
  flags.add("batch-size", std::to_string(defaults.batch_size), "images per SGD step");
  flags.add("lr", number(defaults.lr), "learning rate");
  flags.add("momentum", number(defaults.momentum), "SGD momentum");
  flags.add("wd", number(defaults.weight_decay), "weight decay");
  flags.add("lr-drops", "", "epochs at which the lr is multiplied by 0.1, e.g. 150,300");
  flags.add("dropout", number(defaults.dropout), "dropout probability in the classifier");
  flags.add("fc-batch-norm", defaults.fc_batch_norm ? "on" : "off",
            "BatchNorm after both fc layers, before their ReLUs, as RotNet's AlexNet (on|off; "
            "off to resume a run made before it became the default)");
  flags.add("crop-min-scale", "0", "random-resized-crop minimum area share, in (0, 1] (0 = the "
                                   "data source's default: 0.2 for 32x32 sources, 0.08 for folders)");
  flags.add("jitter", "-1",
            "brightness and contrast jitter strength s (factors in [1 - s, 1 + s]; saturation "
            "too for colour images), in [0, 1) (-1 = the data source's default: 0.4)");
  flags.add("rotation-weight", number(defaults.rotation_weight),
            "weight of the rotation task (RotNet's: a 4-way head on fc7 predicts the quarter "
            "turns of --rotation-batch turned images per step; 0 = off)");
  flags.add("rotation-batch", std::to_string(defaults.rotation_batch),
            "images of each batch the rotation task turns (a multiple of 4 keeps the turns "
            "balanced)");
  flags.add("rotation-pass", defaults.rotation_pass,
            "how the turned images go through the network: grouped (appended to the batch, one "
            "pass, BatchNorm statistics per group), joint (appended, statistics over all) or "
            "separate (a second pass with its own BatchNorm statistics)");
  flags.add("sinkhorn-max-iters", std::to_string(defaults.sinkhorn_max_iters),
            "Sinkhorn iteration cap per head and label step (reaching it is a warning)");
  flags.add("sinkhorn-omega", number(defaults.sinkhorn_omega),
            "Sinkhorn over-relaxation omega in [1, 2): a sixth of the iterations at 1.8 on "
            "this recipe's trained logits (lambda 10, K <= 300); a safeguard returns a solve to "
            "plain steps, with a warning, where its error stops falling (often at --lambda 25: "
            "1.4 is safer there) (1 = the published algorithm)");
  flags.add("sinkhorn-storage", defaults.storage, "storage of the transport matrix: f32 | f16 | bf16");
  flags.add("sinkhorn-warm-start", defaults.sinkhorn_warm_start,
            "start each head's solve from its previous label step's column scaling (far fewer "
            "iterations, the same stopping rule): auto (on for a CPU run, off on a GPU until "
            "measured there) | on | off");
  flags.add("device", defaults.device,
            "auto (the first GPU when this build has CUDA and the machine a GPU, else cpu) | "
            "cpu | cuda[:N]");
  flags.add("cuda-graph", defaults.cuda_graph,
            "replay each training step as a captured CUDA graph: auto (on for a GPU run) | on "
            "| off (the run's first step runs eagerly; the step is captured after it and again "
            "after each lr change)");
  flags.add("precise-bn", defaults.precise_bn ? "on" : "off",
            "after the last epoch, re-estimate the BatchNorm statistics on the training images "
            "without augmentation, before the final weights are written (on|off)");
  flags.add("threads", "0", "compute threads (0 = all hardware threads)");
  flags.add("workers", std::to_string(defaults.workers),
            "data loader threads (0: 1 for a CPU run, which needs its cores for compute; half "
            "the hardware threads, at most 8, for a GPU run)");
  flags.add("seed", "0", "seed of weights, labels, order and augmentation");
  flags.add("out", defaults.out, "run folder");
  flags.add("limit-samples", "0", "use only the first N training samples (0 = all)");
  flags.add("stop-after-epoch", "-1", "stop after this epoch as if interrupted (for testing --resume)");
  flags.add_switch("resume", "continue the run in --out from its last checkpoint");
  flags.add_switch("no-eval", "skip the final evaluation");
  flags.add_switch("quick", "a smoke run of the same pipeline in well under a minute (10k "
                            "samples, width 0.125, 6 epochs, 6 label steps)");
  if (!flags.parse(args)) return 0;

  TrainConfig config;
  bool quick = flags.get_switch("quick");
  config.data = flags.get("data");
  config.test_data = flags.get("test-data");
  config.arch = flags.get("arch");
  config.width_mult = flags.has("width-mult") || !quick ? flags.get_double("width-mult") : 0.125;
  config.clusters = flags.get_int_list("clusters");
  if (flags.has("heads")) {
    std::int64_t heads = flags.get_int("heads");
    SELA_CHECK(heads >= 1, "sela train", "--heads must be >= 1, got " << heads);
    SELA_CHECK(config.clusters.size() == 1 || static_cast<std::int64_t>(config.clusters.size()) == heads,
               "sela train",
               "--heads " << heads << " but --clusters lists " << config.clusters.size()
                          << " values; give one K for all heads or one per head");
    config.clusters.resize(static_cast<std::size_t>(heads), config.clusters[0]);
  }
  config.lambda = flags.get_double("lambda");
  config.label_steps = flags.has("label-steps") || !quick ? flags.get_int("label-steps") : 6;
  config.label_spacing = flags.get("label-spacing");
  config.label_logits = flags.get("label-logits");
  config.label_history = flags.get_on_off("label-history");
  config.epochs = flags.has("epochs") || !quick ? flags.get_int("epochs") : 6;
  config.batch_size = flags.get_int("batch-size");
  config.lr = flags.get_double("lr");
  config.momentum = flags.get_double("momentum");
  config.weight_decay = flags.get_double("wd");
  if (!flags.get("lr-drops").empty()) config.lr_drops = flags.get_int_list("lr-drops");
  config.dropout = flags.get_double("dropout");
  config.fc_batch_norm = flags.get_on_off("fc-batch-norm");
  config.storage = flags.get("sinkhorn-storage");
  config.sinkhorn_warm_start = flags.get("sinkhorn-warm-start");
  config.crop_min_scale = flags.get_double("crop-min-scale");
  SELA_CHECK(config.crop_min_scale >= 0 && config.crop_min_scale <= 1, "sela train",
             "--crop-min-scale must be in [0, 1], got " << config.crop_min_scale);
  config.jitter = flags.get_double("jitter");
  SELA_CHECK(config.jitter == -1 || (config.jitter >= 0 && config.jitter < 1), "sela train",
             "--jitter must be in [0, 1) or -1 (the source's default), got " << config.jitter);
  config.rotation_weight = flags.get_double("rotation-weight");
  SELA_CHECK(std::isfinite(config.rotation_weight) && config.rotation_weight >= 0, "sela train",
             "--rotation-weight must be >= 0, got " << config.rotation_weight);
  config.rotation_batch = flags.get_int("rotation-batch");
  SELA_CHECK(config.rotation_batch >= 1 && config.rotation_batch <= config.batch_size,
             "sela train",
             "--rotation-batch must be between 1 and --batch-size (" << config.batch_size
                                                                     << "), got "
                                                                     << config.rotation_batch);
  config.rotation_pass = flags.get("rotation-pass");  // checked by train()
  config.sinkhorn_max_iters = flags.get_int("sinkhorn-max-iters");
  SELA_CHECK(config.sinkhorn_max_iters >= 1, "sela train", "--sinkhorn-max-iters must be >= 1");
  config.sinkhorn_omega = flags.get_double("sinkhorn-omega");
  SELA_CHECK(config.sinkhorn_omega >= 1.0 && config.sinkhorn_omega < 2.0, "sela train",
             "--sinkhorn-omega must be in [1, 2), got " << config.sinkhorn_omega);
  config.device = flags.get("device");
  config.cuda_graph = flags.get("cuda-graph");
  config.precise_bn = flags.get_on_off("precise-bn");
  config.threads = static_cast<int>(flags.get_int("threads"));
  config.workers = static_cast<int>(flags.get_int("workers"));
  config.seed = static_cast<std::uint64_t>(flags.get_int("seed"));
  config.out = flags.has("out") || !quick ? flags.get("out") : "runs/quick";
  config.limit_samples = flags.has("limit-samples") || !quick ? flags.get_int("limit-samples") : 10000;
  config.stop_after_epoch = flags.get_int("stop-after-epoch");
  config.resume = flags.get_switch("resume");
  config.evaluate = !flags.get_switch("no-eval");
  SELA_CHECK(config.lambda > 0, "sela train", "--lambda must be > 0, got " << config.lambda);
  SELA_CHECK(config.label_steps >= 0, "sela train", "--label-steps must be >= 0");
  SELA_CHECK(config.workers >= 0, "sela train", "--workers must be >= 0 (0: automatic)");
  train(config);
  return 0;
}

}  // namespace sela::tools
