#!/usr/bin/python3
"""Writes the golden fixtures of the clustering metrics and the weighted kNN.

How to run (from the repository root, with Debian's Python and packages):

    apt-get install python3-sklearn python3-scipy python3-numpy   # once
    /usr/bin/python3 tests/golden/make_metrics_golden.py

It rewrites tests/golden/metrics/clustering_cases.txt, knn_case.txt and knn_pca_case.txt
(deterministic: fixed seeds, so a rerun gives the same files with the same library versions;
the versions used are written into the files' headers). tests/assign/test_metrics.cpp,
tests/assign/test_knn.cpp and tests/assign/test_pca.cpp read them.

What the references are:
- NMI, AMI, ARI: scikit-learn's normalized_mutual_info_score and adjusted_mutual_info_score
  (both with average_method="arithmetic", the default) and adjusted_rand_score.
- Matched accuracy: scipy's linear_sum_assignment on the contingency table (maximised),
  matched count / n; checked against brute force over all matchings when both label counts
  are small.
- kNN: a plain float64 NumPy implementation of the weighted kNN protocol of Wu et al. 2018
  as used in the SeLa CIFAR code (L2-normalised features, cosine similarity, top-k, weights
  exp(sim / sigma), class votes summed, top-1). Neighbour ties go to the lower memory index,
  vote ties to the lower class index. Only queries whose prediction cannot change under a
  similarity perturbation of KNN_ROBUST_DELTA are kept, so a float32 implementation must
  reproduce the expected counts exactly.
- kNN after PCA (the SeLa reference's final CIFAR protocol, cifar_utils.kNN with
  use_pca=True): scikit-learn's PCA (svd_solver="full", exact; whiten=False) fitted on the
  memory, applied to memory and queries, then the kNN above. The case is built with a clear
  gap after the c-th variance so that the span of the leading components is well defined;
  its components and variances are written too.

File formats (whitespace-separated tokens, '#' starts a comment line):
  clustering_cases.txt:  for each case
      case <name> <n>
      <n labels_true>
      <n labels_pred>
      expect <nmi> <ami> <ari> <matched_accuracy>      (%.17g)
  knn_case.txt:
      knn <m> <q> <d> <num_classes> <sigma> <number of ks> <ks...>
      memory: m rows of d float32 values (%.9g, exact round trip), then m classes
      queries: q rows of d values, then q classes
      expect_top1 <one value per k>                    (correct / q, %.17g)
      then len(ks) rows of q predicted classes (the row for ks[r] is row r)
  knn_pca_case.txt:
      knn_pca <m> <q> <d> <num_classes> <sigma> <components c> <number of ks> <ks...>
      memory, memory classes, queries, query classes as knn_case.txt
      variances: c values (scikit-learn's explained_variance_, %.17g)
      components: c rows of d values (%.17g)
      expect_top1 and the predictions as knn_case.txt
"""

import itertools
import os
import sys

import numpy as np
import scipy
import sklearn
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import (adjusted_mutual_info_score, adjusted_rand_score,
                             normalized_mutual_info_score)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "metrics")
KNN_ROBUST_DELTA = 1e-4


def contingency(labels_true, labels_pred):
    classes, class_idx = np.unique(labels_true, return_inverse=True)
    clusters, cluster_idx = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((classes.size, clusters.size), dtype=np.int64)
    np.add.at(table, (class_idx, cluster_idx), 1)
    return table


def matched_accuracy(labels_true, labels_pred):
    table = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    matched = int(table[rows, cols].sum())
    if min(table.shape) <= 6 and max(table.shape) <= 8:  # brute force cross-check
        small, large = (table, table.shape[1]) if table.shape[0] <= table.shape[1] else (
            table.T, table.shape[0])
        best = max(sum(small[i, perm[i]] for i in range(small.shape[0]))
                   for perm in itertools.permutations(range(large), small.shape[0]))
        assert best == matched, (best, matched)
    return matched / len(labels_true)


def clustering_cases():
    """(name, labels_true, labels_pred) triples covering the regular and degenerate cases."""
    rng = np.random.default_rng(20240601)
    cases = []

    def add(name, t, p):
        t = np.asarray(t, dtype=np.int64)
        p = np.asarray(p, dtype=np.int64)
        assert t.shape == p.shape and t.size > 0 and (t >= 0).all() and (p >= 0).all()
        cases.append((name, t, p))

    # degenerate and tiny
    add("single_sample", [7], [3])
    add("two_samples_same", [0, 0], [5, 5])
    add("two_samples_split_vs_joined", [0, 1], [4, 4])
    add("both_one_cluster", np.full(50, 3), np.full(50, 9))
    add("true_one_cluster", np.full(60, 2), rng.integers(0, 5, 60))
    add("pred_one_cluster", rng.integers(0, 5, 60), np.full(60, 11))
    add("pred_all_singletons", rng.integers(0, 4, 100), np.arange(100) * 3 + 1)
    add("true_all_singletons", np.arange(40), rng.integers(0, 6, 40))
    add("both_all_singletons_n30", np.arange(30), rng.permutation(30) + 1000)
    add("sklearn_doc_discordant", [0, 0, 1, 1], [0, 1, 0, 1])
    add("sklearn_doc_pure_split", [0, 0, 1, 2], [0, 0, 1, 1])
    for n in (3, 5, 8, 13):
        add(f"tiny_random_n{n}", rng.integers(0, 3, n), rng.integers(0, 4, n))

    # identical up to renaming, non-contiguous labels
    t = rng.integers(0, 10, 500)
    rename = rng.permutation(10) * 7 + 100
    add("identical", t, t.copy())
    add("renamed", t, rename[t])

    # independent labelings of different shapes
    add("independent_k10_k10", rng.integers(0, 10, 2000), rng.integers(0, 10, 2000))
    add("independent_k10_k50", rng.integers(0, 10, 2000), rng.integers(0, 50, 2000))
    add("independent_k20_k5", rng.integers(0, 20, 1000), rng.integers(0, 5, 1000))

    # noisy agreement with more clusters than classes and very large label values
    t = rng.integers(0, 10, 1000)
    p = t.copy()
    noisy = rng.random(1000) < 0.3
    p[noisy] = rng.integers(0, 15, noisy.sum())
    add("noisy_large_labels", t * 1000 + 5, p + (1 << 40))

    # imbalanced classes, few clusters
    t = rng.choice(4, size=800, p=[0.85, 0.05, 0.05, 0.05])
    p = np.where(rng.random(800) < 0.8, t, rng.integers(0, 3, 800))
    add("imbalanced", t, p)

    # fewer clusters than classes, correlated
    t = rng.integers(0, 8, 300)
    add("merged_clusters", t, t // 3)
    return cases


def write_clustering(path):
    lines = [
        "# Golden clustering metrics: written by tests/golden/make_metrics_golden.py. Do not edit.",
        f"# numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}",
        "# case <name> <n> / labels_true / labels_pred / expect <nmi> <ami> <ari> <matched_acc>",
    ]
    for name, t, p in clustering_cases():
        nmi = normalized_mutual_info_score(t, p)
        ami = adjusted_mutual_info_score(t, p)
        ari = adjusted_rand_score(t, p)
        acc = matched_accuracy(t, p)
        lines.append(f"case {name} {t.size}")
        lines.append(" ".join(str(int(v)) for v in t))
        lines.append(" ".join(str(int(v)) for v in p))
        lines.append("expect %.17g %.17g %.17g %.17g" % (nmi, ami, ari, acc))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def knn_predict(memory, memory_classes, queries, ks, sigma, num_classes):
    """Returns (predictions (len(ks), q), robust (q,) bool) in float64."""
    mem = memory.astype(np.float64)
    qry = queries.astype(np.float64)
    mem /= np.maximum(np.linalg.norm(mem, axis=1, keepdims=True), 1e-12)
    qry /= np.maximum(np.linalg.norm(qry, axis=1, keepdims=True), 1e-12)
    sims = qry @ mem.T  # (q, m)
    m = mem.shape[0]
    predictions = np.zeros((len(ks), qry.shape[0]), dtype=np.int64)
    robust = np.ones(qry.shape[0], dtype=bool)
    for qi in range(qry.shape[0]):
        order = np.lexsort((np.arange(m), -sims[qi]))  # similarity desc, index asc
        sorted_sims = sims[qi, order]
        for ki, k in enumerate(ks):
            k = min(k, m)
            votes = np.zeros(num_classes)
            weights = np.exp(sorted_sims[:k] / sigma)
            np.add.at(votes, memory_classes[order[:k]], weights)
            predictions[ki, qi] = int(np.argmax(votes))  # first maximum: lowest class
            # robustness: the k-th and (k+1)-th neighbours are well separated, and the vote
            # margin exceeds what a delta change of every similarity could move.
            if k < m and sorted_sims[k - 1] - sorted_sims[k] < 2 * KNN_ROBUST_DELTA:
                robust[qi] = False
            top2 = np.sort(votes)[-2:] if num_classes > 1 else np.array([0.0, votes[0]])
            slack = 2 * weights.sum() * (np.exp(KNN_ROBUST_DELTA / sigma) - 1)
            if top2[1] - top2[0] < slack:
                robust[qi] = False
    return predictions, robust


def rows(values, fmt="%.9g"):
    return [" ".join(fmt % v for v in row) for row in values]


def problem_lines(memory, memory_classes, queries, query_classes):
    """The memory, queries and their classes, as both kNN fixtures write them."""
    return [
        "# memory (m, d)",
        *rows(memory),
        "# memory classes (m)",
        " ".join(str(c) for c in memory_classes),
        "# queries (q, d)",
        *rows(queries),
        "# query classes (q)",
        " ".join(str(c) for c in query_classes),
    ]


def expectation_lines(top1, predictions):
    return [
        "expect_top1 " + " ".join("%.17g" % v for v in top1),
        "# expected predictions (len(ks), q)",
        *[" ".join(str(int(c)) for c in row) for row in predictions],
    ]


def write_knn(path):
    rng = np.random.default_rng(7)
    m, q_candidates, d, num_classes, sigma = 301, 160, 8, 5, 0.1
    ks = [1, 10, 50, 400]  # 400 > m: uses all memory items
    centres = rng.normal(size=(num_classes, d))

    def sample(count):
        classes = rng.integers(0, num_classes, count)
        feats = centres[classes] + 1.1 * rng.normal(size=(count, d))
        feats *= rng.uniform(0.5, 3.0, size=(count, 1))  # norms differ: normalisation matters
        return feats.astype(np.float32), classes.astype(np.int64)

    memory, memory_classes = sample(m)
    queries, query_classes = sample(q_candidates)
    _, robust = knn_predict(memory, memory_classes, queries, ks, sigma, num_classes)
    queries, query_classes = queries[robust][:117], query_classes[robust][:117]
    q = queries.shape[0]
    assert q == 117, q
    predictions, robust = knn_predict(memory, memory_classes, queries, ks, sigma, num_classes)
    assert robust.all()
    top1 = (predictions == query_classes[None, :]).mean(axis=1)

    lines = [
        "# Golden weighted kNN: written by tests/golden/make_metrics_golden.py. Do not edit.",
        f"# numpy {np.__version__}; robust to similarity changes of {KNN_ROBUST_DELTA}",
        "knn %d %d %d %d %.17g %d %s" % (m, q, d, num_classes, sigma, len(ks),
                                         " ".join(str(k) for k in ks)),
        *problem_lines(memory, memory_classes, queries, query_classes),
        *expectation_lines(top1, predictions),
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("knn top1:", top1, file=sys.stderr)


def write_knn_pca(path):
    rng = np.random.default_rng(11)
    m, q_candidates, d, num_classes, sigma, c = 400, 200, 40, 4, 0.1, 6
    ks = [1, 10, 50]
    basis = np.linalg.qr(rng.normal(size=(d, c)))[0].T  # (c, d) orthonormal rows
    centres = 1.0 * rng.normal(size=(num_classes, c))
    offset = rng.uniform(1.0, 3.0, size=d)  # a large common mean: centring matters

    def sample(count):
        classes = rng.integers(0, num_classes, count)
        latent = centres[classes] + 1.0 * rng.normal(size=(count, c))
        feats = latent @ basis + 0.15 * rng.normal(size=(count, d)) + offset
        return feats.astype(np.float32), classes.astype(np.int64)

    memory, memory_classes = sample(m)
    queries, query_classes = sample(q_candidates)
    pca = PCA(n_components=c, whiten=False, svd_solver="full").fit(memory.astype(np.float64))
    variances = pca.explained_variance_
    rest = np.linalg.eigvalsh(np.cov(memory.astype(np.float64), rowvar=False))[::-1]
    assert np.allclose(rest[:c], variances, rtol=1e-9), (rest[:c], variances)
    assert rest[c] < 0.2 * rest[c - 1], (rest[c], rest[c - 1])  # the gap
    project = lambda x: pca.transform(x.astype(np.float64))
    _, robust = knn_predict(project(memory), memory_classes, project(queries), ks, sigma,
                            num_classes)
    queries, query_classes = queries[robust][:120], query_classes[robust][:120]
    q = queries.shape[0]
    assert q == 120, q
    predictions, robust = knn_predict(project(memory), memory_classes, project(queries), ks,
                                      sigma, num_classes)
    assert robust.all()
    top1 = (predictions == query_classes[None, :]).mean(axis=1)

    lines = [
        "# Golden kNN after PCA: written by tests/golden/make_metrics_golden.py. Do not edit.",
        f"# numpy {np.__version__}, scikit-learn {sklearn.__version__}; "
        f"robust to similarity changes of {KNN_ROBUST_DELTA}",
        "knn_pca %d %d %d %d %.17g %d %d %s" % (m, q, d, num_classes, sigma, c, len(ks),
                                                " ".join(str(k) for k in ks)),
        *problem_lines(memory, memory_classes, queries, query_classes),
        "variances " + " ".join("%.17g" % v for v in variances),
        "# components (c, d)",
        *rows(pca.components_, "%.17g"),
        *expectation_lines(top1, predictions),
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("knn after pca top1:", top1, file=sys.stderr)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    write_clustering(os.path.join(OUT_DIR, "clustering_cases.txt"))
    write_knn(os.path.join(OUT_DIR, "knn_case.txt"))
    write_knn_pca(os.path.join(OUT_DIR, "knn_pca_case.txt"))


if __name__ == "__main__":
    main()
