// `sela data`: what a data source holds and how fast the loader delivers it.
//
//   sela data --data SPEC [--split S] [--grid FILE.png] [--threads N[,N...]] [--batch B]
//
// Prints the source's summary (samples, classes and their counts, image size, channels,
// normalisation, skipped files), the augmentation recipe, then runs the threaded loader with
// that augmentation for each thread count asked and prints images/s and the time spent
// waiting for batches (the consumer does nothing, so this is the loader's ceiling). With
// --grid it writes a PNG of the first augmented samples of epoch 0 (de-normalised), so a
// person can see what the network sees.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <thread>

#include "engine/data/augment.h"
#include "engine/data/dataset.h"
#include "engine/data/grid.h"
#include "engine/data/image_io.h"
#include "engine/data/loader.h"
#include "engine/error.h"
#include "tools/cli.h"
#include "tools/commands.h"

namespace sela::tools {
namespace {

struct Throughput {
  int threads = 0;
  std::int64_t batches = 0, images = 0, skipped = 0;
  double seconds = 0, wait_seconds = 0;
  std::string first_bad;
};

Throughput measure(const data::Dataset& dataset, const data::AugmentConfig& augment,
                   data::LoaderConfig config, std::int64_t max_batches, double max_seconds) {
  data::Loader loader(dataset, augment, config);
  Throughput result;
  result.threads = config.workers;
  auto start = std::chrono::steady_clock::now();
  loader.start_epoch(0);
  data::Batch batch;
  while (loader.next(&batch)) {
    ++result.batches;
    result.images += batch.size;
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if ((max_batches > 0 && result.batches >= max_batches) || elapsed >= max_seconds) break;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  data::LoaderStats stats = loader.stats();
  result.wait_seconds = stats.wait_seconds;
  result.skipped = stats.skipped_bad;
  result.first_bad = stats.first_bad;
  return result;
}

void write_grid(const data::Dataset& dataset, const data::AugmentConfig& augment,
                std::uint64_t seed, bool shuffle, std::int64_t count, bool skip_bad,
                const std::string& path) {
  count = std::min<std::int64_t>(count, dataset.size());
  std::vector<std::int64_t> order =
      shuffle ? data::shuffled_order(dataset.size(), seed, 0) : std::vector<std::int64_t>();
  if (!shuffle) {
    for (std::int64_t i = 0; i < count; ++i) order.push_back(i);
  }
  const int channels = dataset.info().channels;
  const std::size_t floats = static_cast<std::size_t>(channels) *
                             static_cast<std::size_t>(augment.output_height) *
                             static_cast<std::size_t>(augment.output_width);
  std::vector<float> images(static_cast<std::size_t>(count) * floats);  // (count, C, H, W)
  std::vector<std::int64_t> indices(static_cast<std::size_t>(count)), classes(indices.size());
  std::int64_t kept = data::load_samples(dataset, augment, seed, 0, order.data(), count,
                                         images.data(), indices.data(), classes.data(), skip_bad);
  SELA_CHECK(kept > 0, "sela data",
             "no sample of the first " << count << " could be read for the grid");
  int columns = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(kept))));
  data::Image grid = data::make_grid(images.data(), kept, channels, augment.output_height,
                                     augment.output_width, augment.normalisation, columns);
  data::write_png(path, grid.view());
  std::cout << "grid        " << path << ": " << kept
            << " samples of epoch 0 as the network sees them (" << grid.width << "x" << grid.height
            << " PNG); true classes:";
  for (std::int64_t i = 0; i < kept; ++i)
    std::cout << (i % columns ? " " : "\n            ") << classes[static_cast<std::size_t>(i)];
  std::cout << "\n";
}

}  // namespace

int run_data_command(const Args& args) {
  const char* usage = "sela data";
  cli::Flags flags(usage,
                   "Summarises a data source and measures the threaded loader's throughput "
                   "with augmentation.\nSPEC: fashion-mnist[:DIR] | idx:IMAGES[,LABELS] | "
                   "cifar10:DIR | cifar100:DIR | folder:DIR");
  flags.add("data", "fashion-mnist", "data source SPEC");
  flags.add("split", "train", "train | test (sources with splits: fashion-mnist, cifar)");
  flags.add("grid", "", "write a PNG grid of augmented samples to this file");
  flags.add("grid-count", "64", "samples in the grid");
  unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
  flags.add("threads", std::to_string(hardware),
            "loader worker threads; a list (1,2,4) measures each");
  flags.add("batch", "256", "batch size");
  flags.add("batches", "0", "stop each measurement after this many batches (0: one epoch)");
  flags.add("seconds", "10", "stop each measurement after this many seconds");
  flags.add("size", "0", "output side in pixels (0: the source's default, 32 or 224)");
  flags.add("seed", "0", "seed of the shuffle and the augmentation");
  flags.add_switch("eval", "use the evaluation transform (resize + centre crop)");
  flags.add_switch("skip-bad", "leave out unreadable images (counted) instead of failing");
  if (!flags.parse(args)) return 0;
  SELA_CHECK(flags.positional().empty(), usage,
             "unexpected argument '" << flags.positional().front() << "'; see `sela data --help`");

  std::vector<std::int64_t> thread_counts = flags.get_int_list("threads");
  std::int64_t batch_size = flags.get_int("batch");
  std::int64_t max_batches = flags.get_int("batches");
  double max_seconds = flags.get_double("seconds");
  std::int64_t size = flags.get_int("size");
  std::int64_t grid_count = flags.get_int("grid-count");
  SELA_CHECK(!thread_counts.empty(), usage, "--threads needs at least one count");
  for (std::int64_t t : thread_counts) {
    SELA_CHECK(t >= 1 && t <= 256, usage, "--threads " << t << "; expected 1..256");
  }
  SELA_CHECK(batch_size >= 1, usage, "--batch " << batch_size << "; expected >= 1");
  SELA_CHECK(max_batches >= 0, usage, "--batches " << max_batches << "; expected >= 0");
  SELA_CHECK(max_seconds > 0, usage, "--seconds " << max_seconds << "; expected > 0");
  SELA_CHECK(size >= 0 && size <= 4096, usage, "--size " << size << "; expected 0..4096");
  SELA_CHECK(grid_count >= 1, usage, "--grid-count " << grid_count << "; expected >= 1");

  data::OpenOptions options;
  options.split = flags.get("split");
  options.skip_bad = flags.get_switch("skip-bad");
  auto open_start = std::chrono::steady_clock::now();
  std::unique_ptr<data::Dataset> dataset = data::open_dataset(flags.get("data"), options);
  double open_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - open_start).count();
  std::cout << data::describe(*dataset);
  std::printf("opened in   %.2f s\n", open_seconds);

  bool train = !flags.get_switch("eval");
  data::AugmentConfig augment =
      data::default_augment(dataset->info(), train, static_cast<int>(size));
  std::cout << "augment     " << augment.describe() << "\n";
  std::cout << "output      " << dataset->info().channels << "x" << augment.output_height << "x"
            << augment.output_width << " float32 per sample (C, H, W)\n";

  std::uint64_t seed = static_cast<std::uint64_t>(flags.get_int("seed"));
  if (flags.has("grid")) {
    write_grid(*dataset, augment, seed, train, grid_count, options.skip_bad, flags.get("grid"));
  }

  for (std::int64_t threads : thread_counts) {
    data::LoaderConfig config;
    config.batch_size = batch_size;
    config.shuffle = train;
    config.seed = seed;
    config.workers = static_cast<int>(threads);
    config.skip_bad = options.skip_bad;
    Throughput t = measure(*dataset, augment, config, max_batches, max_seconds);
    std::printf(
        "loader      %d thread%s: %lld images in %lld batches of %lld, %.2f s, %.0f images/s; "
        "waited %.2f s for data\n",
        t.threads, t.threads == 1 ? "" : "s", static_cast<long long>(t.images),
        static_cast<long long>(t.batches), static_cast<long long>(batch_size), t.seconds,
        static_cast<double>(t.images) / std::max(t.seconds, 1e-9), t.wait_seconds);
    if (t.skipped > 0) {
      std::printf("            %lld unreadable samples skipped, first: %s\n",
                  static_cast<long long>(t.skipped), t.first_bad.c_str());
    }
  }
  return 0;
}

}  // namespace sela::tools
