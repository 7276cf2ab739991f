// Implementation of tools/cli.h.
#include "tools/cli.h"

#include <iostream>
#include <sstream>

#include "engine/error.h"

namespace sela::cli {

Flags::Flags(std::string usage, std::string description)
    : usage_(std::move(usage)), description_(std::move(description)) {}

void Flags::add(const std::string& name, const std::string& default_value,
                const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{default_value, help, false};
}

void Flags::add_switch(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{"", help, true};
}

const Flags::Spec& Flags::spec(const std::string& name) const {
  auto it = specs_.find(name);
  SELA_CHECK(it != specs_.end(), usage_, "internal: flag --" << name << " was never declared");
  return it->second;
}

bool Flags::parse(const std::vector<std::string>& args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << help_text();
      return false;
    }
    if (arg.rfind("--", 0) != 0) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool inline_value = false;
    auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) {
      SELA_FAIL_HINT(usage_, "unknown flag --" << name, "see `" + usage_ + " --help`");
    }
    if (it->second.is_switch) {
      SELA_CHECK(!inline_value, usage_, "--" << name << " is a switch and takes no value");
      values_[name] = "1";
      continue;
    }
    if (!inline_value) {
      SELA_CHECK(i + 1 < args.size(), usage_, "flag --" << name << " needs a value ("
                                                        << it->second.help << ")");
      value = args[++i];
    }
    values_[name] = value;
  }
  return true;
}

bool Flags::has(const std::string& name) const {
  spec(name);
  return values_.count(name) != 0;
}

std::string Flags::get(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(name);
  return it == values_.end() ? s.default_value : it->second;
}

std::int64_t Flags::get_int(const std::string& name) const {
  std::string text = get(name);
  try {
    std::size_t used = 0;
    long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  SELA_FAIL(usage_, "--" << name << " expects an integer, got '" << text << "'");
}

double Flags::get_double(const std::string& name) const {
  std::string text = get(name);
  try {
    std::size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  SELA_FAIL(usage_, "--" << name << " expects a number, got '" << text << "'");
}

bool Flags::get_switch(const std::string& name) const {
  spec(name);
  return values_.count(name) != 0;
}

bool Flags::get_on_off(const std::string& name) const {
  const std::string value = get(name);
  if (value == "on") return true;
  if (value == "off") return false;
  SELA_FAIL(usage_, "--" << name << " expects on or off, got '" << value << "'");
}

std::vector<std::int64_t> Flags::get_int_list(const std::string& name) const {
  std::string text = get(name);
  std::vector<std::int64_t> out;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    try {
      std::size_t used = 0;
      long long v = std::stoll(item, &used);
      if (used == item.size()) {
        out.push_back(v);
        continue;
      }
    } catch (const std::exception&) {
    }
    SELA_FAIL(usage_, "--" << name << " expects comma-separated integers, got '" << text << "'");
  }
  SELA_CHECK(!out.empty(), usage_, "--" << name << " expects at least one integer");
  return out;
}

std::string Flags::help_text() const {
  std::ostringstream out;
  out << "usage: " << usage_ << " [flags]\n\n" << description_ << "\n\nflags:\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = "  --" + name + (s.is_switch ? "" : " VALUE");
    out << left;
    if (left.size() < 28) out << std::string(28 - left.size(), ' ');
    else out << "\n" << std::string(28, ' ');
    out << s.help;
    if (!s.is_switch && !s.default_value.empty()) out << " (default: " << s.default_value << ")";
    out << "\n";
  }
  out << "  --help                    print this help\n";
  return out.str();
}

}  // namespace sela::cli
