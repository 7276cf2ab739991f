// Pictures (sela/viz.h): the cluster order against a hand-made case (purity, entropy and
// tie rules), the grid's size and what each tile shows (samples of known brightness), the
// training curves read from a hand-written metrics.jsonl (resumed duplicates, skipped
// events) and drawn where the data says, the PNG read back, and the rasteriser's basics.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <unistd.h>

#include "engine/data/idx.h"
#include "engine/error.h"
#include "engine/data/image_io.h"
#include "sela/viz.h"
#include "tests/temp_folder.h"

using namespace sela;

namespace {

// The hand-made case: 12 samples, K = 5.
//   cluster 0: samples 0-3,  classes 1 1 1 2    purity 0.75, majority 1
//   cluster 1: samples 4-5,  classes 0 0        purity 1.0,  majority 0
//   cluster 2: empty
//   cluster 3: samples 6-10, classes 0 1 2 3 3  purity 0.4,  majority 3
//   cluster 4: sample 11,    class 2            purity 1.0 (ties with cluster 1, smaller)
const std::vector<std::int64_t> kLabels{0, 0, 0, 0, 1, 1, 3, 3, 3, 3, 3, 4};
const std::vector<std::int64_t> kClasses{1, 1, 1, 2, 0, 0, 0, 1, 2, 3, 3, 2};

int brightness(std::int64_t sample) { return 30 + 15 * static_cast<int>(sample); }

// An IDX data set whose sample i is a flat 28x28 image of brightness(i), with kClasses.
std::string write_flat_images(const std::string& folder) {
  const int n = static_cast<int>(kLabels.size());
  std::vector<std::uint8_t> images(static_cast<std::size_t>(n) * 28 * 28),
      classes(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    std::fill(images.begin() + i * 784, images.begin() + (i + 1) * 784,
              static_cast<std::uint8_t>(brightness(i)));
    classes[static_cast<std::size_t>(i)] =
        static_cast<std::uint8_t>(kClasses[static_cast<std::size_t>(i)]);
  }
  data::write_idx(folder + "/images.idx", {n, 28, 28}, images.data(), false);
  data::write_idx(folder + "/labels.idx", {n}, classes.data(), false);
  return "idx:" + folder + "/images.idx," + folder + "/labels.idx";
}

bool has_colour_near(const data::Image& image, double x, double y, const std::uint8_t rgb[3],
                     int radius) {
  int cx = static_cast<int>(std::lround(x)), cy = static_cast<int>(std::lround(y));
  for (int yy = cy - radius; yy <= cy + radius; ++yy) {
    for (int xx = cx - radius; xx <= cx + radius; ++xx) {
      if (xx < 0 || yy < 0 || xx >= image.width || yy >= image.height) continue;
      const std::uint8_t* p = &image.pixels[(static_cast<std::size_t>(yy) * image.width + xx) * 3];
      if (p[0] == rgb[0] && p[1] == rgb[1] && p[2] == rgb[2]) return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE("cluster order: purity descending, ties to the larger cluster; empty clusters left out") {
  ClusterOrderOptions options;
  options.per_cluster = 3;
  options.seed = 7;
  std::vector<ClusterRow> rows = order_clusters(kLabels, 5, kClasses, {}, options);
  REQUIRE(rows.size() == 4);
  const std::int64_t expected_order[4] = {1, 4, 0, 3};
  const double expected_purity[4] = {1.0, 1.0, 0.75, 0.4};
  const std::int64_t expected_majority[4] = {0, 2, 1, 3};
  const std::int64_t expected_size[4] = {2, 1, 4, 5};
  for (std::size_t r = 0; r < 4; ++r) {
    CHECK(rows[r].cluster == expected_order[r]);
    CHECK(rows[r].purity == doctest::Approx(expected_purity[r]).epsilon(1e-12));
    CHECK(rows[r].majority_class == expected_majority[r]);
    CHECK(rows[r].size == expected_size[r]);
    CHECK(rows[r].mean_entropy == -1);
    // The samples shown: min(P, size) distinct members of the cluster.
    CHECK(static_cast<std::int64_t>(rows[r].shown.size()) ==
          std::min<std::int64_t>(3, rows[r].size));
    std::set<std::int64_t> distinct(rows[r].shown.begin(), rows[r].shown.end());
    CHECK(distinct.size() == rows[r].shown.size());
    for (std::int64_t i : rows[r].shown)
      CHECK(kLabels[static_cast<std::size_t>(i)] == rows[r].cluster);
  }
  // Same seed, same choice; --clusters-shown keeps the best rows.
  CHECK(order_clusters(kLabels, 5, kClasses, {}, options)[3].shown == rows[3].shown);
  options.clusters_shown = 2;
  std::vector<ClusterRow> top = order_clusters(kLabels, 5, kClasses, {}, options);
  REQUIRE(top.size() == 2);
  CHECK(top[0].cluster == 1);
  CHECK(top[1].cluster == 4);
  // A tie between classes inside a cluster: the lower class is the majority.
  std::vector<ClusterRow> tie = order_clusters({0, 0, 0, 0}, 1, {2, 1, 2, 1}, {}, options);
  REQUIRE(tie.size() == 1);
  CHECK(tie[0].purity == 0.5);
  CHECK(tie[0].majority_class == 1);
}

TEST_CASE("cluster order without classes: mean prediction entropy ascending") {
  // Per-sample entropies giving cluster means 0: 0.2, 1: 0.7, 3: 0.05, 4: 0.7 (tie with 1).
  std::vector<double> entropies{0.1, 0.3, 0.2, 0.2, 0.6, 0.8, 0.05, 0.0, 0.1, 0.05, 0.05, 0.7};
  std::vector<std::int64_t> no_classes(kLabels.size(), -1);
  ClusterOrderOptions options;
  options.per_cluster = 2;
  std::vector<ClusterRow> rows = order_clusters(kLabels, 5, no_classes, entropies, options);
  REQUIRE(rows.size() == 4);
  const std::int64_t expected_order[4] = {3, 0, 1, 4};
  const double expected_entropy[4] = {0.05, 0.2, 0.7, 0.7};
  for (std::size_t r = 0; r < 4; ++r) {
    CHECK(rows[r].cluster == expected_order[r]);
    CHECK(rows[r].mean_entropy == doctest::Approx(expected_entropy[r]).epsilon(1e-12));
    CHECK(rows[r].purity == -1);
  }
  // Empty class list behaves as "no classes"; a label outside [0, K) is an error.
  CHECK(order_clusters(kLabels, 5, {}, entropies, options)[0].cluster == 3);
  CHECK_THROWS_AS(order_clusters(kLabels, 4, {}, entropies, options), Error);
  CHECK_THROWS_AS(order_clusters(kLabels, 5, {1, 2}, {}, options), Error);
}

TEST_CASE("softmax entropies and argmax against a float64 reference") {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  const std::int64_t n = 50, k = 7;
  std::vector<float> logits(static_cast<std::size_t>(n * k));
  for (float& v : logits) v = normal(rng);
  std::fill(logits.begin(), logits.begin() + k, 1.5f);  // row 0 uniform: entropy log k
  std::vector<double> entropies = softmax_entropies(logits.data(), n, k);
  std::vector<std::int64_t> argmax = argmax_rows(logits.data(), n, k);
  CHECK(entropies[0] == doctest::Approx(std::log(7.0)).epsilon(1e-12));
  for (std::int64_t i = 0; i < n; ++i) {
    double z = 0;
    for (std::int64_t j = 0; j < k; ++j)
      z += std::exp(static_cast<double>(logits[static_cast<std::size_t>(i * k + j)]));
    double h = 0;
    std::int64_t best = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      double p = std::exp(static_cast<double>(logits[static_cast<std::size_t>(i * k + j)])) / z;
      if (p > 0) h -= p * std::log(p);
      if (logits[static_cast<std::size_t>(i * k + j)] >
          logits[static_cast<std::size_t>(i * k + best)])
        best = j;
    }
    REQUIRE(std::isfinite(entropies[static_cast<std::size_t>(i)]));
    CHECK(std::abs(entropies[static_cast<std::size_t>(i)] - h) <= 1e-12 + 1e-10 * h);
    CHECK(argmax[static_cast<std::size_t>(i)] == best);
  }
}

TEST_CASE("cluster grid: size, row order and tile contents; the text margin") {
  sela::test::TempFolder folder("sela_viz_test");
  auto dataset = data::open_dataset(write_flat_images(folder.path));
  ClusterOrderOptions options;
  options.per_cluster = 3;
  std::vector<ClusterRow> rows = order_clusters(kLabels, 5, dataset->true_classes(), {}, options);
  ClusterGridLayout layout;
  data::Image grid = render_cluster_grid(*dataset, rows, 3, 32, false, &layout);
  // 4 rows of 32-pixel tiles (28x28 padded to 32), 3 per row, 2-pixel grey separators.
  CHECK(layout.tile == 32);
  CHECK(layout.gap == 2);
  CHECK(layout.label_margin == 0);
  CHECK(grid.height == 4 * 32 + 5 * 2);
  CHECK(grid.width == 3 * 32 + 4 * 2);
  CHECK(grid.channels == 1);
  CHECK(grid.at(0, 0, 0) == 128);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    for (int j = 0; j < 3; ++j) {
      int centre_y = 2 + static_cast<int>(r) * 34 + 16, centre_x = 2 + j * 34 + 16;
      int value = grid.at(centre_y, centre_x, 0);
      if (j < static_cast<int>(rows[r].shown.size())) {
        CHECK(std::abs(value - brightness(rows[r].shown[static_cast<std::size_t>(j)])) <= 1);
      } else {
        CHECK(value == 0);  // a cluster with fewer members than P: black tile
      }
    }
  }
  data::Image labelled = render_cluster_grid(*dataset, rows, 3, 32, true, &layout);
  CHECK(layout.label_margin > 0);
  CHECK(labelled.width == grid.width + layout.label_margin);
  CHECK(labelled.height == grid.height);
  // The first row's caption "100%" is drawn in white in the margin; the tiles are shifted.
  int white = 0;
  for (int y = 2; y < 34; ++y) {
    for (int x = 0; x < layout.label_margin; ++x) white += labelled.at(y, x, 0) == 255;
  }
  CHECK(white > 10);
  CHECK(labelled.at(18, layout.label_margin + 18, 0) == grid.at(18, 18, 0));
}

TEST_CASE("training curves: read from metrics.jsonl, drawn where the data says, PNG written") {
  sela::test::TempFolder folder("sela_viz_test");
  std::string metrics = folder.path + "/metrics.jsonl";
  {
    std::ofstream out(metrics);
    out << R"({"event":"label_step","step":0,"epoch":0,"samples_seen":0,"heads":[{"head":0,"nmi_true":0.1,"nmi_previous":0.0}]})"
           "\n"
        << R"({"event":"epoch","epoch":1,"loss":3.0,"images":100,"samples_seen":100})"
           "\n"
        << R"({"event":"label_step","step":1,"epoch":1,"samples_seen":150,"heads":[{"head":0,"nmi_true":0.4,"nmi_previous":0.3}]})"
           "\n"
        << R"({"event":"epoch","epoch":2,"loss":2.0,"images":100,"samples_seen":200})"
           "\n"
        // a resumed run repeats step 1: the last line wins
        << R"({"event":"label_step","step":1,"epoch":1,"samples_seen":150,"heads":[{"head":0,"nmi_true":0.5,"nmi_previous":0.3}]})"
           "\n"
        << R"({"event":"epoch","epoch":3,"loss":1.5,"images":100,"samples_seen":300})"
           "\n"
        << R"({"event":"label_step","step":2,"epoch":3,"samples_seen":300,"heads":[{"head":0,"nmi_previous":0.9}]})"
           "\n"
        << R"({"event":"eval","heads":[]})"
           "\n";
  }
  TrainingCurves curves = read_training_curves(metrics);
  CHECK(curves.epoch_x == std::vector<double>{1, 2, 3});
  CHECK(curves.loss == std::vector<double>{3.0, 2.0, 1.5});
  CHECK(curves.step_x == std::vector<double>{0.0, 1.5, 3.0});
  REQUIRE(curves.nmi_true.size() == 3);
  CHECK(curves.nmi_true[0] == 0.1);
  CHECK(curves.nmi_true[1] == 0.5);
  CHECK(std::isnan(curves.nmi_true[2]));  // data without classes: no point
  CHECK(curves.nmi_previous == std::vector<double>{0.0, 0.3, 0.9});

  CurvesPicture picture = render_training_curves(curves, 640, 480);
  CHECK(picture.image.width == 640);
  CHECK(picture.image.height == 480);
  REQUIRE(picture.image.channels == 3);
  const PlotPanel& loss = picture.loss_panel;
  const PlotPanel& nmi = picture.nmi_panel;
  CHECK(loss.y_min <= 1.5);
  CHECK(loss.y_max >= 3.0);
  CHECK(nmi.y_min == 0.0);
  CHECK(nmi.y_max == 1.0);
  CHECK(nmi.top > loss.top + loss.height);
  // The mapping: x_min at the left edge, y_max at the top, y_min at the bottom.
  CHECK(loss.x_pixel(loss.x_min) == loss.left);
  CHECK(loss.x_pixel(loss.x_max) == loss.left + loss.width - 1);
  CHECK(loss.y_pixel(loss.y_max) == loss.top);
  CHECK(loss.y_pixel(loss.y_min) == loss.top + loss.height - 1);
  // On the segments: half-way between epochs 1 and 2 (loss 2.5), between the first two NMI
  // points of each series; at the data points themselves (the markers).
  CHECK(
      has_colour_near(picture.image, loss.x_pixel(1.5), loss.y_pixel(2.5), CurveColours::loss, 1));
  CHECK(
      has_colour_near(picture.image, loss.x_pixel(3.0), loss.y_pixel(1.5), CurveColours::loss, 0));
  CHECK(has_colour_near(picture.image, nmi.x_pixel(0.75), nmi.y_pixel(0.3), CurveColours::nmi_true,
                        1));
  CHECK(has_colour_near(picture.image, nmi.x_pixel(2.25), nmi.y_pixel(0.6),
                        CurveColours::nmi_previous, 1));
  // Far from every curve (top right of the loss panel, bottom right of the NMI panel where
  // NMI vs true has no point at step 2): no curve colour.
  for (const std::uint8_t* colour :
       {CurveColours::loss, CurveColours::nmi_true, CurveColours::nmi_previous}) {
    CHECK_FALSE(has_colour_near(picture.image, loss.x_pixel(2.8), loss.y_pixel(2.9), colour, 3));
    CHECK_FALSE(has_colour_near(picture.image, nmi.x_pixel(2.9), nmi.y_pixel(0.1), colour, 3));
  }
  // The y axis is drawn just left of the plot area.
  const std::uint8_t black[3] = {0, 0, 0};
  CHECK(has_colour_near(picture.image, loss.left - 1, loss.top + loss.height / 2.0, black, 0));

  std::string png = folder.path + "/curves.png";
  data::write_png(png, picture.image.view());
  data::Image back = data::decode_image_file(png, 3);
  CHECK(back.width == 640);
  CHECK(back.height == 480);
  CHECK(back.pixels == picture.image.pixels);

  // Errors: no file; a line that is not JSON (named by number); nothing to plot.
  CHECK_THROWS_AS(read_training_curves(folder.path + "/nothing.jsonl"), Error);
  {
    std::ofstream out(folder.path + "/bad.jsonl");
    out << R"({"event":"epoch","epoch":1,"loss":3.0})"
           "\n"
        << "{not json\n";
  }
  try {
    read_training_curves(folder.path + "/bad.jsonl");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("line 2") != std::string::npos);
  }
  CHECK_THROWS_AS(render_training_curves(TrainingCurves{}, 640, 480), Error);
}

TEST_CASE("rasteriser: lines cover their path, glyphs their bits, grey canvases take luminance") {
  Canvas canvas(20, 12, 3, 255);
  const std::uint8_t red[3] = {200, 10, 20};
  canvas.draw_line(2, 5, 9, 5, red);
  const data::Image& image = canvas.image();
  auto is_red = [&](int x, int y) {
    const std::uint8_t* p = &image.pixels[(static_cast<std::size_t>(y) * image.width + x) * 3];
    return p[0] == 200 && p[1] == 10 && p[2] == 20;
  };
  for (int x = 2; x <= 9; ++x) CHECK(is_red(x, 5));
  CHECK_FALSE(is_red(1, 5));
  CHECK_FALSE(is_red(10, 5));
  CHECK_FALSE(is_red(5, 4));
  canvas.draw_line(0, 0, 11, 11, red);  // the diagonal: every (i, i)
  for (int i = 0; i <= 11; ++i) CHECK(is_red(i, i));

  // '8' has 17 set bits in the 5x7 font; scale 2 draws each as 2x2.
  Canvas text(30, 20, 1, 0);
  const std::uint8_t white[3] = {255, 255, 255};
  text.draw_text(1, 1, "8", white);
  long lit = std::count(text.image().pixels.begin(), text.image().pixels.end(), 255);
  CHECK(lit == 17);
  Canvas big(30, 20, 1, 0);
  big.draw_text(1, 1, "8", white, 2);
  CHECK(std::count(big.image().pixels.begin(), big.image().pixels.end(), 255) == 4 * 17);
  CHECK(Canvas::text_width("100%") == 23);
  // Luminance on one channel: 0.299 R + 0.587 G + 0.114 B.
  Canvas grey(2, 2, 1, 0);
  grey.set_pixel(0, 0, red);
  CHECK(grey.image().pixels[0] ==
        static_cast<std::uint8_t>(std::lround(0.299 * 200 + 0.587 * 10 + 0.114 * 20)));
  CHECK_THROWS_AS(Canvas(0, 5, 3, 0), Error);
}
