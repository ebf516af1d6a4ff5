"""Cross-study annotation benchmark (issue #17): other studies, panels, scales and novel types.

For every reference -> query case below, TransAnno runs through its public default call
``tl.transanno_annotate(query, reference=ref, labels_key=..., batch_key=...)`` (``batch_key``
where the reference has several batches; ``random_state=seed`` where the function takes it,
and ``scvi.settings.seed = seed``), and the baselines run in the same process on the same
cells. The query handed to a method has no ``obs`` columns; its labels are read by the metric
code only.

Pairs (``--pairs``) and their cases
-----------------------------------
zilionis_to_tabula   Zilionis mouse lung immune cells (inDrop, all 800, 4 animals as batches)
                     -> Tabula Muris immune cells (10x, 1,000). Names harmonized in the truth:
                     B cell ~ B cells, T cell ~ T cells, NK cell ~ NK cells, Granulocyte ~
                     Neutrophils; Monocyte (69 cells) is novel. Symbols UPPER vs Mixed case.
tabula_to_zilionis   the reverse: Tabula Muris immune cells (one batch, names harmonized to
                     Zilionis' as above; its Monocytes a type the query lacks) -> all 800
                     Zilionis lung cells. Nothing novel: marrow granulocytes against mature
                     lung neutrophils is a known type in another state and tissue.
zilionis_heldout     Zilionis healthy -> tumour mice, each of the 4 types left out of the
                     reference in turn (novel in the query). Batches: the two healthy animals.
baron_heldout        Baron mouse pancreas, stratified 50/50 split per seed, each of the 4
                     largest types (beta, ductal, delta, endothelial) left out of the
                     reference in turn. One batch.
pbmc68k_heldout      ``scanpy.datasets.pbmc68k_reduced().raw`` (log1p-normalized, 765 genes),
                     labels ``bulk_labels``, stratified 50/50 split per seed, "CD14+ Monocyte"
                     left out of the reference. scANVI gets the exactly
                     recovered counts (see ``run.py``).
tabula_heldout       within one 10x study (added after 01e330e): Tabula Muris immune cells,
                     stratified 50/50 split per seed, each of its 5 types (B, T, NK cells,
                     monocytes, granulocytes) left out of the reference in turn. One batch.
tabula_to_baron      a whole-tissue query against an immune reference: Tabula Muris immune cells
                     (names harmonized to Zilionis' as above) -> Baron mouse pancreas (822
                     inDrop cells of 13 types, 4 cells of ``immune_other`` left out: their
                     type is unknown). Known: B cells (2), T cells (4), and the 17
                     macrophages taken as the reference's Monocyte (the same lineage in a
                     tissue; a user would accept the call). Novel: the 795 endocrine,
                     ductal, endothelial, stellate and Schwann cells. Few known cells: read
                     its known-cell figures as counts, not rates.
zilionis_to_baron    the same query against the Zilionis lung immune reference (4 animals as
                     batches). Known: B cells (2) and T cells (4); novel: the other 812,
                     macrophages included (the reference has no monocyte or macrophage).
zilionis_subtypes    a fine-grained label set: Zilionis' 11 ``cell_subtype`` labels (B cells,
                     NK cells, T1-T3, neutrophil states N1-N6; several of 1-15 cells).
                     "animals": h_1,t_1 -> h_2,t_2, nothing novel (every query subtype is in
                     the reference). "healthy -> tumour": the tumour-only neutrophil states
                     N3-N6 (68 cells) are novel; continuous states, not types, so the hardest
                     novelty case here. Batches: the reference's animals.
zilionis_panel300    Zilionis healthy -> tumour, the query keeping 300 genes: "300-gene query",
                     300 random genes (per seed) of the reference's genes detected in at least
                     one reference cell; "300-gene marker panel", a panel designed on another
                     study as targeted / imaging panels are (Xenium, MERFISH, CosMx): the top
                     markers of each Tabula Muris immune type (scanpy's Wilcoxon test on log1p
                     CP10k), taken in turn over the types until 300 genes of Zilionis' are in.
                     No novel type.
zilionis_mixed_scale Zilionis animals h_1,t_1 -> h_2,t_2 with the reference's h_1 cells turned
                     into TPM: counts / gene length (log-normal, median 2 kb, per seed),
                     scaled to 1e6 per cell; t_1 stays counts. No novel type.
zilionis_reads       Zilionis healthy -> tumour with the reference's UMIs turned into integer
                     read counts of a full-length, non-UMI protocol (Smart-seq2-like): each
                     molecule's reads negative binomial (mean = the gene's amplification,
                     log-normal around 20 per molecule with a log-sd of 0.7 for gene length
                     and PCR efficiency, per seed; shape 1). About 27 times the query's depth
                     in integer counts, so the default depth matching thins them. "query as read
                     counts": the query's UMIs turned into reads instead (nothing is thinned; the
                     genes' amplification differs from the reference's). No novel type.

Methods (``--methods``)
-----------------------
transanno    ``tl.transanno_annotate`` as above, default threshold (0.5); confidence
             ``obs['transanno_confidence']``. ``--train-kwargs`` are passed to the call.
logreg_l2/l1 ``run.logreg_fit``: LogisticRegression (C=0.1; lbfgs / saga) on the reference's
             2,000 HVGs (Seurat flavour) of log1p CP10k.
knn          15-nearest-neighbour vote (Euclidean) in a 50-PC PCA of the reference's 2,000
             HVGs (log1p CP10k, centred, not scaled: scaled genes put every Zilionis tumour
             cell near one type, macro-F1 0.13); the query is projected. Confidence: the
             vote fraction.
celltypist   ``celltypist.train`` in its default mode (``run.celltypist_train``: one-vs-rest L2
             LogisticRegression, C=1, all genes, no SGD, no feature selection), then
             ``celltypist.annotate`` (best match). Confidence: its probability of the
             predicted type.
scanvi       scANVI reference mapping (scArches), ``run.scanvi`` (counts, reference HVGs).
             Slow: leave it out with ``--methods`` when time is short.
scanvi_semi  semi-supervised scANVI: the same models trained on reference + query, the query
             unlabelled (``run.scanvi(..., semi=True)``). Confidence of both: the maximum of
             ``predict(soft=True)``.

Baselines see both datasets with upper-cased gene names restricted to the genes both have
(what a user of a linear model does across studies), normalized per cell to 10,000 and
log1p-transformed after that (pbmc68k is used as it is: already log-normalized). A baseline
calls a cell "Unassigned" when its confidence (maximum probability, vote fraction) is below
0.5.

Metrics (per case, method, seed): on query cells whose type is in the reference ("known"):
macro-F1 over those types and accuracy, a label "Unassigned" counting as wrong (``f1_macro``,
``accuracy``), and the same without the "Unassigned" calls (``f1_macro_forced``: the
classifier's own labels); the percentage of novel-type query cells called "Unassigned"
(``novel_unassigned``), of known-type cells (``known_unassigned``); the AUROC of the
confidence for known (positive) against novel cells (``auroc``); wall seconds of the method
(preprocessing, training and prediction). A case whose method fails records the error
message as its result.

    python benchmarks/cross_study.py --quick --out benchmarks/results_tmp/cross_quick
    python benchmarks/cross_study.py --methods transanno logreg_l2 logreg_l1 knn celltypist \
        --seeds 0 1 2 --out benchmarks/results_tmp/cross
    python benchmarks/cross_study.py --merge benchmarks/results_tmp/cross.json \
        benchmarks/results_tmp/cross_new.json --out benchmarks/results_tmp/cross_all

Each (case, seed) runs in a fresh ``spawn`` process, its methods one after another; rows are
written after every method, so an interrupted run keeps what it has.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    DATA,
    _blind,
    _dense_on,
    _fmt,
    _pbmc68k,
    _stratified,
    _zilionis,
    celltypist_train,
    logreg_fit,
    save,
    scanvi,
)


def _load_simulators():
    """``transanno_sc.datasets``' simulators, read from this checkout's source file, so that
    the cases stay the same when another commit's package is measured (``PYTHONPATH``)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "src/transanno_sc/datasets/_simulate.py"
    spec = importlib.util.spec_from_file_location("_cross_study_simulate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sim = _load_simulators()
warnings.filterwarnings("ignore")
UNASSIGNED = "Unassigned"
PAIRS = [
    "zilionis_to_tabula",
    "tabula_to_zilionis",
    "zilionis_heldout",
    "baron_heldout",
    "pbmc68k_heldout",
    "zilionis_panel300",
    "zilionis_mixed_scale",
    "zilionis_depth",
    "tabula_to_baron",
    "zilionis_to_baron",
    "zilionis_subtypes",
    "zilionis_reads",
    "zilionis_ambient",
    "tabula_heldout",
]
METHODS = ["transanno", "logreg_l2", "logreg_l1", "knn", "celltypist", "scanvi", "scanvi_semi"]
TABULA_NAMES = {
    "B cell": "B cells",
    "T cell": "T cells",
    "NK cell": "NK cells",
    "Granulocyte": "Neutrophils",
}
#: Baron's immune cells named as the immune references name them; its other types are novel
BARON_IMMUNE = {"B_cell": "B cells", "T_cell": "T cells"}
ZILIONIS_TYPES = ["B cells", "NK cells", "Neutrophils", "T cells"]
BARON_HELD = ["beta", "ductal", "delta", "endothelial"]  # the four largest types
PBMC_HELD = ["CD14+ Monocyte"]
TABULA_HELD = ["B cell", "T cell", "NK cell", "Monocyte", "Granulocyte"]
PANEL_GENES = 300
# share of the UMIs kept by binomial thinning (zilionis_depth); CROSS_STUDY_DEPTH=0.25 for others
DEPTH = float(os.environ.get("CROSS_STUDY_DEPTH", "0.1"))
# share of a contaminated cell's UMIs that come from the ambient pool (zilionis_ambient)
AMBIENT = float(os.environ.get("CROSS_STUDY_AMBIENT", "0.2"))
CASES = {
    "zilionis_to_tabula": ["Monocyte novel"],
    "tabula_to_zilionis": ["nothing novel"],
    "zilionis_heldout": [f"{t} held out" for t in ZILIONIS_TYPES],
    "baron_heldout": [f"{t} held out" for t in BARON_HELD],
    "pbmc68k_heldout": [f"{t} held out" for t in PBMC_HELD],
    "zilionis_panel300": [f"{PANEL_GENES}-gene query", f"{PANEL_GENES}-gene marker panel"],
    "zilionis_mixed_scale": ["h_1 as TPM"],
    "zilionis_depth": [f"query at {DEPTH:.0%} depth", f"reference at {DEPTH:.0%} depth"],
    "tabula_to_baron": ["pancreas query"],
    "zilionis_to_baron": ["pancreas query"],
    "zilionis_subtypes": ["animals", "healthy -> tumour"],
    "zilionis_reads": ["reference as read counts", "query as read counts"],
    "zilionis_ambient": [
        f"query with {AMBIENT:.0%} ambient RNA",
        f"reference with {AMBIENT:.0%} ambient RNA",
    ],
    "tabula_heldout": [f"{t} held out" for t in TABULA_HELD],
}


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """A reference -> query case. ``query.obs[key]`` holds the harmonized truth (read by the
    metrics only); ``ref.obs`` holds ``key`` and, where ``batch_key`` is set, the batches."""

    ref: object
    query: object
    key: str
    batch_key: str | None = None
    log_normalized: bool = False  # X is already log1p-normalized (pbmc68k)
    notes: dict = field(default_factory=dict)


def _held(case: str) -> str:
    return case.removesuffix(" held out")


def _baron_query(known: dict):
    """Baron's pancreas cells (``immune_other`` left out) as a query, its truth named as the
    immune references name their types (:data:`BARON_IMMUNE` and ``known``)."""
    import anndata as ad

    a = ad.read_h5ad(DATA / "baron_mouse_pancreas.h5ad")
    a = a[a.obs.cell_type.astype(str) != "immune_other"].copy()
    truth = a.obs.cell_type.astype(str).replace({**BARON_IMMUNE, **known})
    a.obs = pd.DataFrame({"cell_type": truth.to_numpy()}, index=a.obs_names)
    return a


def _marker_panel(var_names: pd.Index, n: int) -> np.ndarray:
    """Positions in ``var_names`` of an ``n``-gene panel designed on another study: the top
    Wilcoxon markers of each Tabula Muris immune type (log1p CP10k), taken in turn over the
    types (rank 1 of every type, then rank 2, ...) among the genes ``var_names`` has (matched
    case-insensitively)."""
    import anndata as ad
    import scanpy as sc

    atlas = ad.read_h5ad(DATA / "tabula_muris_immune.h5ad")
    sc.pp.normalize_total(atlas, target_sum=1e4)
    sc.pp.log1p(atlas)
    sc.tl.rank_genes_groups(atlas, "cell_type", method="wilcoxon", n_genes=2000)
    names = pd.DataFrame(atlas.uns["rank_genes_groups"]["names"])
    where = {g.upper(): i for i, g in enumerate(var_names)}
    panel: list[int] = []
    for row in names.itertuples(index=False):
        for g in row:
            i = where.get(str(g).upper())
            if i is not None and i not in panel and len(panel) < n:
                panel.append(i)
    return np.asarray(panel)


def build(pair: str, case: str, seed: int) -> Case:
    """The reference and query of ``case`` of ``pair`` for ``seed``."""
    import anndata as ad
    import scipy.sparse as sp

    if pair == "zilionis_to_tabula":
        ref = _zilionis()
        ref.obs = ref.obs[["cell_type", "batch"]].copy()
        query = ad.read_h5ad(DATA / "tabula_muris_immune.h5ad")
        truth = query.obs["cell_type"].astype(str).replace(TABULA_NAMES)
        query.obs = pd.DataFrame({"cell_type": truth.to_numpy()}, index=query.obs_names)
        return Case(ref, query, "cell_type", "batch")
    if pair in ("tabula_to_zilionis", "tabula_to_baron"):
        ref = ad.read_h5ad(DATA / "tabula_muris_immune.h5ad")
        names = ref.obs["cell_type"].astype(str).replace(TABULA_NAMES)
        ref.obs = pd.DataFrame({"cell_type": names.to_numpy()}, index=ref.obs_names)
        if pair == "tabula_to_baron":
            return Case(ref, _baron_query({"macrophage": "Monocyte"}), "cell_type")
        query = _zilionis()
        query.obs = query.obs[["cell_type"]].copy()
        return Case(ref, query, "cell_type")
    if pair == "zilionis_to_baron":
        ref = _zilionis()
        ref.obs = ref.obs[["cell_type", "batch"]].copy()
        return Case(ref, _baron_query({}), "cell_type", "batch")
    if pair in ("zilionis_heldout", "zilionis_panel300"):
        a = _zilionis()
        a.obs = a.obs[["cell_type", "batch", "condition"]].copy()
        h = (a.obs.condition == "healthy").to_numpy()
        ref, query = a[h].copy(), a[~h].copy()
        if pair == "zilionis_heldout":
            ref = ref[ref.obs.cell_type.astype(str) != _held(case)].copy()
            return Case(ref, query, "cell_type", "batch")
        if case.endswith("marker panel"):
            genes = _marker_panel(query.var_names, PANEL_GENES)
        else:
            detected = np.asarray((ref.X > 0).sum(0)).ravel() > 0
            rng = np.random.default_rng(seed)
            genes = rng.choice(np.flatnonzero(detected), PANEL_GENES, replace=False)
        query = query[:, np.sort(genes)].copy()
        return Case(ref, query, "cell_type", "batch", notes={"query_genes": int(query.n_vars)})
    if pair == "zilionis_subtypes":
        a = _zilionis()
        a.obs = a.obs[["cell_subtype", "batch", "condition"]].copy()
        a.obs.columns = ["cell_type", "batch", "condition"]
        if case == "animals":
            r = a.obs.batch.isin(["h_1", "t_1"]).to_numpy()
        else:
            r = (a.obs.condition == "healthy").to_numpy()
        return Case(a[r].copy(), a[~r].copy(), "cell_type", "batch")
    if pair in ("zilionis_depth", "zilionis_reads", "zilionis_ambient"):
        # healthy -> tumour with one side's counts thinned (a shallower run), turned into
        # read counts or given ambient RNA; the case's first word says which side
        a = _zilionis()
        a.obs = a.obs[["cell_type", "batch", "condition"]].copy()
        h = (a.obs.condition == "healthy").to_numpy()
        ref, query = a[h].copy(), a[~h].copy()
        changed = query if case.startswith("query") else ref
        make, note = {
            "zilionis_depth": (partial(sim.simulate_depth, fraction=DEPTH), "shallow_median_umis"),
            "zilionis_reads": (sim.simulate_read_counts, "median_reads"),
            "zilionis_ambient": (
                partial(sim.simulate_ambient_rna, fraction=AMBIENT),
                "median_umis_with_ambient",
            ),
        }[pair]
        changed.X = make(changed, random_state=np.random.default_rng(seed)).X
        depth = float(np.median(np.asarray(changed.X.sum(1)).ravel()))
        return Case(ref, query, "cell_type", "batch", notes={note: depth})
    if pair == "zilionis_mixed_scale":
        a = _zilionis()
        a.obs = a.obs[["cell_type", "batch"]].copy()
        r = a.obs.batch.isin(["h_1", "t_1"]).to_numpy()
        ref, query = a[r].copy(), a[~r].copy()
        h1 = (ref.obs.batch == "h_1").to_numpy()
        X = ref.X.toarray()
        tpm = sim.simulate_tpm(ref[h1], random_state=np.random.default_rng(seed))
        X[h1] = tpm.X.toarray()
        ref.X = sp.csr_matrix(X)
        return Case(ref, query, "cell_type", "batch", notes={"tpm_cells": int(h1.sum())})
    if pair in ("baron_heldout", "tabula_heldout"):
        # within one study: a stratified half of the cells as the reference without one
        # type, the other half as the query
        name = {"baron_heldout": "baron_mouse_pancreas", "tabula_heldout": "tabula_muris_immune"}
        a = ad.read_h5ad(DATA / f"{name[pair]}.h5ad")
        a.obs = a.obs[["cell_type"]].copy()
        q = _stratified(a.obs.cell_type.astype(str), 0.5, seed)
        ref, query = a[~q].copy(), a[q].copy()
        ref = ref[ref.obs.cell_type.astype(str) != _held(case)].copy()
        return Case(ref, query, "cell_type")
    if pair == "pbmc68k_heldout":
        a = _pbmc68k()
        q = _stratified(a.obs.bulk_labels.astype(str), 0.5, seed)
        ref, query = a[~q].copy(), a[q].copy()
        ref = ref[ref.obs.bulk_labels.astype(str) != _held(case)].copy()
        return Case(ref, query, "bulk_labels", log_normalized=True)
    raise ValueError(f"unknown pair {pair!r}; choose from {PAIRS}")


# ----------------------------------------------------------------------------- methods
def harmonize(ref, query):
    """Both datasets with upper-case gene symbols, restricted to the genes both have (the
    reference's order); a symbol that occurs twice after upper-casing keeps its first."""
    out = []
    for a in (ref, query):
        a = a.copy()
        a.var_names = a.var_names.astype(str).str.upper()
        out.append(a[:, ~a.var_names.duplicated()].copy())
    ref, query = out
    shared = ref.var_names[ref.var_names.isin(query.var_names)]
    if len(shared) == 0:
        msg = "the reference and the query share no gene symbols, even upper-cased"
        raise ValueError(msg)
    return ref[:, shared].copy(), query[:, shared].copy()


def lognorm(a, log_normalized: bool):
    """log1p of values normalized to 10,000 per cell (counts, TPM, anything count-like);
    already log-normalized data as it is. Layers are dropped."""
    import scanpy as sc

    a = a.copy()
    for k in list(a.layers):
        del a.layers[k]
    if not log_normalized:
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    return a


def _from_proba(proba: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    classes = np.asarray(classes, dtype=str)
    return classes[proba.argmax(1)], proba.max(1)


def run_logreg(r, q, labels, seed, penalty):
    clf, genes = logreg_fit(r, labels, seed, penalty)
    return _from_proba(clf.predict_proba(_dense_on(q.X, q.var_names, genes)), clf.classes_)


def run_knn(r, q, labels, seed, k=15, n_pcs=50):
    import scanpy as sc
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    sc.pp.highly_variable_genes(r, n_top_genes=min(2000, r.n_vars), flavor="seurat")
    genes = r.var_names[r.var.highly_variable]
    xr = _dense_on(r.X, r.var_names, genes)
    pca = PCA(n_components=min(n_pcs, xr.shape[0] - 1, xr.shape[1] - 1), random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=min(k, xr.shape[0])).fit(pca.fit_transform(xr), labels)
    xq = pca.transform(_dense_on(q.X, q.var_names, genes))
    return _from_proba(knn.predict_proba(xq), knn.classes_)


def run_celltypist(r, q, labels, log_normalized):
    import celltypist

    model = celltypist_train(r, labels, check_expression=not log_normalized)
    res = celltypist.annotate(q, model=model)
    pred = res.predicted_labels["predicted_labels"].astype(str).to_numpy()
    prob = res.probability_matrix.loc[q.obs_names]
    conf = prob.to_numpy()[np.arange(len(pred)), prob.columns.get_indexer(pred)]
    return pred, conf


def run_transanno(ref, query, c: Case, seed, train_kwargs):
    """The public default call; returns (labels with Unassigned, forced labels, confidence,
    notes)."""
    import scvi

    import transanno_sc as ta

    scvi.settings.seed = seed
    kwargs = {"enable_progress_bar": False, **train_kwargs}
    # --train-kwargs '{"batch_key": null}': what a user who leaves batch_key out gets
    if "batch_key" not in kwargs and c.batch_key is not None and ref.obs[c.batch_key].nunique() > 1:
        kwargs["batch_key"] = c.batch_key
    if "random_state" in inspect.signature(ta.tl.transanno_annotate).parameters:
        kwargs.setdefault("random_state", seed)
    ta.tl.transanno_annotate(query, reference=ref, labels_key=c.key, **kwargs)
    pred = query.obs["transanno_label"].astype(str).to_numpy()
    probs = query.obsm["transanno_probabilities"]
    uns = query.uns.get("transanno", {})
    # the types as named (the columns have "_" for "/", which h5 keys cannot hold)
    forced = np.asarray(uns["classes"], dtype=str)[np.asarray(probs).argmax(1)]
    conf = query.obs["transanno_confidence"].to_numpy(dtype=float)
    notes = {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in {
            **uns.get("gene_overlap", {}),
            **uns.get("params", {}),
            **uns.get("calibration", {}),  # temperature, novelty_shift, ...
        }.items()
        if isinstance(v, (int, float, str, bool, np.generic))
    }
    return pred, forced, conf, notes


def run_method(method: str, c: Case, seed: int, train_kwargs: dict):
    """Return (labels with "Unassigned", labels without, confidence, notes) for the query."""
    ref_labels = c.ref.obs[c.key].astype(str).to_numpy()
    if method == "transanno":
        ref = c.ref.copy()
        keep = [c.key] + ([c.batch_key] if c.batch_key else [])
        ref.obs = ref.obs[keep].copy()
        for a in (ref,):
            for k in list(a.layers):
                del a.layers[k]
        query = _blind(c.query)
        for k in list(query.layers):
            del query.layers[k]
        return run_transanno(ref, query, c, seed, train_kwargs)
    ref, query = harmonize(c.ref, _blind(c.query))
    notes = {"shared_genes": int(ref.n_vars)}
    if method in ("scanvi", "scanvi_semi"):
        batches = c.ref.obs[c.batch_key].astype(str).to_numpy() if c.batch_key else None
        semi = method == "scanvi_semi"
        proba, _, _ = scanvi(ref, query, ref_labels, seed, semi, batches, soft=True)
        forced, conf = _from_proba(proba.to_numpy(), proba.columns)
    else:
        r, q = lognorm(ref, c.log_normalized), lognorm(query, c.log_normalized)
        if method.startswith("logreg_"):
            forced, conf = run_logreg(r, q, ref_labels, seed, method.split("_")[1])
        elif method == "knn":
            forced, conf = run_knn(r, q, ref_labels, seed)
        elif method == "celltypist":
            forced, conf = run_celltypist(r, q, ref_labels, c.log_normalized)
        else:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    pred = np.where(conf < 0.5, UNASSIGNED, forced)
    return pred, forced, conf, notes


# ----------------------------------------------------------------------------- metrics
def metrics(ref_types, truth, pred, forced, conf) -> dict:
    """Shared-type macro-F1 and accuracy ("Unassigned" wrong), the same on forced labels,
    shared-type macro-F1 over all query cells (novel cells called a shared type count as its
    false positives), novel / known cells called "Unassigned" (%), AUROC of the confidence
    (known positive)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    truth, pred, forced = (np.asarray(x, dtype=str) for x in (truth, pred, forced))
    conf = np.asarray(conf, dtype=float)
    known = np.isin(truth, np.asarray(ref_types, dtype=str))
    labels = sorted(set(truth[known]))

    def f1(p, cells=known):
        return float(
            f1_score(truth[cells], p[cells], labels=labels, average="macro", zero_division=0)
        )

    out = {
        "f1_macro": f1(pred),
        # what the user's annotation holds: novel cells called a shared type are that type's
        # false positives (an "Unassigned" novel cell is no error)
        "f1_macro_all": f1(pred, np.ones(len(truth), bool)),
        "accuracy": float(accuracy_score(truth[known], pred[known])),
        "f1_macro_forced": f1(forced),
        "accuracy_forced": float(accuracy_score(truth[known], forced[known])),
        "known_unassigned": float(100 * np.mean(pred[known] == UNASSIGNED)),
        "novel_unassigned": float("nan"),
        "auroc": float("nan"),
        "n_known": int(known.sum()),
        "n_novel": int((~known).sum()),
    }
    if (~known).any():
        out["novel_unassigned"] = float(100 * np.mean(pred[~known] == UNASSIGNED))
        out["auroc"] = float(roc_auc_score(known, conf))
    return out


def _quiet():
    for lg in ("lightning", "lightning.pytorch", "scvi", "celltypist", "transanno_sc"):
        logging.getLogger(lg).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def run_case(conn, pair, case, seed, methods, train_kwargs, cells_dir=None):
    """In a fresh process: build the case once, run each method, send one row per method
    (and, with ``cells_dir``, write each run's per-cell truth, labels and confidence there)."""
    _quiet()
    try:
        c = build(pair, case, seed)
    except BaseException as e:
        for m in methods:
            conn.send({"method": m, "error": f"{type(e).__name__}: {e}"})
        conn.close()
        return
    truth = c.query.obs[c.key].astype(str).to_numpy()
    ref_types = np.unique(c.ref.obs[c.key].astype(str))
    for m in methods:
        t0 = time.perf_counter()
        try:
            pred, forced, conf, notes = run_method(m, c, seed, train_kwargs)
            if cells_dir:
                Path(cells_dir).mkdir(parents=True, exist_ok=True)
                np.savez_compressed(
                    Path(cells_dir) / f"{pair}__{case}__{m}__{seed}.npz".replace(" ", "_"),
                    truth=np.asarray(truth, dtype=str),
                    pred=np.asarray(pred, dtype=str),
                    forced=np.asarray(forced, dtype=str),
                    conf=np.asarray(conf, dtype=float),
                    ref_types=np.asarray(ref_types, dtype=str),
                )
            row = {
                "method": m,
                **metrics(ref_types, truth, pred, forced, conf),
                "wall_s": time.perf_counter() - t0,
                "n_ref": int(c.ref.n_obs),
                "n_query": int(c.query.n_obs),
                "notes": {**c.notes, **notes},
            }
        except Exception as e:  # record the failure as the result
            row = {
                "method": m,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=6),
                "wall_s": time.perf_counter() - t0,
            }
        conn.send(row)
    conn.close()


def run_isolated(pair, case, seed, methods, train_kwargs, timeout, cells_dir=None):
    """Yield one row per method, from a fresh ``spawn`` process (a timeout ends the rest)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(
        target=run_case, args=(child, pair, case, seed, methods, train_kwargs, cells_dir)
    )
    p.start()
    child.close()
    deadline = time.monotonic() + timeout
    done = set()
    while len(done) < len(methods):
        left = deadline - time.monotonic()
        try:
            if left <= 0 or not parent.poll(left):
                break
            row = parent.recv()
        except EOFError:  # the process died (killed for memory, a crash)
            break
        done.add(row["method"])
        yield row
    if p.is_alive():
        p.kill()
    p.join()
    for m in methods:
        if m not in done:
            why = (
                f"timeout after {timeout:.0f} s"
                if time.monotonic() >= deadline
                else (f"process ended (exit code {p.exitcode})")
            )
            yield {"method": m, "error": why}


# ----------------------------------------------------------------------------- report
COLS = [
    "f1_macro",
    "accuracy",
    "f1_macro_forced",
    "f1_macro_all",
    "novel_unassigned",
    "known_unassigned",
    "auroc",
    "wall_s",
]


def _frame(rows) -> pd.DataFrame:
    """Every row (a repeated pair, case, method and seed: the last one counts), with an
    ``error`` column (NaN where the run worked)."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if "error" not in df:
        df["error"] = np.nan
    return df.drop_duplicates(["pair", "case", "method", "seed"], keep="last")


def _order(df):
    pairs = {p: i for i, p in enumerate(PAIRS)}
    meth = {m: i for i, m in enumerate(METHODS)}
    df = df.assign(
        _p=df.pair.map(lambda p: pairs.get(p, len(pairs))),
        _m=df.method.map(lambda m: (meth.get(m.split("[")[0].split("@")[0], len(meth)), m)),
    )
    return df.sort_values(["_p", "_m"]).drop(columns=["_p", "_m"])


def _cell(v: pd.Series | None, digits: int) -> str:
    if v is None:  # rows of an older run lack a metric
        return "n/a"
    v = v.astype(float).dropna()
    if v.empty:
        return "n/a"
    return _fmt(float(v.median()), float(v.min()), float(v.max()), digits)


def _table(df: pd.DataFrame, by: list[str]) -> list[str]:
    """One line per group and method: median (min-max) over its runs that worked; bold: the
    best shared macro-F1 of the group; [+x]: TransAnno's median minus the best baseline's
    median over the same cases and seeds."""
    head = [
        *by,
        "method",
        "runs",
        "shared macro-F1",
        "accuracy",
        "F1 w/o Unassigned",
        "F1 all cells",
        "novel Unassigned %",
        "known Unassigned %",
        "AUROC",
        "wall s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    digits = {"novel_unassigned": 0, "known_unassigned": 1, "wall_s": 1}
    ok = df[df.error.isna()]
    med = ok.groupby([*by, "method"]).f1_macro.median() if not ok.empty else pd.Series()
    for keys, g in _order(df).groupby([*by, "method"], sort=False):
        good = g[g.error.isna()]
        runs = str(len(good)) + (f" (+{len(g) - len(good)} failed)" if len(good) < len(g) else "")
        if good.empty:
            cells = ["failed (below)"] + [""] * (len(COLS) - 1)
        else:
            cells = [_cell(good.get(c), digits.get(c, 3)) for c in COLS]
            group = med.loc[tuple(keys[:-1])] if len(by) > 1 else med.loc[keys[0]]
            if np.isclose(group.max(), med.loc[tuple(keys)]):
                cells[0] = f"**{cells[0]}**"
            if keys[-1].startswith("transanno"):  # against the baselines on the same runs
                runs_of = set(zip(good.case, good.seed))
                same = ok[(ok[by[0]] == keys[0]) & ~ok.method.str.startswith("transanno")]
                same = same[[k in runs_of for k in zip(same.case, same.seed)]]
                if not same.empty:
                    best = same.groupby("method").f1_macro.median().max()
                    cells[0] += f" [{good.f1_macro.median() - best:+.3f}]"
        lines.append("| " + " | ".join([*map(str, keys), runs, *cells]) + " |")
    return lines


def markdown(rows: list[dict]) -> str:
    """Per pair (median (min-max) over its cases and seeds), then per case (over seeds), then
    the errors."""
    df = _frame(rows)
    out = []
    if not df.empty and df.error.isna().any():
        out += ["Per pair: median (min-max) over the pair's cases and seeds.", ""]
        out += _table(df, ["pair"])
        out += ["", "Per case: median (min-max) over seeds.", ""]
        out += _table(df.assign(case=df.pair + ": " + df.case), ["case"])
    errors = [r for r in rows if "error" in r]
    if errors:
        out += ["", "Errors (recorded as the result):", ""]
        seen = set()
        for r in errors:
            msg = r["error"].splitlines()[0][:300]
            k = (r["pair"], r["case"], r["method"], msg)
            if k not in seen:
                seen.add(k)
                seeds = [
                    e["seed"]
                    for e in errors
                    if (e["pair"], e["case"], e["method"]) == k[:3]
                    and e["error"].splitlines()[0][:300] == msg
                ]
                out.append(f"- {r['pair']}: {r['case']}, {r['method']} (seeds {seeds}): {msg}")
    out += [
        "",
        "Shared macro-F1 and accuracy: query cells whose type is in the reference, a label "
        '"Unassigned" counting as wrong; F1 w/o Unassigned: the classifier\'s own labels. '
        "F1 all cells: shared-type macro-F1 over every query cell, a novel-type cell called a "
        "shared type counting as a false positive of that type (the annotation a user gets). "
        "AUROC: the confidence, known-type cells positive, novel-type cells negative. "
        "Bold: the best median shared macro-F1 of the group; [+x]: TransAnno's median minus the "
        "best baseline's median over the same cases and seeds. "
        "n/a: no novel type in the query.",
    ]
    return "\n".join(out) + "\n"


def src_commit() -> str | None:
    """The commit of the transanno_sc source that runs (``TRANSANNO_SRC_COMMIT`` if set),
    with ``+dirty`` when its ``src/`` differs from that commit."""
    if os.environ.get("TRANSANNO_SRC_COMMIT"):
        return os.environ["TRANSANNO_SRC_COMMIT"]
    try:
        import transanno_sc

        where = Path(transanno_sc.__file__).parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:  # not a git checkout
        return None


def write(out, rows, args):
    table = markdown(rows)
    save(out, rows, args, table)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", nargs="+", default=PAIRS, choices=PAIRS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument(
        "--cases", nargs="+", default=None, help="only the cases whose name contains one of these"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--train-kwargs", default="{}", help="JSON, extra arguments of tl.transanno_annotate"
    )
    parser.add_argument("--label", default="", help="suffix of the transanno method name")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument(
        "--cells",
        default=None,
        help="write each run's per-cell truth, labels and confidence to CELLS/*.npz",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case and seed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: first case of each pair, seed 0, TransAnno 3 epochs",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="tabulate these JSON files (later rows replace earlier ones of the "
        "same pair, case, method and seed; TransAnno rows are named transanno@COMMIT after "
        "their source); run nothing",
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = {}
        for f in args.merge:
            for row in json.loads(Path(f).read_text())["rows"]:
                tagged = "@" in row["method"]  # a merged file's rows are named already
                if row["method"].startswith("transanno") and row.get("src_commit") and not tagged:
                    # runs of different source trees side by side
                    row = {**row, "method": f"{row['method']}@{row['src_commit']}"}
                merged[(row["pair"], row["case"], row["method"], row["seed"])] = row
        print(write(args.out, list(merged.values()), {"merge": args.merge}))
        return 0
    tk = json.loads(args.train_kwargs)
    seeds = args.seeds
    if args.quick:
        tk.setdefault("max_epochs", 3)
        seeds = seeds[:1]
    commit = src_commit()
    rows = []
    todo = [(p, c) for p in args.pairs for c in (CASES[p][:1] if args.quick else CASES[p])]
    if args.cases:
        todo = [(p, c) for p, c in todo if any(k in c for k in args.cases)]
    for seed in seeds:  # every case of a seed before the next seed: a cut-short run has them
        for pair, case in todo:
            for row in run_isolated(pair, case, seed, args.methods, tk, args.timeout, args.cells):
                m = row.pop("method")
                name = m + (f"[{args.label}]" if m == "transanno" and args.label else "")
                row = {"pair": pair, "case": case, "method": name, "seed": seed, **row}
                if m == "transanno":
                    row["train_kwargs"], row["src_commit"] = tk, commit
                rows.append(row)
                brief = {k: v for k, v in row.items() if k not in ("traceback", "notes")}
                print(json.dumps(brief), flush=True)
                write(args.out, rows, {**vars(args), "src_commit": commit})
    print(write(args.out, rows, {**vars(args), "src_commit": commit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
