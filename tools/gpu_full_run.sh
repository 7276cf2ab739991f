#!/usr/bin/env bash
# The full-width run of issue 6 on the lent GPU: `sela train` with the default recipe at
# alexnet-32 width 1 on Fashion-MNIST, with its final evaluation. A third call on the warm
# machine after tools/gpu_check.sh (it reuses build-gpu/ and the unpacked data):
#   device run: carry ["third_party_headers"], command: OUT=$OUT tools/gpu_full_run.sh
# Writes $OUT/full_run.log, $OUT/full_eval.json and $OUT/full_metrics.jsonl. Stops itself
# after FULL_RUN_S seconds (default 300): a run cut short keeps its last checkpoint's
# metrics, and the log says so. FULL_RUN_FLAGS adds flags to `sela train` (e.g.
# "--cuda-graph on"). Before the run, the training step of this recipe (alexnet-32 width 1,
# batch 128, 6 heads, here all of K = 300, BatchNorm in the fc layers, the rotation task on
# 32 turned images) is timed
# in one call each (`sela bench train-step`): the default --rotation-pass grouped eagerly and
# as a CUDA-graph replay, then joint and separate replayed, into $OUT/full_run.log and
# $OUT/full_step.jsonl. STEP_TIMES=0 skips them.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/gpu_check_out}"
mkdir -p "$out"
build="$root/build-gpu"
# shellcheck source=tools/gpu_lib.sh
source "$root/tools/gpu_lib.sh"
{
  echo "== sela full-width run on the GPU $(date -u '+%F %T UTC')"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  if [ ! -x "$build/sela" ]; then
    echo "FAILED: $build/sela is missing: run tools/gpu_check.sh first (same warm machine)"
    exit 1
  fi
  [ -e /tmp/fashion-mnist/train-images-idx3-ubyte ] ||
    unpack_fashion_mnist "$root/third_party_headers/datasets/fashion-mnist" /tmp/fashion-mnist
  if [ "${STEP_TIMES:-1}" != 0 ]; then
    echo "== the recipe's training step (rotation task on 32 images), by pass, eager / CUDA graph"
    : > "$out/full_step.jsonl"
    for pass_graph in grouped:off grouped:on joint:on separate:on; do
      echo "-- --rotation-pass ${pass_graph%:*} --cuda-graph ${pass_graph#*:}"
      step=$(LD_LIBRARY_PATH="$(sela_library_path "$build")" timeout 60 "$build/sela" bench train-step \
        --device cuda --arch alexnet-32 --width-mult 1 --batch 128 --heads 6 --clusters 300 \
        --rotation-batch 32 --rotation-pass "${pass_graph%:*}" --cuda-graph "${pass_graph#*:}" \
        --fc-batch-norm on --warmup 5 --steps 50 --json)
      echo "$step" | grep "median step"
      echo "$step" | grep '^{' | tee -a "$out/full_step.jsonl"
    done
  fi
  rm -rf /tmp/sela-full-gpu
  start=$(date +%s)
  # shellcheck disable=SC2086
  LD_LIBRARY_PATH="$(sela_library_path "$build")" timeout -k 10 "${FULL_RUN_S:-300}" \
    "$build/sela" train --device cuda --width-mult 1 --workers 8 --data fashion-mnist:/tmp/fashion-mnist \
    --out /tmp/sela-full-gpu ${FULL_RUN_FLAGS:-} | grep -v "^epoch\|logits" | tail -n 40
  echo "== exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s (124: stopped by FULL_RUN_S)"
  cp /tmp/sela-full-gpu/eval.json "$out/full_eval.json" 2>/dev/null
  cp /tmp/sela-full-gpu/metrics.jsonl "$out/full_metrics.jsonl" 2>/dev/null
} 2>&1 | tee "$out/full_run.log"
