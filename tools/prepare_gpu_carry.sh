#!/usr/bin/env bash
# Copies the Debian-packaged headers the GPU machine lacks (doctest, stb, nlohmann-json)
# into third_party_headers/ (git-ignored), which CMake searches first, and the gzipped
# Fashion-MNIST files (about 30 MB; the device tool carries at most 64 MiB) into
# third_party_headers/datasets/fashion-mnist for the GPU run of the whole pipeline. Name that folder in
# the device tool's `carry` list when running tools/gpu_check.sh there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/third_party_headers"
mkdir -p "$dest"
cp -r /usr/include/doctest "$dest/"
cp -r /usr/include/stb "$dest/"
cp -r /usr/include/nlohmann "$dest/"
mkdir -p "$dest/datasets/fashion-mnist"
cp /usr/share/datasets/fashion-mnist/*.gz "$dest/datasets/fashion-mnist/"
du -sh "$dest"
