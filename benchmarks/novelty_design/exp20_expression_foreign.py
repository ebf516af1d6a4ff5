"""Foreign markers judged by mean expression on the type's scale (issue #17, point 3), on the
dumps of ``dump_novelty.py --type-means`` (every cross-study case and ``run.py`` task).

The package calls a cluster's marker foreign when the reference cells of its predicted type
*detect* it five times less often than the cluster does (after :func:`_on_type_scale` takes a
deeper cluster's detection down to the type's depth). Detection saturates: inDrop's ambient
hormone transcripts (Baron) are detected in most cells of every type, and a few hundred PBMC
genes are detected in dendritic cells and CD14+ monocytes alike, so a held-out type called
its nearest known type keeps most markers "native". The mean log-normalized expression does
not saturate, but was read as foreign across technologies when compared raw (``exp13``:
Zilionis -> Tabula Muris known cells 16-22 % "Unassigned"). Here the cluster's mean is first
put on the type's scale by the same quantile mapping over all compared genes (downwards only,
as for detection). Rules, each replayed through the package's type-wise shift,
neighbourhood and cap:

* ``default``: the package's detection test (replays the dumped confidence);
* ``mean R``: a marker is foreign when the type's mean is below the mapped cluster mean
  minus ``log(R)`` (``R`` fold on the normalized scale);
* ``det | mean R``: foreign by either test; ``det & mean R``: by both;
* ``mean if missing R``: the mean test where the cluster also lacks over half of its type's
  own markers (:func:`missing_share`: a new type should lack them, a known type in another
  state keep them), the detection test elsewhere;
* ``F x``: the detection test with the cap's half-way share at ``x`` instead of 0.5
  (``exp18``'s lower cap, on inputs with the depth-fair test).

Per pair (``exp19``'s table): change of shared macro-F1 (with "Unassigned") against the
default (median and worst run) and known "Unassigned" % (worst run); over the novel-type
runs the median novel "Unassigned" % and AUROC; then per case.

    python benchmarks/novelty_design/exp20_expression_foreign.py [DIR]

(On dumps without ``--type-means``, such as ``results_tmp/p7``, only the ``F`` rules run.)
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


def missing_share(cluster, means, detection, label, ratio=3.0):
    """Share of the type's own markers (its :data:`~qc.N_MARKERS` genes most above every other
    reference type in mean, detected in 30 % of its cells) whose mean in the cluster, on the
    type's scale (only upwards: a shallower cluster), is ``ratio`` times below the type's."""
    diff = means[label] - np.delete(means, label, 0).max(0)
    ok = np.flatnonzero((detection[label] >= qc.MIN_MARKER_DETECTION) & (diff > 0))
    own = ok[np.argsort(-diff[ok])][: qc.N_MARKERS]
    if own.size == 0:
        return 0.0
    level = np.maximum(cluster[own], qc._on_type_scale(cluster, means[label], own))
    return (level < means[label, own] - np.log(ratio)).sum() / max(own.size, qc.N_MARKERS)


def shares(inputs, clusters, n_types, rule):
    """Per cluster its foreign share, and the clusters it was computed for, under ``rule``."""
    size, sums, n_det = inputs["size"], inputs["sums"], inputs["n_detected"]
    forced, stacked = inputs["forced"], inputs["detection"]
    detection, means = stacked[:n_types], stacked[n_types:]
    detected = n_det / np.maximum(size, 1)[:, None]
    mean = sums / np.maximum(size, 1)[:, None]
    out = np.zeros(size.size)
    computed = []
    for k, markers in qc._cluster_markers(size, sums, detected, clusters.size):
        label = np.bincount(forced[clusters == k]).argmax()
        seen = np.minimum(
            detected[k, markers], qc._on_type_scale(detected[k], detection[label], markers)
        )
        by_detection = detection[label, markers] < seen / qc.FOREIGN_RATIO
        if rule == "default" or rule.startswith("F "):
            foreign = by_detection
        else:
            level = np.minimum(mean[k, markers], qc._on_type_scale(mean[k], means[label], markers))
            by_mean = {r: means[label, markers] < level - np.log(r) for r in (2.0, 3.0, 5.0, 8.0)}
            kind, r = rule.split(" ")[:-1], rule.split(" ")[-1]
            kind = " ".join(kind)
            m = by_mean[float(r)]
            if kind == "mean if missing":
                # the mean test only where the cluster lacks most of its type's own markers
                foreign = (
                    m if missing_share(mean[k], means, detection, label) > 0.5 else by_detection
                )
            else:
                foreign = {
                    "mean": m,
                    "det | mean": by_detection | m,
                    "det & mean": by_detection & m,
                }[kind]
        out[k] = foreign.sum() / max(markers.size, qc.N_MARKERS)
        computed.append(k)
    return out, np.array(computed, dtype=int)


def replay(rec, idx, rule):
    share, computed = shares(rec["shares_inputs"], rec["clusters"], len(rec["classes"]), rule)
    F = float(rule.split()[1]) if rule.startswith("F ") else qc.FOREIGN_SHARE
    return confidences(rec, idx, share, computed, F)


RULES = [
    "default",
    *(f"{k} {r:g}" for k in ("mean", "det | mean", "det & mean") for r in (2, 3, 5, 8)),
    "mean if missing 3",
    "mean if missing 5",
    "F 0.45",
    "F 0.4",
]


def main():
    res = defaultdict(dict)
    check = []
    for key, rec, idx in runs(DIR):
        has_means = rec["shares_inputs"]["detection"].shape[0] > len(rec["classes"])
        rules = RULES if has_means else [r for r in RULES if "mean" not in r]
        for rule in rules:
            conf = replay(rec, idx, rule)
            if rule == "default":
                check.append(np.abs(conf - rec["conf"]).max())
            res[rule][key] = scores(rec, conf)
    print(f"default replay: largest |confidence - dumped| {max(check):.2e} over {len(check)} runs")
    rules = [r for r in RULES if len(res[r]) == len(res["default"])]
    print_pairs(res, rules, known=max, worst_label="worst run")
    print()
    print_cases(res, rules)


if __name__ == "__main__":
    main()
