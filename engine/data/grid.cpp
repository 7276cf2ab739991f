// Implementation of engine/data/grid.h.
#include "engine/data/grid.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace sela::data {

Image make_grid(const float* images, std::int64_t count, int channels, int height, int width,
                const Normalisation& normalisation, int columns, int gap) {
  SELA_CHECK(count > 0 && images != nullptr, "grid", "no images to tile");
  SELA_CHECK(channels == 1 || channels == 3, "grid", channels << " channels; expected 1 or 3");
  SELA_CHECK(
      height > 0 && width > 0 && columns > 0 && gap >= 0, "grid",
      "bad tile layout: " << height << "x" << width << ", " << columns << " columns, gap " << gap);
  std::int64_t cols = std::min<std::int64_t>(columns, count);
  std::int64_t rows = (count + cols - 1) / cols;
  Image grid(static_cast<int>(rows * height + (rows + 1) * gap),
             static_cast<int>(cols * width + (cols + 1) * gap), channels);
  std::fill(grid.pixels.begin(), grid.pixels.end(), std::uint8_t{128});
  const std::size_t plane = static_cast<std::size_t>(height) * static_cast<std::size_t>(width);
  for (std::int64_t n = 0; n < count; ++n) {
    int top = static_cast<int>(gap + (n / cols) * (height + gap));
    int left = static_cast<int>(gap + (n % cols) * (width + gap));
    const float* image =
        images + static_cast<std::size_t>(n) * plane * static_cast<std::size_t>(channels);
    for (int c = 0; c < channels; ++c) {
      float mean = normalisation.mean[static_cast<std::size_t>(c)];
      float sd = normalisation.std[static_cast<std::size_t>(c)];
      for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) {
          float v = image[static_cast<std::size_t>(c) * plane +
                          static_cast<std::size_t>(y) * static_cast<std::size_t>(width) +
                          static_cast<std::size_t>(x)] *
                        sd +
                    mean;
          v = std::min(1.0f, std::max(0.0f, v));
          grid.at(top + y, left + x, c) = static_cast<std::uint8_t>(std::lround(v * 255.0f));
        }
      }
    }
  }
  return grid;
}

}  // namespace sela::data
