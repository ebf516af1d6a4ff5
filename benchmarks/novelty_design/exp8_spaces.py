"""Novelty spaces on TransAnno's own labels (``dump_outputs.py``, seed 0; issue #17, 0.3).

For every case of ``cross_study.py``, the class-conditional novelty distance of the default
(mean cosine distance to the 10 nearest reference cells of the predicted type, divided by the
type's median leave-one-out distance, pooled empirical p-values) is recomputed in:

* ``refPCA_refHVG``: a 50-PC PCA of the reference on its 2,000 HVGs (what the model does, on
  its vocabulary);
* ``refPCA_union``: the same on the union of the reference's and the query's HVGs;
* ``jointPCA_union``: a PCA of reference + query cells on that union;
* ``genes_union``: no PCA, centred log-expression on the union;

with the query shift factor at the 10th / 25th percentile, over all cells (``global``) or per
predicted type (``type``), and typicality alphas 0.003-0.03. Confidence = TransAnno's
probability x p / (p + alpha), "Unassigned" below 0.5.

    python benchmarks/novelty_design/exp8_spaces.py [DIR]
"""

import glob
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs

DIR = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/nov17"
K = 10


def hvg(a, n=2000):
    b = a.copy()
    sc.pp.highly_variable_genes(b, n_top_genes=min(n, b.n_vars), flavor="seurat")
    return b.var_names[b.var.highly_variable]


def unit(z):
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def class_distances(zr, yr, zq, yq):
    """Query: to the K nearest reference cells of the predicted type; reference: leave one out.
    Both divided by the type's median reference distance."""
    dq, dr = np.zeros(len(zq)), np.zeros(len(zr))
    for t in np.unique(yr):
        R = zr[yr == t]
        m = yq == t
        if m.any():
            dq[m] = np.sort(1 - zq[m] @ R.T, 1)[:, : min(K, len(R))].mean(1)
        if len(R) > 1:
            s = 1 - R @ R.T
            np.fill_diagonal(s, np.inf)
            dr[yr == t] = np.sort(s, 1)[:, : min(K, len(R) - 1)].mean(1)
        else:
            dr[yr == t] = 1.0
    med = {t: np.median(dr[yr == t]) for t in np.unique(yr)}
    return dr / np.array([med[t] for t in yr]), dq / np.array([med.get(t, 1.0) for t in yq])


def pvalues(dr, dq):
    srt = np.sort(dr)
    return 1 - np.searchsorted(srt, dq, side="left") / len(srt)


def shifted(dr, dq, yr, yq, how, q):
    if len(dq) < 50:
        return dq
    if how == "global":
        return dq / max(1.0, np.quantile(dq, q) / np.quantile(dr, q))
    g = max(1.0, np.quantile(dq, 0.1) / np.quantile(dr, 0.1))
    f = np.full(len(dq), g)
    for t in np.unique(yq):
        m = yq == t
        if m.sum() >= 50 and (yr == t).any():
            f[m] = max(1.0, np.quantile(dq[m], q) / np.quantile(dr[yr == t], q))
    return dq / f


def main():
    rows = []
    for f in sorted(glob.glob(f"{DIR}/d_*_0.pkl")):
        with open(f, "rb") as fh:
            r = pickle.load(fh)
        c = cs.build(r["pair"], r["case"], 0)
        ref, q = cs.harmonize(c.ref, c.query)
        ref, q = cs.lognorm(ref, c.log_normalized), cs.lognorm(q, c.log_normalized)
        yr, yq = ref.obs[c.key].astype(str).to_numpy(), r["forced"]
        known = np.isin(r["truth"], r["ref_types"])
        prob = r["probs"].max(1)
        gr = hvg(ref)
        gu = gr.union(hvg(q))
        spaces = {}
        for name, genes, joint in (
            ("refPCA_refHVG", gr, False),
            ("refPCA_union", gu, False),
            ("jointPCA_union", gu, True),
        ):
            xr, xq = (
                cs._dense_on(ref.X, ref.var_names, genes),
                cs._dense_on(q.X, q.var_names, genes),
            )
            pca = PCA(50, random_state=0).fit(np.vstack([xr, xq]) if joint else xr)
            spaces[name] = unit(pca.transform(xr)), unit(pca.transform(xq))
        xr, xq = cs._dense_on(ref.X, ref.var_names, gu), cs._dense_on(q.X, q.var_names, gu)
        spaces["genes_union"] = unit(xr - xr.mean(0)), unit(xq - xr.mean(0))
        for name, (zr, zq) in spaces.items():
            dr, dq = class_distances(zr, yr, zq, yq)
            for how in ("global", "type"):
                for qq in (0.1, 0.25):
                    p = pvalues(dr, shifted(dr, dq, yr, yq, how, qq))
                    for a in (0.003, 0.01, 0.03):
                        conf = prob * p / (p + a)
                        row = {
                            "case": r["case"],
                            "space": name,
                            "shift": f"{how}{int(qq * 100)}",
                            "alpha": a,
                            "known": 100 * (conf[known] < 0.5).mean(),
                        }
                        if (~known).any():
                            row["novel"] = 100 * (conf[~known] < 0.5).mean()
                            row["auroc"] = roc_auc_score(known, conf)
                        rows.append(row)
        print(r["case"], flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    nov = df[df.novel.notna()]
    out = nov.groupby(["space", "shift", "alpha"])[["novel", "auroc", "known"]].median()
    out["known_max_novel_cases"] = nov.groupby(["space", "shift", "alpha"])["known"].max()
    out["known_all_cases"] = df.groupby(["space", "shift", "alpha"])["known"].median()
    print(out.round(3).to_string())
    for v in ("novel", "known"):
        t = df[(df["shift"] == "global10") & (df["alpha"] == 0.01)].pivot_table(
            index="case", columns="space", values=v
        )
        print(v, "(global10, alpha 0.01)")
        print(t.round(1).to_string())


if __name__ == "__main__":
    main()
