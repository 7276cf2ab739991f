// sela::Error — the one exception type of the engine.
//
// Library code never calls exit() or assert() for conditions a user can cause: it throws
// sela::Error carrying the op (or file/flag) that failed, what was expected and what was
// found, where in the source it was raised, and a hint saying what to do. The CLI catches it
// at the top and prints `error: <message>` with a non-zero exit.
//
// Use SELA_CHECK(cond, op, message) for preconditions; message is built with operator<<:
//   SELA_CHECK(a.dim() == 2, "linear", "input must be 2-D, got shape " << shape_str(a.shape()));
// and SELA_FAIL(op, message) where the condition has already been tested.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sela {

class Error : public std::runtime_error {
 public:
  Error(std::string op, std::string message, const char* file, int line, std::string hint = {})
      : std::runtime_error(format(op, message, file, line, hint)),
        op_(std::move(op)),
        message_(std::move(message)),
        hint_(std::move(hint)) {}

  const std::string& op() const { return op_; }
  const std::string& message() const { return message_; }
  const std::string& hint() const { return hint_; }

 private:
  static std::string format(const std::string& op, const std::string& message, const char* file,
                            int line, const std::string& hint) {
    std::ostringstream out;
    out << op << ": " << message;
    if (!hint.empty()) out << " (hint: " << hint << ")";
    out << " [" << file << ":" << line << "]";
    return out.str();
  }

  std::string op_;
  std::string message_;
  std::string hint_;
};

}  // namespace sela

#define SELA_FAIL(op, message)                                    \
  do {                                                            \
    std::ostringstream sela_fail_stream_;                         \
    sela_fail_stream_ << message;                                 \
    throw ::sela::Error((op), sela_fail_stream_.str(), __FILE__, __LINE__); \
  } while (0)

#define SELA_FAIL_HINT(op, message, hint)                         \
  do {                                                            \
    std::ostringstream sela_fail_stream_;                         \
    sela_fail_stream_ << message;                                 \
    throw ::sela::Error((op), sela_fail_stream_.str(), __FILE__, __LINE__, (hint)); \
  } while (0)

#define SELA_CHECK(cond, op, message) \
  do {                                \
    if (!(cond)) SELA_FAIL(op, message); \
  } while (0)
