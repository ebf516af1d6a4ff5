"""A known type in another state (issue #17, point 3: "must not flag a whole query because
... the query comes from another technology"), on the dumps of ``dump_novelty.py``.

Tabula Muris -> Zilionis (``tabula_to_zilionis``): marrow granulocytes against mature lung
neutrophils. The novelty distance of the lung neutrophils to the reference's granulocytes is
far beyond the reference's held-out distances, while the query-wide shift factor (10 %
quantile of all query distances against the reference's) is set by the B, T and NK cells,
which sit close to theirs: most neutrophils come out "Unassigned" though the classifier calls
them right. Rules replaying the default's confidence with another shift:

* ``default``: one shift for the query (reproduces the dumped confidence);
* ``class m``: each predicted type's own shift (10 % quantile of the distances of the query
  cells called that type, against the reference's), for types called for at least ``m``
  query cells (others: the query's);
* ``class m, f <= g``: the same, only for cells whose query cluster's foreign-marker share
  is at most ``g`` (the cluster's markers are found in the reference cells of its type);
* ``cluster, f <= g``: each k-means cluster's own shift, for clusters with ``f <= g``.

Then the query context as in the package (neighbourhood mean, cap by the foreign share).
Per pair: shared macro-F1 (with "Unassigned") change against the default's, known and novel
cells "Unassigned" (%), AUROC of the confidence for known against novel cells.

    python benchmarks/novelty_design/exp17_class_shift.py [DIR]
"""

import pickle
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/p6")
ALPHA = 0.03  # NOVELTY_ALPHA
SHIFT_Q = 0.1  # SHIFT_QUANTILE
K = 15  # query_context.N_NEIGHBORS
FOREIGN_SHARE = 0.5


def pvalue(d, q):
    levels = np.linspace(0, 1, q.size)
    cdf = np.interp(d, q, levels)
    cdf = np.where(d >= q[-1], 1.0, cdf)
    cdf = np.where(d <= q[0], 0.0, cdf)
    return 1.0 - cdf


def ref_q10(q):
    return q[round(SHIFT_Q * (q.size - 1))]


def shift_of(d, q, min_cells=50):
    if d.size < min_cells:
        return 1.0
    return max(1.0, np.quantile(d, SHIFT_Q) / max(ref_q10(q), 1e-12))


def context(rec, cell_conf, idx):
    if rec["neighbourhood"] is None:
        return cell_conf
    neigh = cell_conf[idx].mean(1)
    cap = np.minimum(1.0, 0.5 * (1.0 - rec["foreign"]) / (1.0 - FOREIGN_SHARE))
    return np.minimum(np.maximum(cell_conf, neigh), cap)


def cell_confidence(rec, shift):
    P = rec["probs"]
    p = pvalue(rec["distance"] / shift, rec["quantiles"])
    conf = P.max(1) * p / (p + ALPHA)
    conf[rec["n_expressed"] == 0] = 0.0  # no expressed vocabulary gene
    return conf


def rule_default(rec):
    return np.full(len(rec["distance"]), rec["shift"])


def rule_class(rec, m, g=None, by="class"):
    d, q = rec["distance"], rec["quantiles"]
    shift = np.full(d.size, rec["shift"])
    if by == "class":
        groups = rec["probs"].argmax(1)
    else:
        if rec["clusters"] is None:
            return shift
        groups = rec["clusters"]
    f = rec["foreign"] if rec["foreign"] is not None else np.zeros(d.size)
    for c in np.unique(groups):
        cells = groups == c
        if cells.sum() < m:
            continue
        s = max(rec["shift"], shift_of(d[cells], q, min_cells=m))
        use = cells if g is None else cells & (f <= g)
        shift[use] = s
    return shift


RULES = {"default": rule_default}
for m in (20, 50):
    RULES[f"class {m}"] = lambda r, m=m: rule_class(r, m)
    for g in (0.0, 0.1, 0.25):
        RULES[f"class {m}, f <= {g}"] = lambda r, m=m, g=g: rule_class(r, m, g)
for g in (0.0, 0.1, 0.25):
    RULES[f"cluster, f <= {g}"] = lambda r, g=g: rule_class(r, 5, g, by="cluster")


def scores(rec, conf):
    truth = rec["truth"]
    known = np.isin(truth, rec["ref_types"])
    types = sorted(set(truth[known]))
    forced = rec["classes"][rec["probs"].argmax(1)]
    lab = np.where(conf < 0.5, "Unassigned", forced)
    f1 = f1_score(truth[known], lab[known], labels=types, average="macro", zero_division=0)
    ku = 100 * (conf[known] < 0.5).mean()
    nu = 100 * (conf[~known] < 0.5).mean() if (~known).any() else np.nan
    auc = roc_auc_score(known, conf) if (~known).any() and known.any() else np.nan
    return f1, ku, nu, auc


def main():
    res = defaultdict(dict)
    check = []
    for path in sorted(DIR.glob("c_*.pkl")):
        rec = pickle.load(open(path, "rb"))
        key = (rec["pair"], rec["case"], rec["seed"])
        idx = None
        if rec["neighbourhood"] is not None:
            pcs = rec["pcs"]
            nn = NearestNeighbors(n_neighbors=min(K, len(pcs) - 1)).fit(pcs)
            idx = np.concatenate(
                [np.arange(len(pcs))[:, None], nn.kneighbors(return_distance=False)], 1
            )
        for name, rule in RULES.items():
            conf = context(rec, cell_confidence(rec, rule(rec)), idx)
            conf[rec["n_expressed"] == 0] = 0.0
            if name == "default":
                check.append(np.abs(conf - rec["conf"]).max())
            res[name][key] = scores(rec, conf)
    print(f"default replay: largest |confidence - dumped| {max(check):.2e} over {len(check)} runs")
    pairs = sorted({k[0] for k in res["default"]})
    print(
        "rule | " + " | ".join(pairs) + " | known U % worst pair | novel U % median | AUROC median"
    )
    print("--- | " + " | ".join("---" for _ in pairs) + " | --- | --- | ---")
    for name in RULES:
        cells, worst_known = [], 0.0
        novel, aucs = [], []
        for pair in pairs:
            keys = [k for k in res["default"] if k[0] == pair]
            d = [res[name][k][0] - res["default"][k][0] for k in keys]
            ku = np.median([res[name][k][1] for k in keys])
            worst_known = max(worst_known, ku)
            cells.append(f"{np.median(d):+.3f} (U {ku:.1f} %)")
            novel += [res[name][k][2] for k in keys if np.isfinite(res[name][k][2])]
            aucs += [res[name][k][3] for k in keys if np.isfinite(res[name][k][3])]
        print(
            f"{name} | "
            + " | ".join(cells)
            + f" | {worst_known:.1f} | {np.median(novel):.0f} | {np.median(aucs):.3f}"
        )
    print()
    shown = ["default", "class 50", "class 50, f <= 0.25", "cluster, f <= 0.25"]
    print("novel cases, median over seeds: novel U % / AUROC for " + ", ".join(shown))
    for case in sorted({k[:2] for k in res["default"]}):
        keys = [k for k in res["default"] if k[:2] == case]
        if not np.isfinite(res["default"][keys[0]][2]):
            continue
        vals = [
            f"{np.median([res[n][k][2] for k in keys]):.0f} / "
            f"{np.median([res[n][k][3] for k in keys]):.3f}"
            for n in shown
        ]
        print(" | ".join([*case, *vals]))
    print()
    print("default, median per pair: shared macro-F1, known U %, novel U %")
    for pair in pairs:
        keys = [k for k in res["default"] if k[0] == pair]
        v = np.array([res["default"][k][:3] for k in keys], dtype=float)
        print(pair, np.round(np.nanmedian(v, 0), 3), len(keys))


if __name__ == "__main__":
    main()
