// A small command-line flag parser shared by every `sela` subcommand.
//
// Each subcommand declares its flags (name, default, help) on a Flags object, then parses
// its arguments. Unknown flags, missing values and values that do not parse are Errors that
// name the flag and say what was expected; `--help` prints the generated help text.
//
//   Flags flags("sela bench sinkhorn", "Times the Sinkhorn-Knopp label assignment.");
//   flags.add("n", "200000", "number of samples N");
//   flags.add_switch("json", "print one JSON object on the last line");
//   if (!flags.parse(args)) return 0;        // --help was printed
//   std::int64_t n = flags.get_int("n");
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sela::cli {

class Flags {
 public:
  Flags(std::string usage, std::string description);

  // A flag taking a value: --name VALUE or --name=VALUE.
  void add(const std::string& name, const std::string& default_value, const std::string& help);
  // A switch: --name sets it true.
  void add_switch(const std::string& name, const std::string& help);

  // Returns false when --help was given (help already printed to stdout).
  bool parse(const std::vector<std::string>& args);

  bool has(const std::string& name) const;  // given on the command line (not defaulted)
  std::string get(const std::string& name) const;
  std::int64_t get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  bool get_switch(const std::string& name) const;
  // A flag whose value must be "on" or "off" (anything else is an Error naming the flag).
  bool get_on_off(const std::string& name) const;
  // Comma-separated list of integers: "3000,3000,10".
  std::vector<std::int64_t> get_int_list(const std::string& name) const;
  std::vector<std::string> positional() const { return positional_; }

  std::string help_text() const;

 private:
  struct Spec {
    std::string default_value;
    std::string help;
    bool is_switch = false;
  };
  const Spec& spec(const std::string& name) const;

  std::string usage_;
  std::string description_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace sela::cli
