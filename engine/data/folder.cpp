// Implementation of engine/data/folder.h.
#include "engine/data/folder.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "engine/data/image_io.h"
#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace sela::data {
namespace {

namespace fs = std::filesystem;
constexpr const char* kOp = "folder";
constexpr std::size_t kSkippedExamples = 5;

bool hidden(const fs::path& p) {
  std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// Image files under `dir`, recursively, sorted by path. Unreadable sub-folders are errors.
std::vector<std::string> list_images(const fs::path& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec);
  SELA_CHECK(!ec, kOp, "cannot list " << dir.string() << ": " << ec.message());
  for (fs::recursive_directory_iterator end; it != end; it.increment(ec)) {
    SELA_CHECK(!ec, kOp, "cannot list below " << dir.string() << ": " << ec.message());
    if (hidden(it->path())) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec) && has_image_extension(it->path().string())) {
      files.push_back(it->path().string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

bool has_image_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  static const char* known[] = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tga",
                                ".gif", ".psd",  ".pnm", ".ppm", ".pgm", ".pic"};
  for (const char* k : known) {
    if (ext == k) return true;
  }
  return false;
}

FolderDataset::FolderDataset(DatasetInfo info, std::vector<std::int64_t> classes,
                             std::vector<std::string> paths)
    : Dataset(std::move(info), std::move(classes)), paths_(std::move(paths)) {
  SELA_CHECK(paths_.size() == classes_.size(), kOp,
             "internal: " << paths_.size() << " paths for " << classes_.size() << " labels");
}

ImageView FolderDataset::image(std::int64_t index, Image* scratch) const {
  check_index(index);
  SELA_CHECK(scratch != nullptr, kOp, "image(): a folder data set needs a scratch image");
  *scratch = decode_image_file(paths_[static_cast<std::size_t>(index)], 3);
  return scratch->view();
}

std::string FolderDataset::sample_name(std::int64_t index) const {
  check_index(index);
  return paths_[static_cast<std::size_t>(index)];
}

std::unique_ptr<FolderDataset> open_image_folder(const std::string& dir, bool skip_bad) {
  SELA_CHECK(!dir.empty(), kOp, "no folder given; expected folder:DIR");
  std::error_code ec;
  SELA_CHECK(fs::exists(dir, ec), kOp, dir << " does not exist");
  SELA_CHECK(fs::is_directory(dir, ec), kOp, dir << " is not a folder");

  // Class folders: the immediate sub-folders (symlinks followed), sorted by name.
  std::vector<std::string> class_names;
  std::vector<std::string> top_images;
  fs::directory_iterator it(dir, ec);
  SELA_CHECK(!ec, kOp, "cannot list " << dir << ": " << ec.message());
  for (fs::directory_iterator end; it != end; it.increment(ec)) {
    SELA_CHECK(!ec, kOp, "cannot list " << dir << ": " << ec.message());
    if (hidden(it->path())) continue;
    if (it->is_directory(ec)) {
      class_names.push_back(it->path().filename().string());
    } else if (it->is_regular_file(ec) && has_image_extension(it->path().string())) {
      top_images.push_back(it->path().string());
    }
  }
  std::sort(class_names.begin(), class_names.end());
  std::sort(top_images.begin(), top_images.end());

  std::vector<std::string> paths;
  std::vector<std::int64_t> labels;
  std::int64_t in_classes = 0;
  for (std::size_t c = 0; c < class_names.size(); ++c) {
    std::vector<std::string> files = list_images(fs::path(dir) / class_names[c]);
    in_classes += static_cast<std::int64_t>(files.size());
    for (std::string& f : files) {
      paths.push_back(std::move(f));
      labels.push_back(static_cast<std::int64_t>(c));
    }
  }
  if (in_classes > 0) {
    SELA_CHECK(top_images.empty(), kOp,
               dir << " holds both class folders (" << class_names.size() << ") and "
                   << top_images.size() << " images at its top level (e.g. " << top_images[0]
                   << "); expected one layout: DIR/<class>/<image> or a flat folder of images");
  } else {
    SELA_CHECK(!top_images.empty(), kOp,
               dir << " holds no images (looked for .jpg .jpeg .png .bmp .tga .gif .psd .pnm "
                      ".ppm .pgm .pic in it and in its sub-folders)");
    class_names.clear();  // a flat folder: no labels
    paths = std::move(top_images);
    labels.assign(paths.size(), -1);
  }

  DatasetInfo info;
  info.kind = "folder";
  info.files = {dir};
  info.channels = 3;
  info.class_names = class_names;
  info.normalisation = Normalisation::imagenet();

  if (skip_bad) {
    // Probe every header in parallel; keep the order of the files that pass.
    std::vector<std::string> reasons(paths.size());
    std::vector<char> good(paths.size(), 0);
    cpu::parallel_for(0, static_cast<std::int64_t>(paths.size()), 64,
                      [&](std::int64_t b, std::int64_t e) {
                        for (std::int64_t i = b; i < e; ++i) {
                          std::size_t k = static_cast<std::size_t>(i);
                          good[k] = probe_image_file(paths[k], &reasons[k]) ? 1 : 0;
                        }
                      });
    std::vector<std::string> kept_paths;
    std::vector<std::int64_t> kept_labels;
    for (std::size_t k = 0; k < paths.size(); ++k) {
      if (good[k]) {
        kept_paths.push_back(std::move(paths[k]));
        kept_labels.push_back(labels[k]);
      } else {
        ++info.skipped_bad;
        if (info.skipped_examples.size() < kSkippedExamples) {
          info.skipped_examples.push_back(paths[k] + ": " + reasons[k]);
        }
      }
    }
    SELA_CHECK(!kept_paths.empty(), kOp,
               dir << ": all " << paths.size()
                   << " images failed to read (first: " << info.skipped_examples.front() << ")");
    paths = std::move(kept_paths);
    labels = std::move(kept_labels);
  }
  return std::make_unique<FolderDataset>(std::move(info), std::move(labels), std::move(paths));
}

}  // namespace sela::data
