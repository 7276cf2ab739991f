#!/usr/bin/env bash
# Runs `sela bench sinkhorn` and the NumPy float64 twin of the published algorithm
# (tools/bench/sinkhorn_numpy.py) on the same .npy logits in one invocation, then prints
# both timings, the speed ratio and the fraction of identical labels.
#
# usage: tools/bench/sinkhorn_compare.sh LOGITS.npy [extra flags for sela bench sinkhorn]
#   LOGITS.npy  float32 (N, K); made with the structured random model when it does not
#               exist yet (sizes from MAKE_N / MAKE_K, default 200000 x 1000; keep it
#               outside the repository, e.g. /tmp/sinkhorn_200k_1k.npy: 800 MB)
# environment:
#   SELA    the sela binary (default: build/sela)
#   PYTHON  a Python with NumPy (default: /usr/bin/python3)
#   LAMBDA, TOL   passed to both solvers (default 25 and 0.1)
#   OUT     folder for the two label files and logs (default: a fresh mktemp -d folder)
#
# Both programs time from logits in memory to labels; reading the file is not counted.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,17p' "$0"
  exit 2
fi
logits=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
sela=${SELA:-build/sela}
python=${PYTHON:-/usr/bin/python3}
lambda=${LAMBDA:-25}
tol=${TOL:-0.1}
out=${OUT:-$(mktemp -d /tmp/sinkhorn_compare.XXXXXX)}
mkdir -p "$out"

if [[ ! -x "$sela" ]]; then
  echo "error: sela binary '$sela' not found (build it, or set SELA=path)" >&2
  exit 1
fi
if [[ ! -f "$logits" ]]; then
  "$python" "$here/sinkhorn_numpy.py" --make-logits "$logits" --n "${MAKE_N:-200000}" --k "${MAKE_K:-1000}"
fi

echo "== sela bench sinkhorn"
"$sela" bench sinkhorn --logits "$logits" --lambda "$lambda" --tol "$tol" \
  --labels-out "$out/labels_sela.npy" --json "$@" | tee "$out/sela.log"
echo "== numpy float64 twin"
"$python" "$here/sinkhorn_numpy.py" --logits "$logits" --lambda "$lambda" --tol "$tol" \
  --labels-out "$out/labels_numpy.npy" --json | tee "$out/numpy.log"

echo "== comparison"
"$python" - "$out" <<'EOF'
import json, sys
import numpy as np
out = sys.argv[1]
sela = json.loads(open(f"{out}/sela.log").read().strip().splitlines()[-1])
ref = json.loads(open(f"{out}/numpy.log").read().strip().splitlines()[-1])
a = np.load(f"{out}/labels_sela.npy")
b = np.load(f"{out}/labels_numpy.npy")
agree = float((a == b).mean())
print(f"numpy float64: {ref['total_s']:.2f} s, {ref['iterations']} iterations, {ref['ms_per_iter']:.1f} ms/iter")
print(f"sela {sela['device']} {sela['storage']} x{sela['threads']} threads: {sela['total_s']:.2f} s, "
      f"{sela['iterations']} iterations, {sela['ms_per_iter']:.2f} ms/iter")
print(f"speed-up end to end: {ref['total_s'] / sela['total_s']:.1f}x; labels identical: {100 * agree:.3f}% "
      f"({int((a != b).sum())} of {a.size} differ)")
print(json.dumps({"numpy_total_s": ref["total_s"], "numpy_iterations": ref["iterations"],
                  "sela_total_s": sela["total_s"], "sela_iterations": sela["iterations"],
                  "speedup": ref["total_s"] / sela["total_s"], "label_agreement": agree}))
EOF
