#!/usr/bin/env bash
# The one prepared GPU check (DESIGN.md, "GPU work"): run it on the lent H100/H200 machine.
#   1. where CUDA, cuDNN and cuBLAS are; the card
#   2. configure with CUDA for the card present, build everything, run the whole test
#      suite (CPU tests and every CUDA test; a CUDA test skipped on a GPU machine fails)
#   3. the GPU benchmarks: PyTorch eager fp32 twins of `sela bench train-step` for alexnet
#      (3x224x224, batch 256, 10 heads x 3000) and alexnet-32 (batch 256, 10 x 128); ours
#      beside them once the engine has CUDA tensors (until then the script says so)
# Writes everything to $OUT/gpu_check.log. Budget: under 6 minutes.
# Headers the GPU machine lacks travel in third_party_headers/ (tools/prepare_gpu_carry.sh):
#   device run: carry ["third_party_headers"], command: OUT=$OUT tools/gpu_check.sh
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/gpu_check_out}"
mkdir -p "$out"
log="$out/gpu_check.log"
build="$root/build-gpu"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
python="${PYTHON:-python3}"
{
  echo "== sela GPU check $(date -u '+%F %T UTC')"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  nvcc --version | tail -n 2
  echo "== cuDNN / cuBLAS locations"
  ls /usr/include/cudnn*.h /usr/local/cuda/include/cudnn*.h 2>/dev/null
  find / -xdev \( -name 'libcudnn.so*' -o -name 'libcublas.so*' \) 2>/dev/null | head -n 10
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

  echo "== configure + build ($(nproc) cores)"
  start=$(date +%s)
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSELA_CUDA=ON -DSELA_NATIVE=ON &&
    cmake --build "$build" -j"$(nproc)"
  echo "== build: $(( $(date +%s) - start )) s"

  echo "== tests (CPU and CUDA)"
  (cd "$build" && ctest --output-on-failure -j8 --timeout 300)
  skipped=$(cd "$build" && ctest -N -L cuda | grep -c "Test #" || true)
  echo "== CUDA tests registered: $skipped"

  echo "== benchmarks: PyTorch eager fp32 (TF32 for cuDNN convolutions on, for matmul off)"
  for config in "--arch alexnet --batch 256 --heads 10 --clusters 3000" \
                "--arch alexnet-32 --batch 256 --heads 10 --clusters 128"; do
    # shellcheck disable=SC2086
    "$python" "$root/tools/bench/torch_train_step.py" $config --device cuda --warmup 5 \
      --steps 20 --json | tail -n 1
    if "$build/sela" bench train-step --help | grep -q "cuda:N"; then
      # shellcheck disable=SC2086
      "$build/sela" bench train-step $config --device cuda --warmup 5 --steps 20 --json | tail -n 1
    else
      echo "sela bench train-step --device cuda: not in this build yet (engine has no CUDA tensors)"
    fi
  done
  echo "== done $(date -u '+%F %T UTC')"
} 2>&1 | tee "$log"
