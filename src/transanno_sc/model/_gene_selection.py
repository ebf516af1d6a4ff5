"""Choosing the model's gene vocabulary (highly variable genes, ``n_top_genes="auto"``) and
matching it to an AnnData."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from transanno_sc._constants import (
    MIN_GENE_OVERLAP,
    WARN_GENE_OVERLAP,
)
from transanno_sc.data import (
    LOG_SCALES,
    GeneMatch,
    get_matrix,
    match_adata_genes,
    match_genes,
    stratified_subsample,
)
from transanno_sc.train import class_weights, logistic_regression

logger = logging.getLogger(__name__)


#: ``n_top_genes="auto"``: the gene counts compared, the count without a batch to hold out,
#: labeled cells (stratified subsample) and held-out batches used, and the macro-F1 margin a
#: larger count must win by.
GENE_COUNT_CANDIDATES = (2000, 4000, 8000)

DEFAULT_GENE_COUNT = 2000

_N_GENE_COUNT_CELLS = 5_000

_MAX_HELD_OUT_BATCHES = 5

_GENE_COUNT_TOLERANCE = 0.005

#: What a larger gene count must win by in :func:`choose_gene_count_by_query`: this much
#: macro-F1 over the smallest count, and this share of the smallest count's error.
_ROUND_TRIP_MIN_GAIN = 0.01
_ROUND_TRIP_MIN_ERROR_CUT = 0.25

#: Fraction of the labeled types that some held-out batch must share with the other batches.
MIN_VALIDATED_TYPES = 0.9


def log_hvg_subsample(X, var_names: pd.Index, is_counts: bool, seed: int, log_factor: float = 1.0):
    """Log1p CP10k AnnData of (at most 20,000 random rows of) X, with Seurat-flavour dispersions
    in ``var`` (``dispersions_norm``), and the rows it holds (``None``: all of them). Log values
    (not ``is_counts``) are turned back into count-like values first (``expm1`` of them times
    ``log_factor``: ``ln 2`` for ``log2(1+x)``) and renormalized over X's genes, as the model
    reads them: log1p(CPM) gives the genes log1p(CP10k) would."""
    import scanpy as sc

    n_obs = X.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_obs, 20_000, replace=False)) if n_obs > 20_000 else None
    if rows is not None:
        sub = X[rows]
    elif sp.issparse(X) or isinstance(X, np.ndarray):
        sub = X
    else:  # a backed matrix: read it
        sub = X[:]
    # a copy in any case: the normalization below works in place, and X may be the user's
    sub = (
        sp.csr_matrix(sub, dtype=np.float32, copy=True)
        if sp.issparse(sub)
        else np.array(sub, dtype=np.float32)
    )
    tmp = AnnData(sub)
    tmp.var_names = var_names.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not is_counts:  # back to count-like values, renormalized as the model does
            values = tmp.X.data if sp.issparse(tmp.X) else tmp.X
            np.expm1(values * np.float32(log_factor), out=values)
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    return tmp, rows


def select_genes(
    X,
    var_names: pd.Index,
    n_top_genes: int | None,
    is_counts: bool,
    seed: int,
    tmp: AnnData | None = None,
    log_factor: float = 1.0,
) -> list[str]:
    """Pick the gene vocabulary: highly variable genes of (a subsample of) the reference
    (``tmp``: that subsample from :func:`log_hvg_subsample`, when already made; ``log_factor``
    as there)."""
    import scanpy as sc

    n_vars = X.shape[1]
    if n_top_genes is None or n_top_genes >= n_vars:
        return [str(g) for g in var_names]
    if tmp is None:
        tmp, _ = log_hvg_subsample(X, var_names, is_counts, seed, log_factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor="seurat")
    hvg = tmp.var["highly_variable"].to_numpy()
    return [str(g) for g in var_names[hvg]]


def _ranked_cells(tmp: AnnData, rows: np.ndarray | None, codes: np.ndarray, seed: int):
    """What both ways of choosing the gene count start from: the candidate counts (of
    :data:`GENE_COUNT_CANDIDATES`, fewer than ``tmp``'s genes, or all of them), ``tmp``'s
    genes ranked by Seurat dispersion, a stratified subsample of the labeled cells of ``tmp``
    (positions in it; ``codes`` are those of the rows of ``X``, ``rows`` the subsample's) and
    the generator that drew it."""
    import scanpy as sc

    codes = codes if rows is None else codes[rows]
    candidates = [k for k in GENE_COUNT_CANDIDATES if k < tmp.n_vars] or [tmp.n_vars]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=max(candidates), flavor="seurat")
    dispersion = tmp.var["dispersions_norm"].to_numpy(dtype=np.float64)
    order = np.argsort(-np.nan_to_num(dispersion, nan=-np.inf), kind="stable")
    rng = np.random.default_rng(seed)
    cells = np.flatnonzero(codes >= 0)
    cells = np.sort(cells[stratified_subsample(codes[cells], _N_GENE_COUNT_CELLS, rng)])
    return candidates, order, cells, rng


def choose_gene_count(
    tmp: AnnData, rows: np.ndarray | None, codes: np.ndarray, batches: np.ndarray, seed: int
) -> dict | None:
    """``n_top_genes="auto"``: the number of highly variable genes (of
    :data:`GENE_COUNT_CANDIDATES`) whose class-weighted L2 logistic regression (the wide
    path's recipe) transfers labels best from some reference batches to another, by
    leave-one-batch-out macro-F1 on labeled cells (``codes`` >= 0). ``tmp`` and ``rows``:
    the reference subsample of :func:`log_hvg_subsample`. ``None`` when no held-out batch
    could be scored."""
    from sklearn.metrics import f1_score

    candidates, order, cells, rng = _ranked_cells(tmp, rows, codes, seed)
    codes = codes if rows is None else codes[rows]
    batches = batches if rows is None else batches[rows]
    y, b = codes[cells], batches[cells]
    held_batches = np.unique(b)
    if held_batches.size > _MAX_HELD_OUT_BATCHES:
        held_batches = np.sort(rng.choice(held_batches, _MAX_HELD_OUT_BATCHES, replace=False))
    # Types a held-out batch shares with the others are the only ones the validation sees;
    # more genes cost rare types most, so the validation must see (nearly) every type.
    validated = set()
    for batch in held_batches:
        validated |= set(np.unique(y[b == batch])) & set(np.unique(y[b != batch]))
    coverage = len(validated) / np.unique(y).size
    if coverage < MIN_VALIDATED_TYPES:
        return {
            "n_top_genes": DEFAULT_GENE_COUNT,
            "scores": {},
            "validation": "leave-one-batch-out",
            "n_batches": int(held_batches.size),
            "validated_types": float(coverage),
        }
    # kept sparse (CSR) when the data are: the fits take a tenth of the time
    M = tmp.X[cells][:, order[: max(candidates)]]
    M = sp.csr_matrix(M) if sp.issparse(M) else np.asarray(M)
    scores = {}
    for k in candidates:
        folds = []
        for batch in held_batches:
            held, kept = b == batch, b != batch
            if np.unique(y[kept]).size < 2:
                continue
            weight = class_weights(np.bincount(y[kept]), 1.0)  # "balanced"
            clf = logistic_regression(M[kept, :k], y[kept], weight[y[kept]], 0.1)
            shared = np.intersect1d(np.unique(y[held]), clf.classes_)
            keep = np.isin(y[held], shared)
            if keep.any():
                pred = clf.predict(M[held, :k][keep])
                folds.append(f1_score(y[held][keep], pred, labels=shared, average="macro"))
        if folds:
            scores[int(k)] = float(np.mean(folds))
    if not scores:
        return None
    return {
        "n_top_genes": _smallest_near_best(scores),
        "scores": scores,
        "validation": "leave-one-batch-out",
        "n_batches": int(held_batches.size),
        "validated_types": float(coverage),
    }


def _smallest_near_best(scores: dict[int, float]) -> int:
    """The smallest gene count within the tolerance of the best score: fewer genes unless
    more clearly help."""
    best = max(scores.values())
    return min(k for k, v in scores.items() if v >= best - _GENE_COUNT_TOLERANCE)


def choose_gene_count_by_query(
    tmp: AnnData, rows: np.ndarray | None, codes: np.ndarray, query, seed: int
) -> dict | None:
    """``n_top_genes="auto"`` for a reference without batches to hold out, when the query is
    at hand (``tl.transanno_annotate(reference=...)``): the count of
    :data:`GENE_COUNT_CANDIDATES` whose labels survive the round trip reference -> query ->
    reference best (reverse validation). A class-weighted L2 logistic regression on the
    reference's genes labels the query; a second one, trained on the query with those labels,
    labels the reference back; the score is its macro-F1 against the reference's own labels.
    Genes that carry the types only within the reference, or that the query measures
    differently, lose the labels on the way. ``tmp``/``rows``: the reference subsample of
    :func:`log_hvg_subsample`; ``query``: log1p CP10k values of (a subsample of) the query
    on ``tmp``'s genes. ``None`` when the query's labels came out as a single type."""
    from sklearn.metrics import f1_score

    candidates, order, cells, _ = _ranked_cells(tmp, rows, codes, seed)
    y = (codes if rows is None else codes[rows])[cells]
    n_types = int(y.max()) + 1
    M = tmp.X[cells][:, order[: max(candidates)]]
    M = sp.csr_matrix(M) if sp.issparse(M) else np.asarray(M)
    Q = query[:, order[: max(candidates)]]
    Q = sp.csr_matrix(Q) if sp.issparse(Q) else np.asarray(Q)
    weight = class_weights(np.bincount(y, minlength=n_types), 1.0)
    scores = {}
    for k in candidates:
        clf = logistic_regression(M[:, :k], y, weight[y], 0.1)
        pseudo = clf.predict(Q[:, :k])
        if np.unique(pseudo).size < 2:
            continue
        back_weight = class_weights(np.bincount(pseudo, minlength=n_types), 1.0)
        back = logistic_regression(Q[:, :k], pseudo, back_weight[pseudo], 0.1)
        scores[int(k)] = float(
            f1_score(y, back.predict(M[:, :k]), labels=np.unique(y), average="macro")
        )
    if not scores:
        return None
    # Types the query lacks, novel cells and fine label grains leave the round trip an error
    # that no gene count removes; a larger count must cut the smallest count's error clearly
    # (by 0.01 and a quarter), not nudge it: near-ties went to more genes, which lost
    # accuracy and novel-type calls where the reference's types transfer imperfectly.
    smallest = min(scores)
    error = 1.0 - scores[smallest]
    clear = {
        k: v
        for k, v in scores.items()
        if k == smallest
        or (
            v - scores[smallest] >= _ROUND_TRIP_MIN_GAIN
            and 1.0 - v <= (1.0 - _ROUND_TRIP_MIN_ERROR_CUT) * error
        )
    }
    return {
        "n_top_genes": _smallest_near_best(clear),
        "scores": scores,
        "validation": "query round trip",
        "n_query_cells": int(Q.shape[0]),
    }


def choose_vocabulary(
    X,
    var_names: pd.Index,
    n_top_genes: int | str | None,
    is_counts: bool,
    codes: np.ndarray,
    batches: np.ndarray,
    seed: int,
    query: Callable[[], np.ndarray | sp.csr_matrix] | None = None,
    log_factor: float = 1.0,
) -> tuple[list[str], dict | None]:
    """The gene vocabulary for ``n_top_genes`` (see :class:`~transanno_sc.model.TransAnno`)
    and, for ``"auto"``, how its gene count was chosen (else ``None``): by leave-one-batch-out
    with several labeled batches, else by the labels' round trip reference -> query ->
    reference (``choose_gene_count_by_query``) where ``query`` is given: a function
    returning log1p CP10k values of query cells on ``var_names``, called only when they are
    needed. ``codes``: label codes of the rows of ``X``, -1 where unlabeled; ``batches``:
    batch codes; ``log_factor``: what log values of ``X`` are multiplied by to give natural
    log1p values (``ln 2`` for ``log2(1+x)``)."""
    if isinstance(n_top_genes, str):
        if n_top_genes != "auto":
            msg = f"n_top_genes must be an int, None or 'auto', got {n_top_genes!r}."
            raise ValueError(msg)
    elif n_top_genes is not None and not (
        isinstance(n_top_genes, int | np.integer) and n_top_genes > 0
    ):
        msg = f"n_top_genes must be a positive int, None or 'auto', got {n_top_genes!r}."
        raise ValueError(msg)
    if n_top_genes != "auto":
        return select_genes(X, var_names, n_top_genes, is_counts, seed, None, log_factor), None
    several_batches = np.unique(batches[codes >= 0]).size >= 2
    if not several_batches and (query is None or np.unique(codes[codes >= 0]).size < 2):
        genes = select_genes(X, var_names, DEFAULT_GENE_COUNT, is_counts, seed, None, log_factor)
        return genes, None
    t0 = time.perf_counter()
    tmp, rows = log_hvg_subsample(X, var_names, is_counts, seed, log_factor)
    choice = choose_gene_count(tmp, rows, codes, batches, seed) if several_batches else None
    if query is not None and (choice is None or not choice["scores"]):
        # no batch to hold out, or too few types shared between batches: ask the query
        by_query = choose_gene_count_by_query(tmp, rows, codes, query(), seed)
        if by_query is not None:
            if choice is not None:  # the batches' coverage, for the record
                by_query["validated_types"] = choice["validated_types"]
            choice = by_query
    if choice is None:
        return select_genes(X, var_names, DEFAULT_GENE_COUNT, is_counts, seed, tmp=tmp), None
    logger.info(
        "n_top_genes='auto': %d genes (%s macro-F1 %s, %.1f s).",
        choice["n_top_genes"],
        choice["validation"],
        {k: round(v, 3) for k, v in choice["scores"].items()},
        time.perf_counter() - t0,
    )
    genes = select_genes(X, var_names, choice["n_top_genes"], is_counts, seed, tmp=tmp)
    return genes, choice


def check_vocabulary(genes: Sequence[str]) -> list[str]:
    if isinstance(genes, str):
        msg = f"gene_vocabulary must be a list of gene names, got the string {genes!r}."
        raise TypeError(msg)
    genes = [str(g) for g in genes]
    if not genes:
        msg = "gene_vocabulary is empty."
        raise ValueError(msg)
    if len(set(genes)) != len(genes):
        msg = "gene_vocabulary has duplicate genes."
        raise ValueError(msg)
    return genes


#: How to train for a query's own genes (named in gene-overlap errors and warnings).
RETRAIN_HINT = (
    "`ta.tl.transanno_annotate(adata, reference=ref, labels_key=...)` (CLI: `transanno annotate "
    "--reference ref.h5ad --labels-key ...`) uses only the genes the reference and the query share."
)


def checked_match(
    adata: AnnData, vocab: Sequence[str], what: str, stacklevel: int = 3, *, by_columns: bool = True
) -> GeneMatch:
    """Match ``vocab`` to the genes of ``adata`` by name (``by_columns``: or by a gene-name
    column of ``adata.var``, see :func:`~transanno_sc.data.match_adata_genes`); warn or refuse
    on a poor overlap."""
    var_names = adata.var_names
    match = match_adata_genes(adata, vocab) if by_columns else match_genes(var_names, vocab)
    if match.fraction < MIN_GENE_OVERLAP:
        example = ", ".join(map(str, var_names[:3]))
        data_ids = str(var_names[0]).upper().startswith("ENS")
        model_ids = str(vocab[0]).upper().startswith("ENS")
        if data_ids and not model_ids:
            hint = " The data look like Ensembl IDs while the model uses gene symbols: " + (
                "put the symbols in a `var` column named 'feature_name' (or another of "
                "transanno_sc.data.GENE_NAME_COLUMNS) and they are matched by it."
                if by_columns
                else "name the genes by their symbols."
            )
        elif model_ids and not data_ids:
            hint = " The model uses Ensembl IDs while the data look like gene symbols: " + (
                "put the IDs in a `var` column named 'gene_ids' (or another of "
                "transanno_sc.data.GENE_NAME_COLUMNS) and they are matched by it."
                if by_columns
                else "name the genes by the same IDs."
            )
        else:
            hint = " Check the species and the gene naming convention (symbols vs IDs)."
        msg = (
            f"Only {match.n_matched} of the model's {match.n_vocab} genes "
            f"({match.fraction:.1%}) are in {what}.var_names (e.g. {example})"
            f"{' or a gene-name column of its var' if by_columns else ''}; at least "
            f"{MIN_GENE_OVERLAP:.0%} are needed.{hint} If {what} was measured on a smaller "
            f"gene panel, train a model for its genes: {RETRAIN_HINT}"
        )
        raise ValueError(msg)
    if match.fraction < WARN_GENE_OVERLAP:
        warnings.warn(
            f"Only {match.fraction:.1%} of the model's genes are in {what}; missing genes "
            "are treated as not expressed and predictions may suffer. A model trained on the "
            f"genes both share does better: {RETRAIN_HINT}",
            UserWarning,
            stacklevel=stacklevel,
        )
    logger.info(
        "Gene overlap: %d of %d model genes found (%d by case-insensitive name, %d without "
        "Ensembl version suffix, %d reading '.', '_' and '-' alike).",
        match.n_matched,
        match.n_vocab,
        match.n_case_insensitive,
        match.n_unversioned,
        match.n_separators,
    )
    return match


def added_genes(
    adata: AnnData, setup_args: dict, match: GeneMatch, n_top_genes: int, seed: int
) -> list[str]:
    """Highly variable genes of ``adata`` that a vocabulary lacks (``match``: the
    vocabulary matched to ``adata``; its matched genes are not added)."""
    if n_top_genes == 0:
        return []
    X = get_matrix(adata, setup_args["layer"])
    scale = setup_args["input_scale"]
    hvg = select_genes(
        X, adata.var_names, n_top_genes, scale == "counts", seed, None, LOG_SCALES.get(scale, 1.0)
    )
    matched = set(adata.var_names[match.source].astype(str))
    return sorted(g for g in hvg if g not in matched)
