"""Reference -> query label-transfer benchmark.

Every method gets the same reference and query cells; query accuracy, macro-F1 and weighted-F1
are computed on query cells whose label occurs in the reference (the query's labels are read
by the metric code only). Medians and ranges over seeds go to a markdown table and a JSON file.

    python benchmarks/run.py --seeds 0 1 2 --out benchmarks/results
    python benchmarks/run.py --tasks zilionis_animals --methods transanno logreg_l2 \
        --model-kwargs '{"n_hidden": 64}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

warnings.filterwarnings("ignore")
DATA = Path(
    os.environ.get("TRANSANNO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


# ----------------------------------------------------------------------------- tasks
def _zilionis() -> ad.AnnData:
    path = DATA / "zilionis_mouse_lung.h5ad"
    if path.exists():
        return ad.read_h5ad(path)
    import transanno_sc as ta

    return ta.datasets.zilionis_mouse_lung()


def _stratified(labels: pd.Series, query_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    is_query = np.zeros(len(labels), dtype=bool)
    for c in labels.unique():
        idx = rng.permutation(np.flatnonzero(labels.to_numpy() == c))
        is_query[idx[: round(len(idx) * query_fraction)]] = True
    return is_query


def task(name: str, seed: int) -> tuple[ad.AnnData, ad.AnnData, str]:
    """Return reference, query and the label column."""
    if name == "zilionis_healthy_tumor":
        a = _zilionis()
        return (
            a[a.obs.condition == "healthy"].copy(),
            a[a.obs.condition == "tumor"].copy(),
            "cell_type",
        )
    if name in ("zilionis_animals", "zilionis_subtype"):
        a = _zilionis()
        ref = a.obs.batch.isin(["h_1", "t_1"]).to_numpy()
        key = "cell_type" if name == "zilionis_animals" else "cell_subtype"
        return a[ref].copy(), a[~ref].copy(), key
    if name == "baron_50_50":
        a = ad.read_h5ad(DATA / "baron_mouse_pancreas.h5ad")
        q = _stratified(a.obs.cell_type, 0.5, seed)
        return a[~q].copy(), a[q].copy(), "cell_type"
    if name == "pbmc68k_30":
        p = sc.datasets.pbmc68k_reduced()
        a = p.raw.to_adata()  # log-normalized values
        a.obs = p.obs[["bulk_labels"]].copy()
        q = _stratified(a.obs.bulk_labels, 0.3, seed)
        return a[~q].copy(), a[q].copy(), "bulk_labels"
    raise ValueError(name)


TASKS = [
    "zilionis_healthy_tumor",
    "zilionis_animals",
    "zilionis_subtype",
    "baron_50_50",
    "pbmc68k_30",
]


# ----------------------------------------------------------------------------- methods
def _log1p(a: ad.AnnData) -> ad.AnnData:
    a = a.copy()
    X = a.X
    is_counts = np.allclose(
        (X.data if sp.issparse(X) else X)[:1000], np.round((X.data if sp.issparse(X) else X)[:1000])
    )
    if is_counts:
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    return a


def logreg(ref, query, key, seed, penalty):
    r, q = _log1p(ref), _log1p(query)
    sc.pp.highly_variable_genes(r, n_top_genes=min(2000, r.n_vars), flavor="seurat")
    genes = r.var_names[r.var.highly_variable]
    q = q[:, q.var_names.intersection(genes)]
    Xr = r[:, genes].X
    Xq = np.zeros((q.n_obs, len(genes)), dtype=np.float32)
    pos = {g: i for i, g in enumerate(genes)}
    Xq[:, [pos[g] for g in q.var_names]] = q.X.toarray() if sp.issparse(q.X) else q.X
    clf = LogisticRegression(
        C=0.1,
        penalty=penalty,
        solver="saga" if penalty == "l1" else "lbfgs",
        max_iter=1000,
        random_state=seed,
    )
    t0 = time.perf_counter()
    clf.fit(Xr, r.obs[key].astype(str).to_numpy())
    t1 = time.perf_counter()
    pred = clf.predict(Xq)
    return pred, t1 - t0, time.perf_counter() - t1


def transanno(ref, query, key, seed, model_kwargs, train_kwargs):
    import scvi

    import transanno_sc as ta

    scvi.settings.seed = seed
    q = query.copy()
    t0 = time.perf_counter()
    kw = {"enable_progress_bar": False, **train_kwargs}
    ta.tl.transanno_annotate(
        q, reference=ref, labels_key=key, unassigned_threshold=None, model_kwargs=model_kwargs, **kw
    )
    total = time.perf_counter() - t0
    return q.obs["transanno_label"].astype(str).to_numpy(), total, float("nan")


def score(ref, query, key, pred) -> dict:
    true = query.obs[key].astype(str).to_numpy()
    known = np.isin(true, ref.obs[key].astype(str).unique())
    t, p = true[known], pred[known]
    labels = sorted(set(t))
    return {
        "accuracy": accuracy_score(t, p),
        "f1_macro": f1_score(t, p, labels=labels, average="macro", zero_division=0),
        "f1_weighted": f1_score(t, p, labels=labels, average="weighted", zero_division=0),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--methods", nargs="+", default=["transanno", "logreg_l1", "logreg_l2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model-kwargs", default="{}")
    parser.add_argument("--train-kwargs", default="{}")
    parser.add_argument("--label", default="", help="suffix of the transanno method name")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    mk, tk = json.loads(args.model_kwargs), json.loads(args.train_kwargs)
    rows = []
    for t in args.tasks:
        for seed in args.seeds:
            ref, query, key = task(t, seed)
            for m in args.methods:
                if m == "transanno":
                    pred, t_train, t_pred = transanno(ref, query, key, seed, mk, tk)
                    name = "transanno" + (f"[{args.label}]" if args.label else "")
                else:
                    pred, t_train, t_pred = logreg(ref, query, key, seed, m.split("_")[1])
                    name = m
                row = {
                    "task": t,
                    "method": name,
                    "seed": seed,
                    **score(ref, query, key, pred),
                    "train_s": t_train,
                    "predict_s": t_pred,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    df = pd.DataFrame(rows)
    agg = (
        df.groupby(["task", "method"])
        .agg(
            f1_macro=("f1_macro", "median"),
            f1_min=("f1_macro", "min"),
            f1_max=("f1_macro", "max"),
            accuracy=("accuracy", "median"),
            f1_weighted=("f1_weighted", "median"),
            train_s=("train_s", "median"),
        )
        .reset_index()
    )
    table = (
        agg.to_markdown(index=False, floatfmt=".3f")
        if _has_tabulate()
        else agg.to_string(index=False)
    )
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(
            json.dumps({"rows": rows, "args": vars(args)}, indent=1)
        )
        Path(f"{args.out}.md").write_text(table + "\n")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
