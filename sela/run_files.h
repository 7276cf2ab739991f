// Files of a run folder, written so that a crash never leaves one half-written:
// whole files go to PATH.tmp-<pid> first, are flushed and fsync'ed, then renamed over PATH.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sela {

void write_file_atomic(const std::string& path, const std::string& content);
std::string read_file(const std::string& path);  // Error naming the path if unreadable
void append_line(const std::string& path, const std::string& line);  // JSON lines logs
void make_directories(const std::string& path);  // like mkdir -p; Error naming the path

// `index,head0,head1,...` then one row per sample. labels: (T) x (N).
std::string labels_csv(const std::vector<std::vector<std::int64_t>>& labels);
// Parses what labels_csv wrote (Error naming the path and line on anything else).
std::vector<std::vector<std::int64_t>> parse_labels_csv(const std::string& path);

}  // namespace sela
