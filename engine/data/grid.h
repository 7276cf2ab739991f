// A picture of what the network sees: normalised (N, C, H, W) floats back to 8-bit and
// tiled into one image, for `sela data --grid FILE.png` and cluster pictures.
#pragma once

#include <cstdint>

#include "engine/data/dataset.h"
#include "engine/data/image.h"

namespace sela::data {

// Undoes `normalisation` (x * std + mean, clamped to [0, 1], * 255 rounded) and tiles the
// `count` images of `images` (count, channels, height, width) row by row, `columns` to a
// row, with `gap` pixels of mid-grey between tiles. channels is 1 or 3.
Image make_grid(const float* images, std::int64_t count, int channels, int height, int width,
                const Normalisation& normalisation, int columns, int gap = 2);

}  // namespace sela::data
