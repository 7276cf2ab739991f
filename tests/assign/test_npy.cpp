// Tests of the .npy reader/writer (sela/assign/npy.h): round trips of float32, float64 and
// int64 arrays; files laid out byte for byte as numpy.save writes them (version 1.0 and
// 2.0 headers, 1-D, 2-D and scalar shapes); clear Errors for Fortran order, another dtype,
// truncated data, a bad magic and a malformed header.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "sela/assign/npy.h"

using namespace sela::assign;

namespace {

std::string temp_path(const std::string& name) {
  return std::string(P_tmpdir) + "/sela_test_npy_" + std::to_string(::getpid()) + "_" + name;
}

// Writes a file as numpy.save would: magic, version, little-endian header length, the
// dict text padded with spaces to a 64-byte boundary and ended by '\n', then the data.
void write_raw(const std::string& path, int major, const std::string& dict,
               const std::string& data) {
  const std::size_t prefix = 6 + 2 + (major == 1 ? 2 : 4);
  const std::size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  std::string header = dict + std::string(total - prefix - dict.size() - 1, ' ') + "\n";
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY", 6);
  out.put(static_cast<char>(major));
  out.put(0);
  std::uint32_t length = static_cast<std::uint32_t>(header.size());
  for (int byte = 0; byte < (major == 1 ? 2 : 4); ++byte)
    out.put(static_cast<char>((length >> (8 * byte)) & 0xFF));
  out << header << data;
}

template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

std::string error_text(const std::function<void()>& action) {
  try {
    action();
  } catch (const sela::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("npy round trips float32, float64 and int64 arrays") {
  std::mt19937 gen(4);
  std::normal_distribution<float> normal;
  const std::string path = temp_path("roundtrip.npy");
  std::vector<float> f(37 * 11);
  for (float& v : f) v = normal(gen);
  write_npy(path, f.data(), {37, 11});
  std::vector<std::int64_t> shape;
  CHECK(read_npy_f32(path, &shape) == f);
  CHECK(shape == std::vector<std::int64_t>{37, 11});
  NpyHeader header = read_npy_header(path);
  CHECK(header.major_version == 1);
  CHECK(header.data_offset % 64 == 0);
  CHECK(header.descr == "<f4");

  std::vector<double> d(13);
  for (double& v : d) v = normal(gen) * 1e100;
  write_npy(path, d.data(), {13});
  CHECK(read_npy_f64(path, &shape) == d);
  CHECK(shape == std::vector<std::int64_t>{13});

  std::vector<std::int64_t> labels = {0, 5, -3, std::int64_t{1} << 40, 999};
  write_npy(path, labels.data(), {5});
  CHECK(read_npy_i64(path, &shape) == labels);

  std::vector<float> empty;
  write_npy(path, empty.data(), {0, 4});
  CHECK(read_npy_f32(path, &shape).empty());
  CHECK(shape == std::vector<std::int64_t>{0, 4});
  std::remove(path.c_str());
}

TEST_CASE("npy reads files as numpy.save writes them: versions 1.0 and 2.0, every shape form") {
  const std::string path = temp_path("numpy.npy");
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            bytes_of(values));
  std::vector<std::int64_t> shape;
  CHECK(read_npy_f32(path, &shape) == values);
  CHECK(shape == std::vector<std::int64_t>{2, 3});

  write_raw(path, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", bytes_of(values));
  CHECK(read_npy_f32(path, &shape) == values);
  CHECK(shape == std::vector<std::int64_t>{6});
  CHECK(read_npy_header(path).major_version == 2);

  // Keys in another order and double quotes are still the same dict.
  write_raw(path, 1, "{\"shape\": (3, 2), \"fortran_order\": False, \"descr\": \"<f4\"}",
            bytes_of(values));
  CHECK(read_npy_f32(path, &shape) == values);
  CHECK(shape == std::vector<std::int64_t>{3, 2});

  const std::vector<std::int64_t> scalar = {42};
  write_raw(path, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (), }", bytes_of(scalar));
  CHECK(read_npy_i64(path, &shape) == scalar);
  CHECK(shape.empty());
  std::remove(path.c_str());
}

TEST_CASE("npy gives clear Errors for Fortran order, another dtype, truncated data and bad files") {
  const std::string path = temp_path("bad.npy");
  const std::vector<float> values(6, 1.0f);
  write_raw(path, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            bytes_of(values));
  std::string what = error_text([&] { read_npy_f32(path, nullptr); });
  CHECK(what.find("Fortran") != std::string::npos);

  write_raw(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", bytes_of(values));
  what = error_text([&] { read_npy_f32(path, nullptr); });
  CHECK(what.find("'<f8'") != std::string::npos);
  CHECK(what.find("float32") != std::string::npos);
  write_raw(path, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", bytes_of(values));
  CHECK(error_text([&] { read_npy_f32(path, nullptr); }).find("big-endian") != std::string::npos);

  write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
            bytes_of(values));
  what = error_text([&] { read_npy_f32(path, nullptr); });
  CHECK(what.find("truncated") != std::string::npos);

  write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, }", bytes_of(values));
  CHECK(error_text([&] { read_npy_f32(path, nullptr); }).find("malformed header") !=
        std::string::npos);
  write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }",
            bytes_of(values));
  CHECK(error_text([&] { read_npy_f32(path, nullptr); }).find("malformed header") !=
        std::string::npos);

  {
    std::ofstream out(path, std::ios::binary);
    out << "PK\x03\x04 this is a zip file, not an npy";
  }
  CHECK(error_text([&] { read_npy_f32(path, nullptr); }).find("not a NumPy .npy file") !=
        std::string::npos);
  std::remove(path.c_str());
  CHECK(error_text([&] { read_npy_f32(path, nullptr); }).find("cannot open") != std::string::npos);
}
