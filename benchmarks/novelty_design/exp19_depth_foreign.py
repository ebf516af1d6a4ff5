"""A depth-fair foreign-marker test (issue #17, points 3 and 4), on the dumps of
``dump_novelty.py`` with ``shares_inputs`` (every cross-study case and ``run.py`` task).

The query context calls a cluster's marker foreign to its predicted type when the reference
cells of that type detect it five times less often than the cluster does. Detection depends
on depth: a query sequenced deeper than the reference (10x v3 against inDrop or Drop-seq; the
``reference at 10% depth`` case) detects every gene more often, so known types' markers look
foreign, and a shallower query hides a novel type's markers. Under a Poisson model a gene
detected in a share ``d`` of cells has ``lambda = -log(1 - d)`` counts per cell, and binomial
thinning to a share ``r`` of the counts gives ``1 - (1 - d) ** r``. Rules:

* ``default``: the package's test (replays the dumped confidence);
* ``depth``: for each cluster and its predicted type, ``r`` = the median over the genes both
  detect in at least ``MIN_D`` of their cells of ``lambda_type / lambda_cluster``; the deeper
  side's detection is thinned to the shallower's depth (the cluster's by ``r`` where
  ``r < 1``, the type's by ``1 / r`` where ``r > 1``) before the five-fold test;
* ``depth, query only``: only a deeper cluster is thinned (``r < 1``);
* ``quantile``: the cluster's detection of each marker is mapped onto the type's scale by
  matching quantiles of the two detection profiles over all compared genes (the same genes on
  both sides): any monotone change of detection with depth, overdispersed or not, is undone,
  while a few hundred differing genes barely move the quantiles;
* ``quantile, down only``: the mapped detection only where it is lower (a deeper cluster).

The type-wise shift (cells in clusters of at most 25 % foreign markers), the neighbourhood
and the cap are then replayed as in the package. Per pair: change of shared macro-F1 (with
"Unassigned") against the default (median and worst run), known "Unassigned" %; over the
novel-type runs the median novel "Unassigned" % and AUROC.

    python benchmarks/novelty_design/exp19_depth_foreign.py [DIR]
"""

import pickle
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp17_class_shift import cell_confidence, scores, shift_of
from exp18_evidence_product import combine_min, neighbours

import transanno_sc.tl._query_context as qc

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/p7")
MIN_D = 0.1


def depth_ratio(dq, dr, min_d=MIN_D):
    """Median of lambda_type / lambda_cluster over the genes both detect in ``min_d``."""
    both = (dq >= min_d) & (dr >= min_d) & (dq < 1) & (dr < 1)
    if both.sum() < 20:
        return 1.0
    return float(np.exp(np.median(np.log(np.log1p(-dr[both]) / np.log1p(-dq[both])))))


def shares(inputs, clusters, rule):
    """Per cluster its foreign share (and the clusters it was computed for) under ``rule``."""
    size, sums, n_det = inputs["size"], inputs["sums"], inputs["n_detected"]
    forced, detection = inputs["forced"], inputs["detection"]
    detected = n_det / np.maximum(size, 1)[:, None]
    out = np.zeros(size.size)
    computed = []
    ratios = {}
    for k, markers in qc._cluster_markers(size, sums, detected, clusters.size):
        label = np.bincount(forced[clusters == k]).argmax()
        dq, dr = detected[k].copy(), detection[label].copy()
        if rule.startswith("quantile"):
            mapped = qc._on_type_scale(dq, dr, markers)  # the package's mapping
            dq[markers] = np.minimum(dq[markers], mapped) if "down" in rule else mapped
        elif rule != "default":
            r = depth_ratio(dq, dr)
            ratios[k] = r
            if r < 1:
                dq = 1 - (1 - dq) ** r
            elif r > 1 and rule == "depth":
                dr = 1 - (1 - dr) ** (1 / r)
        foreign = dr[markers] < dq[markers] / qc.FOREIGN_RATIO
        out[k] = foreign.sum() / max(markers.size, qc.N_MARKERS)
        computed.append(k)
    return out, np.array(computed, dtype=int), ratios


def confidences(rec, idx, share, computed, F=qc.FOREIGN_SHARE):
    """The package's confidences given each cluster's foreign ``share`` (``computed``: the
    clusters it was computed for): the type-wise shift for cells in clusters of at most
    :data:`~qc.STATE_SHARE`, the neighbourhood (``idx``) and the cap with half-way share
    ``F``."""
    clusters = rec["clusters"]
    f = share[clusters]
    typed = computed[share[computed] <= qc.STATE_SHARE]
    eligible = np.isin(clusters, typed)
    d, q = rec["distance"], rec["quantiles"]
    shift = np.full(d.size, rec["shift"])
    pred = rec["probs"].argmax(1)
    for c in np.unique(pred):
        cells = pred == c
        if cells.sum() < 50:
            continue
        s = max(rec["shift"], shift_of(d[cells], q, min_cells=50))
        shift[cells & eligible] = s
    own = cell_confidence(rec, shift)
    conf = combine_min(own, own[idx].mean(1), f, F)
    conf[rec["n_expressed"] == 0] = 0.0
    return conf


def replay(rec, idx, rule):
    share, computed, ratios = shares(rec["shares_inputs"], rec["clusters"], rule)
    return confidences(rec, idx, share, computed), ratios


def print_pairs(res, rules, known=np.median, worst_label="worst pair"):
    """Per rule and pair (``res[rule][(pair, case, seed)]`` = :func:`scores`): the change of
    shared macro-F1 against ``default`` (median / worst run), ``known`` of the runs' known
    "Unassigned" %, and over the novel-type runs the median novel "Unassigned" % and AUROC;
    then the rule over all pairs (``worst_label``: what the largest ``known`` is called)."""
    pairs = sorted({k[0] for k in res["default"]})
    print("rule | pair | shared macro-F1 change median / worst | known U % | novel U % | AUROC")
    for rule in rules:
        novel, aucs, worst = [], [], 0.0
        for pair in pairs:
            keys = [k for k in res["default"] if k[0] == pair]
            d = [res[rule][k][0] - res["default"][k][0] for k in keys]
            ku = known([res[rule][k][1] for k in keys])
            nu = [res[rule][k][2] for k in keys if np.isfinite(res[rule][k][2])]
            au = [res[rule][k][3] for k in keys if np.isfinite(res[rule][k][3])]
            novel += nu
            aucs += au
            worst = max(worst, ku)
            print(
                f"{rule} | {pair} | {np.median(d):+.3f} / {min(d):+.3f} | {ku:.1f} | "
                + (f"{np.median(nu):.0f} | {np.median(au):.3f}" if nu else "- | -")
            )
        print(
            f"{rule} | ALL | | {worst_label} {worst:.1f} | median {np.median(novel):.0f} "
            f"({len(novel)} runs) | {np.median(aucs):.3f}"
        )


def print_cases(res, rules, extra=None):
    """Per case (median over seeds): novel / known "Unassigned" % under each rule, and the
    columns ``extra(case)`` adds."""
    print("per case (median over seeds): novel U % / known U % for " + ", ".join(rules))
    for case in sorted({k[:2] for k in res["default"]}):
        keys = [k for k in res["default"] if k[:2] == case]
        vals = [
            f"{np.median([res[r][k][2] for k in keys]):.0f} / "
            f"{np.median([res[r][k][1] for k in keys]):.1f}"
            for r in rules
        ]
        print(" | ".join([*case, *vals, *(extra(case) if extra else [])]))


def runs(directory):
    """``(key, dump, neighbour indices)`` for each dump in ``directory`` that has the foreign
    shares' inputs and the PCA (``key``: pair, case, seed)."""
    for path in sorted(directory.glob("*.pkl")):
        with open(path, "rb") as fh:
            rec = pickle.load(fh)
        if rec.get("shares_inputs") is None or rec.get("pcs") is None:
            continue
        yield (rec["pair"], rec["case"], rec["seed"]), rec, neighbours(rec["pcs"])


RULES = ["default", "depth", "depth, query only", "quantile", "quantile, down only"]


def main():
    res = defaultdict(dict)
    check, ratio_log = [], defaultdict(list)
    for key, rec, idx in runs(DIR):
        for rule in RULES:
            conf, ratios = replay(rec, idx, rule)
            if rule == "default":
                check.append(np.abs(conf - rec["conf"]).max())
            else:
                ratio_log[key[:2]] += list(ratios.values())
            res[rule][key] = scores(rec, conf)
    print(f"default replay: largest |confidence - dumped| {max(check):.2e} over {len(check)} runs")
    print_pairs(res, RULES, known=np.median)
    print()

    def ratios(case):
        rq = np.quantile(ratio_log[case], [0.1, 0.5, 0.9]) if ratio_log[case] else []
        return ["r " + " ".join(f"{x:.2f}" for x in rq)]

    print_cases(res, RULES, extra=ratios)


if __name__ == "__main__":
    main()
