"""Foreign-marker shares over informative markers only (issue #17, point 3), on the dumps of
``dump_novelty.py`` (every cross-study case and ``run.py`` task).

A cluster's markers are its genes most above the rest of the query. Where the query is mostly
cells the reference lacks (a whole pancreas against an immune reference), some of a novel
cluster's markers are genes every cell type detects, only higher in this cluster than in the
rest of the query (Sec61b, Uqcrq, Mif in beta cells against ductal and stellate cells). The
reference cells of any type detect those too, so they can never be foreign, and they dilute
the share: Tabula Muris -> Baron, a cluster of 80 beta cells called T cells had 9 of its 20
markers foreign (0.45, under the cap's half-way 0.5). Rules:

* ``default``: the package's test (replays the dumped confidence);
* ``skip ubiquitous``: before the top :data:`~qc.N_MARKERS` are taken, drop the genes that
  every reference type detects in at least ``1 / FOREIGN_RATIO`` of its cells (they cannot
  be foreign to any type whatever the cluster detects);
* ``skip native to all``: drop, per cluster, the genes that every reference type detects at
  least ``d / FOREIGN_RATIO`` (``d``: the cluster's detection; foreign to no type here);
* with fewer than two reference types both rules fall back to the default (every native
  marker would be native to all types).

Per pair (``exp19``'s table): change of shared macro-F1 (with "Unassigned") against the
default (median and worst run), known "Unassigned" % (worst run); over the novel-type runs
the median novel "Unassigned" % and AUROC; then per case.

    python benchmarks/novelty_design/exp22_informative_markers.py [DIR]
"""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp17_class_shift import scores
from exp19_depth_foreign import confidences, print_cases, print_pairs, runs

import transanno_sc.tl._query_context as qc

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/p8")
RULES = ["default", "skip ubiquitous", "skip native to all"]


def markers_of(size, sums, detected, n_cells, detection, rule):
    """``(cluster, markers)`` as :func:`qc._cluster_markers`, the genes ``rule`` drops left
    out before the top ones are taken."""
    total = sums.sum(0)
    floor = detection.min(0)
    for k in range(size.size):
        rest = n_cells - size[k]
        if size[k] < qc.MIN_CLUSTER_CELLS or rest < qc.MIN_CLUSTER_CELLS:
            continue
        diff = sums[k] / size[k] - (total - sums[k]) / rest
        ok = (detected[k] >= qc.MIN_MARKER_DETECTION) & (diff > 0)
        if rule == "skip ubiquitous" and detection.shape[0] > 1:
            ok &= floor < 1.0 / qc.FOREIGN_RATIO
        elif rule == "skip native to all" and detection.shape[0] > 1:
            ok &= floor < detected[k] / qc.FOREIGN_RATIO
        if ok.any():
            yield k, np.flatnonzero(ok)[np.argsort(-diff[ok])][: qc.N_MARKERS]


def shares(inputs, clusters, n_types, rule):
    """Per cluster its foreign share, and the clusters it was computed for, under ``rule``."""
    size, sums, n_det = inputs["size"], inputs["sums"], inputs["n_detected"]
    forced, detection = inputs["forced"], inputs["detection"][:n_types]
    detected = n_det / np.maximum(size, 1)[:, None]
    out = np.zeros(size.size)
    computed = []
    for k, markers in markers_of(size, sums, detected, clusters.size, detection, rule):
        label = np.bincount(forced[clusters == k]).argmax()
        seen = np.minimum(
            detected[k, markers], qc._on_type_scale(detected[k], detection[label], markers)
        )
        foreign = detection[label, markers] < seen / qc.FOREIGN_RATIO
        out[k] = foreign.sum() / max(markers.size, qc.N_MARKERS)
        computed.append(k)
    return out, np.array(computed, dtype=int)


def main():
    res = defaultdict(dict)
    check = []
    for key, rec, idx in runs(DIR):
        for rule in RULES:
            share, computed = shares(
                rec["shares_inputs"], rec["clusters"], len(rec["classes"]), rule
            )
            conf = confidences(rec, idx, share, computed)
            if rule == "default":
                check.append(np.abs(conf - rec["conf"]).max())
            res[rule][key] = scores(rec, conf)
    print(f"default replay: largest |confidence - dumped| {max(check):.2e} over {len(check)} runs")
    print_pairs(res, RULES, known=max, worst_label="worst run")
    print()
    print_cases(res, RULES)


if __name__ == "__main__":
    main()
