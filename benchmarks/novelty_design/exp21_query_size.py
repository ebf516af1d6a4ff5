"""Does "Unassigned" catch a novel type in a large query as it does in a small one? (issue
#17, point 3, at the sizes users annotate.)

Every query of ``cross_study.py`` has 350-1,000 cells, with novel types at 7-42 % of them.
The query context cuts a query into k-means clusters of about 50 cells, but at most
``MAX_CLUSTERS`` (40): a 20,000-cell query gets clusters of 500, and a novel type of a few
hundred cells may share one with a known type. Here each case's model is trained once (the
public default call on the case's own query, ``save_model=``), then annotates (``model=``)
a query of ``N`` cells built from the case's query, with the novel cells at their own share
("natural") or at ``SHARE`` ("rare"):

* ``--sim tile``: cells drawn with replacement, each copy binomially thinned to 50-90 % of
  its counts. Copies of one cell stay near each other, so once clusters hold fewer cells
  than a cell has copies, a cluster is one cell's copies and its "markers" that cell's noise;
* ``--sim mix`` (default): each new cell mixes a drawn cell's normalized profile with 5 of its
  10 nearest cells of the same type and samples Poisson counts at the depth of another cell
  of the type: no copies, but smoother than real cells.

``--max-clusters`` replaces the cap. Rows: novel and known "Unassigned" %, AUROC, shared-type
macro-F1, the number of clusters and the time of the call.

    python benchmarks/novelty_design/exp21_query_size.py [--seeds 0] [--sizes 1000 20000]
        [--cases 1 2] [--sim mix|tile] [--max-clusters 40] [--out FILE.json]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs

SHARE = 0.02
CASES = [
    ("zilionis_to_tabula", "Monocyte novel"),
    ("zilionis_heldout", "B cells held out"),
    ("zilionis_heldout", "NK cells held out"),
    ("zilionis_heldout", "Neutrophils held out"),
    ("baron_heldout", "ductal held out"),
    ("baron_heldout", "endothelial held out"),
]


def draw(novel: np.ndarray, n: int, share: float | None, rng) -> np.ndarray:
    """``n`` rows drawn with replacement, those of ``novel`` cells at ``share`` of them
    (``None``: at their own share)."""
    if share is None:
        return rng.choice(novel.size, n)
    n_novel = round(share * n)
    return np.concatenate(
        [
            rng.choice(np.flatnonzero(novel), n_novel),
            rng.choice(np.flatnonzero(~novel), n - n_novel),
        ]
    )


def tiled(query, novel: np.ndarray, n: int, share: float | None, rng):
    """``query`` tiled to ``n`` cells (novel ones at ``share``; ``None``: their own share),
    each copy binomially thinned to 50-90 % of its counts."""
    import anndata as ad

    rows = draw(novel, n, share, rng)
    X = sp.csr_matrix(query.X)[rows].tocsr().astype(np.float64)
    keep = rng.uniform(0.5, 0.9, n)
    X.data = rng.binomial(X.data.astype(np.int64), np.repeat(keep, np.diff(X.indptr)))
    X = sp.csr_matrix(X, dtype=np.float32)
    X.eliminate_zeros()
    out = ad.AnnData(X, obs=query.obs.iloc[rows].reset_index(drop=True), var=query.var.copy())
    out.obs_names = [f"c{i}" for i in range(n)]
    return out


def mixed(query, truth, novel: np.ndarray, n: int, share: float | None, rng, k=10, chunk=2000):
    """``n`` new cells like ``query``'s: each draws a cell of ``query`` (novel ones at
    ``share``), mixes its normalized profile with 5 of its ``k`` nearest cells of the same type
    (Dirichlet weights; PCA of the log-normalized query), and samples Poisson counts of that
    profile at the depth of another cell of the type. No two cells are copies, unlike
    :func:`tiled`, whose copies of one cell fall into one cluster once clusters are small."""
    import anndata as ad
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    X = sp.csr_matrix(query.X, dtype=np.float64)
    total = np.asarray(X.sum(1)).ravel()
    P = sp.diags(1.0 / np.maximum(total, 1)) @ X
    L = P.copy()
    L.data = np.log1p(L.data * 1e4)
    pcs = PCA(30, random_state=0).fit_transform(L.toarray())
    near = np.zeros((query.n_obs, k), dtype=np.int64)
    for t in np.unique(truth):
        idx = np.flatnonzero(truth == t)
        m = min(k, idx.size - 1)
        if m < 1:
            near[idx] = idx[:, None]
            continue
        nn = NearestNeighbors(n_neighbors=m).fit(pcs[idx])
        got = idx[nn.kneighbors(return_distance=False)]
        near[idx] = got[:, np.arange(k) % m]  # a type of under k + 1 cells: its cells again
    rows = draw(novel, n, share, rng)
    parts = []
    for start in range(0, n, chunk):
        r = rows[start : start + chunk]
        mates = np.stack([rng.choice(near[i], 5, replace=False) for i in r])
        members = np.concatenate([r[:, None], mates], 1)
        w = rng.dirichlet(np.ones(members.shape[1]), size=r.size)
        profile = np.zeros((r.size, X.shape[1]))
        for j in range(members.shape[1]):
            profile += w[:, j : j + 1] * P[members[:, j]].toarray()
        same = np.array([rng.choice(np.flatnonzero(truth == truth[i])) for i in r])
        counts = rng.poisson(profile * total[same][:, None])
        parts.append(sp.csr_matrix(counts.astype(np.float32)))
    out = ad.AnnData(
        sp.vstack(parts).tocsr(),
        obs=query.obs.iloc[rows].reset_index(drop=True),
        var=query.var.copy(),
    )
    out.obs_names = [f"c{i}" for i in range(n)]
    return out


def main():
    import transanno_sc as ta

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[1000, 5000, 20000])
    ap.add_argument("--cases", nargs="*", default=None, help="indices into CASES")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sim", choices=["tile", "mix"], default="mix")
    ap.add_argument("--max-clusters", type=int, default=None, help="tl._query_context's cap")
    args = ap.parse_args()
    cs._quiet()
    if args.max_clusters is not None:
        import transanno_sc.tl._query_context as qc

        qc.MAX_CLUSTERS = args.max_clusters
    cases = CASES if args.cases is None else [CASES[int(i)] for i in args.cases]
    rows = []
    for seed in args.seeds:
        for pair, case in cases:
            c = cs.build(pair, case, seed)
            ref_types = np.unique(c.ref.obs[c.key].astype(str))
            truth_all = c.query.obs[c.key].astype(str).to_numpy()
            novel = ~np.isin(truth_all, ref_types)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model"
                cs.run_transanno(
                    c.ref.copy(), cs._blind(c.query), c, seed, {"save_model": str(path)}
                )
                model = ta.model.TransAnno.load(str(path))
            for n in args.sizes:
                for share in (None, SHARE):
                    rng = np.random.default_rng(seed)
                    if args.sim == "tile":
                        q = tiled(c.query, novel, n, share, rng)
                    else:
                        q = mixed(c.query, truth_all, novel, n, share, rng)
                    truth = q.obs[c.key].astype(str).to_numpy()
                    blind = cs._blind(q)
                    t0 = time.perf_counter()
                    ta.tl.transanno_annotate(blind, model, random_state=seed)
                    wall = time.perf_counter() - t0
                    pred = blind.obs["transanno_label"].astype(str).to_numpy()
                    uns = blind.uns["transanno"]
                    forced = np.asarray(uns["classes"], dtype=str)[
                        np.asarray(blind.obsm["transanno_probabilities"]).argmax(1)
                    ]
                    conf = blind.obs["transanno_confidence"].to_numpy(dtype=float)
                    m = cs.metrics(ref_types, truth, pred, forced, conf)
                    ctx = uns.get("query_context", {})
                    row = {
                        "pair": pair,
                        "case": case,
                        "seed": seed,
                        "n_cells": n,
                        "sim": args.sim,
                        "max_clusters": args.max_clusters,
                        "novel_share": "natural" if share is None else share,
                        "n_clusters": ctx.get("n_clusters"),
                        "wall_s": wall,
                        **m,
                    }
                    rows.append(row)
                    print(
                        f"{case:22s} s{seed} n={n:6d} share={row['novel_share']!s:7s} "
                        f"k={row['n_clusters']!s:4s} novel U {m['novel_unassigned']:5.1f} "
                        f"known U {m['known_unassigned']:4.1f} AUROC {m['auroc']:.3f} "
                        f"F1 {m['f1_macro']:.3f} {wall:5.1f} s",
                        flush=True,
                    )
                    if args.out:
                        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
