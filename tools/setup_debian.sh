#!/usr/bin/env bash
# Installs what sela needs on Debian 12 (bookworm): compiler, CMake, the header-only
# libraries (doctest, stb, nlohmann-json), zlib, the CPU GEMM library (oneDNN), and the
# Fashion-MNIST data set used by the default run. Run as root (or through sudo).
set -euo pipefail
packages=(cmake g++ make pkg-config doctest-dev libstb-dev nlohmann-json3-dev zlib1g-dev
          libdnnl-dev dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "setup: all packages present (${packages[*]})"
