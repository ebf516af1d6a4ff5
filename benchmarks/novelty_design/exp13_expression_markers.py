"""Foreign markers judged by mean expression instead of (or besides) detection (issue #17).

Ambient RNA (inDrop's hormone transcripts on Baron) makes a type's markers "detected" in every
reference type, so the detection ratio of ``tl._query_context`` misses beta cells called delta.
Here a marker of a query cluster is also tested against the mean log-normalized expression of
the reference cells of the cluster's majority type: foreign when the cluster's mean exceeds
theirs by more than ``log(R)`` (variants ``mean R``), alone, or with the detection ratio
(``det|mean``: either, ``det&mean``: both). ``sibling tau`` compares a cluster with the other
clusters called the same type (its siblings): its markers against them at which the
reference's mean sits at the siblings' level (position below ``tau`` between siblings and
cluster) count as foreign, when on the siblings' own markers the reference sits at theirs. Everything else is the package's query context on
the dumped default-call outputs (``exp12``), at the default cut and cap.

    python benchmarks/novelty_design/exp13_expression_markers.py [DIR] [--seeds 0 1 2] [--cases]
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cross_study as cs
from exp11_query_clusters import (
    case_inputs,
    dump_args,
    dumped_cases,
    print_tables,
    score_row,
)

import transanno_sc.tl._query_context as qc

ORIGINAL = qc._foreign_shares


def type_means(X: sp.csr_matrix, codes: np.ndarray, n_types: int) -> np.ndarray:
    onehot = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_types, len(codes))
    )
    size = np.maximum(np.asarray(onehot.sum(1)).ravel(), 1)
    return np.asarray((onehot @ X).todense()) / size[:, None]


def patched(rule: str, ratio: float):
    """``_foreign_shares`` whose ``detection`` stacks detection over mean expression."""

    def shares_of(X, clusters, forced, detection, n_clusters):
        n_types = detection.shape[0] // 2
        det, mean = detection[:n_types], detection[n_types:]
        if rule == "det":
            return ORIGINAL(X, clusters, forced, det, n_clusters)
        size, sums, n_detected = qc._cluster_sums(X, clusters, n_clusters)
        detected = n_detected / np.maximum(size, 1)[:, None]
        shares = np.zeros(n_clusters)
        records = []
        for k, markers in qc._cluster_markers(size, sums, detected, X.shape[0]):
            mean_k = sums[k] / size[k]
            label = np.bincount(forced[clusters == k]).argmax()
            by_det = det[label, markers] < detected[k, markers] / qc.FOREIGN_RATIO
            if rule.startswith("sibling"):
                shares[k] = max(
                    by_det.sum() / max(markers.size, qc.N_MARKERS),
                    sibling_share(k, label, clusters, forced, size, sums, detected, mean, ratio),
                )
            else:
                by_mean = mean[label, markers] < mean_k[markers] - np.log(ratio)
                foreign = {
                    "mean": by_mean,
                    "det|mean": by_det | by_mean,
                    "det&mean": by_det & by_mean,
                }[rule]
                shares[k] = foreign.sum() / max(markers.size, qc.N_MARKERS)
            records.append(
                {
                    "cluster": k,
                    "n_cells": int(size[k]),
                    "type": int(label),
                    "foreign_share": float(shares[k]),
                    "n_markers": int(markers.size),
                }
            )
        return shares, records

    return shares_of


def sibling_share(k, label, clusters, forced, size, sums, detected, mean, tau):
    """Share of cluster ``k``'s markers against its siblings (the other clusters called
    ``label``) at which the reference cells of ``label`` sit at the siblings' level (position
    < ``tau`` between siblings and ``k``), when on the siblings' own markers the reference sits
    at the siblings' level too; 0 without siblings."""
    n_clusters = len(size)
    majority = np.array(
        [np.bincount(forced[clusters == j]).argmax() if size[j] else -1 for j in range(n_clusters)]
    )
    sib = [
        j
        for j in range(n_clusters)
        if j != k and majority[j] == label and size[j] >= qc.MIN_CLUSTER_CELLS
    ]
    if not sib:
        return 0.0
    n_b = size[sib].sum()
    mean_a = sums[k] / size[k]
    mean_b = sums[sib].sum(0) / n_b
    det_a = detected[k]
    det_b = (detected[sib] * size[sib][:, None]).sum(0) / n_b
    ref = mean[label]
    d = mean_a - mean_b
    up_a = np.flatnonzero((det_a >= qc.MIN_MARKER_DETECTION) & (d > 0))
    up_a = up_a[np.argsort(-d[up_a])][: qc.N_MARKERS]
    up_b = np.flatnonzero((det_b >= qc.MIN_MARKER_DETECTION) & (d < 0))
    up_b = up_b[np.argsort(d[up_b])][: qc.N_MARKERS]
    if up_a.size < 5 or up_b.size < 5:
        return 0.0
    t = np.clip((ref[up_a] - mean_b[up_a]) / d[up_a], 0, 1)  # 1: the reference is like k
    u = np.clip((ref[up_b] - mean_a[up_b]) / -d[up_b], 0, 1)  # 1: the reference is like siblings
    if np.median(u) < 1 - tau:
        return 0.0
    return float((t < tau).sum() / max(up_a.size, qc.N_MARKERS))


RULES = (
    [("det", 5.0)]
    + [(rule, r) for rule in ("mean", "det|mean", "det&mean") for r in (2.0, 3.0, 5.0, 8.0)]
    + [("sibling", tau) for tau in (0.05, 0.1, 0.2, 0.3)]
)


def main():
    ap = dump_args(__doc__, cases=True)
    args = ap.parse_args()
    cs._quiet()
    rows = []
    for r, c in dumped_cases(args.dir, args.seeds):
        x = case_inputs(r, c)
        mean = type_means(qc._log_normalized(x.rh, None, x.scale), x.codes, len(x.types))
        for rule, ratio in RULES:
            qc._foreign_shares = patched(rule, ratio)
            ctx = qc.query_context(
                c.query,
                layer=None,
                scale=x.scale,
                confidence=x.own,
                forced=x.forced,
                detection=(list(x.rh.var_names), np.concatenate([x.det, mean])),
                classes=x.types,
                seed=0,
            )
            rows.append(score_row(r, f"{rule} {ratio:g}", ctx.confidence(x.own), x.best))
        qc._foreign_shares = ORIGINAL
        print(r["pair"], r["case"], r["seed"], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(Path(args.dir) / "exp13.csv", index=False)
    print_tables(df, args.cases)


if __name__ == "__main__":
    main()
