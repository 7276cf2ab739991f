// Pictures of a SeLa run: the clusters as image grids, and the training curves.
//
// Cluster grid (the paper's figures): one row per cluster, P sample images per row, rows
// sorted by purity — the share of the cluster's most frequent true class — when the data has
// true classes, else by the mean entropy of the head's softmax over the cluster's members
// (most confident first). The order is computed on plain label arrays (order_clusters), so
// it can be checked against a hand-made case; the picture is then tiles from
// data::make_grid (grey 2-pixel separators) with a narrow left margin holding each row's
// purity in percent (or its mean entropy in nats), written in a 5x7 bitmap font.
//
// Training curves: read from metrics.jsonl — the mean loss of each epoch, and for each label
// step the NMI of head 0's new labels against the true classes and against its previous
// labels — and drawn by a small rasteriser (Canvas: lines, filled rectangles, text) into two
// panels that share an x axis in epochs (a label step sits at samples_seen / images per
// epoch). Axes carry tick marks and numbers; the NMI panel spans [0, 1].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/data/image.h"

namespace sela {

// --- clusters ----------------------------------------------------------------------------------

struct ClusterRow {
  std::int64_t cluster = 0;
  std::int64_t size = 0;  // members in the data
  double purity = -1;     // majority share among labelled members; -1 without classes
  std::int64_t majority_class = -1;
  double mean_entropy = -1;         // mean softmax entropy of the members (nats); -1 if not given
  std::vector<std::int64_t> shown;  // dataset indices of the samples drawn (at most P)
};

struct ClusterOrderOptions {
  std::int64_t clusters_shown = 0;  // rows kept after sorting; 0 = every non-empty cluster
  std::int64_t per_cluster = 8;     // P: samples drawn per row (a seeded random choice)
  std::uint64_t seed = 0;
};

// labels (N) in [0, num_clusters); classes (N, -1 = none) or empty; entropies (N) or empty.
// With any true class present: purity descending; else, with entropies: mean entropy
// ascending; else size descending. Ties: larger cluster first, then lower cluster id.
// Empty clusters are left out.
std::vector<ClusterRow> order_clusters(const std::vector<std::int64_t>& labels,
                                       std::int64_t num_clusters,
                                       const std::vector<std::int64_t>& classes,
                                       const std::vector<double>& entropies,
                                       const ClusterOrderOptions& options);

// Entropy (nats) of softmax(logits_i) for each of the n rows of (n, k) logits.
std::vector<double> softmax_entropies(const float* logits, std::int64_t n, std::int64_t k);

// Row i of argmax over (n, k) logits.
std::vector<std::int64_t> argmax_rows(const float* logits, std::int64_t n, std::int64_t k);

struct ClusterGridLayout {
  int tile = 0;          // side of one image tile
  int gap = 2;           // grey separator between tiles and around them
  int label_margin = 0;  // width of the text column on the left (0 = none)
};

// The grid picture: row r shows rows[r].shown (eval transform at `image_side`, blank black
// tiles where a cluster has fewer than `per_cluster` members). Size: height = R·tile +
// (R+1)·gap, width = label_margin + P·tile + (P+1)·gap. Channels as the data (1 or 3).
data::Image render_cluster_grid(const data::Dataset& dataset, const std::vector<ClusterRow>& rows,
                                std::int64_t per_cluster, int image_side, bool label_rows,
                                ClusterGridLayout* layout = nullptr);

// --- training curves ---------------------------------------------------------------------------

struct TrainingCurves {
  std::vector<double> epoch_x, loss;  // end of epoch e at x = e; its mean training loss
  std::vector<double> step_x;         // label step position in epochs
  std::vector<double> nmi_true;       // head 0 vs true classes (NaN when the data has none)
  std::vector<double> nmi_previous;   // head 0 vs its labels before the step
};

// Parses metrics.jsonl (lines of other events are skipped; a resumed run's repeated epoch or
// label-step lines keep the last one). Error naming the path and line on bad JSON.
TrainingCurves read_training_curves(const std::string& metrics_path);

// One panel's data -> pixel mapping (plot area inside the axes).
struct PlotPanel {
  int left = 0, top = 0, width = 0, height = 0;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  double x_pixel(double x) const;  // column, fractional
  double y_pixel(double y) const;  // row, fractional (y_max at the top)
};

struct CurvesPicture {
  data::Image image;  // RGB
  PlotPanel loss_panel, nmi_panel;
};

// Colours of the curves (RGB), for the picture's legend and for tests.
struct CurveColours {
  static constexpr std::uint8_t loss[3] = {31, 119, 180};
  static constexpr std::uint8_t nmi_true[3] = {214, 39, 40};
  static constexpr std::uint8_t nmi_previous[3] = {44, 160, 44};
};

CurvesPicture render_training_curves(const TrainingCurves& curves, int width = 800,
                                     int height = 600);

// --- the rasteriser (exposed for tests) --------------------------------------------------------

class Canvas {
 public:
  Canvas(int width, int height, int channels, std::uint8_t background);
  explicit Canvas(data::Image image) : image_(std::move(image)) {}
  const data::Image& image() const { return image_; }
  data::Image take() { return std::move(image_); }

  // Colours are RGB; on a 1-channel canvas their luminance is drawn.
  void set_pixel(int x, int y, const std::uint8_t rgb[3]);
  void fill_rect(int x, int y, int width, int height, const std::uint8_t rgb[3]);
  // A line of `thickness` pixels (a square brush along Bresenham's path).
  void draw_line(double x0, double y0, double x1, double y1, const std::uint8_t rgb[3],
                 int thickness = 1);
  // Text in the built-in 5x7 font (digits, A-Z, a few signs; lower case drawn as upper
  // case), each glyph 6·scale pixels wide; (x, y) is the top-left corner.
  void draw_text(int x, int y, const std::string& text, const std::uint8_t rgb[3], int scale = 1);
  static int text_width(const std::string& text, int scale = 1);

 private:
  data::Image image_;
};

}  // namespace sela
