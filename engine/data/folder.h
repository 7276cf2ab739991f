// Image folders: the ImageNet layout DIR/<class>/<image> (classes sorted by folder name,
// images found recursively below each class folder and sorted by path), or a flat folder
// of images with no labels (true class -1).
//
// Images are not decoded at open: a folder of 1.28M JPEGs is listed, not read. Each call to
// image() decodes one file to 3 channels (grey files are replicated), so the loader's
// workers decode in parallel. With skip_bad, every file's header is probed at open (a cheap
// read of its first bytes, and of the JPEG end marker) and those that fail are left out and
// counted; without it, a bad file is an Error naming its path and the decoder's reason when
// it is first read.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"

namespace sela::data {

class FolderDataset : public Dataset {
 public:
  FolderDataset(DatasetInfo info, std::vector<std::int64_t> classes,
                std::vector<std::string> paths);
  ImageView image(std::int64_t index, Image* scratch) const override;
  std::string sample_name(std::int64_t index) const override;
  const std::vector<std::string>& paths() const { return paths_; }

 private:
  std::vector<std::string> paths_;  // (N,) image files
};

std::unique_ptr<FolderDataset> open_image_folder(const std::string& dir, bool skip_bad);

// True when the file name ends with an extension stb_image decodes (case-insensitive):
// jpg jpeg jpe png bmp tga gif psd pnm ppm pgm pic.
bool has_image_extension(const std::string& path);

}  // namespace sela::data
