#!/usr/bin/env bash
# Copies the Debian-packaged headers the GPU machine lacks (doctest, stb, nlohmann-json)
# into third_party_headers/ (git-ignored), which CMake searches first. Name that folder in
# the device tool's `carry` list when running tools/gpu_check.sh there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/third_party_headers"
mkdir -p "$dest"
cp -r /usr/include/doctest "$dest/"
cp -r /usr/include/stb "$dest/"
cp -r /usr/include/nlohmann "$dest/"
du -sh "$dest"
