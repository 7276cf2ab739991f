// Implementation of engine/progress.h (writes to stderr).
#include "engine/progress.h"

#include <cstdio>
#include <unistd.h>

namespace sela {

Progress::Progress(std::string label, std::int64_t total, int plain_every_percent)
    : label_(std::move(label)),
      total_(total > 0 ? total : 1),
      plain_every_(plain_every_percent > 0 ? plain_every_percent : 25),
      terminal_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(std::int64_t done, const std::string& fields) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  if (terminal_) {
    if (now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw(fields, false);
    return;
  }
  int percent = static_cast<int>(100 * done_ / total_);
  int bucket = percent / plain_every_ * plain_every_;
  if (bucket > last_plain_percent_ && percent < 100) {
    last_plain_percent_ = bucket;
    draw(fields, false);
  }
}

void Progress::finish(const std::string& fields) {
  done_ = total_;
  draw(fields, true);
}

void Progress::draw(const std::string& fields, bool final) {
  double fraction = static_cast<double>(done_) / static_cast<double>(total_);
  if (fraction > 1) fraction = 1;
  double elapsed = elapsed_seconds();
  double eta = fraction > 0 ? elapsed * (1 - fraction) / fraction : 0;
  if (terminal_) {
    constexpr int kWidth = 24;
    int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r\033[K%s [%s] %3.0f%% %s %.0fs%s%s", label_.c_str(), bar.c_str(),
                 fraction * 100, fields.c_str(), final ? elapsed : eta,
                 final ? "" : " left", final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s %3.0f%% %s (%.0fs%s)\n", label_.c_str(), fraction * 100,
                 fields.c_str(), final ? elapsed : eta, final ? "" : " left");
  }
  std::fflush(stderr);
}

}  // namespace sela
