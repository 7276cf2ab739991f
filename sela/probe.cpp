// Implementation of sela/probe.h. The flow of run_linear_probes:
//   block shapes (one dry forward) -> pools -> groups of blocks whose cached features fit
//   for each group: network pass over train and test (eval transform) -> pooled rows cached
//                   for each block of the group: train_linear_probe -> test top-1
#include "sela/probe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/data/augment.h"
#include "engine/data/loader.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/progress.h"
#include "engine/random.h"
#include "kernels/cpu/parallel.h"

namespace sela {

// --- pooling ---------------------------------------------------------------------------------

std::string ProbePool::describe() const {
  std::ostringstream out;
  out << channels << "x" << height << "x" << width;
  if (pooled()) {
    out << " -> max-pool " << channels << "x" << out_height << "x" << out_width;
  } else {
    out << " (not pooled)";
  }
  out << " = " << dims();
  return out.str();
}

ProbePool choose_probe_pool(std::int64_t channels, std::int64_t height, std::int64_t width,
                            std::int64_t target_dims) {
  SELA_CHECK(channels >= 1 && height >= 1 && width >= 1 && target_dims >= 1, "probe",
             "bad block shape " << channels << "x" << height << "x" << width << " or target "
                                << target_dims);
  double side = std::sqrt(static_cast<double>(target_dims) / static_cast<double>(channels));
  std::int64_t s = std::max<std::int64_t>(1, std::llround(side));
  ProbePool pool;
  pool.channels = channels;
  pool.height = height;
  pool.width = width;
  pool.out_height = std::min(height, s);
  pool.out_width = std::min(width, s);
  return pool;
}

template <typename T>
void adaptive_max_pool2d(const T* input, std::int64_t count, std::int64_t height,
                         std::int64_t width, std::int64_t out_height, std::int64_t out_width,
                         T* output) {
  for (std::int64_t plane = 0; plane < count; ++plane) {
    const T* in = input + plane * height * width;
    T* out = output + plane * out_height * out_width;
    for (std::int64_t i = 0; i < out_height; ++i) {
      std::int64_t y0 = (i * height) / out_height;
      std::int64_t y1 = ((i + 1) * height + out_height - 1) / out_height;
      for (std::int64_t j = 0; j < out_width; ++j) {
        std::int64_t x0 = (j * width) / out_width;
        std::int64_t x1 = ((j + 1) * width + out_width - 1) / out_width;
        T best = in[y0 * width + x0];
        for (std::int64_t y = y0; y < y1; ++y) {
          for (std::int64_t x = x0; x < x1; ++x) {
            T v = in[y * width + x];
            // NaN propagates, as in PyTorch's max pooling.
            if (v > best || std::isnan(v)) best = v;
          }
        }
        out[i * out_width + j] = best;
      }
    }
  }
}

template void adaptive_max_pool2d<float>(const float*, std::int64_t, std::int64_t, std::int64_t,
                                         std::int64_t, std::int64_t, float*);
template void adaptive_max_pool2d<double>(const double*, std::int64_t, std::int64_t, std::int64_t,
                                          std::int64_t, std::int64_t, double*);

// --- feature cache ---------------------------------------------------------------------------

namespace {

std::uint16_t to_bf16(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // keep NaN a NaN
  }
  std::uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

float from_bf16(std::uint16_t half) {
  std::uint32_t bits = static_cast<std::uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace

std::uint64_t FeatureMatrix::bytes_for(std::int64_t rows, std::int64_t dims,
                                       FeatureStorage storage) {
  return static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(dims) *
         (storage == FeatureStorage::f32 ? 4u : 2u);
}

FeatureMatrix::FeatureMatrix(std::int64_t rows, std::int64_t dims, FeatureStorage storage)
    : rows_(rows), dims_(dims), storage_(storage) {
  SELA_CHECK(rows >= 0 && dims >= 1, "probe", "bad feature matrix " << rows << "x" << dims);
  std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(dims);
  if (storage == FeatureStorage::f32) {
    f32_.assign(n, 0.0f);
  } else {
    bf16_.assign(n, 0);
  }
}

std::uint64_t FeatureMatrix::bytes() const { return bytes_for(rows_, dims_, storage_); }

void FeatureMatrix::set_row(std::int64_t row, const float* values) {
  SELA_CHECK(row >= 0 && row < rows_, "probe", "feature row " << row << " of " << rows_);
  std::size_t offset = static_cast<std::size_t>(row) * static_cast<std::size_t>(dims_);
  if (storage_ == FeatureStorage::f32) {
    std::memcpy(f32_.data() + offset, values, static_cast<std::size_t>(dims_) * sizeof(float));
  } else {
    std::uint16_t* out = bf16_.data() + offset;
    for (std::int64_t d = 0; d < dims_; ++d) out[d] = to_bf16(values[d]);
  }
}

void FeatureMatrix::gather(const std::int64_t* rows, std::int64_t count, float* out) const {
  for (std::int64_t i = 0; i < count; ++i) {
    SELA_CHECK(rows[i] >= 0 && rows[i] < rows_, "probe",
               "feature row " << rows[i] << " of " << rows_);
  }
  const std::size_t dims = static_cast<std::size_t>(dims_);
  // Chunks of at least ~64k values: a small gather runs inline, without a thread team.
  const std::int64_t grain = std::max<std::int64_t>(1, 65536 / dims_);
  cpu::parallel_for(0, count, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      std::size_t offset = static_cast<std::size_t>(rows[i]) * dims;
      float* destination = out + static_cast<std::size_t>(i) * dims;
      if (storage_ == FeatureStorage::f32) {
        std::memcpy(destination, f32_.data() + offset, dims * sizeof(float));
      } else {
        const std::uint16_t* source = bf16_.data() + offset;
        for (std::size_t d = 0; d < dims; ++d) destination[d] = from_bf16(source[d]);
      }
    }
  });
}

std::uint64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::uint64_t value = 0;
  std::string unit;
  while (meminfo >> key >> value >> unit) {
    if (key == "MemAvailable:") return value * 1024u;
  }
  return 0;
}

// --- one probe ---------------------------------------------------------------------------------

namespace {

std::int64_t argmax_row(const float* row, std::int64_t k) {
  std::int64_t best = 0;
  for (std::int64_t j = 1; j < k; ++j) {
    if (row[j] > row[best]) best = j;
  }
  return best;
}

std::vector<std::int64_t> labelled_rows(const std::vector<std::int64_t>& classes,
                                        std::int64_t num_classes, const char* split) {
  std::vector<std::int64_t> rows;
  for (std::size_t i = 0; i < classes.size(); ++i) {
    if (classes[i] < 0) continue;
    SELA_CHECK(classes[i] < num_classes, "probe",
               split << " sample " << i << " has class " << classes[i] << " but there are only "
                     << num_classes << " classes");
    rows.push_back(static_cast<std::int64_t>(i));
  }
  return rows;
}

}  // namespace

ProbeResult train_linear_probe(const FeatureMatrix& train,
                               const std::vector<std::int64_t>& train_classes,
                               const FeatureMatrix& test,
                               const std::vector<std::int64_t>& test_classes,
                               std::int64_t num_classes, const ProbeOptions& options,
                               const std::string& name) {
  SELA_CHECK(static_cast<std::int64_t>(train_classes.size()) == train.rows() &&
                 static_cast<std::int64_t>(test_classes.size()) == test.rows(),
             "probe",
             name << ": " << train.rows() << " train rows with " << train_classes.size()
                  << " classes, " << test.rows() << " test rows with " << test_classes.size()
                  << " classes");
  SELA_CHECK(train.dims() == test.dims(), "probe",
             name << ": train features have " << train.dims() << " dims, test " << test.dims());
  SELA_CHECK(num_classes >= 2, "probe", name << ": needs at least 2 classes, got " << num_classes);
  SELA_CHECK(options.epochs >= 1 && options.batch_size >= 2 && options.lr > 0, "probe",
             name << ": epochs " << options.epochs << " (>= 1), batch size " << options.batch_size
                  << " (>= 2), lr " << options.lr << " (> 0)");
  std::vector<std::int64_t> train_rows = labelled_rows(train_classes, num_classes, "training");
  std::vector<std::int64_t> test_rows = labelled_rows(test_classes, num_classes, "test");
  SELA_CHECK(train_rows.size() >= 2 && !test_rows.empty(), "probe",
             name << ": needs labelled samples in both splits (train " << train_rows.size()
                  << ", test " << test_rows.size() << ")");
  auto start = std::chrono::steady_clock::now();
  const std::int64_t dims = train.dims();
  const std::int64_t n = static_cast<std::int64_t>(train_rows.size());

  ProbeResult result;
  result.layer = name;
  Rng rng(options.seed * 7919 + 13);
  Tensor weight = Tensor::empty({num_classes, dims});  // (K, D)
  fill_normal(weight, rng, 0.0, 0.01);
  weight.set_requires_grad();
  Tensor bias = Tensor::zeros({num_classes});  // (K)
  bias.set_requires_grad();
  Tensor running_mean = Tensor::zeros({dims});     // (D)
  Tensor running_var = Tensor::full({dims}, 1.0);  // (D)
  SgdOptions sgd_options;
  sgd_options.lr = options.lr;
  sgd_options.momentum = options.momentum;
  sgd_options.weight_decay = options.weight_decay;
  Sgd sgd({weight, bias}, sgd_options);

  const std::int64_t batch = std::min(options.batch_size, n);
  std::vector<std::int64_t> batch_rows(static_cast<std::size_t>(batch));
  std::vector<std::int64_t> batch_classes(static_cast<std::size_t>(batch));
  for (std::int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    std::vector<std::int64_t> order = data::shuffled_order(n, options.seed, epoch);
    double loss_sum = 0;
    std::int64_t batches = 0, correct = 0, seen = 0;
    for (std::int64_t begin = 0; begin < n; begin += batch) {
      std::int64_t size = std::min(batch, n - begin);
      if (size < 2) break;  // batch statistics need two samples
      for (std::int64_t j = 0; j < size; ++j) {
        std::int64_t row =
            train_rows[static_cast<std::size_t>(order[static_cast<std::size_t>(begin + j)])];
        batch_rows[static_cast<std::size_t>(j)] = row;
        batch_classes[static_cast<std::size_t>(j)] = train_classes[static_cast<std::size_t>(row)];
      }
      Tensor x = Tensor::empty({size, dims, 1, 1});  // (B, D, 1, 1): BN over D "channels"
      train.gather(batch_rows.data(), size, x.data<float>());
      Tensor normalised = batch_norm2d(x, Tensor(), Tensor(), running_mean, running_var,
                                       /*training=*/true, 0.1, 1e-5);
      Tensor logits = linear(reshape(normalised, {size, dims}), weight, bias);  // (B, K)
      std::vector<std::int64_t> targets(batch_classes.begin(), batch_classes.begin() + size);
      Tensor loss = cross_entropy(logits, Tensor::from_vector(targets, {size}));
      double value = loss.item();
      SELA_CHECK(std::isfinite(value), "probe",
                 name << ": the loss became " << value << " in epoch " << epoch + 1
                      << " (are the features finite?)");
      sgd.zero_grad();
      loss.backward();
      sgd.step();
      const float* scores = logits.data<float>();
      for (std::int64_t j = 0; j < size; ++j) {
        correct += argmax_row(scores + j * num_classes, num_classes) ==
                   targets[static_cast<std::size_t>(j)];
      }
      seen += size;
      loss_sum += value;
      ++batches;
    }
    result.epoch_losses.push_back(loss_sum /
                                  static_cast<double>(std::max<std::int64_t>(batches, 1)));
    result.train_top1 =
        static_cast<double>(correct) / static_cast<double>(std::max<std::int64_t>(seen, 1));
    if (options.verbose) {
      std::printf("  probe %s epoch %lld/%lld: loss %.4f, train top-1 %.2f%%\n", name.c_str(),
                  static_cast<long long>(epoch + 1), static_cast<long long>(options.epochs),
                  result.epoch_losses.back(), 100 * result.train_top1);
      std::fflush(stdout);
    }
  }

  // Test: BN with the running statistics, argmax of the logits.
  NoGradGuard no_grad;
  std::int64_t correct = 0;
  const std::int64_t test_n = static_cast<std::int64_t>(test_rows.size());
  for (std::int64_t begin = 0; begin < test_n; begin += batch) {
    std::int64_t size = std::min(batch, test_n - begin);
    Tensor x = Tensor::empty({size, dims, 1, 1});
    test.gather(test_rows.data() + begin, size, x.data<float>());
    Tensor normalised = batch_norm2d(x, Tensor(), Tensor(), running_mean, running_var,
                                     /*training=*/false, 0.1, 1e-5);
    Tensor logits = linear(reshape(normalised, {size, dims}), weight, bias);
    const float* scores = logits.data<float>();
    for (std::int64_t j = 0; j < size; ++j) {
      std::int64_t row = test_rows[static_cast<std::size_t>(begin + j)];
      correct += argmax_row(scores + j * num_classes, num_classes) ==
                 test_classes[static_cast<std::size_t>(row)];
    }
  }
  result.test_top1 = static_cast<double>(correct) / static_cast<double>(test_n);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

// --- the protocol on a model -------------------------------------------------------------------

namespace {

// Selected samples of another data set (a seeded subset for --probe-train-samples).
class SubsetDataset : public data::Dataset {
 public:
  SubsetDataset(const data::Dataset& base, std::vector<std::int64_t> indices)
      : data::Dataset(base.info(), classes_of(base, indices)),
        base_(base),
        indices_(std::move(indices)) {}
  data::ImageView image(std::int64_t index, data::Image* scratch) const override {
    check_index(index);
    return base_.image(indices_[static_cast<std::size_t>(index)], scratch);
  }
  std::string sample_name(std::int64_t index) const override {
    check_index(index);
    return base_.sample_name(indices_[static_cast<std::size_t>(index)]);
  }

 private:
  static std::vector<std::int64_t> classes_of(const data::Dataset& base,
                                              const std::vector<std::int64_t>& indices) {
    std::vector<std::int64_t> classes;
    classes.reserve(indices.size());
    for (std::int64_t i : indices) classes.push_back(base.true_class(i));
    return classes;
  }
  const data::Dataset& base_;
  std::vector<std::int64_t> indices_;
};

// One eval-mode pass over `dataset`: for each block in `blocks`, the pooled output of each
// sample lands in row (dataset index) of features[b].
double cache_features(SelaNet& model, const data::Dataset& dataset, const std::vector<int>& blocks,
                      const std::vector<ProbePool>& pools, std::vector<FeatureMatrix*> features,
                      const ProbeOptions& options, const std::string& label) {
  NoGradGuard no_grad;
  data::AugmentConfig augment =
      data::default_augment(dataset.info(), false, static_cast<int>(model.input_size()));
  data::LoaderConfig config;
  config.batch_size = options.network_batch_size;
  config.shuffle = false;
  config.workers = std::max(1, options.workers);
  data::Loader loader(dataset, augment, config);
  Progress progress(label, loader.batches_per_epoch(), 50);
  loader.start_epoch(0);
  data::Batch batch;
  std::int64_t done = 0;
  std::int64_t max_dims = 0;
  for (int b : blocks) max_dims = std::max(max_dims, pools[static_cast<std::size_t>(b)].dims());
  std::vector<float> pooled(static_cast<std::size_t>(options.network_batch_size * max_dims));
  while (loader.next(&batch)) {
    Tensor images = Tensor::empty({batch.size, batch.channels, batch.height, batch.width});
    std::memcpy(images.raw_data(), batch.images.data(), images.nbytes());
    std::vector<Tensor> outputs = model.forward_conv_blocks(images);
    for (std::size_t g = 0; g < blocks.size(); ++g) {
      const ProbePool& pool = pools[static_cast<std::size_t>(blocks[g])];
      const Tensor& block = outputs[static_cast<std::size_t>(blocks[g])];  // (B, C, H, W)
      const float* source = block.data<float>();
      const std::int64_t plane = pool.height * pool.width;
      const std::int64_t dims = pool.dims();
      FeatureMatrix* destination = features[g];
      cpu::parallel_for(0, batch.size, 1, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t j = begin; j < end; ++j) {
          const float* sample = source + j * pool.channels * plane;
          float* row = pooled.data() + j * dims;
          if (pool.pooled()) {
            adaptive_max_pool2d(sample, pool.channels, pool.height, pool.width, pool.out_height,
                                pool.out_width, row);
          } else {
            std::memcpy(row, sample, static_cast<std::size_t>(dims) * sizeof(float));
          }
          destination->set_row(batch.indices[static_cast<std::size_t>(j)], row);
        }
      });
    }
    progress.update(++done, "");
  }
  double seconds = progress.elapsed_seconds();
  progress.finish(std::to_string(dataset.size()) + " images");
  return seconds;
}

}  // namespace

ProbeReport run_linear_probes(SelaNet& model, const data::Dataset& train, const data::Dataset& test,
                              const ProbeOptions& options) {
  SELA_CHECK(train.labelled() && test.labelled(), "probe",
             "linear probes need true classes in both data sets (" << train.info().spec << ", "
                                                                   << test.info().spec << ")");
  SELA_CHECK(!options.layers.empty(), "probe", "no conv block chosen");
  for (int b : options.layers) {
    SELA_CHECK(b >= 0 && b < 5, "probe",
               "conv block " << b + 1 << " does not exist (conv1..conv5)");
  }
  auto start = std::chrono::steady_clock::now();
  // Eval mode for the passes; the caller's mode comes back however this function ends.
  struct ModeGuard {
    SelaNet& model;
    bool was_training;
    ~ModeGuard() { model.train(was_training); }
  } mode_guard{model, model.is_training()};
  model.eval();

  // Block shapes from one dry forward (eval mode: nothing is updated).
  std::int64_t side = model.input_size();
  std::vector<Tensor> probe;
  {
    NoGradGuard no_grad;  // only around the network: the probes themselves need gradients
    probe = model.forward_conv_blocks(Tensor::zeros({1, model.config().in_channels, side, side}));
  }
  SELA_CHECK(probe.size() == 5, "probe",
             "the model has " << probe.size() << " conv blocks, expected 5");
  std::vector<ProbePool> pools;
  for (const Tensor& block : probe) {
    pools.push_back(
        choose_probe_pool(block.size(1), block.size(2), block.size(3), options.target_dims));
  }

  // The training rows: all, or a seeded random subset.
  std::unique_ptr<SubsetDataset> subset;
  const data::Dataset* train_set = &train;
  if (options.train_limit > 0 && options.train_limit < train.size()) {
    std::vector<std::int64_t> order = data::shuffled_order(train.size(), options.seed + 101, 0);
    order.resize(static_cast<std::size_t>(options.train_limit));
    std::sort(order.begin(), order.end());
    subset = std::make_unique<SubsetDataset>(train, std::move(order));
    train_set = subset.get();
  }
  const std::int64_t n_train = train_set->size(), n_test = test.size();

  // Groups of blocks whose cached features fit in the budget together.
  std::uint64_t budget = options.memory_budget_bytes;
  if (budget == 0) {
    std::uint64_t available = available_memory_bytes();
    budget = available > 0 ? available / 2 : (std::uint64_t{4} << 30);
  }
  std::vector<std::vector<int>> groups;
  std::uint64_t group_bytes = 0;
  for (int b : options.layers) {
    std::uint64_t bytes = FeatureMatrix::bytes_for(
        n_train + n_test, pools[static_cast<std::size_t>(b)].dims(), options.storage);
    if (bytes > budget) {
      SELA_FAIL_HINT("probe",
                     "the cached features of conv"
                         << b + 1 << " (" << pools[static_cast<std::size_t>(b)].describe() << ", "
                         << n_train + n_test << " images) need " << bytes / (1u << 20)
                         << " MiB, more than the " << budget / (1u << 20) << " MiB allowed",
                     "probe on a subset of the training split (--probe-train-samples N)");
    }
    if (groups.empty() || group_bytes + bytes > budget) {
      groups.emplace_back();
      group_bytes = 0;
    }
    groups.back().push_back(b);
    group_bytes += bytes;
  }

  ProbeReport report;
  report.options = options;
  report.train_samples = n_train;
  report.test_samples = n_test;
  if (options.verbose) {
    std::printf(
        "linear probes: %lld train / %lld test images, %zu network pass%s, features in %s\n",
        static_cast<long long>(n_train), static_cast<long long>(n_test), groups.size(),
        groups.size() == 1 ? "" : "es", options.storage == FeatureStorage::bf16 ? "bf16" : "f32");
    for (int b : options.layers) {
      std::printf("  conv%d: %s\n", b + 1, pools[static_cast<std::size_t>(b)].describe().c_str());
    }
    std::fflush(stdout);
  }
  for (const std::vector<int>& group : groups) {
    std::vector<FeatureMatrix> train_features, test_features;
    for (int b : group) {
      train_features.emplace_back(n_train, pools[static_cast<std::size_t>(b)].dims(),
                                  options.storage);
      test_features.emplace_back(n_test, pools[static_cast<std::size_t>(b)].dims(),
                                 options.storage);
    }
    std::vector<FeatureMatrix*> train_targets, test_targets;
    for (auto& f : train_features) train_targets.push_back(&f);
    for (auto& f : test_features) test_targets.push_back(&f);
    std::string names;
    for (int b : group) names += (names.empty() ? "conv" : ",conv") + std::to_string(b + 1);
    report.feature_seconds += cache_features(model, *train_set, group, pools, train_targets,
                                             options, "probe features (" + names + "): train");
    report.feature_seconds += cache_features(model, test, group, pools, test_targets, options,
                                             "probe features (" + names + "): test");
    report.network_passes += 1;
    for (std::size_t g = 0; g < group.size(); ++g) {
      std::string name = "conv" + std::to_string(group[g] + 1);
      ProbeResult result =
          train_linear_probe(train_features[g], train_set->true_classes(), test_features[g],
                             test.true_classes(), train.num_classes(), options, name);
      result.pool = pools[static_cast<std::size_t>(group[g])];
      if (options.verbose) {
        std::printf("  probe %s: test top-1 %.2f%% (%.1f s)\n", name.c_str(),
                    100 * result.test_top1, result.seconds);
        std::fflush(stdout);
      }
      report.layers.push_back(result);
    }
  }
  std::sort(report.layers.begin(), report.layers.end(),
            [](const ProbeResult& a, const ProbeResult& b) { return a.layer < b.layer; });
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::string ProbeReport::to_json() const {
  nlohmann::json j;
  j["train_samples"] = train_samples;
  j["test_samples"] = test_samples;
  j["network_passes"] = network_passes;
  j["feature_seconds"] = feature_seconds;
  j["seconds"] = seconds;
  j["protocol"] = {{"epochs", options.epochs},
                   {"batch_size", options.batch_size},
                   {"lr", options.lr},
                   {"momentum", options.momentum},
                   {"weight_decay", options.weight_decay},
                   {"target_dims", options.target_dims},
                   {"feature_storage", options.storage == FeatureStorage::bf16 ? "bf16" : "f32"},
                   {"pool", "adaptive max"},
                   {"bn", "no affine"}};
  j["layers"] = nlohmann::json::array();
  for (const ProbeResult& r : layers) {
    j["layers"].push_back({{"layer", r.layer},
                           {"channels", r.pool.channels},
                           {"height", r.pool.height},
                           {"width", r.pool.width},
                           {"pooled_height", r.pool.out_height},
                           {"pooled_width", r.pool.out_width},
                           {"dims", r.pool.dims()},
                           {"test_top1", r.test_top1},
                           {"train_top1", r.train_top1},
                           {"epoch_losses", r.epoch_losses},
                           {"seconds", r.seconds}});
  }
  return j.dump();
}

std::string ProbeReport::table() const {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-6s %-40s %9s %9s\n", "layer", "features", "train top-1",
                "test top-1");
  out << line;
  for (const ProbeResult& r : layers) {
    std::snprintf(line, sizeof line, "%-6s %-40s %10.2f%% %9.2f%%\n", r.layer.c_str(),
                  r.pool.describe().c_str(), 100 * r.train_top1, 100 * r.test_top1);
    out << line;
  }
  std::snprintf(
      line, sizeof line,
      "linear probes: %lld epochs, %lld train / %lld test images, %.0f s (features %.0f s)\n",
      static_cast<long long>(options.epochs), static_cast<long long>(train_samples),
      static_cast<long long>(test_samples), seconds, feature_seconds);
  out << line;
  return out.str();
}

}  // namespace sela
