// Augmentation: 8-bit (H, W, C) image in, normalised float (C, H, W) out.
//
// Training, as the reference code (yukimasano/self-label) composes torchvision transforms:
//   random resized crop (scale, ratio; pixel-aligned box as torchvision draws it)
//   -> resample to the output size (bilinear; when shrinking, the triangle filter widens
//      with the scale, as PIL's antialiased bilinear does, so large JPEGs do not alias)
//   -> colour jitter: brightness, contrast, saturation, hue, in a random order per sample
//   -> random grayscale (p = 0.2) -> horizontal flip (p = 0.5) -> normalise.
// Evaluation: resize the shorter side to `eval_resize`, centre crop the output size,
// normalise (one resample from the source box, no intermediate image).
// Grayscale sources (Fashion-MNIST, 1 channel) are zero-padded to 32x32 first and use the
// subset that means something for one channel: random resized crop, brightness, contrast,
// flip (no saturation, hue or grayscale).
//
// Every random choice is drawn up front into AugmentParams from a SampleRng keyed by
// (seed, epoch, index); apply_augment is then a pure function of (image, params), which is
// what makes the loader's output independent of its thread count and lets tests force
// one choice (flip on/off) while keeping the others.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "engine/data/dataset.h"
#include "engine/data/image.h"
#include "engine/data/sample_rng.h"

namespace sela::data {

struct AugmentConfig {
  bool train = true;  // false: resize + centre crop, nothing random
  int output_height = 224, output_width = 224;
  int pad_to = 0;  // zero-pad (centred) sources smaller than this first

  // Training.
  bool random_resized_crop = true;                      // false: the whole (padded) image, resized
  double scale_min = 0.08, scale_max = 1.0;             // crop area / image area
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;  // crop width / height
  float brightness = 0.4f, contrast = 0.4f, saturation = 0.4f;  // factor in [1-v, 1+v]
  float hue = 0.4f;                                             // shift in [-v, v] turns, v <= 0.5
  double grayscale_p = 0.2;
  double flip_p = 0.5;

  // Evaluation.
  int eval_resize = 256;  // shorter side before the centre crop

  Normalisation normalisation;

  std::string describe() const;              // one line for summaries
  void validate(int source_channels) const;  // Error naming the bad field
};

// The recipe for a source: 32x32 for Fashion-MNIST/IDX (1 channel, padded) and CIFAR,
// 224 (eval: resize 256, centre 224) for folders. size > 0 overrides the output side.
AugmentConfig default_augment(const DatasetInfo& info, bool train, int size = 0);

// A crop in source pixels (after padding). Integral for random resized crops.
struct CropBox {
  double top = 0, left = 0, height = 0, width = 0;
};

struct AugmentParams {
  CropBox box;
  bool clamp_to_box = true;  // resample sees only the box (crop then resize), or the image
  bool flip = false;
  bool grayscale = false;
  float brightness = 1, contrast = 1, saturation = 1, hue = 0;
  std::array<int, 4> jitter_order{0, 1, 2, 3};  // 0 brightness 1 contrast 2 saturation 3 hue
};

// Size of the canvas the crop is drawn on: the source, padded up to pad_to.
void padded_size(const AugmentConfig& config, int height, int width, int* canvas_height,
                 int* canvas_width);

// torchvision's RandomResizedCrop.get_params: up to 10 tries of area ~ U(scale) and
// log-aspect ~ U(log ratio), rounded to pixels; else the centre crop clamped to the range.
CropBox random_resized_crop_box(int height, int width, double scale_min, double scale_max,
                                double ratio_min, double ratio_max, SampleRng& rng);
// Resize(shorter side -> resize) + CenterCrop(out), as a box in source pixels.
CropBox centre_crop_box(int height, int width, int resize, int out_height, int out_width);

// Draws every random choice for one sample (canvas = padded source size).
AugmentParams draw_augment_params(const AugmentConfig& config, int canvas_height, int canvas_width,
                                  int channels, SampleRng& rng);

// Applies params to `source` (already padded when the config pads): writes
// (channels, output_height, output_width) normalised floats to `out`.
void apply_augment(const AugmentConfig& config, const AugmentParams& params,
                   const ImageView& source, float* out);

// The whole thing for one sample: pads, draws from SampleRng(seed, epoch, index), applies.
// `drawn` (optional) receives the params used.
void augment_sample(const AugmentConfig& config, const ImageView& source, std::uint64_t seed,
                    std::int64_t epoch, std::int64_t index, float* out,
                    AugmentParams* drawn = nullptr);

// --- building blocks (exposed for tests) ---------------------------------------------------
// Zero-pads `source` centred into a (canvas_height, canvas_width) image.
void pad_image(const ImageView& source, int canvas_height, int canvas_width, Image* out);

// Resamples `box` of `source` to (C, out_height, out_width) floats in [0, 1]. Output pixel
// centres map to box coordinates with half-pixel offsets; weights are a triangle of radius
// max(1, box/out) source pixels (bilinear when enlarging), normalised over the pixels inside
// [box] (clamp_to_box) or inside the image.
void resample(const ImageView& source, const CropBox& box, bool clamp_to_box, int out_height,
              int out_width, float* out);

// Colour operations on planar (C, pixels) floats in [0, 1]; results clamped to [0, 1].
// Luminance is 0.299 R + 0.587 G + 0.114 B (torchvision's grayscale weights).
void adjust_brightness(float* planes, int channels, std::int64_t pixels, float factor);
void adjust_contrast(float* planes, int channels, std::int64_t pixels, float factor);
void adjust_saturation(float* rgb, std::int64_t pixels, float factor);  // 3 channels
void adjust_hue(float* rgb, std::int64_t pixels, float shift);          // 3 channels
void to_grayscale(float* rgb, std::int64_t pixels);                     // 3 equal channels
void mirror_rows(float* planes, int channels, int height, int width);
// Square planar (C, size, size) floats turned by `turns` quarter turns counter-clockwise
// (numpy.rot90's sense: turn 1 puts the right column on the top row) into `out`, which must
// not overlap `source`. Any integer turns (taken modulo 4). For the rotation task of `sela
// train --rotation-weight` (sela/rotation.h).
void rotate_quarter_turns(const float* source, int channels, int size, int turns, float* out);

}  // namespace sela::data
