// Implementation of sela/run_files.h.
#include "sela/run_files.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <algorithm>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/error.h"

namespace sela {

void write_file_atomic(const std::string& path, const std::string& content) {
  std::string temporary = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  SELA_CHECK(fd >= 0, "write", "cannot create " << temporary << ": " << std::strerror(errno));
  std::size_t written = 0;
  while (written < content.size()) {
    ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int saved = errno;
      ::close(fd);
      std::remove(temporary.c_str());
      SELA_FAIL("write", "writing " << temporary << " failed: " << std::strerror(saved)
                                    << " (" << path << " is unchanged)");
    }
    written += static_cast<std::size_t>(n);
  }
  bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || std::rename(temporary.c_str(), path.c_str()) != 0) {
    int saved = errno;
    std::remove(temporary.c_str());
    SELA_FAIL("write", "cannot replace " << path << ": " << std::strerror(saved));
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SELA_CHECK(in.good(), "read", "cannot open " << path << ": " << std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

void append_line(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  SELA_CHECK(out.good(), "write", "cannot append to " << path << ": " << std::strerror(errno));
  out << line << "\n";
  out.flush();
  SELA_CHECK(out.good(), "write", "appending to " << path << " failed");
}

void make_directories(const std::string& path) {
  std::string partial;
  std::stringstream parts(path);
  std::string part;
  if (!path.empty() && path[0] == '/') partial = "/";
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    partial += part + "/";
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      SELA_FAIL("mkdir", "cannot create folder " << partial << ": " << std::strerror(errno));
    }
  }
  struct stat info {};
  SELA_CHECK(::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode), "mkdir",
             path << " is not a folder");
}

std::string labels_csv(const std::vector<std::vector<std::int64_t>>& labels) {
  std::string out = "index";
  for (std::size_t t = 0; t < labels.size(); ++t) out += ",head" + std::to_string(t);
  out += "\n";
  std::size_t n = labels.empty() ? 0 : labels[0].size();
  out.reserve(out.size() + n * (8 + 4 * labels.size()));
  char buffer[32];
  for (std::size_t i = 0; i < n; ++i) {
    int len = std::snprintf(buffer, sizeof buffer, "%zu", i);
    out.append(buffer, static_cast<std::size_t>(len));
    for (const auto& head : labels) {
      len = std::snprintf(buffer, sizeof buffer, ",%lld", static_cast<long long>(head[i]));
      out.append(buffer, static_cast<std::size_t>(len));
    }
    out += "\n";
  }
  return out;
}

std::vector<std::vector<std::int64_t>> parse_labels_csv(const std::string& path) {
  std::istringstream in(read_file(path));
  std::string line;
  SELA_CHECK(std::getline(in, line) && line.rfind("index", 0) == 0, "labels",
             path << ": the first line must be the header `index,head0,...`");
  std::size_t heads = static_cast<std::size_t>(std::count(line.begin(), line.end(), ','));
  std::vector<std::vector<std::int64_t>> labels(heads);
  std::int64_t row = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::stringstream fields(line);
    std::string field;
    std::vector<std::int64_t> values;
    while (std::getline(fields, field, ',')) {
      try {
        values.push_back(std::stoll(field));
      } catch (const std::exception&) {
        SELA_FAIL("labels", path << " line " << row + 2 << ": '" << field << "' is not an integer");
      }
    }
    SELA_CHECK(values.size() == heads + 1 && values[0] == row, "labels",
               path << " line " << row + 2 << ": expected index " << row << " and " << heads
                    << " labels");
    for (std::size_t t = 0; t < heads; ++t) labels[t].push_back(values[t + 1]);
    ++row;
  }
  return labels;
}

}  // namespace sela
