#!/usr/bin/env bash
# The GPU check of the CUDA Sinkhorn label assignment (issue 4), for the lent H100/H200:
#   0. the CUDA Sinkhorn tests (tests/cuda/test_sinkhorn_cuda.cpp: kernels and the whole
#      solve against the CPU fast path); SINKHORN_TESTS=0 skips them
#   1. correctness at N = 200,000, K = 1,000, λ = 25 (bf16): `sela bench sinkhorn --device
#      cuda` against the PyTorch float64 twin of the published algorithm
#      (tools/bench/sinkhorn_torch.py) on the same logits: iterations, time ratio, labels
#   2. the issue's goal size N = 1,280,000, K = 3,000, λ = 25, bf16, same comparison, with
#      omega 1 (the published iteration) and omega 1.4 (over-relaxation, same stopping
#      rule): ms per iteration, floor ratio (goal ≤ 1.25), end-to-end speed-up (goal ≥ 10x),
#      identical labels (goal ≥ 99.5%)
#   3. the two fused kernel configurations timed at the goal size (a lab comparison)
# The logits of 1 and 2 are made by the PyTorch twin on the GPU (torch generator, seed 1)
# and written as .npy to /dev/shm (RAM; 0.8 GB and 15.4 GB), where sela reads them; where
# there is no room, in $TMPDIR; where there is none either, both sides make their own
# logits (same model, other numbers: no label agreement for that size).
#
# usage: tools/gpu_sinkhorn_check.sh [BUILD_DIR]      (default: build-gpu, made by
#        tools/gpu_check.sh; configured and built here when it is missing)
# device run: carry ["third_party_headers"], command: OUT=$OUT tools/gpu_sinkhorn_check.sh
# Writes $OUT/gpu_sinkhorn_check.log (and the JSON lines of every run under $OUT).
#
# Device memory per step (H100: 80 GB):
#   0. tests: < 1 GB
#   3. as sela in 2 (logits generated on the device)
#   1. twin: logits 0.8 GB + float64 P 1.6 GB; sela: logits 0.8 GB + A (bf16) 0.4 GB
#   2. twin: logits 15.4 GB + float64 P 30.7 GB while P is made (46 GB), then 30.7 GB;
#      sela: logits 15.4 GB (kept on the device for absorption) + A 7.7 GB + c, labels
#      0.03 GB, and 2 x 2 GB for the copy-bandwidth measurement before the solve
# Host memory in 2: the 15.4 GB .npy in /dev/shm plus sela's 15.4 GB read of it (128 GB).
# Budget: about 2 minutes on an H100 (most of it writing and reading the 15.4 GB file and
# the twin's float64 iterations); every step has a timeout.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build-gpu}"
out="${OUT:-$root/gpu_sinkhorn_out}"
mkdir -p "$out"
log="$out/gpu_sinkhorn_check.log"
python="${PYTHON:-python3}"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
twin="$root/tools/bench/sinkhorn_torch.py"
sela="$build/sela"

# A folder with room for `bytes` bytes: /dev/shm, else $TMPDIR or /tmp; "" when none has.
scratch_for() {
  local bytes=$1 dir avail
  for dir in /dev/shm "${TMPDIR:-/tmp}"; do
    avail=$(df -B1 --output=avail "$dir" 2>/dev/null | tail -n 1 | tr -d ' ')
    if [[ -n "$avail" && "$avail" -gt $((bytes + (1 << 30))) ]]; then
      echo "$dir"
      return
    fi
  done
  echo ""
}

# compare NAME TWIN_JSON SELA_JSON TWIN_LABELS SELA_LABELS [goal]: one summary line (and
# the goal verdicts) from the two runs' last JSON lines and label files.
compare() {
  "$python" - "$@" <<'EOF'
import json, os, sys
import numpy as np
name, twin_log, sela_log, twin_labels, sela_labels = sys.argv[1:6]
goal = len(sys.argv) > 6
def last_json(path):
    for line in reversed(open(path).read().strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{name}: no JSON line in {path}")
t = last_json(twin_log)
s = last_json(sela_log)
agree = None
if os.path.exists(twin_labels) and os.path.exists(sela_labels):
    a, b = np.load(twin_labels), np.load(sela_labels)
    agree = float((a == b).mean())
speedup = t["total_s"] / s["total_s"]
print(f"{name}: torch float64 {t['total_s']:.3f} s ({t['iterations']} iterations, "
      f"{t['ms_per_iter']:.2f} ms/iter) | sela {s['storage']} omega {s['omega']} "
      f"{s['total_s']:.3f} s ({s['iterations']} iterations, {s['ms_per_iter']:.3f} ms/iter, "
      f"{s['gbps']:.0f} GB/s, floor {s.get('floor_ms', 0):.3f} ms, ratio {s.get('floor_ratio', 0):.3f}, "
      f"copy {s.get('copy_gbps', 0):.0f} GB/s) | speed-up {speedup:.1f}x | labels identical "
      + (f"{100 * agree:.3f}%" if agree is not None else "n/a (different logits)"))
if goal:
    verdict = lambda ok: "PASS" if ok else "FAIL"
    ratio = s.get("floor_ratio", 0)
    print(f"  goal floor ratio <= 1.25: {ratio:.3f} {verdict(0 < ratio <= 1.25)}; "
          f"speed-up >= 10x: {speedup:.1f}x {verdict(speedup >= 10)}; labels >= 99.5%: "
          + (f"{100 * agree:.3f}% {verdict(agree >= 0.995)}" if agree is not None else "n/a"))
print(json.dumps({"case": name, "torch_total_s": t["total_s"], "torch_iterations": t["iterations"],
                  "torch_ms_per_iter": t["ms_per_iter"], "sela_total_s": s["total_s"],
                  "sela_iterations": s["iterations"], "sela_ms_per_iter": s["ms_per_iter"],
                  "sela_omega": s["omega"], "floor_ratio": s.get("floor_ratio"),
                  "copy_gbps": s.get("copy_gbps"), "speedup": speedup, "label_agreement": agree}))
EOF
}

# run_case NAME N K [goal]: the twin makes the logits and solves, then sela solves them with
# omega 1 (and, for the goal, 1.4); each compared with the twin.
run_case() {
  local name=$1 n=$2 k=$3 goal=${4:-}
  local bytes=$((n * k * 4)) dir file omegas="1"
  [[ -n "$goal" ]] && omegas="1 1.4"
  dir=$(scratch_for "$bytes")
  if [[ -n "$dir" ]]; then file="$dir/sela_sinkhorn_${n}x${k}.npy"; else file="-"; fi
  echo "== $name: N=$n K=$k lambda 25; logits file: ${file} ($((bytes >> 20)) MiB)"
  timeout 240 "$python" "$twin" --make-logits "$file" --n "$n" --k "$k" --seed 1 --lambda 25 \
    --max-iters 5000 --labels-out "$out/${name}_torch_labels.npy" --json > "$out/${name}_torch.log" 2>&1
  echo "twin exit $?"; tail -n 7 "$out/${name}_torch.log"
  for omega in $omegas; do
    local source=(--logits "$file")
    [[ "$file" == "-" ]] && source=(--n "$n" --k "$k" --seed 1)
    timeout 180 "$sela" bench sinkhorn "${source[@]}" --device cuda --storage bf16 --lambda 25 \
      --omega "$omega" --max-iters 5000 --labels-out "$out/${name}_sela_w${omega}_labels.npy" \
      --json > "$out/${name}_sela_w${omega}.log" 2>&1
    echo "sela omega $omega exit $?"; tail -n 10 "$out/${name}_sela_w${omega}.log"
    local twin_labels="$out/${name}_torch_labels.npy"
    [[ "$file" == "-" ]] && twin_labels="/nonexistent"
    compare "$name (omega $omega)" "$out/${name}_torch.log" "$out/${name}_sela_w${omega}.log" \
      "$twin_labels" "$out/${name}_sela_w${omega}_labels.npy" $goal
  done
  [[ "$file" != "-" ]] && rm -f "$file"
}

{
  echo "== sela GPU Sinkhorn check $(date -u '+%F %T UTC')"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,memory.used --format=csv
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  df -h /dev/shm "${TMPDIR:-/tmp}" | sed 's/^/  /'
  free -g | sed 's/^/  /'

  echo "== build ($build)"
  start=$(date +%s)
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    timeout 900 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSELA_CUDA=ON -DSELA_NATIVE=ON
  fi
  timeout 900 cmake --build "$build" --target sela cuda_test_sinkhorn_cuda -j"$(nproc)" 2>&1 | tail -n 3
  echo "build: $(( $(date +%s) - start )) s"

  if [[ "${SINKHORN_TESTS:-1}" != "0" ]]; then
    echo "== 0. CUDA Sinkhorn tests"
    start=$(date +%s)
    timeout 300 "$build/cuda_test_sinkhorn_cuda" 2>&1 | tail -n 40
    echo "tests exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
  fi

  start=$(date +%s)
  run_case correctness_200k 200000 1000
  echo "step 1: $(( $(date +%s) - start )) s"
  start=$(date +%s)
  run_case goal_1280k 1280000 3000 goal
  echo "step 2: $(( $(date +%s) - start )) s"

  # 3. The two fused configurations at the goal size on logits generated on the device
  #    (no file): 1 slot x 8 rows x 384 threads (the default) vs 2 slots x 4 rows x 192
  #    threads (SELA_SINKHORN_CUDA_CONFIG=2x4, more blocks per multiprocessor).
  echo "== 3. fused configurations at N=1280000 K=3000 (device-generated logits)"
  for config in auto 2x4; do
    SELA_SINKHORN_CUDA_CONFIG=$config timeout 120 "$sela" bench sinkhorn --n 1280000 --k 3000 \
      --device cuda --storage bf16 --lambda 25 --max-iters 5000 --json \
      > "$out/config_${config}.log" 2>&1
    echo "config $config exit $?: $(grep -E 'iterations:|floor' "$out/config_${config}.log" | tr '\n' ' ')"
  done
  echo "== done $(date -u '+%F %T UTC')"
} 2>&1 | tee "$log"
