"""Reference -> query label-transfer benchmark (issue #3).

Every method gets the same reference and query cells. The query handed to a method carries no
``obs`` columns at all: its labels are held back and read by the metric code only. Query
accuracy, macro-F1 and weighted-F1 are computed on query cells whose label occurs in the
reference. Each (task, method, seed) runs in a fresh ``spawn`` subprocess, so the peak RSS of a
run is that method's alone (libraries and data loading included), not the whole benchmark's.
Medians and ranges over seeds go to a markdown table and a JSON file (rows are written after
every run, so an interrupted benchmark keeps what it has).

    python benchmarks/run.py --seeds 0 1 2 --out benchmarks/results
    python benchmarks/run.py --tasks zilionis_animals --methods transanno logreg_l2 \
        --model-kwargs '{"n_hidden": 64}' --label h64 --out benchmarks/results_tmp/h64
    python benchmarks/run.py --merge benchmarks/results.json benchmarks/results_tmp/h64.json \
        --out benchmarks/results_all    # tabulate earlier runs together, run nothing

Methods
-------
transanno            TransAnno with ``--model-kwargs``/``--train-kwargs`` (defaults: none), trained
                     like ``tl.transanno_annotate`` does and applied with
                     ``tl.transanno_annotate(query, model=...)``, ``unassigned_threshold=None``.
                     ``batch_key="batch"`` where the reference has several batches.
logreg_l1/_l2        scikit-learn logistic regression (C=0.1) on log1p CP10k of the reference's
                     2,000 highly variable genes (Seurat flavour, reference cells only).
celltypist           ``celltypist.train`` in its default mode on all genes of the log1p CP10k
                     reference: one-vs-rest L2 ``LogisticRegression`` (C=1, lbfgs, up to 1,000
                     iterations) on the standardized genes, no feature selection, no SGD; then
                     ``celltypist.annotate`` (best match). CellTypist passes
                     ``multi_class="ovr"``, which scikit-learn >= 1.7 removed:
                     ``OvrLogisticRegression`` takes it and fits one binary model per
                     type, as scikit-learn < 1.7 did (:func:`celltypist_train`).
celltypist_majority  the same, with ``majority_voting=True`` (over-clustering of the query).
scanvi               scvi-tools' reference-mapping recipe (scArches): SCVI (2 layers,
                     layer norm, ``encode_covariates``, dropout 0.2) on the reference's 2,000
                     HVGs (seurat_v3 on counts of genes in >= 3 reference cells; Seurat
                     flavour on log1p CP10k where loess fails) for 100 epochs, ``SCANVI.from_scvi_model`` for 30
                     epochs (``n_samples_per_label=100``), ``SCANVI.prepare_query_anndata`` +
                     ``load_query_data`` and 50 query epochs (``weight_decay=0``).
                     Batch covariate: the reference's batches (Zilionis animals; one
                     "reference" batch elsewhere) and "query".
scanvi_semi          semi-supervised scANVI: the same models trained on reference + query
                     concatenated, the query labelled "Unknown"; SCVI 100 + SCANVI 30 epochs.

scANVI needs counts. ``pbmc68k_reduced().raw`` holds log1p(counts / n_counts * 1e4) of a
765-gene panel: expm1 of each cell's values are integer multiples of its smallest non-zero
value, so counts are recovered exactly as round(expm1(x) / min(expm1(x) > 0)) (largest
deviation from an integer before rounding: 0.11, float32 storage). scANVI gets those counts;
every other method gets the log-normalized values, as the task asks.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

warnings.filterwarnings("ignore")
DATA = Path(
    os.environ.get("TRANSANNO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
UNKNOWN = "Unknown"
TASKS = [
    "zilionis_healthy_tumor",
    "zilionis_animals",
    "zilionis_subtype",
    "baron_50_50",
    "pbmc68k_30",
]
BASELINES = [
    "logreg_l1",
    "logreg_l2",
    "celltypist",
    "celltypist_majority",
    "scanvi",
    "scanvi_semi",
]
METHODS = ["transanno", *BASELINES]

# scANVI epochs (DESIGN.md: SCVI 100 + SCANVI 30 + query 50 took 25-50 s on 2 cores)
SCVI_EPOCHS, SCANVI_EPOCHS, QUERY_EPOCHS = 100, 30, 50


# ----------------------------------------------------------------------------- tasks
def _zilionis():
    import anndata as ad

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


def _pbmc68k():
    """pbmc68k_reduced's 765-gene log-normalized panel, with exactly recovered counts."""
    import scanpy as sc
    import scipy.sparse as sp

    p = sc.datasets.pbmc68k_reduced()
    a = p.raw.to_adata()  # log1p(counts / n_counts * 1e4)
    a.obs = p.obs[["bulk_labels"]].copy()
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    e = np.expm1(X.astype(np.float64))
    unit = np.where(e > 0, e, np.inf).min(1, keepdims=True)
    counts = np.round(e / unit)
    assert np.abs(e / unit - counts).max() < 0.5
    a.layers["counts"] = sp.csr_matrix(counts.astype(np.float32))
    return a


def task(name: str, seed: int):
    """Return reference, query and the label column (query still labelled: strip it later)."""
    import anndata as ad

    if name == "zilionis_healthy_tumor":
        a = _zilionis()
        h = (a.obs.condition == "healthy").to_numpy()
        return a[h].copy(), a[~h].copy(), "cell_type"
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
        a = _pbmc68k()
        q = _stratified(a.obs.bulk_labels, 0.3, seed)
        return a[~q].copy(), a[q].copy(), "bulk_labels"
    raise ValueError(name)


def _blind(query):
    """The query as methods see it: expression and gene names, no obs columns (no labels)."""
    import anndata as ad

    blind = ad.AnnData(X=query.X, var=pd.DataFrame(index=query.var_names.copy()))
    blind.obs_names = query.obs_names.copy()
    for k, v in query.layers.items():
        blind.layers[k] = v
    return blind


# ----------------------------------------------------------------------------- methods
class Clock:
    """Wall and CPU seconds (``process_time``: all threads of this process) since the last lap."""

    def __init__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        out = (t - self.t, c - self.c)
        self.t, self.c = t, c
        return out


def _is_counts(X) -> bool:
    import scipy.sparse as sp

    v = (X.data if sp.issparse(X) else np.asarray(X).ravel())[:10_000]
    return bool(np.allclose(v, np.round(v)))


def _log1p(a):
    """log1p CP10k of counts; log-normalized input is used as it is."""
    import scanpy as sc

    a = a.copy()
    if _is_counts(a.X):
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    return a


def _counts(a):
    """Raw counts in X (the recovered ``counts`` layer where X is log-normalized)."""
    a = a.copy()
    if "counts" in a.layers:
        a.X = a.layers["counts"].copy()
    if not _is_counts(a.X):
        raise ValueError("scANVI needs counts and this task has none")
    for k in list(a.layers):
        del a.layers[k]
    return a


def _dense_on(X, var_names, genes) -> np.ndarray:
    """Columns ``genes`` of X (absent genes are zeros)."""
    import scipy.sparse as sp

    out = np.zeros((X.shape[0], len(genes)), dtype=np.float32)
    pos = pd.Index(var_names).get_indexer(genes)
    ok = pos >= 0
    sub = X[:, pos[ok]]
    out[:, ok] = sub.toarray() if sp.issparse(sub) else sub
    return out


def logreg_fit(r, labels, seed, penalty):
    """Logistic regression (C=0.1) on the 2,000 HVGs (Seurat flavour) of ``r``, log1p CP10k
    reference cells (``r.var`` gets the HVG columns). Returns the classifier and its genes."""
    import scanpy as sc

    sc.pp.highly_variable_genes(r, n_top_genes=min(2000, r.n_vars), flavor="seurat")
    genes = r.var_names[r.var.highly_variable]
    clf = LogisticRegression(
        C=0.1,
        l1_ratio=1.0 if penalty == "l1" else 0.0,
        solver="saga" if penalty == "l1" else "lbfgs",
        max_iter=1000,
        random_state=seed,
    )
    clf.fit(_dense_on(r.X, r.var_names, genes), labels)
    return clf, genes


def logreg(ref, query, labels, seed, penalty):
    clk = Clock()
    r, q = _log1p(ref), _log1p(query)
    clf, genes = logreg_fit(r, labels, seed, penalty)
    train = clk.lap()
    pred = clf.predict(_dense_on(q.X, q.var_names, genes))
    return pred, train, clk.lap()


class OvrLogisticRegression(LogisticRegression):
    """``LogisticRegression`` that accepts ``multi_class`` (removed in scikit-learn 1.7).

    ``multi_class="ovr"`` with more than two classes fits one binary L2 model per class
    (scikit-learn's ``OneVsRestClassifier``), as ``LogisticRegression(multi_class="ovr")``
    did before 1.7, and exposes ``coef_`` (n_classes x n_features), ``intercept_``,
    ``classes_`` and ``n_iter_`` like it; ``predict_proba`` is the one-vs-rest
    normalization of the per-class sigmoids. Any other ``multi_class`` fits the current
    (multinomial) ``LogisticRegression``. CellTypist's default ``celltypist.train`` builds
    this estimator by name with ``multi_class="ovr"``.
    """

    def __init__(
        self,
        penalty="deprecated",
        *,
        C=1.0,
        l1_ratio=0.0,
        dual=False,
        tol=1e-4,
        fit_intercept=True,
        intercept_scaling=1,
        class_weight=None,
        random_state=None,
        solver="lbfgs",
        max_iter=100,
        verbose=0,
        warm_start=False,
        n_jobs=None,
        multi_class="auto",
    ):
        super().__init__(
            penalty=penalty,
            C=C,
            l1_ratio=l1_ratio,
            dual=dual,
            tol=tol,
            fit_intercept=fit_intercept,
            intercept_scaling=intercept_scaling,
            class_weight=class_weight,
            random_state=random_state,
            solver=solver,
            max_iter=max_iter,
            verbose=verbose,
            warm_start=warm_start,
            n_jobs=n_jobs,
        )
        self.multi_class = multi_class

    def _binary(self) -> LogisticRegression:
        params = self.get_params()
        del params["multi_class"]
        params["n_jobs"] = None  # the one-vs-rest wrapper parallelizes over classes
        return LogisticRegression(**params)

    def fit(self, X, y, sample_weight=None):
        classes = np.unique(y)
        if self.multi_class != "ovr" or classes.size <= 2:
            return super().fit(X, y, sample_weight=sample_weight)
        ovr = OneVsRestClassifier(self._binary(), n_jobs=self.n_jobs)
        ovr.fit(X, y, **({} if sample_weight is None else {"sample_weight": sample_weight}))
        self.classes_ = ovr.classes_
        self.coef_ = np.vstack([e.coef_ for e in ovr.estimators_])
        self.intercept_ = np.concatenate([e.intercept_ for e in ovr.estimators_])
        self.n_iter_ = np.concatenate([np.ravel(e.n_iter_) for e in ovr.estimators_])
        self.n_features_in_ = ovr.n_features_in_
        if hasattr(ovr, "feature_names_in_"):
            self.feature_names_in_ = ovr.feature_names_in_
        return self

    def predict_proba(self, X):
        if self.multi_class != "ovr" or self.classes_.size <= 2:
            return super().predict_proba(X)
        p = expit(self.decision_function(X))
        return p / p.sum(1, keepdims=True)


def celltypist_train(r, labels, check_expression=True):
    """``celltypist.train`` in its default mode on ``r`` (log1p CP10k): one-vs-rest L2
    ``LogisticRegression`` (C=1), no SGD, no feature selection.

    CellTypist 1.7 builds ``LogisticRegression(multi_class="ovr", ...)``, which scikit-learn
    >= 1.7 refuses; for the call, celltypist's training module gets
    ``OvrLogisticRegression`` under that name (restored afterwards)."""
    import importlib

    import celltypist

    module = importlib.import_module("celltypist.train")
    original = module.LogisticRegression
    module.LogisticRegression = OvrLogisticRegression
    try:
        return celltypist.train(r, labels=labels, check_expression=check_expression)
    finally:
        module.LogisticRegression = original


def celltypist_method(ref, query, labels, seed, majority):
    import celltypist

    clk = Clock()
    r = _log1p(ref)
    model = celltypist_train(r, labels, check_expression=_is_counts(ref.X))
    train = clk.lap()
    q = _log1p(query)
    res = celltypist.annotate(q, model=model, majority_voting=majority)
    col = "majority_voting" if majority else "predicted_labels"
    pred = res.predicted_labels[col].astype(str).to_numpy()
    return pred, train, clk.lap()


def _scanvi_inputs(ref, query, labels, ref_batches=None):
    """Counts on the reference's HVGs; batch covariate: the reference's own batches (where it
    has them) and "query"."""
    import scanpy as sc

    r, q = _counts(ref), _counts(query)
    sc.pp.filter_genes(r, min_cells=3)  # seurat_v3's loess fails on near-empty genes
    try:
        sc.pp.highly_variable_genes(r, n_top_genes=min(2000, r.n_vars), flavor="seurat_v3")
    except ValueError:  # loess "near singularities": fall back to Seurat on log1p CP10k
        hv = _log1p(r)
        sc.pp.highly_variable_genes(hv, n_top_genes=min(2000, r.n_vars), flavor="seurat")
        r.var["highly_variable"] = hv.var["highly_variable"]
    r = r[:, r.var.highly_variable].copy()
    r.var = r.var[[]]
    batch = "reference" if ref_batches is None else "reference " + pd.Series(ref_batches)
    r.obs = pd.DataFrame({"batch": np.asarray(batch), "label": labels}, index=r.obs_names)
    q.obs = pd.DataFrame({"batch": "query", "label": UNKNOWN}, index=q.obs_names)
    return r, q


_SCVI_KWARGS = {
    "n_layers": 2,
    "encode_covariates": True,
    "dropout_rate": 0.2,
    "use_layer_norm": "both",
    "use_batch_norm": "none",
}


def scanvi(ref, query, labels, seed, semi, ref_batches=None, soft=False):
    """scANVI reference mapping (``semi=False``) or semi-supervised scANVI: query labels, or
    with ``soft=True`` a DataFrame of class probabilities (query cells x reference types)."""
    import scvi

    scvi.settings.seed = seed
    trainer = {"enable_progress_bar": False}
    clk = Clock()
    r, q = _scanvi_inputs(ref, query, labels, ref_batches)
    if semi:
        import anndata as ad

        q = q[:, q.var_names.intersection(r.var_names)].copy()
        full = ad.concat([r, q], join="outer", fill_value=0)[:, r.var_names].copy()
        scvi.model.SCVI.setup_anndata(full, batch_key="batch")
        vae = scvi.model.SCVI(full, **_SCVI_KWARGS)
        vae.train(max_epochs=SCVI_EPOCHS, **trainer)
        lvae = scvi.model.SCANVI.from_scvi_model(vae, UNKNOWN, labels_key="label")
        lvae.train(max_epochs=SCANVI_EPOCHS, n_samples_per_label=100, **trainer)
        train = clk.lap()
        pred = lvae.predict(full[full.obs.batch == "query"].copy(), soft=soft)
        return (pred if soft else np.asarray(pred, dtype=str)), train, clk.lap()
    scvi.model.SCVI.setup_anndata(r, batch_key="batch")
    vae = scvi.model.SCVI(r, **_SCVI_KWARGS)
    vae.train(max_epochs=SCVI_EPOCHS, **trainer)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, UNKNOWN, labels_key="label")
    lvae.train(max_epochs=SCANVI_EPOCHS, n_samples_per_label=100, **trainer)
    scvi.model.SCANVI.prepare_query_anndata(q, lvae)
    qvae = scvi.model.SCANVI.load_query_data(q, lvae)
    qvae.train(
        max_epochs=QUERY_EPOCHS,
        plan_kwargs={"weight_decay": 0.0},
        check_val_every_n_epoch=10,
        **trainer,
    )
    train = clk.lap()
    pred = qvae.predict(soft=soft)
    return (pred if soft else np.asarray(pred, dtype=str)), train, clk.lap()


def train_transanno(ref, key, seed, model_kwargs=None, train_kwargs=None, ref_batches=None):
    """Train TransAnno on a copy of ``ref`` as ``tl.transanno_annotate(reference=...)`` does.

    Where the reference has several batches (the Zilionis animals; Baron has one, PBMC none)
    they are registered as ``batch_key``, which lets ``n_top_genes="auto"`` choose the gene
    count by leave-one-batch-out validation."""
    import scvi

    import transanno_sc as ta

    scvi.settings.seed = seed
    r = ref.copy()
    batch_key = None
    if ref_batches is not None and np.unique(ref_batches).size > 1:
        batch_key = "batch"
        r.obs[batch_key] = pd.Categorical(ref_batches)
    ta.model.TransAnno.setup_anndata(r, labels_key=key, batch_key=batch_key)
    model = ta.model.TransAnno(r, **(model_kwargs or {}))
    model.train(**{"enable_progress_bar": False, **(train_kwargs or {})})
    return model


def transanno(ref, query, key, seed, model_kwargs, train_kwargs, ref_batches=None):
    """Train with :func:`train_transanno`, then annotate through ``tl.transanno_annotate``."""
    import transanno_sc as ta

    clk = Clock()
    model = train_transanno(ref, key, seed, model_kwargs, train_kwargs, ref_batches)
    train = clk.lap()
    ta.tl.transanno_annotate(query, model=model, unassigned_threshold=None)
    pred = query.obs["transanno_label"].astype(str).to_numpy()
    return pred, train, clk.lap()


def score(ref_labels, true, pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    known = np.isin(true, np.unique(ref_labels))
    t, p = true[known], np.asarray(pred, dtype=str)[known]
    labels = sorted(set(t))
    return {
        "accuracy": float(accuracy_score(t, p)),
        "f1_macro": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(t, p, labels=labels, average="weighted", zero_division=0)),
        "n_query_scored": int(known.sum()),
    }


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_one(name: str, method: str, seed: int, model_kwargs: dict, train_kwargs: dict) -> dict:
    """One (task, method, seed), meant to run in a fresh process."""
    for lg in ("lightning", "lightning.pytorch", "scvi", "celltypist", "transanno_sc"):
        logging.getLogger(lg).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    ref, query, key = task(name, seed)
    ref_labels = ref.obs[key].astype(str).to_numpy()
    true = query.obs[key].astype(str).to_numpy()  # read by `score` only
    # the reference's batches (animals), for methods that take them; every method gets labels
    ref_batches = ref.obs["batch"].astype(str).to_numpy() if "batch" in ref.obs else None
    ref = ref.copy()
    ref.obs = ref.obs[[key]].copy()
    blind = _blind(query)
    del query
    if method not in ("scanvi", "scanvi_semi"):
        for a in (ref, blind):  # only scANVI uses the recovered counts
            for k in list(a.layers):
                del a.layers[k]
    load_peak = _peak_rss_mb()  # peak so far: libraries and data, before the method runs
    if method == "transanno":
        pred, t_train, t_pred = transanno(
            ref, blind, key, seed, model_kwargs, train_kwargs, ref_batches
        )
    elif method.startswith("logreg_"):
        pred, t_train, t_pred = logreg(ref, blind, ref_labels, seed, method.split("_")[1])
    elif method in ("celltypist", "celltypist_majority"):
        pred, t_train, t_pred = celltypist_method(
            ref, blind, ref_labels, seed, method == "celltypist_majority"
        )
    elif method in ("scanvi", "scanvi_semi"):
        pred, t_train, t_pred = scanvi(
            ref, blind, ref_labels, seed, method == "scanvi_semi", ref_batches
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    return {
        **score(ref_labels, true, pred),
        "train_s": t_train[0],
        "predict_s": t_pred[0],
        "total_s": t_train[0] + t_pred[0],
        "train_cpu_s": t_train[1],
        "predict_cpu_s": t_pred[1],
        "peak_rss_mb": _peak_rss_mb(),
        "load_peak_rss_mb": load_peak,
        "n_ref": int(ref.n_obs),
        "n_query": len(true),
    }


def _child(conn, args):
    try:
        conn.send(("ok", run_one(*args)))
    except BaseException as e:  # report, do not hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_isolated(args: tuple, timeout: float) -> dict:
    """Run :func:`run_one` in a fresh ``spawn`` process (own peak RSS, no shared state)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, args))
    p.start()
    child.close()
    if not parent.poll(timeout):
        p.kill()
        p.join()
        return {"error": f"timeout after {timeout:.0f} s"}
    status, payload = parent.recv()
    p.join()
    return payload if status == "ok" else {"error": payload}


# ----------------------------------------------------------------------------- report
def _fmt(med: float, lo: float, hi: float, digits: int) -> str:
    if np.isnan(med):
        return "n/a"
    if np.isclose(lo, hi, atol=10 ** (-digits) / 2):
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def summarize(rows: list[dict]) -> pd.DataFrame:
    """Median and range per (task, method); a repeated (task, method, seed): the last one counts."""
    df = pd.DataFrame([r for r in rows if "error" not in r])
    if df.empty:
        return df
    df = df.drop_duplicates(["task", "method", "seed"], keep="last")
    out = []
    for (t, m), g in df.groupby(["task", "method"], sort=False):
        rec = {"task": t, "method": m, "n_seeds": len(g)}
        for c in (
            "f1_macro",
            "accuracy",
            "f1_weighted",
            "train_s",
            "predict_s",
            "train_cpu_s",
            "predict_cpu_s",
            "peak_rss_mb",
        ):
            v = (g[c] if c in g else pd.Series([np.nan] * len(g))).astype(float)
            rec[c] = float(v.median())
            rec[f"{c}_min"] = float(v.min())
            rec[f"{c}_max"] = float(v.max())
        rec["total_s"] = float((g["train_s"] + g["predict_s"]).median())
        out.append(rec)
    agg = pd.DataFrame(out)
    order = {t: i for i, t in enumerate(TASKS)}
    agg["_t"] = agg.task.map(lambda t: order.get(t, len(order)))
    agg["_m"] = agg.method.map(lambda m: (METHODS.index(m) if m in METHODS else -1, m))
    return agg.sort_values(["_t", "_m"]).drop(columns=["_t", "_m"]).reset_index(drop=True)


def markdown(agg: pd.DataFrame) -> str:
    if agg.empty:
        return "(no results)\n"
    lines = [
        "| task | method | seeds | macro-F1 | accuracy | weighted-F1 | train s | predict s "
        "| train CPU s | predict CPU s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in agg.iterrows():
        best = agg[(agg.task == r.task) & ~_is_transanno(agg.method)].f1_macro.max()
        mark = "**" if np.isclose(r.f1_macro, agg[agg.task == r.task].f1_macro.max()) else ""
        f1 = f"{mark}{_fmt(r.f1_macro, r.f1_macro_min, r.f1_macro_max, 3)}{mark}"
        if _is_transanno(pd.Series([r.method])).iloc[0] and not np.isnan(best):
            f1 += f" [{r.f1_macro - best:+.3f}]"
        lines.append(
            f"| {r.task} | {r.method} | {r.n_seeds} | {f1} "
            f"| {_fmt(r.accuracy, r.accuracy_min, r.accuracy_max, 3)} "
            f"| {_fmt(r.f1_weighted, r.f1_weighted_min, r.f1_weighted_max, 3)} "
            f"| {_fmt(r.train_s, r.train_s_min, r.train_s_max, 1)} "
            f"| {_fmt(r.predict_s, r.predict_s_min, r.predict_s_max, 2)} "
            f"| {_fmt(r.train_cpu_s, r.train_cpu_s_min, r.train_cpu_s_max, 1)} "
            f"| {_fmt(r.predict_cpu_s, r.predict_cpu_s_min, r.predict_cpu_s_max, 2)} "
            f"| {r.peak_rss_mb:.0f} |"
        )
    notes = (
        "\nMedian (min-max) over seeds. Bold: best macro-F1 of the task. "
        "[+x]: TransAnno's median macro-F1 minus the best baseline's. "
        "CPU s: process CPU time, all threads (robust to a loaded machine; n/a in rows "
        "recorded before it was added).\n"
    )
    return "\n".join(lines) + "\n" + notes


def _is_transanno(methods: pd.Series) -> pd.Series:
    return methods.astype(str).str.startswith("transanno")


def _env() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v = {}
    for pkg in ("transanno-sc", "scvi-tools", "celltypist", "scikit-learn", "torch", "scanpy"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    try:
        import transanno_sc

        where = str(Path(transanno_sc.__file__).parent)
    except ImportError:
        where = None
    return {
        "transanno_sc_path": where,
        "transanno_sc_commit": os.environ.get("TRANSANNO_SRC_COMMIT"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        **v,
    }


def save(out: str | None, rows: list[dict], args: dict, table: str) -> None:
    """Write ``OUT.json`` (rows, arguments, versions) and ``OUT.md`` (``table``)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"rows": rows, "args": args, "env": _env()}
        Path(f"{out}.json").write_text(json.dumps(payload, indent=1) + "\n")
        Path(f"{out}.md").write_text(table)


def write(out: str | None, rows: list[dict], args: dict) -> str:
    table = markdown(summarize(rows))
    save(out, rows, args, table)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model-kwargs", default="{}", help="JSON, passed to TransAnno(...)")
    parser.add_argument("--train-kwargs", default="{}", help="JSON, passed to TransAnno.train")
    parser.add_argument("--label", default="", help="suffix of the transanno method name")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="tabulate these JSON files (a later file's run of a task, method and seed "
        "replaces an earlier one's); run nothing",
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = {}  # a later file's run of the same (task, method, seed) replaces an earlier
        for f in args.merge:
            for row in json.loads(Path(f).read_text())["rows"]:
                merged[(row["task"], row["method"], row["seed"])] = row
        print(write(args.out, list(merged.values()), {"merge": args.merge}))
        return 0
    mk, tk = json.loads(args.model_kwargs), json.loads(args.train_kwargs)
    rows = []
    for t in args.tasks:
        for seed in args.seeds:
            for m in args.methods:
                name = m + (f"[{args.label}]" if m == "transanno" and args.label else "")
                res = run_isolated((t, m, seed, mk, tk), args.timeout)
                row = {"task": t, "method": name, "seed": seed, **res}
                if m == "transanno":
                    row["model_kwargs"], row["train_kwargs"] = mk, tk
                rows.append(row)
                print(json.dumps(row), flush=True)
                write(args.out, rows, vars(args))
    print(write(args.out, rows, vars(args)))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
