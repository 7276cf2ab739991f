// Augmentation: the resampler against a naive double-precision reference, crop-box
// properties (in bounds, aspect and area in range), exact mirror flips, grayscale making
// equal channels, colour operations against double references, normalisation and padding,
// and determinism of (seed, epoch, index).
#include <doctest/doctest.h>

#include <random>

#include "engine/data/augment.h"
#include "tests/data/data_fixtures.h"

using namespace sela::data;
using namespace sela::data::testing;

namespace {

// Triangle weights of one axis over every source pixel in [lo, hi), straight from the
// definition (no tap ranges): weight_i = max(0, 1 - |i + 0.5 - centre| / max(1, scale)).
std::vector<double> reference_weights(double start, double extent, int out, int o, int lo, int hi,
                                      int size) {
  std::vector<double> w(static_cast<std::size_t>(size), 0.0);
  double scale = extent / out;
  double support = std::max(1.0, scale);
  double centre = start + (o + 0.5) * scale;
  double total = 0;
  for (int i = lo; i < hi; ++i) {
    w[static_cast<std::size_t>(i)] = std::max(0.0, 1.0 - std::fabs(i + 0.5 - centre) / support);
    total += w[static_cast<std::size_t>(i)];
  }
  if (total == 0) {  // centre beyond the readable pixels: the edge pixel is replicated
    int nearest = std::min(std::max(static_cast<int>(std::floor(centre)), lo), hi - 1);
    w[static_cast<std::size_t>(nearest)] = 1.0;
    total = 1.0;
  }
  for (double& v : w) v /= total;
  return w;
}

std::vector<double> reference_resample(const Image& src, const CropBox& box, bool clamp_to_box,
                                       int out_h, int out_w) {
  int row_lo = 0, row_hi = src.height, col_lo = 0, col_hi = src.width;
  if (clamp_to_box) {
    row_lo = static_cast<int>(std::floor(box.top));
    row_hi = static_cast<int>(std::ceil(box.top + box.height));
    col_lo = static_cast<int>(std::floor(box.left));
    col_hi = static_cast<int>(std::ceil(box.left + box.width));
  }
  std::vector<double> out(static_cast<std::size_t>(src.channels * out_h * out_w));
  for (int y = 0; y < out_h; ++y) {
    std::vector<double> wy =
        reference_weights(box.top, box.height, out_h, y, row_lo, row_hi, src.height);
    for (int x = 0; x < out_w; ++x) {
      std::vector<double> wx =
          reference_weights(box.left, box.width, out_w, x, col_lo, col_hi, src.width);
      for (int c = 0; c < src.channels; ++c) {
        double acc = 0;
        for (int i = 0; i < src.height; ++i) {
          for (int j = 0; j < src.width; ++j) {
            acc += wy[static_cast<std::size_t>(i)] * wx[static_cast<std::size_t>(j)] *
                   src.pixels[(static_cast<std::size_t>(i) * static_cast<std::size_t>(src.width) +
                               static_cast<std::size_t>(j)) *
                                  static_cast<std::size_t>(src.channels) +
                              static_cast<std::size_t>(c)];
          }
        }
        out[(static_cast<std::size_t>(c) * static_cast<std::size_t>(out_h) +
             static_cast<std::size_t>(y)) *
                static_cast<std::size_t>(out_w) +
            static_cast<std::size_t>(x)] = acc / 255.0;
      }
    }
  }
  return out;
}

// |got - ref| <= atol + rtol * |ref| for every element, all finite.
void check_close(const float* got, const std::vector<double>& ref, double atol, double rtol) {
  std::size_t bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    REQUIRE(std::isfinite(got[i]));
    double err = std::fabs(got[i] - ref[i]);
    if (err > atol + rtol * std::fabs(ref[i])) ++bad;
    worst = std::max(worst, err);
  }
  CAPTURE(worst);
  CHECK(bad == 0);
}

std::vector<float> poisoned(std::size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

Normalisation identity_normalisation() {
  return Normalisation{{0.f, 0.f, 0.f}, {1.f, 1.f, 1.f}, "identity"};
}

DatasetInfo info_of(const char* kind, int channels, int h, int w) {
  DatasetInfo info;
  info.kind = kind;
  info.channels = channels;
  info.height = h;
  info.width = w;
  info.normalisation = channels == 1 ? Normalisation::fashion_mnist() : Normalisation::cifar();
  return info;
}

}  // namespace

TEST_CASE("resample matches the naive double reference: crops, eval boxes, up and down") {
  std::mt19937_64 rng(31);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int cases = 0;
  for (int channels : {1, 3}) {
    for (int trial = 0; trial < 12; ++trial) {
      int h = 8 + static_cast<int>(rng() % 40), w = 8 + static_cast<int>(rng() % 40);
      Image src = random_image(h, w, channels, rng);
      int out_h = 4 + static_cast<int>(rng() % 28), out_w = 4 + static_cast<int>(rng() % 28);
      bool clamp = trial % 2 == 0;
      CropBox box;
      if (clamp) {  // integral crop inside the image (random resized crop style)
        int bh = 1 + static_cast<int>(rng() % static_cast<unsigned>(h));
        int bw = 1 + static_cast<int>(rng() % static_cast<unsigned>(w));
        box = CropBox{static_cast<double>(rng() % static_cast<unsigned>(h - bh + 1)),
                      static_cast<double>(rng() % static_cast<unsigned>(w - bw + 1)),
                      static_cast<double>(bh), static_cast<double>(bw)};
      } else {  // fractional box, possibly reaching past the edges (eval centre crop style)
        box = CropBox{-2.0 + u(rng) * h * 0.5, -2.0 + u(rng) * w * 0.5, 1.0 + u(rng) * h,
                      1.0 + u(rng) * w};
      }
      CAPTURE(channels);
      CAPTURE(trial);
      std::vector<float> out = poisoned(static_cast<std::size_t>(channels * out_h * out_w));
      resample(src.view(), box, clamp, out_h, out_w, out.data());
      check_close(out.data(), reference_resample(src, box, clamp, out_h, out_w), 2e-6, 1e-5);
      ++cases;
    }
  }
  CHECK(cases == 24);
}

TEST_CASE("resample: a same-size box is the identity; a constant image stays constant") {
  std::mt19937_64 rng(32);
  Image src = random_image(32, 32, 3, rng);
  std::vector<float> out = poisoned(3 * 32 * 32);
  resample(src.view(), CropBox{0, 0, 32, 32}, true, 32, 32, out.data());
  for (int c = 0; c < 3; ++c) {
    for (int p = 0; p < 32 * 32; ++p) {
      CHECK(out[static_cast<std::size_t>(c * 1024 + p)] ==
            doctest::Approx(src.pixels[static_cast<std::size_t>(p * 3 + c)] / 255.0).epsilon(1e-6));
    }
  }
  Image flat(50, 70, 1);
  std::fill(flat.pixels.begin(), flat.pixels.end(), std::uint8_t{173});
  std::vector<float> small = poisoned(9 * 13);
  resample(flat.view(), CropBox{3, 5, 41, 60}, true, 9, 13, small.data());  // shrink ~4.6x
  for (float v : small) CHECK(std::fabs(v - 173.0 / 255.0) <= 1e-6);
}

TEST_CASE("resample is mirror-symmetric: mirrored source and box give the mirrored output") {
  std::mt19937_64 rng(33);
  for (int trial = 0; trial < 6; ++trial) {
    int h = 20 + trial * 7, w = 25 + trial * 5;
    Image src = random_image(h, w, 3, rng);
    Image mirrored(h, w, 3);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c) mirrored.at(y, w - 1 - x, c) = src.at(y, x, c);
    CropBox box{2, 3, static_cast<double>(h - 5), static_cast<double>(w - 9)};
    CropBox mirrored_box{box.top, w - box.left - box.width, box.height, box.width};
    int out = 8 + trial * 6;
    std::vector<float> a = poisoned(static_cast<std::size_t>(3 * out * out));
    std::vector<float> b = poisoned(static_cast<std::size_t>(3 * out * out));
    resample(src.view(), box, true, out, out, a.data());
    resample(mirrored.view(), mirrored_box, true, out, out, b.data());
    mirror_rows(a.data(), 3, out, out);
    std::vector<double> ref(a.begin(), a.end());
    check_close(b.data(), ref, 1e-5, 1e-5);
  }
}

TEST_CASE("random resized crop boxes stay in bounds and keep the aspect and area ranges") {
  struct Size {
    int h, w;
  };
  const double scale_min = 0.08, scale_max = 1.0, ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  for (Size size : {Size{32, 32}, Size{375, 500}, Size{500, 375}, Size{224, 224}, Size{40, 160}}) {
    CAPTURE(size.h);
    CAPTURE(size.w);
    double min_area = 1, max_area = 0;
    bool aspect_in_range =
        double(size.w) / size.h >= ratio_min && double(size.w) / size.h <= ratio_max;
    for (std::int64_t index = 0; index < 3000; ++index) {
      SampleRng rng(5, 1, static_cast<std::uint64_t>(index));
      CropBox box =
          random_resized_crop_box(size.h, size.w, scale_min, scale_max, ratio_min, ratio_max, rng);
      REQUIRE(box.top == std::floor(box.top));
      REQUIRE(box.left == std::floor(box.left));
      REQUIRE(box.height >= 1);
      REQUIRE(box.width >= 1);
      REQUIRE(box.top >= 0);
      REQUIRE(box.left >= 0);
      REQUIRE(box.top + box.height <= size.h);
      REQUIRE(box.left + box.width <= size.w);
      // Aspect within range up to rounding each side to whole pixels.
      CHECK((box.width + 0.5) / (box.height - 0.5) >= ratio_min);
      CHECK((box.width - 0.5) / (box.height + 0.5) <= ratio_max);
      double area = box.height * box.width / (double(size.h) * size.w);
      min_area = std::min(min_area, area);
      max_area = std::max(max_area, area);
      if (aspect_in_range) {
        double slack = (box.height + box.width + 1) * 0.5 / (double(size.h) * size.w);
        CHECK(area >= scale_min - slack);
        CHECK(area <= scale_max + slack);
      }
    }
    if (aspect_in_range) {  // the draws cover the range
      CHECK(min_area < 0.15);
      CHECK(max_area > 0.85);
    }
  }
  // An image far outside the aspect range falls back to the widest centred crop in range.
  SampleRng rng(1, 2, 3);
  CropBox box = random_resized_crop_box(10, 300, scale_min, scale_max, ratio_min, ratio_max, rng);
  CHECK(box.height == 10);
  CHECK(box.width == 13);
  CHECK(box.top == 0);
  CHECK(box.left == (300 - 13) / 2);
}

TEST_CASE("centre crop box: resize shorter side then centre crop, as a source box") {
  CropBox box = centre_crop_box(375, 500, 256, 224, 224);
  double scale = 256.0 / 375.0;
  CHECK(box.height == doctest::Approx(224 / scale));
  CHECK(box.width == doctest::Approx(224 / scale));
  CHECK(box.top == doctest::Approx((375 - 224 / scale) / 2));
  CHECK(box.left == doctest::Approx((500 - 224 / scale) / 2));
  CropBox same = centre_crop_box(32, 32, 32, 32, 32);
  CHECK(same.top == 0);
  CHECK(same.left == 0);
  CHECK(same.height == 32);
  CHECK(same.width == 32);
}

TEST_CASE("flip is an exact mirror of the unflipped output, everything else equal") {
  std::mt19937_64 rng(34);
  for (int channels : {1, 3}) {
    Image src = random_image(40, 36, channels, rng);
    AugmentConfig config = default_augment(info_of("test", channels, 40, 36), true, 24);
    for (std::int64_t index = 0; index < 20; ++index) {
      SampleRng draw(9, 0, static_cast<std::uint64_t>(index));
      AugmentParams params = draw_augment_params(config, 40, 36, channels, draw);
      params.flip = false;
      std::vector<float> plain = poisoned(static_cast<std::size_t>(channels * 24 * 24));
      apply_augment(config, params, src.view(), plain.data());
      params.flip = true;
      std::vector<float> flipped = poisoned(plain.size());
      apply_augment(config, params, src.view(), flipped.data());
      std::size_t mismatches = 0;
      for (int c = 0; c < channels; ++c)
        for (int y = 0; y < 24; ++y)
          for (int x = 0; x < 24; ++x) {
            float a = plain[static_cast<std::size_t>((c * 24 + y) * 24 + x)];
            float b = flipped[static_cast<std::size_t>((c * 24 + y) * 24 + (23 - x))];
            REQUIRE(std::isfinite(a));
            if (a != b) ++mismatches;
          }
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("random grayscale makes three equal channels, and is drawn about 20% of the time") {
  std::mt19937_64 rng(35);
  Image src = random_image(32, 32, 3, rng);
  AugmentConfig config = default_augment(info_of("cifar10", 3, 32, 32), true);
  config.normalisation = identity_normalisation();  // so channels compare directly
  int drawn_grey = 0;
  for (std::int64_t index = 0; index < 1000; ++index) {
    SampleRng draw(3, 0, static_cast<std::uint64_t>(index));
    AugmentParams params = draw_augment_params(config, 32, 32, 3, draw);
    drawn_grey += params.grayscale ? 1 : 0;
    if (index < 10) {
      params.grayscale = true;
      std::vector<float> out = poisoned(3 * 1024);
      apply_augment(config, params, src.view(), out.data());
      for (int p = 0; p < 1024; ++p) {
        REQUIRE(std::isfinite(out[static_cast<std::size_t>(p)]));
        CHECK(out[static_cast<std::size_t>(p)] == out[static_cast<std::size_t>(1024 + p)]);
        CHECK(out[static_cast<std::size_t>(p)] == out[static_cast<std::size_t>(2048 + p)]);
      }
    }
  }
  CHECK(drawn_grey > 160);  // p = 0.2 of 1000: mean 200, sd 12.6
  CHECK(drawn_grey < 240);
}

TEST_CASE("colour operations match double references") {
  std::mt19937_64 rng(36);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const std::int64_t pixels = 777;
  std::vector<float> rgb(3 * pixels);
  for (float& v : rgb) v = u(rng);
  auto luma = [&](const std::vector<float>& x, std::int64_t i) {
    return 0.299 * x[static_cast<std::size_t>(i)] +
           0.587 * x[static_cast<std::size_t>(pixels + i)] +
           0.114 * x[static_cast<std::size_t>(2 * pixels + i)];
  };
  auto clamp = [](double v) { return std::min(1.0, std::max(0.0, v)); };

  for (float factor : {0.6f, 1.37f}) {
    CAPTURE(factor);
    std::vector<float> got = rgb;
    adjust_brightness(got.data(), 3, pixels, factor);
    std::vector<double> ref(rgb.size());
    for (std::size_t i = 0; i < rgb.size(); ++i) ref[i] = clamp(rgb[i] * double(factor));
    check_close(got.data(), ref, 1e-6, 1e-6);

    got = rgb;
    adjust_contrast(got.data(), 3, pixels, factor);
    double mean = 0;
    for (std::int64_t i = 0; i < pixels; ++i) mean += luma(rgb, i);
    mean /= pixels;
    for (std::size_t i = 0; i < rgb.size(); ++i)
      ref[i] = clamp(factor * double(rgb[i]) + (1 - factor) * mean);
    check_close(got.data(), ref, 1e-6, 1e-6);

    got = rgb;
    adjust_saturation(got.data(), pixels, factor);
    for (std::int64_t i = 0; i < pixels; ++i) {
      double grey = luma(rgb, i);
      for (int c = 0; c < 3; ++c) {
        std::size_t k = static_cast<std::size_t>(c * pixels + i);
        ref[k] = clamp(factor * double(rgb[k]) + (1 - factor) * grey);
      }
    }
    check_close(got.data(), ref, 1e-6, 1e-6);
  }

  // Hue against the chroma form of HSV (a different formulation from the code's).
  for (float shift : {-0.37f, 0.0f, 0.12f, 0.5f}) {
    CAPTURE(shift);
    std::vector<float> got = rgb;
    adjust_hue(got.data(), pixels, shift);
    std::vector<double> ref(rgb.size());
    for (std::int64_t i = 0; i < pixels; ++i) {
      double r = rgb[static_cast<std::size_t>(i)], g = rgb[static_cast<std::size_t>(pixels + i)],
             b = rgb[static_cast<std::size_t>(2 * pixels + i)];
      double v = std::max({r, g, b}), chroma = v - std::min({r, g, b});
      double hue_deg = 0;  // hue angle in degrees
      if (chroma > 0) {
        if (v == r)
          hue_deg = 60 * std::fmod((g - b) / chroma + 6, 6.0);
        else if (v == g)
          hue_deg = 60 * ((b - r) / chroma + 2);
        else
          hue_deg = 60 * ((r - g) / chroma + 4);
      }
      hue_deg = std::fmod(hue_deg + 360.0 * shift + 720.0, 360.0);
      double hp = hue_deg / 60.0;
      double x = chroma * (1 - std::fabs(std::fmod(hp, 2.0) - 1));
      double r1 = 0, g1 = 0, b1 = 0;
      if (hp < 1) {
        r1 = chroma;
        g1 = x;
      } else if (hp < 2) {
        r1 = x;
        g1 = chroma;
      } else if (hp < 3) {
        g1 = chroma;
        b1 = x;
      } else if (hp < 4) {
        g1 = x;
        b1 = chroma;
      } else if (hp < 5) {
        r1 = x;
        b1 = chroma;
      } else {
        r1 = chroma;
        b1 = x;
      }
      double m = v - chroma;
      ref[static_cast<std::size_t>(i)] = r1 + m;
      ref[static_cast<std::size_t>(pixels + i)] = g1 + m;
      ref[static_cast<std::size_t>(2 * pixels + i)] = b1 + m;
    }
    check_close(got.data(), ref, 2e-5, 1e-5);
  }

  std::vector<float> grey = rgb;
  to_grayscale(grey.data(), pixels);
  std::vector<double> ref(rgb.size());
  for (std::int64_t i = 0; i < pixels; ++i)
    for (int c = 0; c < 3; ++c) ref[static_cast<std::size_t>(c * pixels + i)] = luma(rgb, i);
  check_close(grey.data(), ref, 1e-6, 1e-6);
}

TEST_CASE("evaluation: padding and normalisation are exact on Fashion-MNIST-sized images") {
  std::mt19937_64 rng(37);
  Image src = random_image(28, 28, 1, rng);
  DatasetInfo info = info_of("fashion-mnist", 1, 28, 28);
  AugmentConfig config = default_augment(info, false);
  REQUIRE(config.output_height == 32);
  REQUIRE(config.pad_to == 32);
  std::vector<float> out = poisoned(32 * 32);
  augment_sample(config, src.view(), 0, 0, 0, out.data());
  const float mean = info.normalisation.mean[0], sd = info.normalisation.std[0];
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 32; ++x) {
      bool inside = y >= 2 && y < 30 && x >= 2 && x < 30;
      double pixel = inside ? src.at(y - 2, x - 2, 0) / 255.0 : 0.0;
      double expected = (pixel - mean) / sd;
      CHECK(std::fabs(out[static_cast<std::size_t>(y * 32 + x)] - expected) <=
            1e-5 + 1e-6 * std::fabs(expected));
    }
  }
}

TEST_CASE("default recipes per source") {
  AugmentConfig grey = default_augment(info_of("fashion-mnist", 1, 28, 28), true);
  CHECK(grey.output_height == 32);
  CHECK(grey.pad_to == 32);
  CHECK(grey.saturation == 0);
  CHECK(grey.hue == 0);
  CHECK(grey.grayscale_p == 0);
  CHECK(grey.brightness > 0);
  CHECK(grey.flip_p == 0.5);
  DatasetInfo folder = info_of("folder", 3, 0, 0);
  folder.normalisation = Normalisation::imagenet();
  AugmentConfig big = default_augment(folder, true);
  CHECK(big.output_height == 224);
  CHECK(big.scale_min == doctest::Approx(0.08));
  CHECK(big.grayscale_p == doctest::Approx(0.2));
  CHECK(big.hue == doctest::Approx(0.4f));
  AugmentConfig eval = default_augment(folder, false);
  CHECK(eval.eval_resize == 256);
  CHECK(eval.normalisation.mean[0] == doctest::Approx(0.485));
  AugmentConfig bad = big;
  bad.hue = 0.7f;
  CHECK(error_of([&] { bad.validate(3); }).find("hue") != std::string::npos);
}

TEST_CASE("augment_sample is a function of (seed, epoch, index) only") {
  std::mt19937_64 rng(38);
  Image src = random_image(64, 48, 3, rng);
  AugmentConfig config = default_augment(info_of("cifar10", 3, 64, 48), true, 32);
  auto run = [&](std::uint64_t seed, std::int64_t epoch, std::int64_t index) {
    std::vector<float> out = poisoned(3 * 32 * 32);
    augment_sample(config, src.view(), seed, epoch, index, out.data());
    for (float v : out) REQUIRE(std::isfinite(v));
    return out;
  };
  std::vector<float> a = run(1, 2, 3);
  CHECK(a == run(1, 2, 3));
  CHECK(a != run(1, 3, 3));
  CHECK(a != run(2, 2, 3));
  CHECK(a != run(1, 2, 4));
}

TEST_CASE("quarter turns: a hand-checked 3x3, transpose-then-reverse for one turn, and cycles") {
  // numpy.rot90([[1,2,3],[4,5,6],[7,8,9]]) == [[3,6,9],[2,5,8],[1,4,7]]
  const std::vector<float> grid{1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<float> turned = poisoned(9);
  rotate_quarter_turns(grid.data(), 1, 3, 1, turned.data());
  CHECK(turned == std::vector<float>{3, 6, 9, 2, 5, 8, 1, 4, 7});
  rotate_quarter_turns(grid.data(), 1, 3, -1, turned.data());  // == 3 turns, clockwise
  CHECK(turned == std::vector<float>{7, 4, 1, 8, 5, 2, 9, 6, 3});

  std::mt19937 gen(20261126);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (int size : {1, 2, 5, 32}) {
    for (int channels : {1, 3}) {
      CAPTURE(size);
      CAPTURE(channels);
      const std::size_t n = static_cast<std::size_t>(size), count = n * n * channels;
      std::vector<float> image(count);
      for (float& v : image) v = value(gen);
      // One turn counter-clockwise is the transpose with its rows in reverse order.
      std::vector<float> expected(count);
      for (int c = 0; c < channels; ++c)
        for (std::size_t y = 0; y < n; ++y)
          for (std::size_t x = 0; x < n; ++x)
            expected[(c * n + (n - 1 - y)) * n + x] = image[(c * n + x) * n + y];
      std::vector<float> once = poisoned(count);
      rotate_quarter_turns(image.data(), channels, size, 1, once.data());
      CHECK(once == expected);
      // Two turns are the mirror of every row with the rows in reverse order.
      std::vector<float> twice = poisoned(count), half = image;
      mirror_rows(half.data(), channels, size, size);
      for (int c = 0; c < channels; ++c)
        for (std::size_t y = 0; y < n; ++y)
          for (std::size_t x = 0; x < n; ++x)
            expected[(c * n + (n - 1 - y)) * n + x] = half[(c * n + y) * n + x];
      rotate_quarter_turns(image.data(), channels, size, 2, twice.data());
      CHECK(twice == expected);
      // Turns compose: 1 then 3 and 4 (or 0) give the image back.
      std::vector<float> back = poisoned(count);
      rotate_quarter_turns(once.data(), channels, size, 3, back.data());
      CHECK(back == image);
      rotate_quarter_turns(image.data(), channels, size, 4, back.data());
      CHECK(back == image);
    }
  }
}
