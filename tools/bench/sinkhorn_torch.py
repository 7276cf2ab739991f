#!/usr/bin/env python3
"""PyTorch (GPU, float64) twin of the published SeLa label assignment.

The baseline `sela bench sinkhorn --device cuda` is measured against, on the same card. It
follows the reference code's algorithm as tools/bench/sinkhorn_numpy.py does, in float64 on
the GPU:

    P = softmax(z) (N x K), viewed as K x N;  P **= lambda
    r = 1/K, c = 1/N (column vectors)
    repeat:  r = (1/K) / (P @ c)            # K x 1   (one matrix-vector product)
             c_new = (1/N) / (r.T @ P).T    # N x 1   (a second one)
             every 10th iteration (counting from 0): err = nansum(|c / c_new - 1|)
             c = c_new
    until err <= tol (0.1)
    labels = argmax over k of P_ki * c_i * r_k      (first maximum)

Two matrix-vector products over the whole N x K float64 matrix per iteration; the host
reads err (one synchronisation) only at check iterations. Times are taken with
torch.cuda.synchronize() around each phase, from logits in GPU memory to labels on the host
(reading or making the logits is reported apart), after one untimed warm-up solve on 4096
rows (CUDA module loading and cuBLAS initialisation are not part of the algorithm).

Usage:
    sinkhorn_torch.py --make-logits F.npy --n N --k K [--seed 1] [--centres 0] [--noise 0.5]
                      [--no-solve] [solve flags]
        makes float32 logits on the GPU with torch's generator from the structured model of
        `sela bench sinkhorn` (M = 3K latent centres mu_m ~ N(0, 1)^K unless --centres, each
        sample picks one uniformly and adds N(0, noise^2) per logit; same distribution as
        the C++ and NumPy generators, other numbers), writes them to F.npy (for `sela bench
        sinkhorn --logits F.npy`; F = "-" writes nothing), then solves them (unless
        --no-solve) without reading the file back.
    sinkhorn_torch.py --logits F.npy [--lambda 25] [--tol 0.1] [--labels-out L.npy] [--json]
        reads the logits, moves them to the GPU (not timed), solves.

Device memory: the float32 logits (N·K·4 bytes) and the float64 P (N·K·8) are both held while
P is made, then the logits are released: 46 GB at N = 1.28M, K = 3000 (P alone 30.7 GB).
"""
import argparse
import json
import sys
import time

import numpy as np
import torch


def make_logits(n, k, seed, centres, noise, device):
    """Structured random logits (float32, N x K) on the device, made in row chunks."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    m = centres if centres > 0 else 3 * k
    mu = torch.randn((m, k), generator=gen, device=device, dtype=torch.float32)
    pick = torch.randint(0, m, (n,), generator=gen, device=device)
    out = torch.empty((n, k), device=device, dtype=torch.float32)
    chunk = max(1, (1 << 28) // max(k, 1))  # 1 GiB of float32 per chunk
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = torch.randn((stop - start, k), generator=gen, device=device, dtype=torch.float32)
        block.mul_(noise).add_(mu[pick[start:stop]])
        out[start:stop] = block
    return out, m


def write_npy(path, logits):
    """Writes a (N, K) float32 GPU tensor to a .npy file, chunk by chunk through the host."""
    n, k = logits.shape
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
    chunk = max(1, (1 << 28) // max(k, 1))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        mapped[start:stop] = logits[start:stop].cpu().numpy()
    mapped.flush()
    del mapped


def warm_up(n, k, device, lamb):
    """Runs every step of solve() once on a few rows of random logits, so that CUDA's lazy
    module loading and cuBLAS's handle creation (about 0.1 s at the first matrix-vector
    product) stay out of the timed phases, as ours stay out of `sela bench sinkhorn`'s."""
    rows = max(1, min(n, 4096))
    holder = [torch.randn((rows, k), device=device, dtype=torch.float32)]
    solve(holder, lamb, 0.0, 1, 2)


def solve(holder, lamb, tol, check_every, max_iters):
    """The published algorithm on the GPU in float64. holder = [logits]: the logits tensor is
    taken out of it and released once P is made. Returns labels (host int64), iterations,
    err and the phase times."""
    logits = holder.pop()
    sync = torch.cuda.synchronize if logits.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    n, k = logits.shape
    ps = logits.to(torch.float64)  # N x K float64
    del logits
    ps -= ps.max(dim=1, keepdim=True).values
    ps.exp_()
    ps /= ps.sum(dim=1, keepdim=True)
    ps = ps.t()  # K x N view, as the reference stores it
    ps.pow_(lamb)
    sync()
    t1 = time.perf_counter()

    r = torch.full((k, 1), 1.0 / k, dtype=torch.float64, device=ps.device)
    c = torch.full((n, 1), 1.0 / n, dtype=torch.float64, device=ps.device)
    inv_k = 1.0 / k
    inv_n = 1.0 / n
    err = float("inf")
    counter = 0
    while err > tol and counter < max_iters:
        r = inv_k / (ps @ c)
        c_new = inv_n / (r.t() @ ps).t()
        if counter % check_every == 0:
            err = torch.nansum(torch.abs(c / c_new - 1)).item()  # the only host read
        c = c_new
        counter += 1
    sync()
    t2 = time.perf_counter()

    # labels: argmax_k of P_ki c_i r_k, in place as the reference does it
    ps *= c.t()
    ps *= r
    labels = torch.argmax(ps, dim=0).to(torch.int64).cpu().numpy()
    sync()
    t3 = time.perf_counter()
    del ps
    return labels, counter, float(err), t1 - t0, t2 - t1, t3 - t2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--make-logits", default="")
    parser.add_argument("--no-solve", action="store_true")
    parser.add_argument("--n", type=int, default=200000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--centres", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--logits", default="")
    parser.add_argument("--lambda", dest="lamb", type=float, default=25.0)
    parser.add_argument("--tol", type=float, default=0.1)
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--max-iters", type=int, default=100000)
    parser.add_argument("--labels-out", default="")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if not torch.cuda.is_available() and args.device.startswith("cuda"):
        sys.exit("error: torch sees no CUDA device (use --device cpu to run it on the CPU)")
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    t = time.perf_counter()
    if args.make_logits:
        logits, m = make_logits(args.n, args.k, args.seed, args.centres, args.noise, device)
        if args.make_logits != "-":
            write_npy(args.make_logits, logits)
        source = (f"made on {gpu} (torch generator, seed {args.seed}, {m} centres, noise "
                  f"{args.noise}) and written to {args.make_logits}")
        if args.no_solve:
            print(f"wrote {args.make_logits}: float32 {tuple(logits.shape)}; {source}")
            return 0
    elif args.logits:
        host = np.load(args.logits)
        if host.dtype != np.float32 or host.ndim != 2:
            sys.exit(f"error: {args.logits}: expected float32 (N, K) logits, got {host.dtype} {host.shape}")
        logits = torch.from_numpy(host).to(device)
        del host
        source = f"file {args.logits}"
    else:
        parser.error("give --logits F.npy or --make-logits F.npy")
    if device.type == "cuda":
        torch.cuda.synchronize()
    read_s = time.perf_counter() - t
    n, k = logits.shape

    warm_up(n, k, logits.device, args.lamb)
    holder = [logits]
    del logits
    labels, iters, err, prep_s, iter_s, label_s = solve(holder, args.lamb, args.tol,
                                                        args.check_every, args.max_iters)
    total_s = prep_s + iter_s + label_s
    ms_per_iter = 1000.0 * iter_s / max(iters, 1)
    gbps = 2 * n * k * 8 / (ms_per_iter * 1e-3) / 1e9
    counts = np.bincount(labels, minlength=k)
    converged = err <= args.tol
    print(f"torch float64 twin: N={n} K={k} lambda={args.lamb} tol={args.tol} on {gpu} "
          f"(torch {torch.__version__})")
    print(f"logits: {source} ({read_s:.2f} s, not timed)")
    print(f"softmax and power: {prep_s:.3f} s")
    print(f"iterations: {iters} ({'converged' if converged else 'NOT converged'}, stop error {err:.4g}), "
          f"{ms_per_iter:.2f} ms/iter, {gbps:.1f} GB/s effective (two float64 mat-vecs)")
    print(f"labels: {label_s:.3f} s; clusters min/max/empty {counts.min()}/{counts.max()}/{int((counts == 0).sum())}")
    print(f"total: {total_s:.3f} s")
    if args.labels_out:
        np.save(args.labels_out, labels)
        print(f"labels written to {args.labels_out}")
    if args.json:
        print(json.dumps({"n": n, "k": k, "lambda": args.lamb, "tol": args.tol,
                          "device": f"{args.device}-torch-f64", "gpu": gpu, "torch": torch.__version__,
                          "iterations": iters, "converged": bool(converged), "stop_error": err,
                          "ms_per_iter": ms_per_iter, "gbps": gbps, "prepare_s": prep_s,
                          "iterate_s": iter_s, "label_s": label_s, "total_s": total_s,
                          "read_s": read_s, "cluster_min": int(counts.min()),
                          "cluster_max": int(counts.max()),
                          "clusters_empty": int((counts == 0).sum())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
