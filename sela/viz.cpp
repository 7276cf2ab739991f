// Implementation of sela/viz.h.
#include "sela/viz.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "engine/data/augment.h"
#include "engine/data/grid.h"
#include "engine/data/loader.h"
#include "engine/error.h"
#include "engine/random.h"

namespace sela {

// --- clusters ----------------------------------------------------------------------------------

std::vector<ClusterRow> order_clusters(const std::vector<std::int64_t>& labels,
                                       std::int64_t num_clusters,
                                       const std::vector<std::int64_t>& classes,
                                       const std::vector<double>& entropies,
                                       const ClusterOrderOptions& options) {
  const std::size_t n = labels.size();
  SELA_CHECK(num_clusters >= 1, "viz", "number of clusters must be >= 1, got " << num_clusters);
  SELA_CHECK(classes.empty() || classes.size() == n, "viz",
             classes.size() << " true classes for " << n << " labels");
  SELA_CHECK(entropies.empty() || entropies.size() == n, "viz",
             entropies.size() << " entropies for " << n << " labels");
  SELA_CHECK(options.per_cluster >= 1 && options.clusters_shown >= 0, "viz",
             "--per-cluster must be >= 1 and --clusters-shown >= 0");
  std::vector<std::vector<std::int64_t>> members(static_cast<std::size_t>(num_clusters));
  for (std::size_t i = 0; i < n; ++i) {
    SELA_CHECK(
        labels[i] >= 0 && labels[i] < num_clusters, "viz",
        "sample " << i << " has label " << labels[i] << ", outside [0, " << num_clusters << ")");
    members[static_cast<std::size_t>(labels[i])].push_back(static_cast<std::int64_t>(i));
  }
  bool have_classes =
      std::any_of(classes.begin(), classes.end(), [](std::int64_t c) { return c >= 0; });

  std::vector<ClusterRow> rows;
  Rng rng(options.seed * 1000003 + 5);
  for (std::int64_t k = 0; k < num_clusters; ++k) {
    std::vector<std::int64_t>& m = members[static_cast<std::size_t>(k)];
    if (m.empty()) continue;
    ClusterRow row;
    row.cluster = k;
    row.size = static_cast<std::int64_t>(m.size());
    if (have_classes) {
      std::map<std::int64_t, std::int64_t> counts;
      std::int64_t labelled = 0;
      for (std::int64_t i : m) {
        std::int64_t c = classes[static_cast<std::size_t>(i)];
        if (c < 0) continue;
        ++counts[c];
        ++labelled;
      }
      row.purity = 0;
      for (const auto& entry : counts) {  // ascending class: the lowest class wins a tie
        double share = static_cast<double>(entry.second) / static_cast<double>(labelled);
        if (share > row.purity) {
          row.purity = share;
          row.majority_class = entry.first;
        }
      }
    }
    if (!entropies.empty()) {
      double sum = 0;
      for (std::int64_t i : m) sum += entropies[static_cast<std::size_t>(i)];
      row.mean_entropy = sum / static_cast<double>(m.size());
    }
    // A seeded random choice of P members (partial Fisher-Yates), in the order drawn.
    std::vector<std::int64_t> pool = m;
    std::int64_t take = std::min<std::int64_t>(options.per_cluster, row.size);
    for (std::int64_t j = 0; j < take; ++j) {
      std::uint64_t remaining = static_cast<std::uint64_t>(row.size - j);
      std::size_t pick =
          static_cast<std::size_t>(j) + static_cast<std::size_t>(rng.below(remaining));
      std::swap(pool[static_cast<std::size_t>(j)], pool[pick]);
      row.shown.push_back(pool[static_cast<std::size_t>(j)]);
    }
    rows.push_back(std::move(row));
  }
  bool by_entropy = !have_classes && !entropies.empty();
  std::stable_sort(rows.begin(), rows.end(), [&](const ClusterRow& a, const ClusterRow& b) {
    if (have_classes && a.purity != b.purity) return a.purity > b.purity;
    if (by_entropy && a.mean_entropy != b.mean_entropy) return a.mean_entropy < b.mean_entropy;
    if (a.size != b.size) return a.size > b.size;
    return a.cluster < b.cluster;
  });
  if (options.clusters_shown > 0 &&
      static_cast<std::int64_t>(rows.size()) > options.clusters_shown) {
    rows.resize(static_cast<std::size_t>(options.clusters_shown));
  }
  return rows;
}

std::vector<double> softmax_entropies(const float* logits, std::int64_t n, std::int64_t k) {
  std::vector<double> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * k;
    double top = *std::max_element(row, row + k);
    double z = 0, weighted = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      double shifted = static_cast<double>(row[j]) - top;
      double e = std::exp(shifted);
      z += e;
      weighted += e * shifted;
    }
    // H = -Σ p log p with p = e/z, log p = shifted - log z.
    out[static_cast<std::size_t>(i)] = std::log(z) - weighted / z;
  }
  return out;
}

std::vector<std::int64_t> argmax_rows(const float* logits, std::int64_t n, std::int64_t k) {
  std::vector<std::int64_t> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * k;
    out[static_cast<std::size_t>(i)] = std::max_element(row, row + k) - row;
  }
  return out;
}

namespace {

std::string row_caption(const ClusterRow& row) {
  char text[32];
  if (row.purity >= 0) {
    std::snprintf(text, sizeof text, "%d%%", static_cast<int>(std::lround(100 * row.purity)));
  } else if (row.mean_entropy >= 0) {
    std::snprintf(text, sizeof text, "%.2f", row.mean_entropy);
  } else {
    std::snprintf(text, sizeof text, "%lld", static_cast<long long>(row.size));
  }
  return text;
}

}  // namespace

data::Image render_cluster_grid(const data::Dataset& dataset, const std::vector<ClusterRow>& rows,
                                std::int64_t per_cluster, int image_side, bool label_rows,
                                ClusterGridLayout* layout) {
  SELA_CHECK(!rows.empty(), "viz", "no cluster to draw");
  SELA_CHECK(per_cluster >= 1 && image_side >= 1, "viz",
             "bad grid: " << per_cluster << " per cluster, tiles of " << image_side);
  data::AugmentConfig augment = data::default_augment(dataset.info(), false, image_side);
  const int channels = dataset.info().channels;
  const std::size_t tile_floats = static_cast<std::size_t>(channels) *
                                  static_cast<std::size_t>(augment.output_height) *
                                  static_cast<std::size_t>(augment.output_width);
  const std::int64_t tiles = static_cast<std::int64_t>(rows.size()) * per_cluster;
  std::vector<float> images(static_cast<std::size_t>(tiles) * tile_floats);  // (R·P, C, H, W)
  // Blank tiles de-normalise to black.
  for (std::int64_t t = 0; t < tiles; ++t) {
    for (int c = 0; c < channels; ++c) {
      float black = -augment.normalisation.mean[static_cast<std::size_t>(c)] /
                    augment.normalisation.std[static_cast<std::size_t>(c)];
      float* plane =
          images.data() + static_cast<std::size_t>(t) * tile_floats +
          static_cast<std::size_t>(c) * (tile_floats / static_cast<std::size_t>(channels));
      std::fill(plane, plane + tile_floats / static_cast<std::size_t>(channels), black);
    }
  }
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const std::vector<std::int64_t>& shown = rows[r].shown;
    std::int64_t count =
        std::min<std::int64_t>(per_cluster, static_cast<std::int64_t>(shown.size()));
    if (count == 0) continue;
    std::vector<std::int64_t> kept_indices(static_cast<std::size_t>(count));
    std::vector<std::int64_t> kept_classes(static_cast<std::size_t>(count));
    data::load_samples(dataset, augment, 0, 0, shown.data(), count,
                       images.data() + r * static_cast<std::size_t>(per_cluster) * tile_floats,
                       kept_indices.data(), kept_classes.data());
  }
  const int gap = 2;
  data::Image grid =
      data::make_grid(images.data(), tiles, channels, augment.output_height, augment.output_width,
                      augment.normalisation, static_cast<int>(per_cluster), gap);
  int margin = 0;
  if (label_rows) {
    for (const ClusterRow& row : rows)
      margin = std::max(margin, Canvas::text_width(row_caption(row)));
    margin += 2 * gap;
  }
  if (layout) *layout = ClusterGridLayout{augment.output_height, gap, margin};
  if (margin == 0) return grid;

  Canvas canvas(grid.width + margin, grid.height, channels, 128);
  data::Image picture = canvas.take();
  for (int y = 0; y < grid.height; ++y) {
    std::memcpy(&picture.at(y, margin, 0), &grid.at(y, 0, 0),
                static_cast<std::size_t>(grid.width) * static_cast<std::size_t>(channels));
  }
  Canvas labelled(std::move(picture));
  const std::uint8_t white[3] = {255, 255, 255};
  for (std::size_t r = 0; r < rows.size(); ++r) {
    int top = gap + static_cast<int>(r) * (augment.output_height + gap);
    labelled.draw_text(gap, top + (augment.output_height - 7) / 2, row_caption(rows[r]), white);
  }
  return labelled.take();
}

// --- rasteriser ---------------------------------------------------------------------------------

namespace {

// 5x7 glyphs: 7 rows, the 5 low bits of each row, most significant bit leftmost.
struct Glyph {
  char c;
  std::uint8_t rows[7];
};

const Glyph kFont[] = {
    {'0', {0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110}},
    {'1', {0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110}},
    {'2', {0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111}},
    {'3', {0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110}},
    {'4', {0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010}},
    {'5', {0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110}},
    {'6', {0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110}},
    {'7', {0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000}},
    {'8', {0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110}},
    {'9', {0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100}},
    {'.', {0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100}},
    {',', {0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000}},
    {'-', {0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000}},
    {'+', {0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000}},
    {'%', {0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011}},
    {'(', {0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010}},
    {')', {0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000}},
    {'/', {0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000}},
    {':', {0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000}},
    {'=', {0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000}},
    {'A', {0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001}},
    {'B', {0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110}},
    {'C', {0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110}},
    {'D', {0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100}},
    {'E', {0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111}},
    {'F', {0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000}},
    {'G', {0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111}},
    {'H', {0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001}},
    {'I', {0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110}},
    {'J', {0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100}},
    {'K', {0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001}},
    {'L', {0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111}},
    {'M', {0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001}},
    {'N', {0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001}},
    {'O', {0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110}},
    {'P', {0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000}},
    {'Q', {0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101}},
    {'R', {0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001}},
    {'S', {0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110}},
    {'T', {0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100}},
    {'U', {0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110}},
    {'V', {0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100}},
    {'W', {0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010}},
    {'X', {0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001}},
    {'Y', {0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100}},
    {'Z', {0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111}},
};

const Glyph* find_glyph(char c) {
  if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  for (const Glyph& g : kFont) {
    if (g.c == c) return &g;
  }
  return nullptr;  // blank (space and anything unknown)
}

}  // namespace

Canvas::Canvas(int width, int height, int channels, std::uint8_t background)
    : image_(height, width, channels) {
  SELA_CHECK(width > 0 && height > 0 && (channels == 1 || channels == 3), "viz",
             "bad canvas " << width << "x" << height << "x" << channels);
  std::fill(image_.pixels.begin(), image_.pixels.end(), background);
}

void Canvas::set_pixel(int x, int y, const std::uint8_t rgb[3]) {
  if (x < 0 || y < 0 || x >= image_.width || y >= image_.height) return;
  if (image_.channels == 3) {
    for (int c = 0; c < 3; ++c) image_.at(y, x, c) = rgb[c];
  } else {
    double luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
    image_.at(y, x, 0) = static_cast<std::uint8_t>(std::lround(luminance));
  }
}

void Canvas::fill_rect(int x, int y, int width, int height, const std::uint8_t rgb[3]) {
  for (int yy = y; yy < y + height; ++yy) {
    for (int xx = x; xx < x + width; ++xx) set_pixel(xx, yy, rgb);
  }
}

void Canvas::draw_line(double x0, double y0, double x1, double y1, const std::uint8_t rgb[3],
                       int thickness) {
  SELA_CHECK(std::isfinite(x0) && std::isfinite(y0) && std::isfinite(x1) && std::isfinite(y1),
             "viz", "line end points must be finite");
  int ax = static_cast<int>(std::lround(x0)), ay = static_cast<int>(std::lround(y0));
  int bx = static_cast<int>(std::lround(x1)), by = static_cast<int>(std::lround(y1));
  int dx = std::abs(bx - ax), dy = -std::abs(by - ay);
  int sx = ax < bx ? 1 : -1, sy = ay < by ? 1 : -1;
  int error = dx + dy;
  int low = -(thickness - 1) / 2, high = thickness / 2;
  while (true) {
    for (int oy = low; oy <= high; ++oy) {
      for (int ox = low; ox <= high; ++ox) set_pixel(ax + ox, ay + oy, rgb);
    }
    if (ax == bx && ay == by) break;
    int twice = 2 * error;
    if (twice >= dy) {
      error += dy;
      ax += sx;
    }
    if (twice <= dx) {
      error += dx;
      ay += sy;
    }
  }
}

int Canvas::text_width(const std::string& text, int scale) {
  return text.empty() ? 0 : static_cast<int>(text.size()) * 6 * scale - scale;
}

void Canvas::draw_text(int x, int y, const std::string& text, const std::uint8_t rgb[3],
                       int scale) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const Glyph* glyph = find_glyph(text[i]);
    if (!glyph) continue;
    int left = x + static_cast<int>(i) * 6 * scale;
    for (int row = 0; row < 7; ++row) {
      for (int col = 0; col < 5; ++col) {
        if (glyph->rows[row] & (1u << (4 - col)))
          fill_rect(left + col * scale, y + row * scale, scale, scale, rgb);
      }
    }
  }
}

// --- training curves ---------------------------------------------------------------------------

TrainingCurves read_training_curves(const std::string& metrics_path) {
  std::ifstream in(metrics_path);
  SELA_CHECK(in.good(), "viz",
             "cannot open " << metrics_path << " (the metrics.jsonl of a sela train run folder)");
  std::map<std::int64_t, std::pair<double, double>> epochs;         // epoch -> (samples_seen, loss)
  std::map<std::int64_t, std::pair<double, nlohmann::json>> steps;  // step -> (samples, head 0)
  double images_per_epoch = 0;
  std::string line;
  std::int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      SELA_FAIL("viz", metrics_path << " line " << number << " is not JSON: " << e.what());
    }
    std::string event = j.value("event", "");
    try {
      if (event == "epoch") {
        std::int64_t e = j.at("epoch").get<std::int64_t>();
        epochs[e] = {j.value("samples_seen", 0.0), j.at("loss").get<double>()};
        if (images_per_epoch <= 0) images_per_epoch = j.value("images", 0.0);
      } else if (event == "label_step" && j.contains("heads") && !j["heads"].empty()) {
        steps[j.at("step").get<std::int64_t>()] = {j.value("samples_seen", 0.0), j["heads"][0]};
      }
    } catch (const nlohmann::json::exception& e) {
      SELA_FAIL("viz", metrics_path << " line " << number << ": " << e.what());
    }
  }
  TrainingCurves curves;
  for (const auto& entry : epochs) {
    curves.epoch_x.push_back(static_cast<double>(entry.first));
    curves.loss.push_back(entry.second.second);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto& entry : steps) {
    double x = images_per_epoch > 0 ? entry.second.first / images_per_epoch
                                    : static_cast<double>(entry.first);
    const nlohmann::json& head = entry.second.second;
    curves.step_x.push_back(x);
    curves.nmi_true.push_back(head.contains("nmi_true") ? head["nmi_true"].get<double>() : nan);
    curves.nmi_previous.push_back(head.contains("nmi_previous") ? head["nmi_previous"].get<double>()
                                                                : nan);
  }
  return curves;
}

double PlotPanel::x_pixel(double x) const {
  return left + (x - x_min) / (x_max - x_min) * (width - 1);
}

double PlotPanel::y_pixel(double y) const {
  return top + (y_max - y) / (y_max - y_min) * (height - 1);
}

namespace {

const std::uint8_t kBlack[3] = {0, 0, 0};
const std::uint8_t kGrid[3] = {225, 225, 225};

// A step of 1, 2 or 5 times a power of ten giving about `ticks` intervals over `range`.
double nice_step(double range, int ticks) {
  double raw = range / ticks;
  double power = std::pow(10.0, std::floor(std::log10(raw)));
  double fraction = raw / power;
  double nice = fraction < 1.5 ? 1 : fraction < 3.5 ? 2 : fraction < 7.5 ? 5 : 10;
  return nice * power;
}

std::string tick_text(double value, double step) {
  char text[32];
  int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  std::snprintf(text, sizeof text, "%.*f", decimals, std::abs(value) < step * 1e-6 ? 0.0 : value);
  return text;
}

// Axes, grid lines, ticks and numbers around a panel; the title above it.
void draw_axes(Canvas& canvas, const PlotPanel& panel, double x_step, double y_step,
               const std::string& title) {
  for (double y = std::ceil(panel.y_min / y_step - 1e-9) * y_step; y <= panel.y_max + 1e-9 * y_step;
       y += y_step) {
    double row = panel.y_pixel(y);
    canvas.draw_line(panel.left, row, panel.left + panel.width - 1, row, kGrid);
    canvas.draw_line(panel.left - 5, row, panel.left - 1, row, kBlack);
    std::string text = tick_text(y, y_step);
    canvas.draw_text(panel.left - 8 - Canvas::text_width(text),
                     static_cast<int>(std::lround(row)) - 3, text, kBlack);
  }
  for (double x = std::ceil(panel.x_min / x_step - 1e-9) * x_step; x <= panel.x_max + 1e-9 * x_step;
       x += x_step) {
    double column = panel.x_pixel(x);
    int bottom = panel.top + panel.height;
    canvas.draw_line(column, bottom, column, bottom + 4, kBlack);
    std::string text = tick_text(x, x_step);
    canvas.draw_text(static_cast<int>(std::lround(column)) - Canvas::text_width(text) / 2,
                     bottom + 8, text, kBlack);
  }
  // The axes themselves: left and bottom edges, outside the plot area.
  canvas.draw_line(panel.left - 1, panel.top, panel.left - 1, panel.top + panel.height, kBlack);
  canvas.draw_line(panel.left - 1, panel.top + panel.height, panel.left + panel.width - 1,
                   panel.top + panel.height, kBlack);
  canvas.draw_text(panel.left, panel.top - 14, title, kBlack);
}

// A polyline through the finite points, with a small square marker at each point.
void draw_series(Canvas& canvas, const PlotPanel& panel, const std::vector<double>& xs,
                 const std::vector<double>& ys, const std::uint8_t rgb[3]) {
  bool have_previous = false;
  double px = 0, py = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    if (!std::isfinite(xs[i]) || !std::isfinite(ys[i])) {
      have_previous = false;
      continue;
    }
    double x = panel.x_pixel(xs[i]), y = panel.y_pixel(ys[i]);
    if (have_previous) canvas.draw_line(px, py, x, y, rgb, 2);
    canvas.fill_rect(static_cast<int>(std::lround(x)) - 2, static_cast<int>(std::lround(y)) - 2, 5,
                     5, rgb);
    px = x;
    py = y;
    have_previous = true;
  }
}

void legend_entry(Canvas& canvas, int x, int y, const std::string& text,
                  const std::uint8_t rgb[3]) {
  canvas.fill_rect(x, y, 14, 7, rgb);
  canvas.draw_text(x + 18, y, text, kBlack);
}

}  // namespace

CurvesPicture render_training_curves(const TrainingCurves& curves, int width, int height) {
  SELA_CHECK(width >= 200 && height >= 200, "viz",
             "curves picture of " << width << "x" << height << " is too small (at least 200x200)");
  SELA_CHECK(curves.epoch_x.size() == curves.loss.size() &&
                 curves.step_x.size() == curves.nmi_true.size() &&
                 curves.step_x.size() == curves.nmi_previous.size(),
             "viz", "curve arrays of different lengths");
  SELA_CHECK(!curves.epoch_x.empty() || !curves.step_x.empty(), "viz",
             "metrics.jsonl holds no epoch and no label step yet: nothing to plot");
  CurvesPicture picture;
  Canvas canvas(width, height, 3, 255);

  double x_max = 1;
  for (double x : curves.epoch_x) x_max = std::max(x_max, x);
  for (double x : curves.step_x) x_max = std::max(x_max, x);
  double x_step = nice_step(x_max, 8);
  x_max = std::ceil(x_max / x_step - 1e-9) * x_step;

  const int left = 60, right = 20, top = 30, middle_gap = 60, bottom = 40;
  const int panel_height = (height - top - middle_gap - bottom) / 2;
  PlotPanel loss;
  loss.left = left;
  loss.top = top;
  loss.width = width - left - right;
  loss.height = panel_height;
  loss.x_min = 0;
  loss.x_max = x_max;
  double low = std::numeric_limits<double>::infinity(), high = -low;
  for (double v : curves.loss) {
    if (!std::isfinite(v)) continue;
    low = std::min(low, v);
    high = std::max(high, v);
  }
  if (!std::isfinite(low)) {
    low = 0;
    high = 1;
  }
  if (high - low < 1e-6) {
    low -= 0.5;
    high += 0.5;
  }
  double y_step = nice_step(high - low, 5);
  loss.y_min = std::floor(low / y_step) * y_step;
  loss.y_max = std::ceil(high / y_step) * y_step;

  PlotPanel nmi = loss;
  nmi.top = top + panel_height + middle_gap;
  nmi.y_min = 0;
  nmi.y_max = 1;

  draw_axes(canvas, loss, x_step, y_step, "LOSS PER EPOCH");
  draw_axes(canvas, nmi, x_step, 0.2, "NMI OF HEAD 0 AT EACH LABEL STEP");
  canvas.draw_text(width / 2 - Canvas::text_width("EPOCH") / 2, height - 14, "EPOCH", kBlack);
  draw_series(canvas, loss, curves.epoch_x, curves.loss, CurveColours::loss);
  draw_series(canvas, nmi, curves.step_x, curves.nmi_true, CurveColours::nmi_true);
  draw_series(canvas, nmi, curves.step_x, curves.nmi_previous, CurveColours::nmi_previous);
  int legend_x = left + loss.width - 150;
  legend_entry(canvas, legend_x, nmi.top - 24, "VS TRUE CLASSES", CurveColours::nmi_true);
  legend_entry(canvas, legend_x, nmi.top - 13, "VS PREVIOUS LABELS", CurveColours::nmi_previous);

  picture.image = canvas.take();
  picture.loss_panel = loss;
  picture.nmi_panel = nmi;
  return picture;
}

}  // namespace sela
