#!/usr/bin/env bash
# The CUDA kernel part of the GPU check: configures with CUDA for the card present, builds
# the kernel library and every tests/cuda binary, runs them with CTest, and fails if any
# test failed OR was skipped (a skip on a GPU machine means the device was not usable).
# Writes its log to $OUT/cuda_kernel_tests.log (or to the build folder when OUT is unset).
# The project-wide GPU check script can call it; it needs about a minute on 16 cores.
#
#   tests/cuda/gpu_kernel_check.sh [build-folder]      (default: build-cuda-gpu)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build-cuda-gpu}"
out="${OUT:-$build}"
mkdir -p "$out"
log="$out/cuda_kernel_tests.log"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"

set +e
(
  set -euo pipefail
  echo "== sela CUDA kernel check, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true
  nvcc --version | tail -n 2
  jobs="$(nproc)"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSELA_CUDA=ON
  targets=(sela_kernels_cuda)
  for source in "$root"/tests/cuda/test_*.cpp "$root"/tests/cuda/test_*.cu; do
    [ -e "$source" ] || continue
    name="$(basename "$source")"
    targets+=("cuda_${name%.*}")
  done
  start=$(date +%s)
  cmake --build "$build" --target "${targets[@]}" -j"$jobs"
  echo "== build of ${targets[*]}: $(( $(date +%s) - start )) s"
  cd "$build"
  ctest -L cuda -V --timeout 120
) 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "== FAILED (exit $status); log: $log"
  exit "$status"
fi
if grep -q "SKIPPED (no CUDA device)" "$log"; then
  echo "== FAILED: CUDA tests were skipped on a machine that should have a GPU; log: $log"
  exit 1
fi
echo "== all CUDA kernel tests passed; log: $log"
