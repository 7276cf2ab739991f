// Progress reporting for long work (epochs, label steps, data passes).
//
// On a terminal a one-line bar is redrawn in place (at most ~10 times a second); otherwise
// (CI, a log file) one plain line is printed every `plain_every` percent, so logs stay
// readable. Callers supply the fields to show after the bar ("loss 2.31 lr 0.05 ...").
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace sela {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, int plain_every_percent = 25);
  // Sets the position and the text shown after the bar; redraws when due.
  void update(std::int64_t done, const std::string& fields);
  // Final line (always printed), with the elapsed time.
  void finish(const std::string& fields);
  double elapsed_seconds() const;

 private:
  void draw(const std::string& fields, bool final);

  std::string label_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  int plain_every_;
  int last_plain_percent_ = -1;
  bool terminal_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace sela
