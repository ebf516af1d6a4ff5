"""Query-side structure for "Unassigned" (issue #17): smoothing the default score over the
query's own neighbours, cluster-level votes, and a cluster "foreign markers" score.

Rebuilds each dumped case (``dump_outputs.py``) with ``cross_study.build``, makes a graph of
the query cells in the query's own PCA (its 2,000 HVGs of log1p CP10k, 30 PCs, 15 neighbours)
and Leiden clusters on it, and recomputes the labels of several rules from the dumped
probability and novelty p-value:

* ``default``: ``prob * p / (p + 0.03) < 0.5``;
* ``smooth``: the default score averaged over each cell's query neighbours;
* ``both``: Unassigned when the cell's own and its neighbourhood's scores are below 0.5;
* ``cluster``: a cluster with a majority of cells below 0.5 is Unassigned as a whole, the
  other clusters' cells keep their own rule (``both``);
* ``markers``: per cluster, the share of its top marker genes (against the rest of the
  query) that the reference cells of the cluster's majority type barely detect; cells of a
  cluster above ``m`` are Unassigned as well (OR with ``both``).

    python benchmarks/novelty_design/exp11_query_clusters.py [DIR] [--seeds 0]
"""

import argparse
import glob
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs
from exp9_rules import U, evaluate, result_row, summary

CC = set(
    """MCM5 PCNA TYMS FEN1 MCM2 MCM4 RRM1 UNG GINS2 MCM6 CDCA7 DTL PRIM1 UHRF1 MLF1IP HELLS
RFC2 RPA2 NASP RAD51AP1 GMNN WDR76 SLBP CCNE2 UBR7 POLD3 MSH2 ATAD2 RAD51 RRM2 CDC45 CDC6 EXO1
TIPIN DSCC1 BLM CASP8AP2 USP1 CLSPN POLA1 CHAF1B BRIP1 E2F8 HMGB2 CDK1 NUSAP1 UBE2C BIRC5 TPX2
TOP2A NDC80 CKS2 NUF2 CKS1B MKI67 TMPO CENPF TACC3 FAM64A SMC4 CCNB2 CKAP2L CKAP2 AURKB BUB1 KIF11
ANP32E TUBB4B GTSE1 KIF20B HJURP CDCA3 HN1 CDC20 TTK CDC25C KIF2C RANGAP1 NCAPD2 DLGAP5 CDCA2
CDCA8 ECT2 KIF23 HMMR AURKA PSRC1 ANLN LBR CKAP5 CENPE CTCF NEK2 G2E3 GAS2L3 CBX5 CENPA""".split()
)
STATE = r"^(HIST|H2AF|H1F|H3F|RPL|RPS|MT-|MRPL|MRPS)"
EXCLUDE = None
CLUSTERING = "leiden"


def case_inputs(r, c) -> SimpleNamespace:
    """What the query-context experiments (exp12-exp14) need of a dumped case ``r`` and its
    rebuilt ``c``: the reference types, the harmonized reference ``rh`` and its type codes,
    the input scale, the reference's per-type detection, the forced label codes, the
    probability, p-value and default cell-level confidence ``own``, and ``best``: the better
    shared macro-F1 of L2 logistic regression and kNN in the dump (the "gap" baseline)."""
    from transanno_sc.data import type_detection

    types = list(r["ref_types"])
    rh, _ = cs.harmonize(c.ref, c.query)
    codes = np.asarray(pd.Categorical(rh.obs[c.key].astype(str), categories=types).codes)
    prob = r["probs"].astype(float).max(1)
    p = r["pvalue"].astype(float)
    own = prob * p / (p + 0.03)
    own[r["n_expressed"] == 0] = 0
    best = max(
        evaluate(r, np.where(r[f"{k}_conf"] < 0.5, U, r[f"{k}_forced"]), r[f"{k}_conf"])["f1"]
        for k in ("lr", "knn")
    )
    return SimpleNamespace(
        types=types,
        rh=rh,
        codes=codes,
        scale="log1p" if c.log_normalized else "counts",
        det=type_detection(rh.X, codes, len(types)),
        forced=np.asarray(pd.Categorical(r["forced"], categories=types).codes),
        prob=prob,
        p=p,
        own=own,
        best=best,
    )


def score_row(r, rule: str, score: np.ndarray, best: float) -> dict:
    """The table row of ``rule`` whose confidence is ``score`` (0 for cells without expressed
    vocabulary genes; "Unassigned" below 0.5)."""
    s = np.asarray(score, dtype=float).copy()
    s[r["n_expressed"] == 0] = 0
    o = evaluate(r, np.where(s < 0.5, U, r["forced"].astype(object)), s)
    return result_row(r, rule, o, best)


def print_tables(df: pd.DataFrame, cases: bool) -> None:
    """Per case (``cases``) the known and novel "Unassigned" %, then :func:`summary`."""
    pd.set_option("display.width", 250)
    if cases:
        print(
            df.pivot_table(index=["pair", "case"], columns="rule", values=["known", "novel"])
            .round(1)
            .to_string()
        )
    print(summary(df).round(3).to_string())


def dump_args(description: str, cases: bool = True) -> argparse.ArgumentParser:
    """The arguments of the experiments on dumped cases: ``dir``, ``--seeds`` and, with
    ``cases``, ``--cases`` (print the per-case table)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("dir", nargs="?", default="benchmarks/results_tmp/nov17")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    if cases:
        ap.add_argument("--cases", action="store_true")
    return ap


def dumped_cases(folder, seeds):
    """``(dump, case)`` of every dump of ``folder`` for ``seeds``, the case rebuilt with
    ``cross_study.build`` (its query cells in the dump's order)."""
    for f in sorted(glob.glob(f"{folder}/d_*.pkl")):
        with open(f, "rb") as fh:
            r = pickle.load(fh)
        if r["seed"] not in seeds:
            continue
        c = cs.build(r["pair"], r["case"], r["seed"])
        assert (c.query.obs[c.key].astype(str).to_numpy() == r["truth"]).all()
        yield r, c


def query_graph(c, resolution):
    q = cs.lognorm(c.query, c.log_normalized)
    n_hvg = min(2000, q.n_vars)
    sc.pp.highly_variable_genes(q, n_top_genes=n_hvg, subset=False)
    qq = q[:, q.var.highly_variable].copy()
    sc.pp.pca(qq, n_comps=min(30, qq.n_vars - 1, qq.n_obs - 1))
    sc.pp.neighbors(qq, n_neighbors=15)
    if CLUSTERING == "leiden":
        sc.tl.leiden(qq, resolution=resolution, flavor="igraph", n_iterations=2, random_state=0)
    else:
        from sklearn.cluster import KMeans

        k = int(np.clip(round(qq.n_obs / 50), 4, 40))
        qq.obs["leiden"] = (
            KMeans(k, n_init=3, random_state=0).fit_predict(qq.obsm["X_pca"][:, :15]).astype(str)
        )
    conn = qq.obsp["connectivities"].copy()
    conn = conn + sp.eye(conn.shape[0])
    conn = sp.diags(1 / np.asarray(conn.sum(1)).ravel()) @ conn
    return q, conn, qq.obs["leiden"].to_numpy()


def foreign_markers(c, clusters, forced, n_top=20):
    """Per cluster: the share of its n_top markers (mean log difference against the rest of
    the query, detected in >= 30 % of the cluster) that the reference cells of the cluster's
    majority label detect in under a fifth of the cluster's share."""
    rh, qh = cs.harmonize(c.ref, c.query)
    r, qn = cs.lognorm(rh, c.log_normalized), cs.lognorm(qh, c.log_normalized)
    if EXCLUDE:
        names = qn.var_names.str.upper()
        keep = ~(names.isin(CC) | names.str.match(STATE))
        r, qn = r[:, keep].copy(), qn[:, keep].copy()
    Xq, Xr = qn.X, r.X
    Xq = Xq.toarray() if sp.issparse(Xq) else np.asarray(Xq)
    Xr = Xr.toarray() if sp.issparse(Xr) else np.asarray(Xr)
    rl = r.obs[c.key].astype(str).to_numpy()
    types = np.unique(rl)
    ref_markers = {}
    for t in types:
        it = rl == t
        if it.sum() < 5 or len(types) < 2:
            continue
        d = Xr[it].mean(0) - Xr[~it].mean(0)
        pt = (Xr[it] > 0).mean(0)
        ok = pt >= 0.3
        o = np.argsort(-np.where(ok, d, -np.inf))[:n_top]
        ref_markers[t] = (o[ok[o] & (d[o] > 0)], pt)
    fm = np.zeros(len(clusters))
    mm = np.zeros(len(clusters))
    for cl in np.unique(clusters):
        m = clusters == cl
        lab = pd.Series(forced[m]).value_counts().index[0]
        if m.sum() < 5 or (~m).sum() < 5 or lab not in set(rl):
            continue
        diff = Xq[m].mean(0) - Xq[~m].mean(0)
        pin = (Xq[m] > 0).mean(0)
        ok = pin >= 0.3
        order = np.argsort(-np.where(ok, diff, -np.inf))[:n_top]
        order = order[ok[order] & (diff[order] > 0)]
        if len(order):
            pref = (Xr[rl == lab][:, order] > 0).mean(0)
            fm[m] = np.mean(pref < pin[order] / 5)
        if lab in ref_markers and len(ref_markers[lab][0]):
            g, pt = ref_markers[lab]
            mm[m] = np.mean(pin[g] < pt[g] / 5)
    return fm, mm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="benchmarks/results_tmp/nov17")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--exclude", action="store_true")
    ap.add_argument("--kmeans", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    global EXCLUDE, CLUSTERING
    EXCLUDE = args.exclude
    CLUSTERING = "kmeans" if args.kmeans else "leiden"
    cs._quiet()
    rows = []
    for r, c in dumped_cases(args.dir, args.seeds):
        _, conn, clusters = query_graph(c, args.resolution)
        prob = r["probs"].astype(float).max(1)
        p = r["pvalue"].astype(float)
        score = prob * p / (p + 0.03)
        score[r["n_expressed"] == 0] = 0
        smooth = np.asarray(conn @ score).ravel()
        low = (score < 0.5).astype(float)
        frac = pd.Series(low).groupby(clusters).transform("mean").to_numpy()
        fm, mm = foreign_markers(c, clusters, r["forced"])
        forced = r["forced"].astype(object)
        both = (score < 0.5) & (smooth < 0.5)
        rules = {
            "default": (score < 0.5, score),
            "smooth": (smooth < 0.5, smooth),
            "both": (both, np.maximum(score, smooth)),
            "cluster": (both | (frac > 0.5), np.maximum(score, smooth) * (frac <= 0.5)),
        }
        for m in (0.3, 0.4, 0.5, 0.6, 0.7):
            rules[f"markers>{m}"] = (both | (fm > m), np.maximum(score, smooth) * (1 - fm))
        rules["default|markers>0.5"] = ((score < 0.5) | (fm > 0.5), score * (1 - fm))
        known = np.isin(r["truth"], r["ref_types"])
        for cl in np.unique(clusters) if args.verbose else []:
            mk = clusters == cl
            comp = pd.Series(r["truth"][mk]).value_counts()
            print(
                f"   {cl:>3} n={mk.sum():4d} fm={fm[mk][0]:.2f} mm={mm[mk][0]:.2f} "
                f"novel={np.mean(~known[mk]):.2f} {dict(comp.head(2))}"
            )
        best = max(
            evaluate(r, np.where(r[f"{k}_conf"] < 0.5, U, r[f"{k}_forced"]), r[f"{k}_conf"])["f1"]
            for k in ("lr", "knn")
        )
        for name, (flag, s) in rules.items():
            o = evaluate(r, np.where(flag, U, forced), s)
            rows.append(result_row(r, name, o, best))
        known = np.isin(r["truth"], r["ref_types"])
        print(
            r["pair"],
            r["case"],
            r["seed"],
            "clusters",
            len(set(clusters)),
            "fm novel",
            np.round(np.median(fm[~known]), 2) if (~known).any() else "-",
            "fm known q90",
            np.round(np.quantile(fm[known], 0.9), 2),
            flush=True,
        )
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(
        df.pivot_table(index=["pair", "case"], columns="rule", values=["known", "novel"])
        .round(1)
        .to_string()
    )
    print(
        df.pivot_table(index=["pair"], columns="rule", values="gap", aggfunc="median")
        .round(3)
        .to_string()
    )
    print(summary(df).round(3).to_string())


if __name__ == "__main__":
    main()
