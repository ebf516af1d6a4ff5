"""AnnData-side input checks: the expression matrix, its values and scale, the labels."""

from __future__ import annotations

import logging
import numbers
import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from transanno_sc._constants import UNASSIGNED

from ._streaming import iter_row_chunks
from ._vocab import GeneMatch, match_genes

logger = logging.getLogger(__name__)


InputScale = Literal["auto", "counts", "log1p", "log2(1+x)", "log10(1+x)"]

#: Rows inspected to decide whether a matrix holds counts or log1p values.
N_ROWS_SCALE_DETECTION = 2000

#: log1p(counts per 10k) never exceeds this in practice; larger non-integer values are not log.
MAX_LOG1P_VALUE = 30.0

#: The log-normalized scales told apart by :func:`log_base_of_rows`, and the natural log of
#: their base: values of ``"log2(1+x)"`` (``log2(TPM + 1)``, ``log2(CPM + 1)``, common in
#: published tables) times ``ln 2`` are the natural ``log1p`` of the same count-like values.
LOG_SCALES = {"log1p": 1.0, "log2(1+x)": float(np.log(2.0)), "log10(1+x)": float(np.log(10.0))}
#: A base other than e is taken when, for that base, at least this share of a cell's values
#: above twice its smallest are whole multiples of it (counts normalized per cell) while for
#: base e under :data:`_NATURAL_AT_MOST` are; or when its per-cell totals vary by a
#: coefficient of variation under :data:`_CONSTANT_TOTAL_CV` while those of base e vary by
#: over :data:`_VARYING_TOTAL_CV` (TPM / CPM of all genes, which has no whole multiples).
_MULTIPLES_AT_LEAST = 0.9
_NATURAL_AT_MOST = 0.5
_CONSTANT_TOTAL_CV = 0.03
_VARYING_TOTAL_CV = 0.05

#: Columns of ``var`` that often hold a second name of each gene (compared in lower case,
#: in this order): gene symbols next to Ensembl IDs in ``var_names`` (CELLxGENE's
#: ``feature_name``, scanpy's ``gene_symbols``, Bioconductor's ``Symbol`` from
#: ``DropletUtils::read10xCounts`` via zellkonverter, Monocle's ``gene_short_name``) or
#: Ensembl IDs next to symbols (10x / scanpy's ``gene_ids``, Bioconductor's ``ID``).
GENE_NAME_COLUMNS = (
    "feature_name",
    "gene_symbols",
    "gene_symbol",
    "genesymbol",
    "gene_name",
    "gene_names",
    "gene_short_name",
    "symbol",
    "gene_ids",
    "gene_id",
    "ensembl_id",
    "feature_id",
    "id",
)


def gene_name_options(adata: AnnData) -> dict[str, pd.Index]:
    """The names adata's genes can be matched by: ``var_names``, then each column of
    ``adata.var`` named in ``transanno_sc.data.GENE_NAME_COLUMNS`` (in any case: ``Symbol``,
    ``ID``) that holds strings (a gene without a value there keeps its ``var_names`` entry;
    repeated names are made unique as :meth:`~anndata.AnnData.var_names_make_unique`
    does)."""
    from anndata.utils import make_index_unique

    var_names = pd.Index(adata.var_names.astype(str))
    options = {"var_names": var_names}
    rank = {name: i for i, name in enumerate(GENE_NAME_COLUMNS)}
    columns = [c for c in adata.var.columns if str(c).lower() in rank]
    for col in sorted(columns, key=lambda c: rank[str(c).lower()]):
        values = adata.var[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype(object)
        if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
            continue
        values = values.to_numpy(dtype=object)
        missing = pd.isna(values) | (values.astype(str) == "")
        names = np.where(missing, var_names.to_numpy(dtype=object), values).astype(str)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # make_index_unique warns about the duplicates
            options[f"var[{col!r}]"] = make_index_unique(pd.Index(names))
    return options


def _clearly_best(matches: dict[str, GeneMatch]) -> str:
    """The key of ``matches`` to use: ``"var_names"``, unless another matches more than twice
    as many genes (then the one matching most)."""
    other = max(
        (k for k in matches if k != "var_names"), key=lambda k: matches[k].n_matched, default=None
    )
    if other is not None and matches[other].n_matched > 2 * matches["var_names"].n_matched:
        return other
    return "var_names"


def match_adata_genes(adata: AnnData, vocab) -> GeneMatch:
    """Match ``vocab`` to the genes of ``adata`` (:func:`~transanno_sc.data.match_genes`) by
    ``var_names``, or by a column of ``adata.var`` named in
    ``transanno_sc.data.GENE_NAME_COLUMNS`` when one matches more than twice as many genes (then
    the column matching most): Ensembl IDs in ``var_names`` with gene symbols in
    ``var['feature_name']``, say, against a vocabulary of symbols."""
    vocab = [str(g) for g in vocab]
    by_var_names = match_genes(adata.var_names, vocab)
    if 2 * by_var_names.n_matched >= len(vocab):
        return by_var_names  # no column can match more than twice as many: none is read
    matches = {
        names: match_genes(genes, vocab, names=names)
        for names, genes in gene_name_options(adata).items()
        if names != "var_names"
    }
    matches["var_names"] = by_var_names
    best = _clearly_best(matches)
    if best != "var_names":
        logger.info(
            "Genes matched by %s (%d genes) rather than var_names.", best, matches[best].n_matched
        )
    return matches[best]


def match_shared_genes(adata: AnnData, reference: AnnData) -> tuple[GeneMatch, str]:
    """The genes of ``reference`` found in ``adata``, each side named by ``var_names`` or by a
    gene-name column of its ``var`` (:func:`~transanno_sc.data.match_adata_genes` on both
    sides).

    Returns the match (``source``: columns of ``adata``, ``target``: columns of ``reference``)
    and the key of :func:`~transanno_sc.data.gene_name_options` of ``reference`` that named its
    genes.
    """
    by_var_names = match_adata_genes(adata, reference.var_names)
    if 2 * by_var_names.n_matched >= reference.n_vars:
        return by_var_names, "var_names"  # as in match_adata_genes: no column can win
    matches = {
        names: match_adata_genes(adata, genes)
        for names, genes in gene_name_options(reference).items()
        if names != "var_names"
    }
    matches["var_names"] = by_var_names
    best = _clearly_best(matches)
    if best != "var_names":
        logger.info("Reference genes matched by %s rather than var_names.", best)
    return matches[best], best


def get_matrix(adata: AnnData, layer: str | None, what: str = "adata"):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error when it is missing
    (``what``: the object's name in the message)."""
    if layer is None:
        if adata.X is None:
            msg = f"{what}.X is None: store the expression matrix in {what}.X or pass `layer=`."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"layer={layer!r} not found in {what}.layers (available: {list(adata.layers)}). "
            f"Pass one of these or `layer=None` to use {what}.X."
        )
        raise KeyError(msg)
    return adata.layers[layer]


def check_shape_and_names(adata: AnnData, what: str = "adata") -> None:
    """Refuse empty objects and duplicate gene names."""
    if not isinstance(adata, AnnData):
        msg = f"{what} must be an AnnData, got {type(adata).__name__}."
        raise TypeError(msg)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"{what} is empty ({adata.n_obs} cells x {adata.n_vars} genes)."
        raise ValueError(msg)
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        msg = (
            f"{what}.var_names are not unique (e.g. {dup}); genes are matched by name. "
            f"Run `{what}.var_names_make_unique()` first."
        )
        raise ValueError(msg)


def _values(rows) -> np.ndarray:
    return rows.data if sp.issparse(rows) else np.asarray(rows).ravel()


def check_values(rows, what: str = "adata.X") -> None:
    """Raise a ``ValueError`` naming the problem when ``rows`` hold NaN, inf or negatives."""
    v = _values(rows)
    if v.size == 0:
        return
    if not np.isfinite(v).all():
        n_bad = int((~np.isfinite(v)).sum())
        msg = (
            f"{what} contains {n_bad} NaN or infinite values. Remove or impute them "
            "(e.g. `np.nan_to_num`) before annotation."
        )
        raise ValueError(msg)
    if v.min() < 0:
        msg = (
            f"{what} contains negative values (min {v.min():.3g}): it looks scaled or "
            "centered (`sc.pp.scale`). TransAnno needs raw counts or log1p-normalized values: "
            "pass `layer=` with counts, or use `adata.raw.to_adata()`."
        )
        raise ValueError(msg)


def scan_matrix(X, what: str = "adata.X") -> None:
    """Check every value of ``X`` chunk by chunk (works on backed matrices)."""
    for _, rows in iter_row_chunks(X):
        check_values(rows, what)


def sampled_rows(X, n_rows: int | None = None):
    """Up to ``n_rows`` rows of ``X`` (:data:`N_ROWS_SCALE_DETECTION` if ``None``) spread
    evenly over it (dense, sparse or backed), as float32."""
    n = min(X.shape[0], N_ROWS_SCALE_DETECTION if n_rows is None else n_rows)
    indices = np.unique(np.linspace(0, X.shape[0] - 1, n).astype(np.int64))
    return next(iter_row_chunks(X, chunk_size=indices.size, indices=indices))[1]


def detect_input_scale(X, what: str = "adata.X") -> str:
    """Decide from a sample of rows whether ``X`` holds count-like or log-normalized values.

    ``"counts"``: integers (UMI or read counts) or non-integer values above
    :data:`MAX_LOG1P_VALUE` (TPM, CPM, RSEM expected counts, Smart-seq read counts): every
    cell is library-size normalized anyway, so their absolute scale does not matter.
    ``"log1p"``: non-integer values up to :data:`MAX_LOG1P_VALUE` (log1p of normalized
    values); ``"log2(1+x)"`` or ``"log10(1+x)"`` where their base is clearly 2 or 10
    (:func:`log_base_of_rows`). The rows read are spread evenly over ``X`` (at most
    :data:`N_ROWS_SCALE_DETECTION`).
    """
    if X.shape[0] == 0:
        msg = f"{what} has no cells."
        raise ValueError(msg)
    return scale_of_rows(sampled_rows(X), what)


def scale_of_rows(rows, what: str = "adata.X") -> str:
    """:func:`detect_input_scale` of rows already read."""
    check_values(rows, what)
    v = _values(rows)
    v = v[v != 0]
    if v.size == 0:
        msg = (
            f"{what} holds no expression: the {rows.shape[0]} cells read (spread evenly over "
            "it) have no non-zero value. Check that the expression matrix is there (pass "
            "`layer=` for another) and drop empty cells first, e.g. "
            "`sc.pp.filter_cells(adata, min_counts=1)`."
        )
        raise ValueError(msg)
    if np.all(v == np.round(v)) or v.max() > MAX_LOG1P_VALUE:
        return "counts"
    return log_base_of_rows(rows)


def row_kinds(rows) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the ``rows`` holding integers only (counts) and of those holding non-integer
    values up to :data:`MAX_LOG1P_VALUE` only (log-normalized values); rows with no non-zero
    value are in neither."""
    y = sp.csr_matrix(rows)
    per_row = np.diff(y.indptr)
    has = per_row > 0
    is_int = np.zeros(y.shape[0], dtype=bool)
    is_log = np.zeros(y.shape[0], dtype=bool)
    if not has.any():
        return is_int, is_log
    starts = y.indptr[:-1][has]
    fractional = (y.data != np.round(y.data)).astype(np.int64)
    n_fractional = np.add.reduceat(fractional, starts)
    top = np.maximum.reduceat(y.data, starts)
    is_int[has] = n_fractional == 0
    is_log[has] = (n_fractional > 0) & (top <= MAX_LOG1P_VALUE)
    return is_int, is_log


def is_mixed(n_int: int, n_log: int, n: int) -> bool:
    """Whether ``n_int`` count rows and ``n_log`` log rows of ``n`` make a merged matrix: each
    at least 5 % of them (and 5 rows)."""
    return min(n_int, n_log) >= max(0.05 * n, 5)


def confirmed_log_scale(rows) -> str | None:
    """The scale of log ``rows`` (:func:`log_base_of_rows`) if, turned back in it, they show
    count-like values: whole multiples of each cell's smallest value, or one total per cell;
    ``None`` where they do not (small non-integer
    values that are not log values: shallow cells of expected or ambient-corrected counts)."""
    scale = log_base_of_rows(rows)
    share, cv = _base_evidence(rows, LOG_SCALES[scale])
    return scale if share >= _MULTIPLES_AT_LEAST or cv < _CONSTANT_TOTAL_CV else None


def merged_log_rows(rows) -> tuple[np.ndarray, str] | None:
    """Where ``rows`` are merged from rows of counts and rows of log-normalized values (each
    at least 5 % of them, :func:`is_mixed`), the positions of the log rows and their scale,
    confirmed on a sample of them (:func:`confirmed_log_scale`: shallow rows of
    ambient-corrected counts are non-integer and small too, and do not count); else
    ``None``."""
    is_int, is_log = row_kinds(rows)
    if not is_mixed(int(is_int.sum()), int(is_log.sum()), rows.shape[0]):
        return None
    positions = np.flatnonzero(is_log)
    scale = confirmed_log_scale(sampled_rows(sp.csr_matrix(rows)[positions]))
    return None if scale is None else (positions, scale)


def log_factor(scale: str) -> float:
    """What values of ``scale`` are multiplied by to give natural ``log1p`` values (0 for
    count-like values)."""
    return LOG_SCALES.get(scale, 0.0)


def _base_evidence(rows, factor: float) -> tuple[float, float]:
    """For log values of base ``exp(factor)``: the share of the count-like values within
    0.05 of a whole multiple of their cell's smallest (among values over 1.5 and under 100
    times it, in cells of 5 values at least) and the coefficient of variation of the cells'
    totals."""
    y = sp.csr_matrix(rows, dtype=np.float64, copy=True)
    y.eliminate_zeros()
    y.data = np.expm1(y.data * factor)
    totals = np.asarray(y.sum(axis=1)).ravel()
    totals = totals[totals > 0]
    cv = float(totals.std() / totals.mean()) if totals.size > 1 else 0.0
    per_row = np.diff(y.indptr)
    kept = per_row >= 5
    if not kept.any():
        return float("nan"), cv
    smallest = np.minimum.reduceat(y.data, y.indptr[:-1][kept])
    ratio = y.data[np.repeat(kept, per_row)] / np.repeat(smallest, per_row[kept])
    ratio = ratio[(ratio > 1.5) & (ratio < 100)]
    if not ratio.size:
        return float("nan"), cv
    return float(np.mean(np.abs(ratio - np.round(ratio)) < 0.05)), cv


def log_base_of_rows(rows) -> str:
    """The scale of log-normalized ``rows`` (a key of :data:`LOG_SCALES`): ``"log1p"`` (natural
    log, scanpy's and Seurat's) unless the values are clearly of base 2 or 10.

    Normalized counts are whole multiples of a cell's smallest value (a count of 1) once
    turned back with the right base, and TPM or CPM of all genes sum to the same total in
    every cell; turned back with the wrong base they are neither. Values normalized to a total
    far below the library size (log1p of counts / library) hardly depend on the base and stay
    natural.
    """
    natural_share, natural_cv = _base_evidence(rows, 1.0)
    for scale, factor in LOG_SCALES.items():
        if factor == 1.0:
            continue
        share, cv = _base_evidence(rows, factor)
        by_multiples = share >= _MULTIPLES_AT_LEAST and not natural_share >= _NATURAL_AT_MOST
        by_totals = cv < _CONSTANT_TOTAL_CV and natural_cv > _VARYING_TOTAL_CV
        if by_multiples or by_totals:
            return scale
    return "log1p"


def resolve_input_scale(
    X,
    input_scale: InputScale,
    what: str = "adata.X",
    *,
    quiet: bool = False,
    argument: str = "input_scale",
) -> str:
    """Check an explicit ``input_scale`` or detect it (``quiet``: no log line or warning, for a
    check made ahead of the call that uses it). ``"log1p"`` means log-normalized values: their
    base is detected all the same (:func:`log_base_of_rows`), so the scale returned may be
    ``"log2(1+x)"`` or ``"log10(1+x)"``; those two, given, are taken as they are.
    ``argument``: the caller's name of ``input_scale``, in the messages."""
    if input_scale not in ("auto", "counts", *LOG_SCALES):
        msg = (
            f"{argument} must be 'auto', 'counts' or 'log1p' (or 'log2(1+x)', 'log10(1+x)' "
            f"for log values of those bases), got {input_scale!r}."
        )
        raise ValueError(msg)
    if X.shape[0] == 0:
        msg = f"{what} has no cells."
        raise ValueError(msg)
    rows = sampled_rows(X)
    detected = scale_of_rows(rows, what)
    if input_scale in LOG_SCALES:
        top = float(_values(rows).max())
        if top > MAX_LOG1P_VALUE:
            msg = (
                f"{argument}={input_scale!r}, but {what} holds values up to {top:.4g}: "
                f"log-normalized values stay below {MAX_LOG1P_VALUE:g} (log1p of 10,000 per "
                f"cell is 9.2). These look like counts: pass {argument}='counts' or 'auto'."
            )
            raise ValueError(msg)
        if input_scale == "log1p" and detected in LOG_SCALES:
            input_scale = "auto"  # as asked; only the base is detected
    if input_scale == "auto":
        if not quiet:
            logger.info("%s holds %s values (detected).", what, _SCALE_NAMES[detected])
            _warn_mixed(rows, what)
        return detected
    if input_scale != detected and not quiet:
        warnings.warn(
            f"{argument}={input_scale!r}, but {what} looks like {_SCALE_NAMES[detected]} "
            f"values; they are treated as {_SCALE_NAMES[input_scale]} values as asked.",
            UserWarning,
            stacklevel=3,
        )
    return input_scale


def _warn_mixed(rows, what: str) -> None:
    """Warn where ``rows`` look merged from count rows and log-normalized rows (each at least
    5 % of them): read as one scale, the log rows are taken for tiny counts."""
    found = merged_log_rows(rows)
    if found is not None:
        warnings.warn(
            f"{what} looks merged from data of different scales: of the {rows.shape[0]} cells "
            f"read, {found[0].size} hold non-integer values up to {MAX_LOG1P_VALUE:g} only "
            f"({found[1]}?) and others integer counts. All are read as count-like values. "
            "Turn the log-normalized cells back with np.expm1 before merging, or, for the "
            "reference of tl.transanno_annotate, pass batch_key= naming each cell's source "
            "(each batch's scale is then detected on its own); annotate the parts of a query "
            "one by one.",
            UserWarning,
            stacklevel=3,
        )


#: How each scale is named in messages.
_SCALE_NAMES = {
    "counts": "count-like (counts, TPM, CPM: normalized per cell, then log1p)",
    "log1p": "log1p-normalized",
    "log2(1+x)": "log2(1+x)-normalized (e.g. log2(TPM+1); read as log1p values times ln 2)",
    "log10(1+x)": "log10(1+x)-normalized (read as log1p values times ln 10)",
}


def expm1_rows(X, scale: str = "log1p") -> sp.csr_matrix:
    """``expm1`` of log-normalized values (of ``scale``, a key of :data:`LOG_SCALES`) as a
    float32 CSR copy: count-like values that the per-cell normalization turns back into the
    same log1p values (when they were normalized to
    :data:`~transanno_sc._constants.TARGET_SUM`)."""
    out = sp.csr_matrix(X, dtype=np.float32, copy=True)
    out.data = np.expm1(out.data * np.float32(LOG_SCALES[scale]))
    return out


def non_string_labels(labels: pd.Series) -> list:
    """The distinct non-missing labels (categories) that are not strings; scvi-tools' label
    field needs strings."""
    values = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else labels
    return [v for v in pd.Series(values).dropna().unique() if not isinstance(v, str)]


def _label_string(v) -> str:
    """``3`` and ``3.0`` -> ``"3"`` (cluster numbers stored as floats, e.g. after a NaN)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def string_labels(labels: pd.Series) -> pd.Series:
    """``labels`` with every non-missing value as a string (``3`` and ``3.0`` -> ``"3"``),
    NaN kept."""
    if isinstance(labels.dtype, pd.CategoricalDtype):
        return labels.cat.rename_categories([_label_string(c) for c in labels.cat.categories])
    return labels.map(lambda v: v if pd.isna(v) else _label_string(v)).astype(object)


#: Labels that are a missing value written as text (``.astype(str)`` turns NaN into
#: ``"nan"``, R into ``"NA"``) or no name at all, compared stripped and lower-cased.
MISSING_LABEL_TEXTS = frozenset({"", "nan", "none", "na", "<na>", "null", "n/a"})

#: Fewer labelled cells than this in a type: it is trained on, with a warning naming it.
MIN_CELLS_PER_TYPE = 3


def check_labels(
    adata: AnnData,
    labels_key: str | None,
    unlabeled_category: str,
    what: str = "adata",
    stacklevel: int = 2,
) -> None:
    """Refuse a missing ``labels_key``, labels that are not strings, missing labels, or a cell
    type named as the model's ``"Unassigned"`` call; warn about types of fewer than
    :data:`MIN_CELLS_PER_TYPE` cells (``stacklevel`` as :func:`warnings.warn` takes it, counted
    from the caller). ``what`` names ``adata`` in the messages."""
    if labels_key is None:
        return
    check_key(labels_key, "labels_key")
    col = f"{what}.obs[{labels_key!r}]"
    if labels_key not in adata.obs:
        msg = (
            f"labels_key={labels_key!r} is not a column of {what}.obs "
            f"(columns: {list(adata.obs.columns)})."
        )
        raise KeyError(msg)
    labels = adata.obs[labels_key]
    not_strings = non_string_labels(labels)
    if not_strings:
        example = not_strings[0]
        msg = (
            f"{col} holds labels that are not strings (e.g. {example} of type "
            f"{type(example).__name__}): cell types must be named by strings. Convert them "
            f"first: {col} = {col}.astype(str)."
        )
        raise TypeError(msg)
    values = set(map(str, labels.dropna().unique()))
    if unlabeled_category not in values:
        lookalike = sorted(v for v in values if v.lower() == str(unlabeled_category).lower())
        if lookalike:
            msg = (
                f"unlabeled_category={unlabeled_category!r} does not occur in {col}, but "
                f"{lookalike[0]!r} does: those cells would be trained on as a cell type. Pass "
                f"unlabeled_category={lookalike[0]!r}."
            )
            raise ValueError(msg)
    if UNASSIGNED in values and unlabeled_category != UNASSIGNED:
        n = int((labels.astype(str) == UNASSIGNED).sum())
        msg = (
            f"{col} names {n} cells {UNASSIGNED!r}, the label TransAnno gives to cells it cannot "
            f"assign: predictions could not tell the two apart. Pass "
            f"unlabeled_category={UNASSIGNED!r} to train without those cells, or rename them."
        )
        raise ValueError(msg)
    if labels.isna().any():
        if pd.isna(unlabeled_category):
            fill = (
                f"unlabeled_category must be a label text, not {unlabeled_category!r}: fill "
                f"them with one, e.g. {col} = {col}.astype(object).fillna('Unknown') "
                "(unlabeled_category='Unknown', the default)"
            )
        else:
            fill = (
                f"Set them to unlabeled_category={unlabeled_category!r} to mark those cells as "
                "unlabeled"
            )
        n_missing = int(labels.isna().sum())
        msg = f"{col} has {n_missing} missing values. {fill}, or drop those cells."
        raise ValueError(msg)
    blank = sorted(
        v for v in values if v != unlabeled_category and v.strip().lower() in MISSING_LABEL_TEXTS
    )
    if blank:
        n = int(labels.astype(str).isin(blank).sum())
        shown = ", ".join(repr(v) for v in blank)
        msg = (
            f"{col} labels {n} cells {shown}: a missing value written as text (as "
            "`.astype(str)` writes NaN) or an empty name, which would be trained on as a cell "
            f"type. Mark them as unlabeled, e.g. {col} = {col}.replace("
            f"{{{blank[0]!r}: {unlabeled_category!r}}}) (unlabeled_category={unlabeled_category!r}), "
            "or drop those cells."
        )
        raise ValueError(msg)
    counts = labels.value_counts()  # strings (checked above); no per-cell conversion
    counts = counts[(counts.index != unlabeled_category) & (counts > 0)]
    tiny = counts[counts < MIN_CELLS_PER_TYPE]
    if len(tiny):
        warnings.warn(
            f"{len(tiny)} cell type(s) of {col} have fewer than {MIN_CELLS_PER_TYPE} labelled "
            f"cells (cells: {_listed(tiny)}). They are trained on and can be predicted, but "
            "their calls and confidences rest on these few cells: merge them into a broader "
            f"type or set them to {unlabeled_category!r} if they matter.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def _listed(counts: pd.Series, n: int = 5) -> str:
    """``"'a' (1), 'b' (2) and 3 more"``: the first ``n`` groups of ``counts`` with their
    cell counts."""
    shown = ", ".join(f"{k!r} ({v})" for k, v in counts.head(n).items())
    return shown + (f" and {len(counts) - n} more" if len(counts) > n else "")


def check_positive_int(value, name: str, *, optional: bool = False) -> int | None:
    """``value`` as an ``int``, refused unless it is a positive integer (numpy's too; not a
    bool), or ``None`` where ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        msg = f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}."
        raise ValueError(msg)
    return int(value)


def check_key(key, name: str) -> None:
    """Refuse a column key that is not a string (a list of columns, say)."""
    if not isinstance(key, str):
        msg = f"{name} must be the name of one column of obs (a str), got {key!r}."
        raise TypeError(msg)


def check_batches(
    adata: AnnData, batch_key: str | None, labels_key: str | None, what: str = "adata"
) -> None:
    """Refuse a ``batch_key`` that is the labels' column, missing from ``obs``, or with missing
    values (scvi-tools' own message for those does not say so)."""
    if batch_key is None:
        return
    check_key(batch_key, "batch_key")
    if batch_key == labels_key:
        msg = (
            f"batch_key and labels_key both name obs[{batch_key!r}]: batch_key is for the "
            "batches (samples, donors, technologies) the reference was measured in."
        )
        raise ValueError(msg)
    if batch_key not in adata.obs:
        msg = (
            f"batch_key={batch_key!r} is not a column of {what}.obs "
            f"(columns: {list(adata.obs.columns)})."
        )
        raise KeyError(msg)
    n_missing = int(adata.obs[batch_key].isna().sum())
    if n_missing:
        msg = (
            f"{what}.obs[{batch_key!r}] has {n_missing} missing values. Give those cells a "
            f"batch of their own (e.g. {what}.obs[{batch_key!r}] = "
            f"{what}.obs[{batch_key!r}].astype(str)) or pass batch_key=None."
        )
        raise ValueError(msg)
    sizes = adata.obs[batch_key].value_counts()
    tiny = sizes[(sizes > 0) & (sizes < MIN_CELLS_PER_TYPE)]
    if len(tiny):
        warnings.warn(
            f"{len(tiny)} batch(es) of {what}.obs[{batch_key!r}] have fewer than "
            f"{MIN_CELLS_PER_TYPE} cells (cells: {_listed(tiny)}). What is judged per batch "
            "(the input scale, the depth) rests on these few cells: merge them into the batch "
            "they were measured with if that is known.",
            UserWarning,
            stacklevel=2,
        )


def check_matrix(adata: AnnData, layer: str | None, input_scale: InputScale) -> str:
    """Scan every value of the registered matrix and resolve its scale."""
    X = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    scan_matrix(X, where)
    return resolve_input_scale(X, input_scale, where)


RNA_MODALITY_NAMES = ("rna", "RNA", "gex", "GEX", "Gene Expression")


def get_rna(data, what: str = "adata") -> AnnData:
    """The AnnData itself, or the RNA modality of a MuData."""
    if isinstance(data, AnnData):
        return data
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover - mudata is a dependency
        MuData = ()
    if isinstance(data, MuData):
        for name in RNA_MODALITY_NAMES:
            if name in data.mod:
                return data.mod[name]
        msg = (
            f"{what} is a MuData without an RNA modality (looked for {list(RNA_MODALITY_NAMES)}; "
            f"found {list(data.mod)}). Pass the modality itself, e.g. `{what}.mod['...']`."
        )
        raise ValueError(msg)
    msg = f"{what} must be an AnnData or a MuData, got {type(data).__name__}."
    raise TypeError(msg)
