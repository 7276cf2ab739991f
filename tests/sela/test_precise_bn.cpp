// recompute_batch_norm_statistics (sela/evaluate.h), on the CPU.
//
// The reference walks the same batches (evaluation transform, dataset order, full batches)
// through the feature extractor layer by layer in training mode, and at each BatchNorm
// takes the channel means and unbiased variances of its input in float64; their averages
// over the batches are what the running statistics must hold afterwards. In training mode
// a BatchNorm normalises with the batch's own statistics, so the layers after it see the
// same values whatever the running statistics are: the reference needs no second pass.
// Tolerance: 1e-5 relative plus 1e-6 absolute (float32 statistics of 32 x 24 x 24 values
// per channel and batch, against float64). With BatchNorm in the fc layers
// (ModelConfig::fc_batch_norm) the reference walks on through the classifier, skipping its
// dropout (the pass must draw no masks: the dropout counters stay as they were).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/data/augment.h"
#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "engine/ops.h"
#include "models/alexnet.h"
#include "sela/evaluate.h"
#include "tests/sela/synthetic_run.h"

namespace {

using sela::Tensor;

// Channel means and unbiased variances of x (N, C, H, W) or (N, C), in float64.
void channel_statistics(const Tensor& x, std::vector<double>* mean, std::vector<double>* var) {
  const std::int64_t n = x.size(0), c = x.size(1), hw = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const std::vector<double> values = x.to_vector<double>();
  mean->assign(static_cast<std::size_t>(c), 0.0);
  var->assign(static_cast<std::size_t>(c), 0.0);
  for (std::int64_t ch = 0; ch < c; ++ch) {
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < hw; ++j) sum += values[static_cast<std::size_t>((i * c + ch) * hw + j)];
    const double m = sum / static_cast<double>(n * hw);
    double squares = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < hw; ++j) {
        const double d = values[static_cast<std::size_t>((i * c + ch) * hw + j)] - m;
        squares += d * d;
      }
    }
    (*mean)[static_cast<std::size_t>(ch)] = m;
    (*var)[static_cast<std::size_t>(ch)] = squares / static_cast<double>(n * hw - 1);
  }
}

void check_precise_batch_norm(bool fc_batch_norm) {
  CAPTURE(fc_batch_norm);
  sela::test::TempFolder folder;
  auto dataset = sela::data::open_dataset(
      sela::test::write_synthetic_idx(folder.path, "train", 150, 3));
  sela::ModelConfig config;
  config.arch = "alexnet-32";
  config.width_mult = 0.0625;
  config.in_channels = 1;
  config.clusters = {4};
  config.seed = 9;
  config.fc_batch_norm = fc_batch_norm;
  config.dropout = fc_batch_norm ? 0.5 : 0.0;
  auto model = sela::make_model(config);
  std::vector<sela::Module*> layers;  // the reference's walk: features, then the classifier
  for (const auto& layer : model->features->layers()) layers.push_back(layer.get());
  if (fc_batch_norm) {
    for (const auto& layer : model->classifier->layers()) layers.push_back(layer.get());
  }
  model->eval();
  const std::int64_t batch_size = 32;  // 150 images: 4 full batches, the rest left out

  // The reference: per BatchNorm, the sums of the batches' means and variances.
  std::vector<std::vector<double>> mean_sum, var_sum;
  std::int64_t batches = 0;
  {
    sela::NoGradGuard no_grad;
    model->train();
    sela::data::LoaderConfig loader_config;
    loader_config.batch_size = batch_size;
    loader_config.shuffle = false;
    loader_config.drop_last = true;
    sela::data::Loader loader(
        *dataset, sela::data::default_augment(dataset->info(), false, 32), loader_config);
    loader.start_epoch(0);
    sela::data::Batch batch;
    while (loader.next(&batch)) {
      Tensor h = sela::batch_images_on(batch, sela::Device::cpu());
      std::size_t norm = 0;
      for (sela::Module* layer : layers) {
        if (dynamic_cast<sela::Dropout*>(layer) != nullptr) continue;
        if (h.dim() == 4 && dynamic_cast<sela::Linear*>(layer) != nullptr) h = sela::flatten(h);
        if (dynamic_cast<sela::BatchNorm2d*>(layer) != nullptr) {
          std::vector<double> mean, var;
          channel_statistics(h, &mean, &var);
          if (mean_sum.size() <= norm) {
            mean_sum.emplace_back(mean.size(), 0.0);
            var_sum.emplace_back(var.size(), 0.0);
          }
          for (std::size_t ch = 0; ch < mean.size(); ++ch) {
            mean_sum[norm][ch] += mean[ch];
            var_sum[norm][ch] += var[ch];
          }
          ++norm;
        }
        h = layer->forward(h);
      }
      ++batches;
    }
    model->eval();
  }
  REQUIRE(batches == 4);
  REQUIRE(mean_sum.size() == (fc_batch_norm ? 7u : 5u));  // conv1..conv5 (fc6, fc7)

  std::vector<sela::BatchNorm2d*> norms;
  for (sela::Module* layer : layers)
    if (auto* norm = dynamic_cast<sela::BatchNorm2d*>(layer)) norms.push_back(norm);
  for (sela::BatchNorm2d* norm : norms) *norm->num_batches_tracked.data<std::int64_t>() = 17;
  std::vector<std::uint64_t> dropout_calls;
  for (sela::Module* layer : layers) {
    if (auto* dropout = dynamic_cast<sela::Dropout*>(layer)) dropout_calls.push_back(dropout->calls);
  }

  CHECK(sela::recompute_batch_norm_statistics(*model, *dataset, batch_size, 1) == 4);
  CHECK_FALSE(model->is_training());  // the mode it had
  std::size_t d = 0;
  for (sela::Module* layer : layers) {
    if (auto* dropout = dynamic_cast<sela::Dropout*>(layer)) CHECK(dropout->calls == dropout_calls[d++]);
  }
  for (std::size_t b = 0; b < norms.size(); ++b) {
    INFO("BatchNorm " << b);
    CHECK(norms[b]->momentum == 0.1);  // restored
    CHECK(*norms[b]->num_batches_tracked.data<std::int64_t>() == 17);
    const std::vector<double> mean = norms[b]->running_mean.to_vector<double>();
    const std::vector<double> var = norms[b]->running_var.to_vector<double>();
    REQUIRE(mean.size() == mean_sum[b].size());
    for (std::size_t ch = 0; ch < mean.size(); ++ch) {
      const double want_mean = mean_sum[b][ch] / static_cast<double>(batches);
      const double want_var = var_sum[b][ch] / static_cast<double>(batches);
      CHECK(std::fabs(mean[ch] - want_mean) <= 1e-6 + 1e-5 * std::fabs(want_mean));
      CHECK(std::fabs(var[ch] - want_var) <= 1e-6 + 1e-5 * std::fabs(want_var));
    }
  }
}

}  // namespace

TEST_CASE("precise BatchNorm: running statistics become the mean of the batch statistics") {
  check_precise_batch_norm(false);
}

TEST_CASE("precise BatchNorm: the classifier's BatchNorm too, with its dropout off") {
  check_precise_batch_norm(true);
}
