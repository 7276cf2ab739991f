#!/usr/bin/env python3
"""NumPy twin of the published SeLa label assignment (Sinkhorn-Knopp in float64).

This is the baseline `sela bench sinkhorn` is measured against. It follows the algorithm
as the paper's reference code runs it on the CPU, in float64:

    P = softmax(z) (N x K), viewed as K x N;  P **= lambda
    r = 1/K, c = 1/N (column vectors)
    repeat:  r = (1/K) / (P @ c)            # K x 1
             c_new = (1/N) / (r.T @ P).T    # N x 1
             every 10th iteration (counting from 0): err = nansum(|c / c_new - 1|)
             c = c_new
    until err <= tol (0.1)
    labels = argmax over k of P_ki * c_i * r_k

Two matrix-vector products per iteration over the whole N x K float64 matrix.

Usage:
    sinkhorn_numpy.py --make-logits F.npy --n 200000 --k 1000 [--seed 1] [--centres 0]
                      [--noise 0.5]
        writes float32 logits from the structured model `sela bench sinkhorn` also uses:
        M latent centres mu_m ~ N(0, 1)^K (M = 3K unless --centres), each sample picks a
        centre uniformly and adds N(0, noise^2) per logit. (The C++ generator draws the
        same distribution with its own random stream; the files are what both read.)
    sinkhorn_numpy.py --make-logits F.npy --peak 12 [--imbalance 20] [--noise 1] ...
        writes confident logits instead, like a trained network's: peak * onehot(class)
        + N(0, noise^2), the class drawn with probability proportional to
        imbalance^(-j/(K-1)) (the most popular class `imbalance` times as likely as the
        least). At lambda 10 most entries of lambda (z - max) lie below float32's range and
        the unpopular clusters need r ~ e^80: the case the fast path's absorption is for.
    sinkhorn_numpy.py --logits F.npy [--lambda 25] [--tol 0.1] [--labels-out L.npy] [--json]
        solves and prints iterations, ms per iteration and the total time from logits in
        memory to labels (reading the file is reported apart), then with --json one JSON
        object on the last line.

Run it with the system Python that has NumPy (/usr/bin/python3 here). Keep large files
outside the repository (e.g. in /tmp): N = 200,000, K = 1,000 is 800 MB of logits.
"""
import argparse
import json
import sys
import time

import numpy as np


def make_peaked_logits(path, n, k, seed, peak, imbalance, noise):
    rng = np.random.default_rng(seed)
    weights = imbalance ** (-np.arange(k) / max(k - 1, 1))
    weights /= weights.sum()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
    chunk = 20000
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        pick = rng.choice(k, size=rows, p=weights)
        block = rng.standard_normal((rows, k), dtype=np.float32)
        block *= np.float32(noise)
        block[np.arange(rows), pick] += np.float32(peak)
        out[start:start + rows] = block
    out.flush()
    del out
    print(f"wrote {path}: float32 ({n}, {k}); peak {peak} one-hot, class imbalance {imbalance}, "
          f"noise {noise}, seed {seed}")


def make_logits(path, n, k, seed, centres, noise):
    rng = np.random.default_rng(seed)
    m = centres if centres > 0 else 3 * k
    mu = rng.standard_normal((m, k), dtype=np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
    chunk = 20000
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        pick = rng.integers(0, m, size=rows)
        block = rng.standard_normal((rows, k), dtype=np.float32)
        block *= np.float32(noise)
        block += mu[pick]
        out[start:start + rows] = block
    out.flush()
    del out
    print(f"wrote {path}: float32 ({n}, {k}); {m} latent centres N(0,1), noise {noise}, seed {seed}")


def solve(logits, lamb, tol, check_every, max_iters):
    """The published algorithm; returns labels, iterations, err and the phase times."""
    t0 = time.perf_counter()
    n, k = logits.shape
    # softmax in float64, as the reference's float64 array of probabilities
    ps = logits.astype(np.float64)
    ps -= ps.max(axis=1, keepdims=True)
    np.exp(ps, out=ps)
    ps /= ps.sum(axis=1, keepdims=True)
    ps = ps.T  # K x N view, as the reference stores it
    ps **= lamb
    t1 = time.perf_counter()

    r = np.ones((k, 1), dtype=np.float64) / k
    c = np.ones((n, 1), dtype=np.float64) / n
    inv_k = np.float64(1.0 / k)
    inv_n = np.float64(1.0 / n)
    err = np.inf
    counter = 0
    while err > tol and counter < max_iters:
        r = inv_k / (ps @ c)
        c_new = inv_n / (r.T @ ps).T
        if counter % check_every == 0:
            err = np.nansum(np.abs(c / c_new - 1))
        c = c_new
        counter += 1
    t2 = time.perf_counter()

    # labels: argmax_k of P_ki c_i r_k, in place as the reference does it
    ps *= np.squeeze(c)
    ps = ps.T
    ps *= np.squeeze(r)
    ps = ps.T
    labels = np.nanargmax(ps, 0).astype(np.int64)
    t3 = time.perf_counter()
    return labels, counter, float(err), t1 - t0, t2 - t1, t3 - t2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--make-logits", default="")
    parser.add_argument("--n", type=int, default=200000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--centres", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--peak", type=float, default=0.0)
    parser.add_argument("--imbalance", type=float, default=20.0)
    parser.add_argument("--logits", default="")
    parser.add_argument("--lambda", dest="lamb", type=float, default=25.0)
    parser.add_argument("--tol", type=float, default=0.1)
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--max-iters", type=int, default=100000)
    parser.add_argument("--labels-out", default="")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.make_logits and args.peak > 0:
        make_peaked_logits(args.make_logits, args.n, args.k, args.seed, args.peak, args.imbalance,
                           args.noise)
        return 0
    if args.make_logits:
        make_logits(args.make_logits, args.n, args.k, args.seed, args.centres, args.noise)
        return 0
    if not args.logits:
        parser.error("give --logits F.npy (or --make-logits F.npy)")

    t = time.perf_counter()
    logits = np.load(args.logits)
    read_s = time.perf_counter() - t
    if logits.dtype != np.float32 or logits.ndim != 2:
        sys.exit(f"error: {args.logits}: expected float32 (N, K) logits, got {logits.dtype} {logits.shape}")
    n, k = logits.shape
    labels, iters, err, prep_s, iter_s, label_s = solve(logits, args.lamb, args.tol, args.check_every,
                                                        args.max_iters)
    total_s = prep_s + iter_s + label_s
    ms_per_iter = 1000.0 * iter_s / max(iters, 1)
    gbps = 2 * n * k * 8 / (ms_per_iter * 1e-3) / 1e9
    counts = np.bincount(labels, minlength=k)
    converged = err <= args.tol
    print(f"numpy float64 twin: N={n} K={k} lambda={args.lamb} tol={args.tol} (numpy {np.__version__})")
    print(f"logits: file {args.logits} (read in {read_s:.2f} s)")
    print(f"softmax and power: {prep_s:.3f} s")
    print(f"iterations: {iters} ({'converged' if converged else 'NOT converged'}, stop error {err:.4g}), "
          f"{ms_per_iter:.1f} ms/iter, {gbps:.2f} GB/s effective")
    print(f"labels: {label_s:.3f} s; clusters min/max/empty {counts.min()}/{counts.max()}/{int((counts == 0).sum())}")
    print(f"total: {total_s:.3f} s")
    if args.labels_out:
        np.save(args.labels_out, labels)
        print(f"labels written to {args.labels_out}")
    if args.json:
        print(json.dumps({"n": n, "k": k, "lambda": args.lamb, "tol": args.tol, "device": "cpu-numpy-f64",
                          "iterations": iters, "converged": bool(converged), "stop_error": err,
                          "ms_per_iter": ms_per_iter, "gbps": gbps, "prepare_s": prep_s, "iterate_s": iter_s,
                          "label_s": label_s, "total_s": total_s, "read_s": read_s,
                          "cluster_min": int(counts.min()), "cluster_max": int(counts.max()),
                          "clusters_empty": int((counts == 0).sum())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
