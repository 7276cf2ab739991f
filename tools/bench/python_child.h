// A Python process (/usr/bin/python3 -c SCRIPT THREADS) driven line by line over pipes, so
// that a kernel lab can time PyTorch's calls in the same rounds as its own: the lab writes a
// command line, the script answers one line. Used by gemm_lab.cpp and conv_lab.cpp.
#pragma once

#include <cstdio>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace sela::lab {

class PythonChild {
 public:
  // Starts the script; its first answer line (a banner) goes to *banner. False on failure.
  bool start(const char* script, int threads, std::string* banner) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return false;
    pid_ = fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      std::string t = std::to_string(threads);
      execl("/usr/bin/python3", "python3", "-c", script, t.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    in_ = fdopen(to_child[1], "w");
    out_ = fdopen(from_child[0], "r");
    *banner = read_line();
    return !banner->empty();
  }
  // Sends one command line and returns the answer line ("" when the child is gone).
  std::string ask(const std::string& line) {
    if (!in_) return "";
    std::fprintf(in_, "%s\n", line.c_str());
    std::fflush(in_);
    return read_line();
  }
  ~PythonChild() {
    if (in_) std::fclose(in_);
    if (out_) std::fclose(out_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }

 private:
  std::string read_line() {
    char buffer[512];
    if (!out_ || !std::fgets(buffer, sizeof buffer, out_)) return "";
    std::string line = buffer;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    return line;
  }
  pid_t pid_ = -1;
  FILE* in_ = nullptr;
  FILE* out_ = nullptr;
};

}  // namespace sela::lab
