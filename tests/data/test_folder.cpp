// Image folders made by the test with stb_image_write: PNG, JPEG, BMP and TGA files in the
// ImageNet layout and flat; counts, class order, labels and pixel values; and every bad-input
// case (corrupt file, truncated PNG, truncated JPEG, empty folder, missing path, mixed
// layout), with and without skip_bad, at open and inside the loader.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <random>

#include "engine/data/folder.h"
#include "engine/data/image_io.h"
#include "engine/data/loader.h"
#include "tests/data/data_fixtures.h"

using namespace sela::data;
using namespace sela::data::testing;
namespace fs = std::filesystem;

namespace {

struct Written {
  std::string path;
  Image image;
  std::int64_t label;
  bool lossy;
};

// root/<class>/..., classes deliberately created out of order.
std::vector<Written> make_tree(const fs::path& root, std::mt19937_64& rng) {
  std::vector<Written> written;
  auto put = [&](const std::string& cls, const std::string& name, std::int64_t label, int h,
                 int w) {
    fs::create_directories((root / cls / name).parent_path());
    std::string path = (root / cls / name).string();
    std::string ext = fs::path(name).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    bool lossy = ext == ".jpg";
    Image image = lossy ? smooth_image(h, w, 3, rng) : random_image(h, w, 3, rng);
    if (ext == ".png") write_png(path, image.view());
    if (ext == ".jpg") write_jpeg(path, image.view(), 95);
    if (ext == ".bmp") write_bmp(path, image.view());
    if (ext == ".tga") write_tga(path, image.view());
    written.push_back({path, image, label, lossy});
  };
  put("dog", "b.png", 1, 20, 30);
  put("dog", "a.jpg", 1, 40, 24);
  put("cat", "x.bmp", 0, 17, 19);
  put("cat", "nested/y.png", 0, 12, 12);
  put("cat", "z.tga", 0, 9, 31);
  put("eel", "e.PNG", 2, 16, 16);
  // Things that are not samples: a text file, a hidden file, a hidden folder.
  std::ofstream(root / "dog" / "notes.txt") << "not an image";
  write_png((root / "cat" / ".hidden.png").string(), random_image(4, 4, 3, rng).view());
  fs::create_directories(root / "eel" / ".cache");
  write_png((root / "eel" / ".cache" / "c.png").string(), random_image(4, 4, 3, rng).view());
  return written;
}

double mean_abs_difference(const ImageView& a, const Image& b) {
  double total = 0;
  for (std::size_t i = 0; i < b.pixels.size(); ++i)
    total += std::fabs(double(a.pixels[i]) - b.pixels[i]);
  return total / static_cast<double>(b.pixels.size());
}

}  // namespace

TEST_CASE("folder: ImageNet layout, classes sorted by name, files sorted, pixels decoded") {
  TempDir dir;
  std::mt19937_64 rng(21);
  std::vector<Written> written = make_tree(dir.path(), rng);
  auto dataset = open_dataset("folder:" + dir.path().string());
  REQUIRE(dataset->size() == 6);
  CHECK(dataset->info().class_names == std::vector<std::string>{"cat", "dog", "eel"});
  CHECK(dataset->class_counts() == std::vector<std::int64_t>{3, 2, 1});
  CHECK(dataset->info().channels == 3);
  CHECK(dataset->info().height == 0);  // sizes vary
  // Expected order: cat/nested/y.png, cat/x.bmp, cat/z.tga, dog/a.jpg, dog/b.png, eel/e.PNG.
  std::vector<std::string> expected_tail = {"cat/nested/y.png", "cat/x.bmp", "cat/z.tga",
                                            "dog/a.jpg",        "dog/b.png", "eel/e.PNG"};
  Image scratch;
  for (std::int64_t i = 0; i < dataset->size(); ++i) {
    std::string name = dataset->sample_name(i);
    CAPTURE(name);
    CHECK(name == (dir.path() / expected_tail[static_cast<std::size_t>(i)]).string());
    auto it = std::find_if(written.begin(), written.end(),
                           [&](const Written& w) { return w.path == name; });
    REQUIRE(it != written.end());
    CHECK(dataset->true_class(i) == it->label);
    ImageView view = dataset->image(i, &scratch);
    REQUIRE(view.height == it->image.height);
    REQUIRE(view.width == it->image.width);
    REQUIRE(view.channels == 3);
    if (it->lossy) {
      CHECK(mean_abs_difference(view, it->image) < 3.0);  // JPEG q95 of a smooth image
    } else {
      CHECK(std::equal(it->image.pixels.begin(), it->image.pixels.end(), view.pixels));
    }
  }
  std::string summary = describe(*dataset);
  CHECK(summary.find("classes     3") != std::string::npos);
  CHECK(summary.find("0 skipped") != std::string::npos);
}

TEST_CASE("folder: a grey PNG decodes to three equal channels; a flat folder is unlabelled") {
  TempDir dir;
  std::mt19937_64 rng(22);
  Image grey = random_image(10, 11, 1, rng);
  write_png(dir / "g.png", grey.view());
  write_png(dir / "h.png", random_image(5, 5, 3, rng).view());
  auto dataset = open_dataset("folder:" + dir.path().string());
  REQUIRE(dataset->size() == 2);
  CHECK(!dataset->labelled());
  CHECK(dataset->true_class(0) == -1);
  CHECK(dataset->true_class(1) == -1);
  Image scratch;
  ImageView view = dataset->image(0, &scratch);
  REQUIRE(view.channels == 3);
  for (std::size_t p = 0; p < grey.pixels.size(); ++p) {
    CHECK(view.pixels[3 * p] == grey.pixels[p]);
    CHECK(view.pixels[3 * p + 1] == grey.pixels[p]);
    CHECK(view.pixels[3 * p + 2] == grey.pixels[p]);
  }
}

TEST_CASE("folder bad input: each case gives its message") {
  TempDir dir;
  std::mt19937_64 rng(23);
  fs::path root = dir.path() / "root";
  fs::create_directories(root / "a");
  fs::create_directories(root / "b");
  write_png((root / "a" / "good.png").string(), random_image(8, 8, 3, rng).view());
  write_jpeg((root / "b" / "good.jpg").string(), smooth_image(16, 16, 3, rng).view(), 90);

  SUBCASE("missing path") {
    std::string message = error_of([&] { open_dataset("folder:" + (dir / "nowhere")); });
    CHECK(message.find("nowhere does not exist") != std::string::npos);
  }
  SUBCASE("a file, not a folder") {
    std::string message =
        error_of([&] { open_dataset("folder:" + (root / "a" / "good.png").string()); });
    CHECK(message.find("is not a folder") != std::string::npos);
  }
  SUBCASE("empty folder") {
    fs::create_directories(dir.path() / "empty" / "class");
    std::ofstream(dir.path() / "empty" / "class" / "readme.txt") << "x";
    std::string message = error_of([&] { open_dataset("folder:" + (dir / "empty")); });
    CHECK(message.find("holds no images") != std::string::npos);
  }
  SUBCASE("class folders and loose images mixed") {
    write_png((root / "loose.png").string(), random_image(4, 4, 3, rng).view());
    std::string message = error_of([&] { open_dataset("folder:" + root.string()); });
    CHECK(message.find("one layout") != std::string::npos);
  }
  SUBCASE("corrupt, truncated PNG and truncated JPEG files: path and reason") {
    std::string garbage = (root / "a" / "garbage.jpg").string();
    write_bytes(garbage, {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
    std::string png = (root / "a" / "cut.png").string();
    write_png(png, random_image(64, 64, 3, rng).view());
    truncate_file(png, read_bytes(png).size() / 2);
    std::string jpg = (root / "b" / "cut.jpg").string();
    write_jpeg(jpg, smooth_image(64, 64, 3, rng).view(), 90);
    truncate_file(jpg, read_bytes(jpg).size() - 300);

    auto dataset = open_dataset("folder:" + root.string());
    REQUIRE(dataset->size() == 5);
    Image scratch;
    std::map<std::string, std::string> messages;
    for (std::int64_t i = 0; i < dataset->size(); ++i) {
      std::string name = dataset->sample_name(i);
      if (name.find("good") != std::string::npos) {
        CHECK_NOTHROW(dataset->image(i, &scratch));
        continue;
      }
      messages[name] = error_of([&] { dataset->image(i, &scratch); });
    }
    REQUIRE(messages.size() == 3);
    for (const auto& [name, message] : messages) {
      CAPTURE(message);
      CHECK(message.find("cannot decode " + name) != std::string::npos);
    }
    CHECK(messages[garbage].find("not of any known type") != std::string::npos);  // stb's reason
    CHECK(messages[jpg].find("end-of-image marker") != std::string::npos);
    CHECK(messages[png].find("stb_image") != std::string::npos);

    // skip_bad at open: header probe drops the garbage and the cut JPEG (the cut PNG's
    // header is intact, so it is only found when decoded: see the loader below).
    OpenOptions skip;
    skip.skip_bad = true;
    auto kept = open_dataset("folder:" + root.string(), skip);
    CHECK(kept->size() == 3);
    CHECK(kept->info().skipped_bad == 2);
    std::string summary = describe(*kept);
    CHECK(summary.find("2 skipped at open") != std::string::npos);
    CHECK(summary.find(garbage) != std::string::npos);
    CHECK(summary.find(jpg) != std::string::npos);

    // The loader without skip_bad: the worker's Error reaches next(), naming the file.
    AugmentConfig augment = default_augment(kept->info(), true, 16);
    LoaderConfig config;
    config.batch_size = 3;
    config.workers = 2;
    {
      Loader loader(*kept, augment, config);
      loader.start_epoch(0);
      Batch batch;
      std::string message = error_of([&] {
        while (loader.next(&batch)) {
        }
      });
      CHECK(message.find("cannot decode " + png) != std::string::npos);
    }
    // With skip_bad the sample is left out of its batch and counted.
    config.skip_bad = true;
    Loader loader(*kept, augment, config);
    loader.start_epoch(0);
    Batch batch;
    std::int64_t seen = 0;
    while (loader.next(&batch)) {
      seen += batch.size;
      for (std::int64_t k = 0; k < batch.size; ++k) {
        CHECK(kept->sample_name(batch.indices[static_cast<std::size_t>(k)]).find("good") !=
              std::string::npos);
      }
    }
    CHECK(seen == 2);
    CHECK(loader.stats().skipped_bad == 1);
    CHECK(loader.stats().first_bad.find(png) != std::string::npos);
  }
  SUBCASE("folder has no splits") {
    OpenOptions test_split;
    test_split.split = "test";
    std::string message = error_of([&] { open_dataset("folder:" + root.string(), test_split); });
    CHECK(message.find("folder:DIR/val") != std::string::npos);
  }
}

TEST_CASE(
    "JPEG end check: trailers after EOI are fine; a cut file with an EXIF thumbnail is caught") {
  TempDir dir;
  std::mt19937_64 rng(24);
  std::string main_path = dir / "main.jpg", thumb_path = dir / "thumb.jpg";
  Image main_image = smooth_image(48, 40, 3, rng);
  write_jpeg(main_path, main_image.view(), 90);
  write_jpeg(thumb_path, smooth_image(8, 8, 3, rng).view(), 80);
  std::vector<std::uint8_t> jpeg = read_bytes(main_path), thumb = read_bytes(thumb_path);

  // 6 KiB of trailer bytes (no 0xFF 0xD9 in them) after the end marker.
  std::vector<std::uint8_t> trailed = jpeg;
  for (int i = 0; i < 6144; ++i) trailed.push_back(static_cast<std::uint8_t>(i % 200));
  std::string trailed_path = dir / "trailed.jpg";
  write_bytes(trailed_path, trailed);
  Image decoded = decode_image_file(trailed_path, 3);
  CHECK(decoded.pixels == decode_image_file(main_path, 3).pixels);
  std::string reason;
  CHECK(probe_image_file(trailed_path, &reason));

  // An APP1 segment right after SOI holding a whole small JPEG (as EXIF thumbnails do), then
  // the main image cut 200 bytes before its end: the thumbnail's end marker must not count.
  std::vector<std::uint8_t> exif = {0xFF, 0xD8, 0xFF, 0xE1};
  std::size_t length = 2 + 6 + thumb.size();
  exif.push_back(static_cast<std::uint8_t>(length >> 8));
  exif.push_back(static_cast<std::uint8_t>(length & 0xFF));
  for (char c : std::string("Exif\0\0", 6)) exif.push_back(static_cast<std::uint8_t>(c));
  exif.insert(exif.end(), thumb.begin(), thumb.end());
  exif.insert(exif.end(), jpeg.begin() + 2, jpeg.end());
  std::string exif_path = dir / "exif.jpg";
  write_bytes(exif_path, exif);
  CHECK(decode_image_file(exif_path, 3).pixels == decoded.pixels);  // intact: decodes the same
  exif.resize(exif.size() - 200);
  write_bytes(exif_path, exif);
  std::string message = error_of([&] { decode_image_file(exif_path, 3); });
  CHECK(message.find("end-of-image marker") != std::string::npos);
  CHECK(message.find(exif_path) != std::string::npos);

  // Cut by just the two marker bytes.
  std::vector<std::uint8_t> cut(jpeg.begin(), jpeg.end() - 2);
  write_bytes(main_path, cut);
  CHECK(error_of([&] { decode_image_file(main_path, 3); }).find("end-of-image marker") !=
        std::string::npos);
  CHECK(!probe_image_file(main_path, &reason));
  CHECK(reason.find("end-of-image marker") != std::string::npos);
}

TEST_CASE("has_image_extension knows the formats stb decodes") {
  CHECK(has_image_extension("a/b/c.JPG"));
  CHECK(has_image_extension("x.jpeg"));
  CHECK(has_image_extension("x.png"));
  CHECK(has_image_extension("x.bmp"));
  CHECK(has_image_extension("x.tga"));
  CHECK(!has_image_extension("x.txt"));
  CHECK(!has_image_extension("x"));
  CHECK(!has_image_extension("x.png.bak"));
}
