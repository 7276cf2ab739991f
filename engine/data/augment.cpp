// Implementation of engine/data/augment.h.
//
// The resampler is separable: per output column and row a short list of source taps with
// triangle weights, then one horizontal pass over the rows the crop needs into a small
// float buffer and one vertical pass into the planar output. Tap tables and the buffer are
// thread_local, so a worker allocates nothing per sample once warm.
#include "engine/data/augment.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "engine/error.h"

namespace sela::data {
namespace {

constexpr const char* kOp = "augment";
constexpr float kLumaR = 0.299f, kLumaG = 0.587f, kLumaB = 0.114f;

inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

// Source taps of one axis: output o reads count[o] pixels from first[o] with weights
// weights[o * max_taps + k].
struct AxisTaps {
  int max_taps = 0;
  std::vector<int> first;      // (out,)
  std::vector<int> count;      // (out,)
  std::vector<float> weights;  // (out, max_taps)
};

// Taps for `out` samples over [start, start + extent) in source pixel units, reading only
// pixels lo..hi-1. Pixel i covers [i, i+1), its centre is i + 0.5.
void make_axis_taps(double start, double extent, int out, int lo, int hi, AxisTaps* taps) {
  double scale = extent / out;
  double support = std::max(1.0, scale);  // triangle radius in source pixels
  int max_taps = static_cast<int>(std::floor(2.0 * support)) + 2;
  taps->max_taps = max_taps;
  taps->first.assign(static_cast<std::size_t>(out), 0);
  taps->count.assign(static_cast<std::size_t>(out), 0);
  taps->weights.assign(static_cast<std::size_t>(out) * static_cast<std::size_t>(max_taps), 0.0f);
  for (int o = 0; o < out; ++o) {
    double centre = start + (o + 0.5) * scale;
    int first = static_cast<int>(std::ceil(centre - support - 0.5));
    int last = static_cast<int>(std::floor(centre + support - 0.5));
    first = std::max(first, lo);
    last = std::min(last, hi - 1);
    float* w = &taps->weights[static_cast<std::size_t>(o) * static_cast<std::size_t>(max_taps)];
    double total = 0;
    int kept_first = -1, kept = 0;
    for (int i = first; i <= last && kept < max_taps; ++i) {
      double weight = 1.0 - std::fabs(i + 0.5 - centre) / support;
      if (weight <= 0) {
        if (kept == 0) continue;  // leading zero weight: start later
        break;                    // trailing zeros: done
      }
      if (kept == 0) kept_first = i;
      w[kept++] = static_cast<float>(weight);
      total += weight;
    }
    if (kept == 0) {  // the sample falls outside the readable range: nearest readable pixel
      kept_first = std::min(std::max(static_cast<int>(std::floor(centre)), lo), hi - 1);
      w[0] = 1.0f;
      kept = 1;
      total = 1.0;
    }
    taps->first[static_cast<std::size_t>(o)] = kept_first;
    taps->count[static_cast<std::size_t>(o)] = kept;
    float inv_total = static_cast<float>(1.0 / total);
    for (int k = 0; k < kept; ++k) w[k] *= inv_total;
  }
}

struct ResampleScratch {
  AxisTaps rows, cols;
  std::vector<float> horizontal;  // (channels, rows needed, out_width)
};

float luminance(float r, float g, float b) { return kLumaR * r + kLumaG * g + kLumaB * b; }

void normalise(float* planes, int channels, std::int64_t pixels, const Normalisation& norm) {
  for (int c = 0; c < channels; ++c) {
    float mean = norm.mean[static_cast<std::size_t>(c)];
    float inv_std = 1.0f / norm.std[static_cast<std::size_t>(c)];
    float* p = planes + c * pixels;
    for (std::int64_t i = 0; i < pixels; ++i) p[i] = (p[i] - mean) * inv_std;
  }
}

}  // namespace

// --- config -----------------------------------------------------------------------------

std::string AugmentConfig::describe() const {
  std::ostringstream out;
  out << (train ? "train: " : "eval: ");
  if (pad_to > 0) out << "zero-pad smaller images to " << pad_to << "x" << pad_to << ", ";
  if (!train) {
    out << "resize shorter side to " << eval_resize << ", centre crop " << output_height << "x"
        << output_width;
  } else {
    if (random_resized_crop) {
      out << "random resized crop to " << output_height << "x" << output_width << " (scale "
          << scale_min << "-" << scale_max << ", ratio " << ratio_min << "-" << ratio_max << ")";
    } else {
      out << "resize to " << output_height << "x" << output_width;
    }
    out << ", jitter (brightness " << brightness << ", contrast " << contrast << ", saturation "
        << saturation << ", hue " << hue << "), grayscale p " << grayscale_p << ", flip p "
        << flip_p;
  }
  out << ", normalise";
  return out.str();
}

void AugmentConfig::validate(int source_channels) const {
  SELA_CHECK(source_channels == 1 || source_channels == 3, kOp,
             "images must have 1 or 3 channels, got " << source_channels);
  SELA_CHECK(output_height > 0 && output_width > 0 && output_height <= 8192 && output_width <= 8192,
             kOp, "output size " << output_height << "x" << output_width << "; expected 1..8192");
  SELA_CHECK(pad_to >= 0 && pad_to <= 8192, kOp, "pad_to " << pad_to << "; expected 0..8192");
  SELA_CHECK(eval_resize > 0, kOp, "eval_resize " << eval_resize << "; expected > 0");
  SELA_CHECK(
      scale_min > 0 && scale_min <= scale_max && scale_max <= 1.0, kOp,
      "crop scale range (" << scale_min << ", " << scale_max << "); expected 0 < min <= max <= 1");
  SELA_CHECK(
      ratio_min > 0 && ratio_min <= ratio_max, kOp,
      "crop ratio range (" << ratio_min << ", " << ratio_max << "); expected 0 < min <= max");
  SELA_CHECK(brightness >= 0 && contrast >= 0 && saturation >= 0, kOp,
             "jitter strengths must be >= 0 (brightness " << brightness << ", contrast " << contrast
                                                          << ", saturation " << saturation << ")");
  SELA_CHECK(hue >= 0 && hue <= 0.5f, kOp, "hue jitter " << hue << "; expected 0..0.5");
  SELA_CHECK(
      grayscale_p >= 0 && grayscale_p <= 1 && flip_p >= 0 && flip_p <= 1, kOp,
      "probabilities must be in [0, 1] (grayscale " << grayscale_p << ", flip " << flip_p << ")");
  for (int c = 0; c < source_channels; ++c) {
    SELA_CHECK(normalisation.std[static_cast<std::size_t>(c)] > 0, kOp,
               "normalisation std of channel " << c << " is "
                                               << normalisation.std[static_cast<std::size_t>(c)]
                                               << "; expected > 0");
  }
}

AugmentConfig default_augment(const DatasetInfo& info, bool train, int size) {
  AugmentConfig config;
  config.train = train;
  config.normalisation = info.normalisation;
  if (info.kind != "folder" && info.height > 0) {
    // Decoded in-memory sets (Fashion-MNIST, IDX, CIFAR): 32x32 as alexnet-32 expects,
    // padding smaller images; crops as the reference's CIFAR recipe (scale 0.2-1).
    config.pad_to = 32;
    int side = size > 0 ? size : std::max(32, std::min(info.height, info.width));
    config.output_height = config.output_width = side;
    config.eval_resize = side;
    config.scale_min = 0.2;
  } else {
    // ImageNet-style folders: the reference's augs=3 recipe at 224, eval 256 -> centre 224.
    int side = size > 0 ? size : 224;
    config.output_height = config.output_width = side;
    config.eval_resize = static_cast<int>(std::lround(side * 256.0 / 224.0));
    config.scale_min = 0.08;
  }
  if (info.channels == 1) {  // colour operations that mean nothing on one channel
    config.saturation = 0;
    config.hue = 0;
    config.grayscale_p = 0;
  }
  return config;
}

// --- geometry -----------------------------------------------------------------------------

void padded_size(const AugmentConfig& config, int height, int width, int* canvas_height,
                 int* canvas_width) {
  *canvas_height = std::max(height, config.pad_to);
  *canvas_width = std::max(width, config.pad_to);
}

CropBox random_resized_crop_box(int height, int width, double scale_min, double scale_max,
                                double ratio_min, double ratio_max, SampleRng& rng) {
  double area = static_cast<double>(height) * width;
  double log_lo = std::log(ratio_min), log_hi = std::log(ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    double target = area * rng.uniform(scale_min, scale_max);
    double aspect = std::exp(rng.uniform(log_lo, log_hi));
    int w = static_cast<int>(std::lround(std::sqrt(target * aspect)));
    int h = static_cast<int>(std::lround(std::sqrt(target / aspect)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      int top = static_cast<int>(rng.below(height - h + 1));
      int left = static_cast<int>(rng.below(width - w + 1));
      return CropBox{static_cast<double>(top), static_cast<double>(left), static_cast<double>(h),
                     static_cast<double>(w)};
    }
  }
  // Fallback: the largest centred crop whose aspect is inside the range.
  double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio_min) {
    h = std::max(1, static_cast<int>(std::lround(w / ratio_min)));
  } else if (in_ratio > ratio_max) {
    w = std::max(1, static_cast<int>(std::lround(h * ratio_max)));
  }
  h = std::min(h, height);
  w = std::min(w, width);
  return CropBox{static_cast<double>((height - h) / 2), static_cast<double>((width - w) / 2),
                 static_cast<double>(h), static_cast<double>(w)};
}

CropBox centre_crop_box(int height, int width, int resize, int out_height, int out_width) {
  double scale = static_cast<double>(resize) / std::min(height, width);  // source -> resized
  double box_h = out_height / scale, box_w = out_width / scale;
  return CropBox{(height - box_h) / 2.0, (width - box_w) / 2.0, box_h, box_w};
}

AugmentParams draw_augment_params(const AugmentConfig& config, int canvas_height, int canvas_width,
                                  int channels, SampleRng& rng) {
  AugmentParams params;
  if (!config.train) {
    params.box = centre_crop_box(canvas_height, canvas_width, config.eval_resize,
                                 config.output_height, config.output_width);
    params.clamp_to_box = false;  // resize the whole image, then crop
    return params;
  }
  params.clamp_to_box = true;  // crop, then resize the crop
  if (config.random_resized_crop) {
    params.box = random_resized_crop_box(canvas_height, canvas_width, config.scale_min,
                                         config.scale_max, config.ratio_min, config.ratio_max, rng);
  } else {
    params.box =
        CropBox{0, 0, static_cast<double>(canvas_height), static_cast<double>(canvas_width)};
  }
  auto factor = [&](float strength) {
    return static_cast<float>(rng.uniform(std::max(0.0, 1.0 - strength), 1.0 + strength));
  };
  if (config.brightness > 0) params.brightness = factor(config.brightness);
  if (config.contrast > 0) params.contrast = factor(config.contrast);
  if (channels == 3 && config.saturation > 0) params.saturation = factor(config.saturation);
  if (channels == 3 && config.hue > 0) {
    params.hue = static_cast<float>(rng.uniform(-config.hue, config.hue));
  }
  for (int i = 3; i > 0; --i) {  // torchvision applies the four in a random order
    int j = static_cast<int>(rng.below(i + 1));
    std::swap(params.jitter_order[static_cast<std::size_t>(i)],
              params.jitter_order[static_cast<std::size_t>(j)]);
  }
  params.grayscale = channels == 3 && rng.chance(config.grayscale_p);
  params.flip = rng.chance(config.flip_p);
  return params;
}

// --- pixels -------------------------------------------------------------------------------

void pad_image(const ImageView& source, int canvas_height, int canvas_width, Image* out) {
  SELA_CHECK(canvas_height >= source.height && canvas_width >= source.width, kOp,
             "cannot pad " << source.height << "x" << source.width << " into " << canvas_height
                           << "x" << canvas_width);
  out->height = canvas_height;
  out->width = canvas_width;
  out->channels = source.channels;
  out->pixels.assign(static_cast<std::size_t>(canvas_height) *
                         static_cast<std::size_t>(canvas_width) *
                         static_cast<std::size_t>(source.channels),
                     0);
  int top = (canvas_height - source.height) / 2, left = (canvas_width - source.width) / 2;
  std::size_t row_bytes =
      static_cast<std::size_t>(source.width) * static_cast<std::size_t>(source.channels);
  for (int y = 0; y < source.height; ++y) {
    const std::uint8_t* from = source.pixels + static_cast<std::size_t>(y) * row_bytes;
    std::uint8_t* to = &out->at(top + y, left, 0);
    std::copy(from, from + row_bytes, to);
  }
}

void resample(const ImageView& source, const CropBox& box, bool clamp_to_box, int out_height,
              int out_width, float* out) {
  SELA_CHECK(source.pixels != nullptr && source.height > 0 && source.width > 0, kOp,
             "resample of an empty image (" << source.height << "x" << source.width << ")");
  SELA_CHECK(box.height > 0 && box.width > 0, kOp,
             "crop box " << box.height << "x" << box.width << " is empty");
  thread_local ResampleScratch scratch;
  const int channels = source.channels;
  int row_lo = 0, row_hi = source.height, col_lo = 0, col_hi = source.width;
  if (clamp_to_box) {
    row_lo = std::max(row_lo, static_cast<int>(std::floor(box.top)));
    row_hi = std::min(row_hi, static_cast<int>(std::ceil(box.top + box.height)));
    col_lo = std::max(col_lo, static_cast<int>(std::floor(box.left)));
    col_hi = std::min(col_hi, static_cast<int>(std::ceil(box.left + box.width)));
    SELA_CHECK(row_lo < row_hi && col_lo < col_hi, kOp,
               "crop box (top " << box.top << ", left " << box.left << ", " << box.height << "x"
                                << box.width << ") lies outside the " << source.height << "x"
                                << source.width << " image");
  }
  AxisTaps& rows = scratch.rows;
  AxisTaps& cols = scratch.cols;
  make_axis_taps(box.top, box.height, out_height, row_lo, row_hi, &rows);
  make_axis_taps(box.left, box.width, out_width, col_lo, col_hi, &cols);

  // Source rows the vertical pass will read.
  int first_row = rows.first[0], end_row = rows.first[0] + rows.count[0];
  for (int y = 1; y < out_height; ++y) {
    first_row = std::min(first_row, rows.first[static_cast<std::size_t>(y)]);
    end_row = std::max(
        end_row, rows.first[static_cast<std::size_t>(y)] + rows.count[static_cast<std::size_t>(y)]);
  }
  const std::size_t rows_needed = static_cast<std::size_t>(end_row - first_row);
  const std::size_t row_floats = static_cast<std::size_t>(out_width);
  scratch.horizontal.resize(static_cast<std::size_t>(channels) * rows_needed * row_floats);
  float* horizontal = scratch.horizontal.data();  // (channels, rows_needed, out_width)

  // Horizontal pass: each needed source row to out_width samples per channel.
  const std::size_t src_row_bytes =
      static_cast<std::size_t>(source.width) * static_cast<std::size_t>(channels);
  const std::size_t channel_stride = rows_needed * row_floats;
  for (int r = first_row; r < end_row; ++r) {
    const std::uint8_t* src = source.pixels + static_cast<std::size_t>(r) * src_row_bytes;
    float* dst = horizontal + static_cast<std::size_t>(r - first_row) * row_floats;
    for (int x = 0; x < out_width; ++x) {
      const std::size_t xi = static_cast<std::size_t>(x);
      const float* w = &cols.weights[xi * static_cast<std::size_t>(cols.max_taps)];
      const std::uint8_t* p =
          src + static_cast<std::size_t>(cols.first[xi]) * static_cast<std::size_t>(channels);
      const int taps = cols.count[xi];
      if (channels == 1) {
        float acc = 0;
        for (int k = 0; k < taps; ++k) acc += w[k] * p[k];
        dst[xi] = acc;
      } else {
        float a0 = 0, a1 = 0, a2 = 0;
        for (int k = 0; k < taps; ++k) {
          a0 += w[k] * p[3 * k];
          a1 += w[k] * p[3 * k + 1];
          a2 += w[k] * p[3 * k + 2];
        }
        dst[xi] = a0;
        dst[channel_stride + xi] = a1;
        dst[2 * channel_stride + xi] = a2;
      }
    }
  }

  // Vertical pass: contiguous rows, so the inner loop vectorises.
  const std::size_t plane =
      static_cast<std::size_t>(out_height) * static_cast<std::size_t>(out_width);
  const float inv255 = 1.0f / 255.0f;
  for (int c = 0; c < channels; ++c) {
    const float* channel_rows = horizontal + static_cast<std::size_t>(c) * channel_stride;
    for (int y = 0; y < out_height; ++y) {
      const std::size_t yi = static_cast<std::size_t>(y);
      const float* w = &rows.weights[yi * static_cast<std::size_t>(rows.max_taps)];
      const int taps = rows.count[yi];
      const float* base =
          channel_rows + static_cast<std::size_t>(rows.first[yi] - first_row) * row_floats;
      float* dst =
          out + static_cast<std::size_t>(c) * plane + yi * static_cast<std::size_t>(out_width);
      const float w0 = w[0] * inv255;
      for (int x = 0; x < out_width; ++x) dst[x] = w0 * base[x];
      for (int k = 1; k < taps; ++k) {
        const float wk = w[k] * inv255;
        const float* row = base + static_cast<std::size_t>(k) * row_floats;
        for (int x = 0; x < out_width; ++x) dst[x] += wk * row[x];
      }
      for (int x = 0; x < out_width; ++x) dst[x] = clamp01(dst[x]);
    }
  }
}

void adjust_brightness(float* planes, int channels, std::int64_t pixels, float factor) {
  std::int64_t n = pixels * channels;
  for (std::int64_t i = 0; i < n; ++i) planes[i] = clamp01(planes[i] * factor);
}

void adjust_contrast(float* planes, int channels, std::int64_t pixels, float factor) {
  double sum = 0;
  if (channels == 3) {
    for (std::int64_t i = 0; i < pixels; ++i) {
      sum += luminance(planes[i], planes[pixels + i], planes[2 * pixels + i]);
    }
  } else {
    for (std::int64_t i = 0; i < pixels; ++i) sum += planes[i];
  }
  float mean = static_cast<float>(sum / static_cast<double>(pixels));
  float offset = (1.0f - factor) * mean;
  std::int64_t n = pixels * channels;
  for (std::int64_t i = 0; i < n; ++i) planes[i] = clamp01(factor * planes[i] + offset);
}

void adjust_saturation(float* rgb, std::int64_t pixels, float factor) {
  float* r = rgb;
  float* g = rgb + pixels;
  float* b = rgb + 2 * pixels;
  float keep = 1.0f - factor;
  for (std::int64_t i = 0; i < pixels; ++i) {
    float grey = keep * luminance(r[i], g[i], b[i]);
    r[i] = clamp01(factor * r[i] + grey);
    g[i] = clamp01(factor * g[i] + grey);
    b[i] = clamp01(factor * b[i] + grey);
  }
}

void adjust_hue(float* rgb, std::int64_t pixels, float shift) {
  // HSV hue rotation without branches (so it vectorises): value v = max and chroma
  // d = max - min do not change; the hue h6 in [0, 6) moves by 6 * shift, and each channel
  // is v - d * clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6, n = 5, 3, 1 for R, G, B.
  float* rp = rgb;
  float* gp = rgb + pixels;
  float* bp = rgb + 2 * pixels;
  const float turn = 6.0f * (shift - std::floor(shift));  // in [0, 6)
  for (std::int64_t i = 0; i < pixels; ++i) {
    const float r = rp[i], g = gp[i], b = bp[i];
    const float v = std::max(r, std::max(g, b));
    const float d = v - std::min(r, std::min(g, b));
    const float inv_d = d > 0.0f ? 1.0f / d : 0.0f;
    float h6 =
        v == r ? (g - b) * inv_d : (v == g ? 2.0f + (b - r) * inv_d : 4.0f + (r - g) * inv_d);
    h6 += turn;  // in (-1, 12)
    h6 = h6 < 0.0f ? h6 + 6.0f : h6;
    h6 = h6 >= 6.0f ? h6 - 6.0f : h6;
    h6 = h6 >= 6.0f ? h6 - 6.0f : h6;  // now in [0, 6)
    float k_r = 5.0f + h6, k_g = 3.0f + h6, k_b = 1.0f + h6;
    k_r = k_r >= 6.0f ? k_r - 6.0f : k_r;
    k_g = k_g >= 6.0f ? k_g - 6.0f : k_g;
    k_b = k_b >= 6.0f ? k_b - 6.0f : k_b;
    rp[i] = clamp01(v - d * std::min(1.0f, std::max(0.0f, std::min(k_r, 4.0f - k_r))));
    gp[i] = clamp01(v - d * std::min(1.0f, std::max(0.0f, std::min(k_g, 4.0f - k_g))));
    bp[i] = clamp01(v - d * std::min(1.0f, std::max(0.0f, std::min(k_b, 4.0f - k_b))));
  }
}

void to_grayscale(float* rgb, std::int64_t pixels) {
  float* r = rgb;
  float* g = rgb + pixels;
  float* b = rgb + 2 * pixels;
  for (std::int64_t i = 0; i < pixels; ++i) {
    float grey = clamp01(luminance(r[i], g[i], b[i]));
    r[i] = g[i] = b[i] = grey;
  }
}

void mirror_rows(float* planes, int channels, int height, int width) {
  for (int c = 0; c < channels; ++c) {
    for (int y = 0; y < height; ++y) {
      float* row = planes + (static_cast<std::size_t>(c) * static_cast<std::size_t>(height) +
                             static_cast<std::size_t>(y)) *
                                static_cast<std::size_t>(width);
      std::reverse(row, row + width);
    }
  }
}

void rotate_quarter_turns(const float* source, int channels, int size, int turns, float* out) {
  SELA_CHECK(channels >= 1 && size >= 1, kOp,
             "rotate_quarter_turns: channels " << channels << " and size " << size
                                               << " must be positive");
  const int quarter = ((turns % 4) + 4) % 4;
  const std::size_t n = static_cast<std::size_t>(size);
  for (int c = 0; c < channels; ++c) {
    const float* a = source + static_cast<std::size_t>(c) * n * n;
    float* b = out + static_cast<std::size_t>(c) * n * n;
    for (std::size_t y = 0; y < n; ++y) {
      for (std::size_t x = 0; x < n; ++x) {
        std::size_t from_y = y, from_x = x;  // b[y][x] = a[from_y][from_x]
        if (quarter == 1) {
          from_y = x;
          from_x = n - 1 - y;
        } else if (quarter == 2) {
          from_y = n - 1 - y;
          from_x = n - 1 - x;
        } else if (quarter == 3) {
          from_y = n - 1 - x;
          from_x = y;
        }
        b[y * n + x] = a[from_y * n + from_x];
      }
    }
  }
}

void apply_augment(const AugmentConfig& config, const AugmentParams& params,
                   const ImageView& source, float* out) {
  const int channels = source.channels;
  SELA_CHECK(channels == 1 || channels == 3, kOp,
             "images must have 1 or 3 channels, got " << channels);
  resample(source, params.box, params.clamp_to_box, config.output_height, config.output_width, out);
  const std::int64_t pixels = static_cast<std::int64_t>(config.output_height) * config.output_width;
  if (config.train) {
    for (int op : params.jitter_order) {
      switch (op) {
        case 0:
          if (params.brightness != 1.0f)
            adjust_brightness(out, channels, pixels, params.brightness);
          break;
        case 1:
          if (params.contrast != 1.0f) adjust_contrast(out, channels, pixels, params.contrast);
          break;
        case 2:
          if (channels == 3 && params.saturation != 1.0f)
            adjust_saturation(out, pixels, params.saturation);
          break;
        default:
          if (channels == 3 && params.hue != 0.0f) adjust_hue(out, pixels, params.hue);
          break;
      }
    }
    if (channels == 3 && params.grayscale) to_grayscale(out, pixels);
    if (params.flip) mirror_rows(out, channels, config.output_height, config.output_width);
  }
  normalise(out, channels, pixels, config.normalisation);
}

void augment_sample(const AugmentConfig& config, const ImageView& source, std::uint64_t seed,
                    std::int64_t epoch, std::int64_t index, float* out, AugmentParams* drawn) {
  int canvas_height = 0, canvas_width = 0;
  padded_size(config, source.height, source.width, &canvas_height, &canvas_width);
  ImageView canvas = source;
  thread_local Image padded;
  if (canvas_height != source.height || canvas_width != source.width) {
    pad_image(source, canvas_height, canvas_width, &padded);
    canvas = padded.view();
  }
  SampleRng rng(seed, static_cast<std::uint64_t>(epoch), static_cast<std::uint64_t>(index), 0);
  AugmentParams params =
      draw_augment_params(config, canvas_height, canvas_width, source.channels, rng);
  apply_augment(config, params, canvas, out);
  if (drawn) *drawn = params;
}

}  // namespace sela::data
