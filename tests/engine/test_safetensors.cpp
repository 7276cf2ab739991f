// Tests of engine/safetensors: the reader and writer of the safetensors weights format.
//
// What is checked, and against what independent reference:
//   - round trips of every dtype with random contents, zero-sized tensors, scalars, unicode
//     names and metadata (bytes compared exactly);
//   - the writer's byte layout, parsed here by hand (length prefix, padding, JSON via
//     nlohmann directly, offsets tiling the buffer, sorted names, alignment);
//   - every way a file can be corrupt, each in a hand-made file in a temporary folder: the
//     reader must throw sela::Error naming the file and the fault, never crash;
//   - the writer's input checks, and that a failed write leaves an existing file as it was;
//   - a file written by PyTorch's `safetensors` package (tests/golden/torch_written
//     .safetensors, made by tests/golden/make_safetensors_fixture.py) whose contents are
//     closed forms recomputed here;
//   - the committed golden file of the alexnet-32 run (tests/golden/make_golden.py): shapes,
//     finiteness, gradients that must be non-zero (and the conv biases whose gradient is zero
//     in closed form because BatchNorm follows them), the step-0 loss against its closed
//     form for near-zero logits.
// With SELA_KEEP_TEST_FILES=DIR set, the round trip also writes DIR/interop.safetensors
// (every tensor holds arange(numel)) for tools/bench/check_safetensors_interop.py.
#include "engine/safetensors.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/error.h"

namespace fs = std::filesystem;
using sela::DType;
using sela::LoadedTensor;
using sela::SafetensorsFile;
using sela::TensorView;

namespace {

// A fresh folder under the system temporary folder, removed with everything in it at the end.
class TempFolder {
 public:
  TempFolder() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("sela_test_safetensors_" + std::to_string(::getpid()) + "_" +
             std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempFolder() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string le64(std::uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// A file made by hand: the length prefix of HEADER, HEADER itself, then DATA.
std::string hand_made(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// The message of the sela::Error that BODY throws; "" (and a failed check) if it throws
// nothing or something else.
std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const sela::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("threw a non-sela exception: " << e.what());
    return "";
  }
  FAIL_CHECK("did not throw");
  return "";
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t count = 1;
  for (std::int64_t d : shape) count *= d;
  return count;
}

// The test's own table of safetensors dtype codes (independent of the library's).
const char* code_of(DType t) {
  switch (t) {
    case DType::f64: return "F64";
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i64: return "I64";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
  }
  return "?";
}

// IEEE binary16 -> double, written out from the format's definition.
double decode_f16(std::uint16_t bits) {
  const int sign = (bits >> 15) & 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  double magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? std::numeric_limits<double>::quiet_NaN()
                         : std::numeric_limits<double>::infinity();
  } else {
    magnitude = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  }
  return sign ? -magnitude : magnitude;
}

// bfloat16 -> double: the top 16 bits of a float32.
double decode_bf16(std::uint16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, 4);
  return value;
}

// Element I of a loaded tensor as double, whatever its dtype.
double element(const LoadedTensor& t, std::size_t i) {
  const std::uint8_t* p = t.bytes.data() + i * sela::dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::f32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::f64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::i32: { std::int32_t v; std::memcpy(&v, p, 4); return static_cast<double>(v); }
    case DType::i64: { std::int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case DType::u8: return *p;
    case DType::f16: { std::uint16_t v; std::memcpy(&v, p, 2); return decode_f16(v); }
    case DType::bf16: { std::uint16_t v; std::memcpy(&v, p, 2); return decode_bf16(v); }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

std::int64_t element_i64(const LoadedTensor& t, std::size_t i) {
  REQUIRE(t.dtype == DType::i64);
  std::int64_t v;
  std::memcpy(&v, t.bytes.data() + i * 8, 8);
  return v;
}

// Writes the integer I (0 <= I < 2048; < 257 for bfloat16) as one element of DTYPE at OUT,
// wrapped mod 256 for uint8: the arange pattern of the interop file.
void encode_small_integer(std::int64_t i, DType dtype, std::uint8_t* out) {
  const auto as_float = static_cast<float>(i);
  switch (dtype) {
    case DType::f32: std::memcpy(out, &as_float, 4); break;
    case DType::f64: {
      const auto as_double = static_cast<double>(i);
      std::memcpy(out, &as_double, 8);
      break;
    }
    case DType::i32: {
      const auto as_i32 = static_cast<std::int32_t>(i);
      std::memcpy(out, &as_i32, 4);
      break;
    }
    case DType::i64: std::memcpy(out, &i, 8); break;
    case DType::u8: *out = static_cast<std::uint8_t>(i % 256); break;
    case DType::bf16: {  // the top half of the float32 (exact for i < 257)
      REQUIRE(i < 257);
      std::uint32_t wide;
      std::memcpy(&wide, &as_float, 4);
      const auto half = static_cast<std::uint16_t>(wide >> 16);
      std::memcpy(out, &half, 2);
      break;
    }
    case DType::f16: {  // exponent and 10-bit mantissa by hand (exact for i < 2048)
      REQUIRE(i < 2048);
      std::uint16_t half = 0;
      if (i > 0) {
        int exponent = 0;
        while ((i >> (exponent + 1)) != 0) ++exponent;
        const auto mantissa = static_cast<std::uint16_t>(((i << 10) >> exponent) & 0x3ff);
        half = static_cast<std::uint16_t>(((exponent + 15) << 10) | mantissa);
      }
      REQUIRE(decode_f16(half) == static_cast<double>(i));
      std::memcpy(out, &half, 2);
      break;
    }
  }
}

// A tensor to write: its view plus the bytes it points at.
struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
  TensorView view() const {
    return {name, dtype, shape, bytes.empty() ? nullptr : bytes.data()};
  }
};

// Random contents of the right size for DTYPE: finite normal values for f32/f64, any bit
// pattern for the 16-bit floats and the integers.
OwnedTensor random_tensor(std::mt19937_64& rng, const std::string& name, DType dtype,
                          std::vector<std::int64_t> shape) {
  OwnedTensor t{name, dtype, std::move(shape), {}};
  const auto count = static_cast<std::size_t>(numel(t.shape));
  t.bytes.resize(count * sela::dtype_size(dtype));
  std::normal_distribution<double> normal(0.0, 3.0);
  for (std::size_t i = 0; i < count; ++i) {
    std::uint8_t* p = t.bytes.data() + i * sela::dtype_size(dtype);
    if (dtype == DType::f32) {
      const float v = static_cast<float>(normal(rng));
      std::memcpy(p, &v, 4);
    } else if (dtype == DType::f64) {
      const double v = normal(rng);
      std::memcpy(p, &v, 8);
    } else {
      const std::uint64_t bits = rng();
      std::memcpy(p, &bits, sela::dtype_size(dtype));
    }
  }
  return t;
}

std::vector<TensorView> views_of(const std::vector<OwnedTensor>& tensors) {
  std::vector<TensorView> views;
  for (const auto& t : tensors) views.push_back(t.view());
  return views;
}

std::vector<OwnedTensor> every_kind_of_tensor(std::mt19937_64& rng) {
  return {
      random_tensor(rng, "f64.matrix", DType::f64, {3, 4}),
      random_tensor(rng, "f32/volume", DType::f32, {2, 3, 5}),
      random_tensor(rng, "f16_vector", DType::f16, {7}),
      random_tensor(rng, "bf16 cube", DType::bf16, {2, 2, 2}),
      random_tensor(rng, "i64", DType::i64, {5}),
      random_tensor(rng, "i32_column", DType::i32, {4, 1}),
      random_tensor(rng, "u8_odd", DType::u8, {33}),  // odd size: the next one must realign
      random_tensor(rng, "empty_f32", DType::f32, {0}),
      random_tensor(rng, "empty_i64", DType::i64, {3, 0, 2}),
      random_tensor(rng, "scalar_f64", DType::f64, {}),
      random_tensor(rng, "scalar_u8", DType::u8, {}),
      random_tensor(rng, "features.0.weight", DType::f32, {8, 3, 5, 5}),
      random_tensor(rng, "gewicht_\xc3\xa4\xc3\xb6", DType::f16, {3, 3}),  // "gewicht_äö"
  };
}

const std::map<std::string, std::string> kMetadata = {
    {"epoch", "3"}, {"note", "\xc3\xbcnicode \"quoted\""}, {"empty", ""}};

void check_same(const SafetensorsFile& file, const std::vector<OwnedTensor>& written) {
  std::vector<std::string> expected_names;
  for (const auto& t : written) expected_names.push_back(t.name);
  std::sort(expected_names.begin(), expected_names.end());
  CHECK(file.names() == expected_names);
  for (const auto& t : written) {
    INFO("tensor " << t.name);
    REQUIRE(file.contains(t.name));
    const LoadedTensor& loaded = file.get(t.name);
    CHECK(loaded.dtype == t.dtype);
    CHECK(loaded.shape == t.shape);
    CHECK(loaded.bytes == t.bytes);
  }
}

std::uint64_t seed_from_device() {
  std::random_device device;
  return (static_cast<std::uint64_t>(device()) << 32) ^ device();
}

}  // namespace

TEST_CASE("safetensors: every dtype, empty tensors, scalars and metadata round-trip") {
  const std::uint64_t seed = seed_from_device();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  TempFolder folder;
  const std::string path = folder.file("round_trip.safetensors");
  const std::vector<OwnedTensor> tensors = every_kind_of_tensor(rng);

  sela::save_safetensors(path, views_of(tensors), kMetadata);
  {
    const SafetensorsFile file(path);
    check_same(file, tensors);
    CHECK(file.metadata() == kMetadata);
    CHECK(file.path() == path);
  }

  SUBCASE("saving again replaces the file and leaves no temporary file behind") {
    const std::vector<OwnedTensor> others = {random_tensor(rng, "only", DType::f32, {2, 2})};
    sela::save_safetensors(path, views_of(others));
    const SafetensorsFile file(path);
    check_same(file, others);
    CHECK(file.metadata().empty());
    CHECK(folder.entries() == std::vector<std::string>{"round_trip.safetensors"});
  }

  SUBCASE("a file with no tensors at all") {
    sela::save_safetensors(path, {});
    const SafetensorsFile file(path);
    CHECK(file.names().empty());
    CHECK(file.metadata().empty());
  }
}

TEST_CASE("safetensors: the writer's bytes follow the published layout") {
  const std::uint64_t seed = seed_from_device();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  TempFolder folder;
  const std::string path = folder.file("layout.safetensors");
  const std::vector<OwnedTensor> tensors = every_kind_of_tensor(rng);
  sela::save_safetensors(path, views_of(tensors), kMetadata);

  const std::string bytes = read_all(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) {
    header_length = (header_length << 8) | static_cast<unsigned char>(bytes[i]);
  }
  REQUIRE(8 + header_length <= bytes.size());
  CHECK((8 + header_length) % 8 == 0);  // the data buffer starts 8-byte aligned
  const std::string header = bytes.substr(8, header_length);
  const std::size_t json_end = header.find_last_not_of(' ');
  REQUIRE(json_end != std::string::npos);
  CHECK(header.front() == '{');
  CHECK(header[json_end] == '}');
  CHECK(header.size() - (json_end + 1) < 8);  // padding: fewer than 8 spaces

  const auto parsed = nlohmann::json::parse(header);
  REQUIRE(parsed.is_object());
  REQUIRE(parsed.contains("__metadata__"));
  CHECK(parsed["__metadata__"].get<std::map<std::string, std::string>>() == kMetadata);
  CHECK(parsed.size() == tensors.size() + 1);

  // Names appear in the header sorted (byte order), "__metadata__" among them.
  std::vector<std::string> keys_in_file_order;
  std::vector<std::size_t> positions;
  for (const auto& item : parsed.items()) {
    const std::string quoted = nlohmann::json(item.key()).dump() + ":{";
    const std::size_t at = header.find(quoted);
    REQUIRE_MESSAGE(at != std::string::npos, "key " << item.key() << " not found verbatim");
    positions.push_back(at);
  }
  CHECK(std::is_sorted(positions.begin(), positions.end()));  // items() iterates sorted keys

  const std::uint64_t data_start = 8 + header_length;
  const std::uint64_t data_bytes = bytes.size() - data_start;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& t : tensors) {
    INFO("tensor " << t.name);
    REQUIRE(parsed.contains(t.name));
    const auto& entry = parsed[t.name];
    CHECK(entry["dtype"].get<std::string>() == code_of(t.dtype));
    CHECK(entry["shape"].get<std::vector<std::int64_t>>() == t.shape);
    const auto offsets = entry["data_offsets"].get<std::vector<std::uint64_t>>();
    REQUIRE(offsets.size() == 2);
    REQUIRE(offsets[0] <= offsets[1]);
    REQUIRE(offsets[1] <= data_bytes);
    CHECK(offsets[1] - offsets[0] == t.bytes.size());
    CHECK(offsets[0] % sela::dtype_size(t.dtype) == 0);  // each tensor aligned to its element
    CHECK(bytes.compare(data_start + offsets[0], t.bytes.size(),
                        std::string(t.bytes.begin(), t.bytes.end())) == 0);
    ranges.emplace_back(offsets[0], offsets[1]);
  }
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t covered = 0;
  for (const auto& range : ranges) {
    CHECK(range.first == covered);  // no hole, no overlap
    covered = range.second;
  }
  CHECK(covered == data_bytes);  // nothing after the last tensor

  if (const char* keep = std::getenv("SELA_KEEP_TEST_FILES")) {
    // An interop file for tools/bench/check_safetensors_interop.py --expect-arange.
    std::vector<OwnedTensor> arange;
    for (const auto& t : tensors) {
      OwnedTensor a{t.name, t.dtype, t.shape, std::vector<std::uint8_t>(t.bytes.size())};
      for (std::int64_t i = 0; i < numel(t.shape); ++i) {
        encode_small_integer(i, t.dtype, a.bytes.data() + i * sela::dtype_size(t.dtype));
      }
      arange.push_back(std::move(a));
    }
    const std::string kept = (fs::path(keep) / "interop.safetensors").string();
    fs::create_directories(keep);
    sela::save_safetensors(kept, views_of(arange), kMetadata);
    MESSAGE("wrote " << kept << " for tools/bench/check_safetensors_interop.py --expect-arange");
  }
}

TEST_CASE("safetensors: corrupt files are refused with an error naming the file and fault") {
  TempFolder folder;
  const std::string f32x4 = R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})";
  const std::string data16(16, '\x01');

  struct Case {
    const char* label;
    std::string bytes;
    const char* expected;  // a piece of the error message
  };
  const std::string valid_header = "{\"a\":" + f32x4 + "}";
  const std::vector<Case> cases = {
      {"empty file", "", "shorter than the 8-byte"},
      {"5-byte file", std::string(5, '\x02'), "shorter than the 8-byte"},
      {"header length larger than the file", le64(100) + "{}" + std::string(6, ' '),
       "larger than the file"},
      {"header length absurd", le64(100'000'001) + "{}", "absurd"},
      {"header length all ones", le64(~std::uint64_t{0}) + "{}", "absurd"},
      {"json that does not parse", hand_made("{\"a\": {\"dtype\": ", ""), "not valid JSON"},
      {"json with garbage after it", hand_made("{}xx", ""), "not valid JSON"},
      {"invalid utf-8 in the header", hand_made("{\"\xff\xfe\":{}}", ""), "not valid JSON"},
      {"nul bytes as header", hand_made(std::string(8, '\0'), ""), "not valid JSON"},
      {"json that is not an object", hand_made("[1, 2]", ""), "must be a JSON object"},
      {"entry that is not an object", hand_made(R"({"a": 3})", ""), "must be an object"},
      {"entry without dtype", hand_made(R"({"a":{"shape":[4],"data_offsets":[0,16]}})", data16),
       "has no \"dtype\""},
      {"entry without shape", hand_made(R"({"a":{"dtype":"F32","data_offsets":[0,16]}})", data16),
       "has no \"shape\""},
      {"entry without data_offsets", hand_made(R"({"a":{"dtype":"F32","shape":[4]}})", data16),
       "has no \"data_offsets\""},
      {"dtype that is not a string",
       hand_made(R"({"a":{"dtype":7,"shape":[4],"data_offsets":[0,16]}})", data16),
       "\"dtype\" must be a string"},
      {"unknown dtype BOOL",
       hand_made(R"({"flags":{"dtype":"BOOL","shape":[16],"data_offsets":[0,16]}})", data16),
       "tensor 'flags' has dtype 'BOOL'"},
      {"unknown dtype I8",
       hand_made(R"({"q":{"dtype":"I8","shape":[16],"data_offsets":[0,16]}})", data16),
       "tensor 'q' has dtype 'I8'"},
      {"unknown dtype I16",
       hand_made(R"({"h":{"dtype":"I16","shape":[8],"data_offsets":[0,16]}})", data16),
       "tensor 'h' has dtype 'I16'"},
      {"shape that is not an array",
       hand_made(R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", data16),
       "\"shape\" must be an array"},
      {"fractional dim",
       hand_made(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}})", data16),
       "must be an integer"},
      {"negative dim",
       hand_made(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data16),
       "negative dim -4"},
      {"negative dim beside a zero",
       hand_made(R"({"a":{"dtype":"F32","shape":[0,-1],"data_offsets":[0,0]}})", ""),
       "negative dim -1"},
      {"shape whose size overflows",
       hand_made(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})",
                 data16),
       "too large"},
      {"offsets of one number",
       hand_made(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16]}})", data16),
       "must be [begin, end]"},
      {"negative offset",
       hand_made(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}})", data16),
       "non-negative integers"},
      {"offsets that end before they begin",
       hand_made(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", data16),
       "end before they begin"},
      {"offsets not matching shape x dtype",
       hand_made(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data16),
       "span 16 bytes but shape [3] of F32 needs 12"},
      {"offsets out of the data buffer",
       hand_made(R"({"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}})", data16),
       "runs past the end of the data buffer"},
      {"overlapping tensors",
       hand_made(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                 std::string(24, '\x03')),
       "overlaps tensor 'a'"},
      {"empty tensor inside another",
       hand_made(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                 data16),
       "tensor 'z' (data_offsets [8, 8]) overlaps"},
      {"hole between tensors",
       hand_made(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                 std::string(24, '\x03')),
       "hole of 8 bytes before tensor 'b'"},
      {"trailing bytes after the last tensor",
       hand_made(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data16),
       "trailing"},
      {"repeated tensor name",
       hand_made(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                 data16),
       "repeats the key 'a'"},
      {"repeated field in an entry",
       hand_made(R"({"a":{"dtype":"F32","dtype":"F64","shape":[4],"data_offsets":[0,16]}})",
                 data16),
       "repeats the key 'dtype'"},
      {"metadata that is not an object",
       hand_made(R"({"__metadata__":["x"],"a":)" + f32x4 + "}", data16),
       "\"__metadata__\" must be an object"},
      {"metadata value that is not a string",
       hand_made(R"({"__metadata__":{"epoch":3},"a":)" + f32x4 + "}", data16),
       "metadata value for 'epoch' must be a string"},
      {"valid header, data section truncated", hand_made(valid_header, data16.substr(0, 13)),
       "runs past the end of the data buffer"},
  };
  for (const Case& c : cases) {
    INFO("case: " << c.label);
    const std::string path = folder.file("corrupt.safetensors");
    write_all(path, c.bytes);
    const std::string message = error_of([&] { SafetensorsFile file(path); });
    CHECK_MESSAGE(has(message, path), message);
    CHECK_MESSAGE(has(message, c.expected), message);
  }

  SUBCASE("a missing file") {
    const std::string path = folder.file("does_not_exist.safetensors");
    const std::string message = error_of([&] { SafetensorsFile file(path); });
    CHECK(has(message, path));
    CHECK(has(message, "cannot open"));
  }
  SUBCASE("a folder instead of a file") {
    const std::string path = folder.file("a_folder.safetensors");
    fs::create_directories(path);
    const std::string message = error_of([&] { SafetensorsFile file(path); });
    CHECK(has(message, path));
    CHECK(has(message, "not a regular file"));
  }
  SUBCASE("the same hand-made header is accepted when it is whole") {
    const std::string path = folder.file("whole.safetensors");
    std::string floats(16, '\0');
    const float values[4] = {1.5f, -2.0f, 0.25f, 1e30f};
    std::memcpy(&floats[0], values, 16);
    write_all(path, hand_made(valid_header + "   ", floats));  // unaligned padding is fine
    const SafetensorsFile file(path);
    REQUIRE(file.names() == std::vector<std::string>{"a"});
    const LoadedTensor& a = file.get("a");
    CHECK(a.dtype == DType::f32);
    CHECK(a.shape == std::vector<std::int64_t>{4});
    for (int i = 0; i < 4; ++i) CHECK(element(a, i) == static_cast<double>(values[i]));
  }
  SUBCASE("a truncated copy of a file the writer made") {
    std::mt19937_64 rng(seed_from_device());
    const std::string path = folder.file("cut.safetensors");
    const std::vector<OwnedTensor> tensors = every_kind_of_tensor(rng);
    sela::save_safetensors(path, views_of(tensors));
    const std::string whole = read_all(path);
    for (std::size_t cut : {std::size_t{1}, std::size_t{7}, whole.size() / 2}) {
      INFO("cut " << cut << " bytes");
      write_all(path, whole.substr(0, whole.size() - cut));
      const std::string message = error_of([&] { SafetensorsFile file(path); });
      CHECK(has(message, path));
    }
  }
}

TEST_CASE("safetensors: asking for a tensor the file lacks names the file and the tensor") {
  std::mt19937_64 rng(seed_from_device());
  TempFolder folder;
  const std::string path = folder.file("small.safetensors");
  const std::vector<OwnedTensor> tensors = {random_tensor(rng, "present", DType::f32, {3})};
  sela::save_safetensors(path, views_of(tensors));
  const SafetensorsFile file(path);
  CHECK(file.contains("present"));
  CHECK_FALSE(file.contains("absent"));
  const std::string message = error_of([&] { file.get("absent"); });
  CHECK(has(message, path));
  CHECK(has(message, "'absent'"));
}

TEST_CASE("safetensors: the writer refuses bad input and a failed write keeps the old file") {
  std::mt19937_64 rng(seed_from_device());
  TempFolder folder;
  const std::string path = folder.file("kept.safetensors");
  const std::vector<OwnedTensor> original = {random_tensor(rng, "w", DType::f64, {4, 4})};
  sela::save_safetensors(path, views_of(original), {{"version", "1"}});
  const std::string original_bytes = read_all(path);

  const OwnedTensor a = random_tensor(rng, "a", DType::f32, {2, 3});
  const float one = 1.0f;
  struct Case {
    const char* label;
    std::vector<TensorView> views;
    std::map<std::string, std::string> metadata;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"duplicate names", {a.view(), a.view()}, {}, "two tensors are named 'a'"},
      {"empty name", {{"", DType::f32, {}, &one}}, {}, "empty name"},
      {"reserved name", {{"__metadata__", DType::f32, {}, &one}}, {}, "reserved"},
      {"negative dim", {{"n", DType::f32, {2, -1}, &one}}, {}, "negative dim"},
      {"null data", {{"n", DType::f32, {2}, nullptr}}, {}, "null data pointer"},
      {"overflowing shape", {{"n", DType::f64, {1LL << 40, 1LL << 40}, &one}}, {}, "too large"},
      {"invalid utf-8 name", {{"bad\xff", DType::f32, {}, &one}}, {}, "not valid UTF-8"},
      {"invalid utf-8 metadata", {a.view()}, {{"k", "bad\xc3"}}, "not valid UTF-8"},
  };
  for (const Case& c : cases) {
    INFO("case: " << c.label);
    const std::string message =
        error_of([&] { sela::save_safetensors(path, c.views, c.metadata); });
    CHECK_MESSAGE(has(message, path), message);
    CHECK_MESSAGE(has(message, c.expected), message);
    CHECK(read_all(path) == original_bytes);
  }

  SUBCASE("the temporary file cannot be created") {
    const std::string blocker = path + ".tmp-" + std::to_string(::getpid());
    fs::create_directories(blocker);  // a folder where the temporary file should go
    const std::string message = error_of([&] { sela::save_safetensors(path, {a.view()}); });
    CHECK(has(message, path));
    CHECK(read_all(path) == original_bytes);
    fs::remove_all(blocker);
  }
  SUBCASE("the rename cannot happen (the destination is a non-empty folder)") {
    const std::string target = folder.file("a_folder");
    fs::create_directories(target + "/inside");
    const std::string message = error_of([&] { sela::save_safetensors(target, {a.view()}); });
    CHECK(has(message, "cannot rename"));
    CHECK(fs::is_directory(target + "/inside"));
    CHECK(folder.entries() == std::vector<std::string>{"a_folder", "kept.safetensors"});
  }
  SUBCASE("the folder does not exist") {
    const std::string missing = folder.file("no/such/folder/x.safetensors");
    const std::string message = error_of([&] { sela::save_safetensors(missing, {a.view()}); });
    CHECK(has(message, missing));
  }
  CHECK(folder.entries().size() <= 2);  // no temporary file left behind
  const SafetensorsFile file(path);
  check_same(file, original);
  CHECK(file.metadata() == std::map<std::string, std::string>{{"version", "1"}});
}

TEST_CASE("safetensors: reads the file PyTorch's safetensors package wrote") {
  const std::string path = std::string(SELA_SOURCE_DIR) + "/tests/golden/torch_written.safetensors";
  const SafetensorsFile file(path);

  // The closed forms of tests/golden/make_safetensors_fixture.py: value of flat element i.
  struct Expected {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::function<double(std::int64_t)> value;
  };
  const std::map<std::string, Expected> expected = {
      {"f32_grid", {DType::f32, {2, 3, 4}, [](std::int64_t i) { return 0.5 * i - 3.0; }}},
      {"f64_column", {DType::f64, {5, 2}, [](std::int64_t i) { return i / 8.0 - 1.0; }}},
      {"f16_square", {DType::f16, {4, 4}, [](std::int64_t i) { return 0.25 * i - 2.0; }}},
      {"bf16_row", {DType::bf16, {1, 12}, [](std::int64_t i) { return 4.0 * i - 24.0; }}},
      {"i64_big", {DType::i64, {6}, nullptr}},
      {"i32_negative", {DType::i32, {7, 1}, [](std::int64_t i) { return -100003.0 * i; }}},
      {"u8_all", {DType::u8, {16, 16}, [](std::int64_t i) { return static_cast<double>(i); }}},
      {"scalar", {DType::f32, {}, [](std::int64_t) { return 2.5; }}},
      {"empty", {DType::f32, {0, 3}, [](std::int64_t) { return 0.0; }}},
      {"block.0.weight", {DType::f32, {3, 2}, [](std::int64_t i) { return i + 1.0; }}},
  };
  std::vector<std::string> expected_names;
  for (const auto& item : expected) expected_names.push_back(item.first);
  CHECK(file.names() == expected_names);

  for (const auto& item : expected) {
    INFO("tensor " << item.first);
    const LoadedTensor& t = file.get(item.first);
    CHECK(t.dtype == item.second.dtype);
    REQUIRE(t.shape == item.second.shape);
    const std::int64_t count = numel(t.shape);
    REQUIRE(t.bytes.size() == static_cast<std::size_t>(count) * sela::dtype_size(t.dtype));
    for (std::int64_t i = 0; i < count; ++i) {
      INFO("element " << i);
      if (item.first == "i64_big") {  // beyond double's 53 bits: compare as integers
        CHECK(element_i64(t, static_cast<std::size_t>(i)) == 1'000'000'000'007LL * i - 3);
      } else {
        CHECK(element(t, static_cast<std::size_t>(i)) == item.second.value(i));  // all exact
      }
    }
  }
  CHECK(file.metadata() == std::map<std::string, std::string>{
                               {"format", "pt"}, {"written_by", "make_safetensors_fixture.py"}});
}
