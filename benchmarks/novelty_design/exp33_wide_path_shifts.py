"""The wide path (a logistic regression) under a shift between reference and query: two
repairs tried on its recipe, and a query-chosen Transformer weight (issue #17, point 4;
none adopted).

``augment`` and ``align`` refit the wide path's recipe in scikit-learn (class-balanced L2
logistic regression, C=0.1, on the reference's 2,000 Seurat HVGs of log1p CP10k, on the
upper-cased genes both datasets have) for every case of ``cross_study.py`` but the
whole-tissue and 300-gene pairs, and score the shared-type macro-F1 of its labels on the
query's known cells (no "Unassigned"):

* ``augment``: the reference cells once more, each mixed with an ambient profile at a share
  drawn from U(0, 0.3): the reference's pooled profile (``ref``) or, at random per cell,
  the reference's or the query's (``both``). Meant for ambient RNA on either side.
* ``align``: a class-aware shift of the query towards the reference, estimated on query
  cells called a type at probability >= 0.9 (types with 10 such cells at least), weighted by
  their number: per gene the ratio of the normalized means (``ratio``, the query divided by
  it and renormalized) or the difference of the log means (``logshift``, subtracted). For a
  linear model the log shift is a per-type bias of the whole query.

``weight`` trains each case once by the public default call (``--seeds``), stores the
query's and reference's wide-path and Transformer log-probabilities, and scores the forced
labels at Transformer weights 0-100 (``deep_weight``, 0.3 by default), with the query-level
statistics a rule could choose a weight by (agreement of the two paths, their mean maximum
probability; on the query and on the reference).

    python benchmarks/novelty_design/exp33_wide_path_shifts.py augment --seeds 0
    python benchmarks/novelty_design/exp33_wide_path_shifts.py align --seeds 0
    python benchmarks/novelty_design/exp33_wide_path_shifts.py weight --seeds 0 1 --out DIR
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs

SKIP = {"tabula_to_baron", "zilionis_to_baron", "zilionis_panel300"}
WEIGHTS = [0.0, 0.3, 0.5, 1.0, 2.0, 100.0]


def _normalized(a, log_normalized: bool) -> np.ndarray:
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    X = X.astype(np.float64)
    if log_normalized:
        X = np.expm1(X)
    return X / np.maximum(X.sum(1, keepdims=True), 1e-12) * 1e4


def _f1(truth, pred, known) -> float:
    return float(
        f1_score(truth[known], pred[known], average="macro", labels=np.unique(truth[known]))
    )


def _recipe(pair: str, case: str, seed: int):
    """Normalized reference and query, labels, truth, HVG mask, known mask, sample weights."""
    import scanpy as sc

    c = cs.build(pair, case, seed)
    r, q = cs.harmonize(c.ref, c.query)
    y = r.obs[c.key].astype(str).to_numpy()
    t = q.obs[c.key].astype(str).to_numpy()
    P, Q = _normalized(r, c.log_normalized), _normalized(q, c.log_normalized)
    hvg = r.copy()
    hvg.X = np.log1p(P)
    sc.pp.highly_variable_genes(hvg, n_top_genes=min(2000, hvg.n_vars), flavor="seurat")
    g = hvg.var["highly_variable"].to_numpy()
    classes, counts = np.unique(y, return_counts=True)
    balance = dict(zip(classes, len(y) / (len(classes) * counts)))
    return P, Q, y, t, g, np.isin(t, classes), balance


def _fit(X, y, balance):
    w = pd.Series(y).map(balance).to_numpy()
    return LogisticRegression(C=0.1, max_iter=1000).fit(X, y, sample_weight=w)


def augment(pair: str, case: str, seed: int) -> dict:
    P, Q, y, t, g, known, balance = _recipe(pair, case, seed)
    rng = np.random.default_rng(seed)
    pools = {"ref": P.mean(0), "query": Q.mean(0)}
    out = {}
    for variant in ("base", "ref", "both"):
        X, Y = [np.log1p(P[:, g])], [y]
        if variant != "base":
            share = rng.uniform(0, 0.3, size=(len(y), 1))
            pool = np.repeat(pools["ref"][None, :], len(y), 0)
            if variant == "both":
                pick = rng.random(len(y)) < 0.5
                pool[pick] = pools["query"]
            X.append(np.log1p(((1 - share) * P + share * pool)[:, g]))
            Y.append(y)
        clf = _fit(np.vstack(X), np.concatenate(Y), balance)
        out[variant] = _f1(t, clf.predict(np.log1p(Q[:, g])), known)
    return out


def align(pair: str, case: str, seed: int, sure: float = 0.9, min_cells: int = 10) -> dict:
    P, Q, y, t, g, known, balance = _recipe(pair, case, seed)
    clf = _fit(np.log1p(P[:, g]), y, balance)
    proba = clf.predict_proba(np.log1p(Q[:, g]))
    called = clf.classes_[proba.argmax(1)]
    out = {"base": _f1(t, called, known)}
    num, den, shift, total = 0.0, 0.0, 0.0, 0
    for k in clf.classes_:
        qk, rk = (proba.max(1) >= sure) & (called == k), y == k
        if qk.sum() < min_cells or rk.sum() < min_cells:
            continue
        n = int(qk.sum())
        num = num + n * Q[qk].mean(0)
        den = den + n * P[rk].mean(0)
        shift = shift + n * (np.log1p(Q[qk]).mean(0) - np.log1p(P[rk]).mean(0))
        total += n
    if not total:
        return {**out, "ratio": out["base"], "logshift": out["base"]}
    ratio = (num / total + 0.1) / (den / total + 0.1)
    Qr = Q / ratio
    Qr = Qr / Qr.sum(1, keepdims=True) * 1e4
    out["ratio"] = _f1(t, clf.predict(np.log1p(Qr[:, g])), known)
    out["logshift"] = _f1(t, clf.predict(np.log1p(Q[:, g]) - (shift / total)[g]), known)
    return out


def _log_proba(model, adata, weight: float) -> np.ndarray:
    model.module.deep_weight.fill_(weight)
    return np.log(np.clip(model._forward(adata).probs.astype(np.float64), 1e-30, None))


def weight(pair: str, case: str, seed: int, out_dir: Path) -> dict:
    """Train by the default call; the wide path's log-probabilities (weight 0) and the
    Transformer's logits up to a constant per cell (weight 1 minus weight 0), temperature 1."""
    import transanno_sc as ta

    path = out_dir / f"{pair}__{case.replace(' ', '_')}__{seed}.pkl"
    if not path.exists():
        c = cs.build(pair, case, seed)
        with tempfile.TemporaryDirectory() as tmp:
            cs.run_method("transanno", c, seed, {"save_model": f"{tmp}/model"})
            model = ta.model.TransAnno.load(f"{tmp}/model")
        model.module.set_calibration(temperature=1.0)
        rec = {"classes": list(model.classes_), "truth": c.query.obs[c.key].astype(str)}
        rec["known"] = np.isin(rec["truth"], c.ref.obs[c.key].astype(str).unique())
        for side, a in (("q", cs._blind(c.query)), ("r", c.ref)):
            wide = _log_proba(model, a, 0.0)
            rec[side] = (wide, _log_proba(model, a, 1.0) - wide)
        path.write_bytes(pickle.dumps(rec))
    rec = pickle.loads(path.read_bytes())
    classes, truth = np.asarray(rec["classes"], dtype=str), np.asarray(rec["truth"])
    wide, deep = rec["q"]
    out = {
        f"w{w:g}": _f1(truth, classes[(wide + w * deep).argmax(1)], rec["known"]) for w in WEIGHTS
    }
    for side in ("q", "r"):
        wide, deep = rec[side]
        out[f"agree_{side}"] = float(np.mean(wide.argmax(1) == deep.argmax(1)))
        out[f"wide_max_{side}"] = float(softmax(wide, 1).max(1).mean())
        out[f"deep_max_{side}"] = float(softmax(deep, 1).max(1).mean())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode", choices=["augment", "align", "weight"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results_tmp/exp33"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    cs._quiet()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for pair in cs.PAIRS:
            if pair in SKIP:
                continue
            for case in cs.CASES[pair]:
                if args.mode == "weight":
                    res = weight(pair, case, seed, args.out)
                else:
                    res = {"augment": augment, "align": align}[args.mode](pair, case, seed)
                rows.append({"pair": pair, "case": case, "seed": seed, **res})
                print(pd.DataFrame([rows[-1]]).round(3).to_string(index=False, header=False))
    df = pd.DataFrame(rows)
    base = "w0.3" if args.mode == "weight" else "base"
    variants = (
        [f"w{w:g}" for w in WEIGHTS]
        if args.mode == "weight"
        else ["ref", "both", "ratio", "logshift"]
    )
    variants = [v for v in variants if v in df.columns]
    for v in variants:
        if v == base:
            continue
        d = df[v] - df[base]
        print(
            f"{v}: mean {d.mean():+.4f}, better/worse {(d > 1e-3).sum()}/{(d < -1e-3).sum()}, "
            f"largest loss {d.min():+.3f}"
        )
    if args.mode == "weight":
        print(df.groupby("pair")[variants].mean().round(3).to_string())
        gain = df["w1"] - df["w0.3"]
        stats = ["agree_q", "wide_max_q", "deep_max_q"]
        print(
            "correlation with the gain of weight 1 over 0.3:",
            {s: round(float(np.corrcoef(gain, df[s])[0, 1]), 2) for s in stats},
        )
    df.to_csv(args.out / f"{args.mode}.csv", index=False)


if __name__ == "__main__":
    main()
