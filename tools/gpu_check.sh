#!/usr/bin/env bash
# The one prepared GPU check (DESIGN.md, "GPU work"): run it on the lent H100/H200 machine.
#   1. where CUDA, cuDNN and cuBLAS are; the card
#   2. configure with CUDA for the card present, build everything, run every CUDA test
#      (a CUDA test skipped on a GPU machine fails); the CPU tests run after step 3
#   3. the GPU benchmarks: `sela bench train-step --device cuda` and its PyTorch eager fp32
#      twin (same model, batch, math modes: TF32 for cuDNN convolutions on, for matmuls off,
#      cuDNN algorithm search timed) for alexnet (3x224x224, batch 256, 10 heads x 3000) and
#      alexnet-32 (batch 256, 10 x 128), each eagerly and as a replayed CUDA graph on both
#      sides (--cuda-graph on; torch.cuda.graph), and eagerly in bf16 mixed precision
#      (--precision bf16; torch.autocast), then a table: ours img/s, PyTorch img/s,
#      ratios, peak device memory of both (the JSON lines, with reserved memory too, are kept
#      in $OUT/train_step.jsonl); then the default run's step with its rotation task in each
#      --rotation-pass, eager and replayed ($OUT/rotation_step.jsonl; six short runs)
#   4. `sela train --quick --device cuda`: the whole pipeline (label steps, Sinkhorn on the
#      GPU, evaluation) on the card
# Writes everything to $OUT/gpu_check.log (and CTest's full log of the CUDA tests to
# $OUT/cuda_tests_full.log). Budget: under 6 minutes. Measured on an H100 (eighth session):
# 268 s with CPU_TESTS=0 NSYS=0 QUICK_RUN=0 (51 s of it the build, 13 s the CUDA tests); the
# CPU suite (not timed there; 28-65 s with ctest -j2 on the 2-core dev machine) and step 4
# (about 35 s in the sixth session) come on top.
# CPU_TESTS=0 skips the CPU suite (CI runs it) and QUICK_RUN=0 step 4 (tests/cuda's
# trainer test already runs a tiny pipeline on the GPU), when device time is short; BENCH=0
# skips step 3 (the benchmarks, the memory census and the kernel profile), so that a session
# with 15 minutes of device time can build, run the CUDA tests and then tools/gpu_full_run.sh
# (which times the recipe's own step) in one call:
#   OUT=$OUT BENCH=0 CPU_TESTS=0 QUICK_RUN=0 tools/gpu_check.sh; OUT=$OUT tools/gpu_full_run.sh
# The Sinkhorn goals of issue 4 are a second call on the same warm machine (about 2.5
# minutes; it reuses build-gpu): OUT=$OUT SINKHORN_TESTS=0 tools/gpu_sinkhorn_check.sh
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
# shellcheck source=tools/gpu_lib.sh
source "$root/tools/gpu_lib.sh"
{
  echo "== sela GPU check $(date -u '+%F %T UTC')"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
  nvcc --version | tail -n 2
  echo "== cuDNN / cuBLAS locations"
  ls /usr/include/cudnn*.h /usr/local/cuda/include/cudnn*.h 2>/dev/null
  # Not all of /: a wide disk walk can take minutes. The toolkit, system folders, and the
  # Python packages (PyTorch's nvidia-cudnn / nvidia-cublas wheels).
  site=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
  # shellcheck disable=SC2086
  find /usr /opt $site -maxdepth 6 \( -name 'libcudnn.so*' -o -name 'libcublas.so*' \) \
    2>/dev/null | head -n 10
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

  echo "== configure + build ($(nproc) cores)"
  start=$(date +%s)
  # Without zlib's headers the data layer reads only raw IDX files (unpacked below).
  zlib_flag=""
  [ -e /usr/include/zlib.h ] || zlib_flag="-DSELA_DATA_ZLIB=OFF"
  # shellcheck disable=SC2086
  generator=""
  command -v ninja >/dev/null && [ ! -f "$build/CMakeCache.txt" ] && generator="-G Ninja"
  # shellcheck disable=SC2086
  cmake -S "$root" -B "$build" $generator -DCMAKE_BUILD_TYPE=Release -DSELA_CUDA=ON -DSELA_NATIVE=ON $zlib_flag &&
    cmake --build "$build" -j"$(nproc)"
  echo "== build: $(( $(date +%s) - start )) s"
  sela_libs=$(sela_library_path "$build")  # tools/gpu_lib.sh: pip cuDNN's folder
  [ "$sela_libs" != "${LD_LIBRARY_PATH:-}" ] &&
    echo "cuDNN linked from a pip wheel: its folder goes on sela's LD_LIBRARY_PATH"
  with_sela_libs() { LD_LIBRARY_PATH="$sela_libs" "$@"; }

  # The CUDA tests first (what only this machine can run), the CPU suite after the
  # benchmarks, so that a run short of time loses the least. Two OpenMP threads per CPU test:
  # eight tests at once with every core each would oversubscribe the machine many times.
  echo "== CUDA tests"
  registered=$(cd "$build" && ctest -N -L cuda | grep -c "Test #" || true)
  echo "CUDA test binaries registered: $registered"
  (cd "$build" && with_sela_libs ctest --output-on-failure -L cuda -j4 --timeout 150) | tee "$build/cuda_tests.txt"
  cp "$build/Testing/Temporary/LastTest.log" "$out/cuda_tests_full.log" 2>/dev/null
  if grep -q "Skipped" "$build/cuda_tests.txt"; then
    echo "FAILED: CUDA tests were skipped on this GPU machine (no usable device? driver older"
    echo "than the toolkit?): $(grep Skipped "$build/cuda_tests.txt" | tr -s ' ' | head -n 5)"
  fi

  # Step 3, to the matching "fi" after the kernel times (not indented: it holds a heredoc).
  if [ "${BENCH:-1}" != 0 ]; then
  echo "== benchmarks: sela and PyTorch eager fp32 (TF32 for cuDNN convolutions on, for matmul off)"
  results="$out/train_step.jsonl"
  : > "$results"
  bench_flags="--device cuda --warmup 5 --steps 20 --json --tf32-conv on --tf32-matmul off --cudnn-benchmark on"
  for config in "--arch alexnet --batch 256 --heads 10 --clusters 3000" \
                "--arch alexnet-32 --batch 256 --heads 10 --clusters 128"; do
    echo "-- $config"
    # shellcheck disable=SC2086
    ours=$(with_sela_libs timeout 120 "$build/sela" bench train-step $config $bench_flags | tee /dev/stderr | grep '^{' | tail -n 1)
    # The same with BatchNorm2d and ReLU as two ops (the A/B of the fused op, same process kind).
    # shellcheck disable=SC2086
    unfused=$(with_sela_libs timeout 120 "$build/sela" bench train-step $config $bench_flags --fuse-bn-relu off |
              tee /dev/stderr | grep '^{' | tail -n 1)
    # shellcheck disable=SC2086
    theirs=$(timeout 120 "$python" "$root/tools/bench/torch_train_step.py" $config $bench_flags |
             tee /dev/stderr | grep '^{' | tail -n 1)
    # The step captured as a CUDA graph and replayed, on both sides (engine/cuda_graph.h;
    # torch.cuda.graph for PyTorch).
    # shellcheck disable=SC2086
    graphed=$(with_sela_libs timeout 120 "$build/sela" bench train-step $config $bench_flags --cuda-graph on |
              tee /dev/stderr | grep '^{' | tail -n 1)
    # shellcheck disable=SC2086
    their_graph=$(timeout 120 "$python" "$root/tools/bench/torch_train_step.py" $config $bench_flags --cuda-graph on |
                  tee /dev/stderr | grep '^{' | tail -n 1)
    # bf16 mixed precision, eager, on both sides (--precision bf16; torch.autocast).
    # shellcheck disable=SC2086
    ours_bf16=$(with_sela_libs timeout 120 "$build/sela" bench train-step $config $bench_flags --precision bf16 |
                tee /dev/stderr | grep '^{' | tail -n 1)
    # shellcheck disable=SC2086
    their_bf16=$(timeout 120 "$python" "$root/tools/bench/torch_train_step.py" $config $bench_flags --precision bf16 |
                 tee /dev/stderr | grep '^{' | tail -n 1)
    echo "{\"sela\": ${ours:-null}, \"sela_unfused\": ${unfused:-null}, \"torch\": ${theirs:-null}, \"sela_graph\": ${graphed:-null}, \"torch_graph\": ${their_graph:-null}, \"sela_bf16\": ${ours_bf16:-null}, \"torch_bf16\": ${their_bf16:-null}}" >> "$results"
  done
  echo "== train-step table ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1))"
  "$python" - "$results" <<'PY'
import json, sys
# The bf16 rows: ours against PyTorch AMP, eager.
for line in open(sys.argv[1]):
    try:
        pair = json.loads(line)
    except ValueError:
        continue
    o, t = pair.get("sela_bf16") or {}, pair.get("torch_bf16") or {}
    if o or t:
        oi, ti = o.get("images_per_s"), t.get("images_per_s")
        print("bf16 %s: ours %s img/s (peak %s MiB), PyTorch AMP %s img/s (peak %s MiB), ratio %s" % (
            o.get("arch") or t.get("arch"), oi, o.get("peak_mem_mib"), ti, t.get("peak_mem_mib"),
            "%.2fx" % (oi / ti) if oi and ti else "-"))
rows = []
for line in open(sys.argv[1]):
    try:
        pair = json.loads(line)
    except ValueError:
        print("unreadable result line:", line.strip()); continue
    ours, theirs = pair.get("sela") or {}, pair.get("torch") or {}
    unfused = pair.get("sela_unfused") or {}
    graphed, their_graph = pair.get("sela_graph") or {}, pair.get("torch_graph") or {}
    arch = ours.get("arch") or theirs.get("arch") or "?"
    o, t, u = ours.get("images_per_s"), theirs.get("images_per_s"), unfused.get("images_per_s")
    g, tg = graphed.get("images_per_s"), their_graph.get("images_per_s")
    ratio = lambda a, b: "%.2fx" % (a / b) if a and b else "-"
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"
    rows.append((arch, fmt(o, "%.1f"), fmt(u, "%.1f"), fmt(t, "%.1f"), ratio(o, t),
                 fmt(g, "%.1f"), fmt(tg, "%.1f"), ratio(g, tg), ratio(g, t),
                 fmt(ours.get("peak_mem_mib"), "%.0f"), fmt(unfused.get("peak_mem_mib"), "%.0f"),
                 fmt(theirs.get("peak_mem_mib"), "%.0f"), fmt(graphed.get("peak_mem_mib"), "%.0f"),
                 fmt(their_graph.get("peak_mem_mib"), "%.0f")))
head = ("model", "ours img/s", "ours unfused BN+ReLU", "PyTorch img/s", "ours/PyTorch",
        "ours graph img/s", "PyTorch graph img/s", "graph/graph", "ours graph/PyTorch eager",
        "ours peak MiB", "unfused peak MiB", "PyTorch peak MiB", "ours graph peak MiB",
        "PyTorch graph peak MiB")
widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
PY

  # The default run's step with its rotation task in each pass (sela/rotation.h; grouped keeps
  # BatchNorm statistics per group on row views) and BatchNorm in the fc layers, eager and
  # replayed.
  echo "== the default run's step with the rotation task (32 turned images), by pass"
  for pass in joint grouped separate; do
    for graph in off on; do
      # shellcheck disable=SC2086
      with_sela_libs timeout 120 "$build/sela" bench train-step --width-mult 0.25 --batch 128 \
        --heads 6 --clusters 30 --rotation-batch 32 --rotation-pass $pass --cuda-graph $graph \
        --fc-batch-norm on $bench_flags | grep '^{' | tail -n 1 | tee -a "$out/rotation_step.jsonl" || true
    done
  done

  # What our step holds at its peak, by op (alexnet, the larger model).
  echo "== memory census of sela's alexnet step"
  # shellcheck disable=SC2086
  with_sela_libs timeout 90 "$build/sela" bench train-step --arch alexnet --batch 256 --heads 10 \
    --clusters 3000 $bench_flags --memory-census | grep -v '^{' | tail -n 25

  # Where the time goes, kernel by kernel, when Nsight Systems is on the machine (NSYS=0
  # skips): sela's alexnet step and PyTorch's, 3 + 5 steps each; the top of each kernel table
  # goes to $OUT/kernels_sela.txt and $OUT/kernels_torch.txt.
  nsys_bin=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/*/bin/nsys \
             /usr/local/cuda*/nsight-systems*/bin/nsys 2>/dev/null | head -n 1)
  if [ "${NSYS:-1}" != 0 ] && [ -n "$nsys_bin" ]; then
    echo "== kernel times ($nsys_bin)"
    profile_flags="--arch alexnet --batch 256 --heads 10 --clusters 3000 --device cuda --warmup 3 --steps 5 --tf32-conv on --tf32-matmul off --cudnn-benchmark on"
    # shellcheck disable=SC2086
    with_sela_libs timeout 120 "$nsys_bin" profile -o /tmp/sela_step --force-overwrite true \
      "$build/sela" bench train-step $profile_flags > /dev/null 2>&1 &&
      timeout 60 "$nsys_bin" stats -r cuda_gpu_kern_sum /tmp/sela_step.nsys-rep 2>/dev/null |
      head -n 45 > "$out/kernels_sela.txt"
    # shellcheck disable=SC2086
    timeout 120 "$nsys_bin" profile -o /tmp/torch_step --force-overwrite true \
      "$python" "$root/tools/bench/torch_train_step.py" $profile_flags > /dev/null 2>&1 &&
      timeout 60 "$nsys_bin" stats -r cuda_gpu_kern_sum /tmp/torch_step.nsys-rep 2>/dev/null |
      head -n 45 > "$out/kernels_torch.txt"
    head -n 25 "$out/kernels_sela.txt" "$out/kernels_torch.txt" 2>/dev/null
  else
    echo "== kernel times: no nsys on this machine (or NSYS=0)"
  fi
  else
    echo "== benchmarks skipped (BENCH=0)"
  fi

  if [ "${CPU_TESTS:-1}" != 0 ]; then
    echo "== CPU tests"
    (cd "$build" && OMP_NUM_THREADS=2 with_sela_libs ctest --output-on-failure -LE cuda -j8 --timeout 180)
  fi

  if [ "${QUICK_RUN:-1}" != 0 ]; then
    echo "== the whole pipeline on the GPU: sela train --quick --device cuda"
    rm -rf /tmp/sela-quick-gpu /tmp/fashion-mnist
    unpack_fashion_mnist "$root/third_party_headers/datasets/fashion-mnist" /tmp/fashion-mnist
    with_sela_libs timeout 150 "$build/sela" train --quick --device cuda --data fashion-mnist:/tmp/fashion-mnist \
      --out /tmp/sela-quick-gpu | tail -n 16
    cp /tmp/sela-quick-gpu/metrics.jsonl /tmp/sela-quick-gpu/eval.json "$out/" 2>/dev/null
  fi
  echo "== next, on the same warm machine: OUT=\$OUT SINKHORN_TESTS=0 tools/gpu_sinkhorn_check.sh"
  echo "   and, with time left: OUT=\$OUT tools/gpu_full_run.sh (the full-width default run)"
  echo "== done $(date -u '+%F %T UTC')"
} 2>&1 | tee "$log"
