#!/usr/bin/env python3
"""PyTorch twin of `sela bench train-step`: the same model, data shapes, loss and SGD.

Run with Debian's python3-torch (CPU):  /usr/bin/python3 tools/bench/torch_train_step.py
  --arch alexnet-32 --batch 128 --heads 10 --clusters 128 --threads 2 --json
On a GPU machine: --device cuda (eager fp32; TF32 for convolutions on, for matmul off, as
PyTorch's defaults; --tf32-conv, --tf32-matmul and --cudnn-benchmark take on|off as the C++
benchmark's flags of the same names). Prints per-step times, then the median; with --json one
JSON object on the last line with the same keys as the C++ benchmark (on a GPU also
peak_mem_mib: torch.cuda.max_memory_allocated over the timed steps, and the math modes).
--cuda-graph on (GPU): after the warm-up (on a side stream, as PyTorch's documentation of
whole-network capture does), one step is captured with torch.cuda.graph and the timed steps
are replays, each followed by loss.item(); the peak then spans the capture and the replays,
as in the C++ benchmark.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sela_torch import SelaNet, sela_loss  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="alexnet-32")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--heads", type=int, default=10)
    p.add_argument("--clusters", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="0 = all hardware threads")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    on_off = lambda v: {"on": True, "off": False}[v]
    p.add_argument("--tf32-conv", type=on_off, default=True, help="on|off (default on)")
    p.add_argument("--tf32-matmul", type=on_off, default=False, help="on|off (default off)")
    p.add_argument("--cudnn-benchmark", type=on_off, default=True, help="on|off (default on)")
    p.add_argument("--cuda-graph", type=on_off, default=False, help="on|off (default off)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: forward and loss under torch.autocast(dtype=torch.bfloat16)")
    a = p.parse_args()

    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = a.cudnn_benchmark
        # PyTorch >= 2.9 has fp32_precision ("tf32" | "ieee") and deprecates allow_tf32;
        # reading a setting after mixing the two APIs can raise: use the new one where it exists.
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "tf32" if a.tf32_conv else "ieee"
            torch.backends.cuda.matmul.fp32_precision = "tf32" if a.tf32_matmul else "ieee"
        else:  # older PyTorch (its matmul object raises AssertionError for unknown names)
            torch.backends.cudnn.allow_tf32 = a.tf32_conv
            torch.backends.cuda.matmul.allow_tf32 = a.tf32_matmul
    model = SelaNet(a.arch, a.width_mult, 3, [a.clusters] * a.heads).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, model.input_size, model.input_size, device=device)
    ys = [torch.randint(0, a.clusters, (a.batch,), device=device) for _ in range(a.heads)]

    if a.precision == "bf16" and device.type != "cuda":
        sys.exit("--precision bf16 needs --device cuda")
    # No weight-cast cache under graph capture (PyTorch's advice for captured autocast).
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16,
                                       cache_enabled=not a.cuda_graph)) \
        if a.precision == "bf16" else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = sela_loss(model(x), ys)
        loss.backward()
        opt.step()
        return loss

    graph = None
    if a.cuda_graph:
        if device.type != "cuda":
            sys.exit("--cuda-graph on needs --device cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(a.warmup, 3)):
                step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            with autocast():
                static_loss = sela_loss(model(x), ys)
            static_loss.backward()
            opt.step()

        def replay():
            graph.replay()
            return static_loss
    else:
        for _ in range(a.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        loss = replay() if graph is not None else step()
        loss_value = loss.item()  # synchronises
        times.append(time.perf_counter() - t0)
        if not a.json:
            print("  step %d: %.1f ms, loss %.4f" % (i, times[-1] * 1e3, loss_value))
    step_s = statistics.median(times)
    result = {
        "arch": a.arch, "width_mult": a.width_mult, "batch": a.batch, "heads": a.heads,
        "clusters": a.clusters, "device": a.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "steps": a.steps, "step_ms": step_s * 1e3,
        "images_per_s": a.batch / step_s, "final_loss": loss_value,
    }
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_mem_mib"] = result["peak_mib"]
        result["reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
        result["tf32_conv"] = a.tf32_conv
        result["tf32_matmul"] = a.tf32_matmul
        result["cudnn_benchmark"] = a.cudnn_benchmark
        result["cuda_graph"] = a.cuda_graph
        result["precision"] = a.precision
    print("pytorch %s: median step %.1f ms -> %.1f images/s" %
          (torch.__version__, step_s * 1e3, a.batch / step_s))
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
