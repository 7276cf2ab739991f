// 8-bit images as the data layer passes them between decoding and augmentation.
//
// Every source hands out its samples in one layout, interleaved (H, W, C) uint8, because
// that is what decoders (stb_image) produce and what the IDX and CIFAR files become after
// one cheap reorder at load time. Augmentation then reads one layout only and writes the
// network's planar float (C, H, W). ImageView borrows pixels (a decoded in-memory data set
// hands out views into its own buffer, no copy); Image owns them (a decoded file).
#pragma once

#include <cstdint>
#include <vector>

namespace sela::data {

struct ImageView {
  const std::uint8_t* pixels = nullptr;  // (height, width, channels), rows packed
  int height = 0;
  int width = 0;
  int channels = 0;
};

struct Image {
  int height = 0;
  int width = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;  // (height, width, channels)

  Image() = default;
  Image(int h, int w, int c)
      : height(h),
        width(w),
        channels(c),
        pixels(static_cast<std::size_t>(h) * static_cast<std::size_t>(w) *
               static_cast<std::size_t>(c)) {}

  ImageView view() const { return ImageView{pixels.data(), height, width, channels}; }
  std::uint8_t& at(int y, int x, int c) {
    return pixels[(static_cast<std::size_t>(y) * static_cast<std::size_t>(width) +
                   static_cast<std::size_t>(x)) *
                      static_cast<std::size_t>(channels) +
                  static_cast<std::size_t>(c)];
  }
};

}  // namespace sela::data
