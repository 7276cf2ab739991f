// A fresh folder under $TMPDIR (or /tmp) for one test, removed with everything in it when
// the test ends (std::filesystem, so that a failed removal cannot fail the test or warn
// about an ignored std::system status). The prefix names the test in the folder's name, for
// a folder left behind by a crashed test.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>  // mkdtemp

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace sela::test {

class TempFolder {
 public:
  explicit TempFolder(const std::string& prefix = "sela_test") {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/" +
                          prefix + "_XXXXXX";
    const char* made = ::mkdtemp(pattern.data());
    REQUIRE_MESSAGE(made != nullptr, "mkdtemp failed for " << pattern);
    path = made;
  }
  ~TempFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;

  std::string path;
};

}  // namespace sela::test
