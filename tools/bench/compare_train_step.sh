#!/usr/bin/env bash
# Runs `sela bench train-step` and its PyTorch twin on the same settings in one invocation,
# alternating them (sela, torch, sela, torch) and printing each median and the ratio.
#   tools/bench/compare_train_step.sh [BUILD_DIR] [-- extra flags for both]
# Defaults: alexnet-32, batch 128, 10 heads x 128 clusters, all CPU threads.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
shift || true
[ "${1:-}" = "--" ] && shift
flags=(--arch alexnet-32 --batch 128 --heads 10 --clusters 128 "$@")
python=${PYTHON:-/usr/bin/python3}
ours=() theirs=()
for round in 1 2; do
  ours+=("$("$build/sela" bench train-step "${flags[@]}" --json | tail -n 1)")
  theirs+=("$("$python" "$here/torch_train_step.py" "${flags[@]}" --json | tail -n 1)")
done
"$python" - "${ours[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(s) for s in sys.argv[1:]]
half = len(runs) // 2
ours = [r["images_per_s"] for r in runs[:half]]
theirs = [r["images_per_s"] for r in runs[half:]]
o, t = statistics.median(ours), statistics.median(theirs)
print("sela    images/s per round: %s (gemm %s, %d threads)" % (
    ", ".join("%.1f" % v for v in ours), runs[0].get("gemm"), runs[0]["threads"]))
print("pytorch images/s per round: %s (torch %s, %d threads)" % (
    ", ".join("%.1f" % v for v in theirs), runs[half]["torch"], runs[half]["threads"]))
print("ratio sela / pytorch: %.2fx" % (o / t))
PY
