"""Training a model for a query from a labeled reference: the private reference, the genes both
share, the reference's scale, and (with pretraining) the joint corpus."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from transanno_sc.data import GENE_NAME_COLUMNS, get_rna, log_factor

if TYPE_CHECKING:
    from collections.abc import Callable

    from transanno_sc.model import TransAnno

logger = logging.getLogger(__name__)


def _private_reference(
    reference: AnnData,
    labels_key: str,
    batch_key: str | None,
    layer: str | None,
    unlabeled_category: str = "Unknown",
) -> AnnData:
    """A light AnnData sharing the reference's matrix, so scvi-tools' keys stay off the user's.
    Its labels are checked here, so that messages name the reference (not ``adata``, which is
    the query in :func:`~transanno_sc.tl.transanno_annotate`)."""
    from transanno_sc.data import (
        check_batches,
        check_key,
        check_labels,
        check_shape_and_names,
        get_matrix,
        non_string_labels,
        string_labels,
    )

    check_shape_and_names(reference, "reference")
    try:
        X = get_matrix(reference, layer, "reference")
    except KeyError as err:
        msg = (
            f"{err.args[0]} `layer=` names the layer of both the query and the reference: "
            "store the reference's counts under the same name."
        )
        raise KeyError(msg) from None
    check_key(labels_key, "labels_key")
    if labels_key in reference.obs:
        check_batches(reference, batch_key, labels_key, "reference")
    cols = [c for c in (labels_key, batch_key) if c is not None]
    missing = [c for c in cols if c not in reference.obs]
    if missing:
        msg = (
            f"{missing[0]!r} is not a column of reference.obs "
            f"(columns: {list(reference.obs.columns)})."
        )
        raise KeyError(msg)
    obs = reference.obs[cols].copy()
    numbers = non_string_labels(obs[labels_key])
    if numbers:
        _refuse_measurement(numbers, obs[labels_key], labels_key)
        # cluster numbers as labels: named by their strings here (the user's column is kept)
        obs[labels_key] = string_labels(obs[labels_key])
    if isinstance(obs[labels_key].dtype, pd.CategoricalDtype):
        # a category without cells (left from subsetting) is no cell type to predict
        obs[labels_key] = obs[labels_key].cat.remove_unused_categories()
    # the gene-name columns stay: the query may name its genes as one of them does
    names = [c for c in GENE_NAME_COLUMNS if c in reference.var.columns]
    private = AnnData(X=X, obs=obs, var=reference.var[names].copy())
    # the warning points at the user's transanno_annotate call
    check_labels(private, labels_key, unlabeled_category, "reference", stacklevel=4)
    _warn_unlabeled(private.obs[labels_key], labels_key, unlabeled_category)
    return private


#: Share of the reference's cells marked unlabeled above which ``transanno_annotate`` warns.
UNLABELED_WARN_SHARE = 0.05


def _warn_unlabeled(labels: pd.Series, labels_key: str, unlabeled_category: str) -> None:
    """Warn where over :data:`UNLABELED_WARN_SHARE` of the reference's cells carry
    ``unlabeled_category``: they are not trained on, and a real cell type of that name (the
    default is ``"Unknown"``) would be silently left out."""
    n = int((labels.astype(str) == str(unlabeled_category)).sum())
    if n == 0 or n <= UNLABELED_WARN_SHARE * labels.size:
        return
    warnings.warn(
        f"{n} of the reference's {labels.size} cells ({n / labels.size:.0%}) are labelled "
        f"{unlabeled_category!r} in reference.obs[{labels_key!r}], the unlabeled_category: "
        "they are not learned as a cell type and no query cell can be called that. If "
        f"{unlabeled_category!r} is a cell type, pass another unlabeled_category (one that "
        "no cell carries, e.g. unlabeled_category='unlabeled').",
        UserWarning,
        stacklevel=5,  # the user's transanno_annotate call
    )


def _refuse_measurement(numbers: list, labels: pd.Series, labels_key: str) -> None:
    """Refuse a ``labels_key`` column of measurements (fractions, library sizes) rather than
    of cell types or cluster numbers: numbers with a fractional part, or more distinct
    numbers than :data:`MAX_NUMBER_LABELS` and than a quarter of the labelled cells."""
    numeric = [v for v in numbers if isinstance(v, (int, float, np.integer, np.floating))]
    fractional = [v for v in numeric if not float(v).is_integer()]
    many = len(numeric) > max(MAX_NUMBER_LABELS, labels.notna().sum() / 4)
    if fractional or many:
        example = fractional[0] if fractional else numeric[0]
        what = (
            "numbers with a fractional part" if fractional else f"{len(numeric)} distinct numbers"
        )
        msg = (
            f"reference.obs[{labels_key!r}] holds {what} (e.g. {example}): a measurement, not "
            "cell-type names or cluster numbers. Pass the column of cell types as labels_key."
        )
        raise ValueError(msg)


#: More distinct numeric labels than this (and than a quarter of the cells) read as a
#: measurement, not as cluster numbers.
MAX_NUMBER_LABELS = 100


#: Names (lower case, letters and digits only) of ``obs`` columns that usually hold the batch
#: (sample, donor, animal, library, study, technology); a name containing "batch" counts too.
BATCH_LIKE_NAMES = frozenset(
    {
        "batch", "sample", "sampleid", "samplename", "donor", "donorid", "individual",
        "patient", "patientid", "subject", "mouse", "mouseid", "animal", "animalid",
        "origident", "library", "libraryid", "dataset", "study", "tech", "technology",
        "assay", "protocol", "replicate", "channel",
    }
)  # fmt: skip
#: A column with at most this many values is taken for a batch column.
MAX_BATCH_LIKE_VALUES = 100


def _batch_like_columns(
    reference: AnnData, labels_key: str, unlabeled_category: str
) -> list[tuple[str, int]]:
    """Columns of ``reference.obs`` named like a batch column (:data:`BATCH_LIKE_NAMES`) with
    2 to :data:`MAX_BATCH_LIKE_VALUES` values, such that the batches would let
    ``n_top_genes="auto"`` choose the gene count: nearly every labelled type (the share the
    choice requires; ``unlabeled_category`` is none) occurs in at least two of them. Returns
    (name, number of values)."""
    from transanno_sc.model._gene_selection import MIN_VALIDATED_TYPES

    labels = reference.obs[labels_key]
    types = pd.factorize(labels.where(labels.astype(str) != unlabeled_category))[0]
    found = []
    for col in reference.obs.columns:
        key = "".join(ch for ch in str(col).lower() if ch.isalnum())
        if col == labels_key or not (key in BATCH_LIKE_NAMES or "batch" in key):
            continue
        batches, uniques = pd.factorize(reference.obs[col])
        if not 2 <= uniques.size <= MAX_BATCH_LIKE_VALUES:
            continue
        ok = (types >= 0) & (batches >= 0)
        pairs = np.unique(types[ok].astype(np.int64) * uniques.size + batches[ok])
        batches_per_type = np.bincount(pairs // uniques.size)
        batches_per_type = batches_per_type[batches_per_type > 0]
        if batches_per_type.size and (batches_per_type >= 2).mean() >= MIN_VALIDATED_TYPES:
            found.append((str(col), int(uniques.size)))
    return found


def _hint_batch_key(
    reference: AnnData,
    labels_key: str,
    unlabeled_category: str,
    batch_key: str | None,
    model_kwargs: dict | None,
) -> None:
    """Log (INFO) when no ``batch_key`` is given, the gene count is left to ``"auto"`` and
    ``reference.obs`` has a batch-like column that would let it be chosen by
    leave-one-batch-out. Without one, ``"auto"`` asks the query (the labels' round trip),
    which did about as well across samples (``benchmarks/README.md``, "A reference without
    batches"), so this is a note, not a warning."""
    model_kwargs = model_kwargs or {}
    if (
        batch_key is not None
        or model_kwargs.get("n_top_genes", "auto") != "auto"
        or model_kwargs.get("gene_vocabulary") is not None
        or labels_key not in reference.obs
    ):
        return
    found = _batch_like_columns(reference, labels_key, unlabeled_category)
    if not found:
        return
    listed = ", ".join(f"{name!r} ({n} values)" for name, n in found[:3])
    if len(found) > 3:
        listed += f" and {len(found) - 3} more"
    logger.info(
        "    No batch_key was given, but reference.obs has %s: the gene count "
        "(n_top_genes='auto') is chosen with adata (the labels' round trip reference -> adata "
        "-> reference). batch_key=%r chooses it by leave-one-batch-out instead, and matches "
        "depth and detects the value scale batch by batch.",
        listed,
        found[0][0],
    )


def _warn_empty_on_shared(
    private: AnnData, labels_key: str, unlabeled_category: str, n_shared: int
) -> None:
    """Warn, naming the reference and the shared genes, about labelled reference cells with
    no counts in the genes they share with the query (training leaves them out)."""
    from transanno_sc.data import empty_rows

    labelled = private.obs[labels_key].astype(str).to_numpy() != str(unlabeled_category)
    n_empty = int((empty_rows(private.X) & labelled).sum())
    if n_empty:
        warnings.warn(
            f"{n_empty} labelled reference cells have no counts in the {n_shared} genes the "
            "reference shares with adata; they are left out of training.",
            UserWarning,
            stacklevel=4,
        )


#: Label of the query cells in the private pretraining corpus (never a user's label).
_UNLABELED = "__transanno_query__"


#: Below this many genes shared by the reference and the query, training for the query is refused.
MIN_SHARED_GENES = 50


#: Fewer shared genes than this share of the smaller dataset's: warned about (see
#: :func:`_shared_genes`).
SUBSET_SHARE = 0.5


def _shared_genes(private: AnnData, query: AnnData) -> tuple[AnnData, AnnData, dict]:
    """The reference and the query on the genes both have (matched by name as the model
    matches them: exact, case-insensitive, version-less Ensembl), checked before training.
    The summary's ``query_columns`` are the query's shared genes (positions).

    The model trained for this query then chooses its vocabulary among these genes, and both
    sides are library-size normalized over the same genes, so a query measured on a smaller
    panel (a targeted or imaging-based assay) is not refused, nor scaled differently from the
    reference.
    """
    from transanno_sc.data import gene_name_options, match_shared_genes

    match, ref_names = match_shared_genes(query, private)
    query_cols, ref_cols = match.source, match.target
    info = {
        "n_reference_genes": int(private.n_vars),
        "n_query_genes": int(query.n_vars),
        "n_shared_genes": int(ref_cols.size),
        "reference_gene_names": ref_names,
        "query_gene_names": match.names,
    }
    if ref_names != "var_names":
        # the model's vocabulary is named as the query's genes are
        private.var_names = gene_name_options(private)[ref_names]
    if ref_cols.size < MIN_SHARED_GENES:
        example_ref = ", ".join(map(str, private.var_names[:3]))
        example_query = ", ".join(map(str, query.var_names[:3]))
        msg = (
            f"The reference and adata share only {ref_cols.size} genes (at least "
            f"{MIN_SHARED_GENES} are needed; reference genes e.g. {example_ref}; adata genes "
            f"e.g. {example_query}). Check the species and the gene naming convention "
            "(symbols vs Ensembl IDs) of both."
        )
        raise ValueError(msg)
    logger.info(
        "    %d genes shared by the reference (%d genes, named by its %s) and adata (%d genes, "
        "its %s): the model is trained on these.",
        ref_cols.size,
        private.n_vars,
        ref_names,
        query.n_vars,
        match.names,
    )
    if ref_cols.size < SUBSET_SHARE * min(private.n_vars, query.n_vars):
        # a panel inside the reference shares most of its genes; two datasets that each
        # share under half of theirs were usually cut to their own variable genes
        warnings.warn(
            f"The reference and adata share {ref_cols.size} genes: "
            f"{ref_cols.size / private.n_vars:.0%} of the reference's {private.n_vars} and "
            f"{ref_cols.size / query.n_vars:.0%} of adata's {query.n_vars}. The model can only "
            "use these. If either was cut to its own highly variable genes, pass it with all "
            "its genes (e.g. `adata.raw.to_adata()`, or the object before "
            "`adata[:, adata.var.highly_variable]`); otherwise check that both are of one "
            "species and name genes alike.",
            UserWarning,
            stacklevel=4,
        )
    if ref_cols.size < private.n_vars:
        private = private[:, np.sort(ref_cols)].copy()
    info["query_columns"] = np.sort(query_cols)
    if query_cols.size < query.n_vars:
        query = query[:, np.sort(query_cols)]
    return private, query, info


def _reference_scale(
    private: AnnData, batch_key: str | None, input_scale: str, argument: str = "input_scale"
) -> AnnData:
    """Detect the scale of the private reference batch by batch; where batches differ (log1p
    values next to counts, or log2(1+x) values next to log1p ones, e.g. studies merged from
    different sources), turn the log-normalized batches back into count-like values
    (``expm1`` in their base) on the private copy, so that every cell is normalized alike.
    ``argument``: the name ``input_scale`` came by (``"reference_input_scale"`` where it is
    the reference's own), in the messages.
    Returns the private reference, with ``uns["input_scale"]`` set (and, where batches
    differ, ``uns["batch_input_scales"]``: the scale detected in each)."""
    from transanno_sc.data import detect_input_scale, resolve_input_scale

    if input_scale == "auto" and batch_key is None:
        per_cell = _per_cell_scales(private)
        if per_cell is not None:
            return per_cell
    if input_scale != "auto" or batch_key is None:
        try:
            scale = resolve_input_scale(private.X, input_scale, "reference.X", argument=argument)
        except ValueError as e:
            if argument != "input_scale" or input_scale == "auto":
                raise
            msg = (
                f"{e} `input_scale=` applies to the reference too: where the reference's "
                "values are on another scale than adata's, pass `reference_input_scale='auto'` "
                "(or the reference's scale) as well."
            )
            raise ValueError(msg) from None
        private.uns["input_scale"] = scale
        return private
    batches = private.obs[batch_key].astype(str).to_numpy()
    scales = {
        b: detect_input_scale(private.X[batches == b], f"reference.X (batch {b!r})")
        for b in pd.unique(batches)
    }
    if len(set(scales.values())) == 1:
        scale = next(iter(scales.values()))
        logger.info("    reference.X holds %s values (detected in every batch).", scale)
        private.uns["input_scale"] = scale
        return private
    logged = {b: v for b, v in scales.items() if v != "counts"}
    logger.info(
        "    reference batches hold values of different scales (%s; the others count-like): "
        "the log-normalized batches are turned back into count-like values (expm1).",
        ", ".join(f"{b!r}: {v}" for b, v in sorted(logged.items())),
    )
    rows_by_scale = {
        scale: np.flatnonzero(np.isin(batches, [b for b, v in logged.items() if v == scale]))
        for scale in set(logged.values())
    }
    return _log_rows_as_counts(private, rows_by_scale, scales)


def _log_rows_as_counts(
    private: AnnData, rows_by_scale: dict[str, np.ndarray], record: dict
) -> AnnData:
    """A new private reference with the rows of each log scale turned back into count-like
    values (``expm1`` in its base), registered as counts; ``record`` (the scales found) goes
    to ``uns["batch_input_scales"]``."""
    from transanno_sc.data import expm1_rows

    X = sp.csr_matrix(private.X, dtype=np.float32, copy=True)
    for scale, rows in rows_by_scale.items():
        X[rows] = expm1_rows(X[rows], scale)
    out = AnnData(X=X, obs=private.obs, var=private.var)
    out.uns["input_scale"] = "counts"
    out.uns["batch_input_scales"] = record
    return out


def _merged_log_cells(X) -> tuple[np.ndarray, str] | None:
    """:func:`~transanno_sc.data.merged_log_rows` of every row of ``X``, read only where a
    sample of its rows looks merged already."""
    from transanno_sc.data import merged_log_rows, sampled_rows

    if merged_log_rows(sampled_rows(X)) is None:
        return None
    return merged_log_rows(X)


def _cells_record(n: int, rows: np.ndarray, scale: str) -> dict:
    """How many cells of a merged matrix held counts and how many ``scale`` values."""
    return {"cells of counts": int(n - rows.size), f"cells of {scale}": int(rows.size)}


def _per_cell_scales(private: AnnData) -> AnnData | None:
    """Without batches: a private reference merged from cells of counts and cells of
    log-normalized values (:func:`_merged_log_cells`) with its log cells turned back into
    count-like values, ``uns["batch_input_scales"]`` counting the cells of each scale;
    ``None`` for a reference of one scale."""
    found = _merged_log_cells(private.X)
    if found is None:
        return None
    rows, scale = found
    logger.info(
        "    reference.X mixes cells of counts (%d) and of %s values (%d) and has no batch_key: "
        "the %s cells are turned back into count-like values (expm1).",
        private.n_obs - rows.size,
        scale,
        rows.size,
        scale,
    )
    return _log_rows_as_counts(private, {scale: rows}, _cells_record(private.n_obs, rows, scale))


def query_read_as_counts(
    rna: AnnData, layer: str | None, input_scale: str
) -> tuple[AnnData, str | None, dict | None]:
    """The AnnData to read the query from, its layer, and how its cells were read: ``rna``
    itself (``None``), or, for an in-memory query merged from cells of counts and cells of
    log-normalized values (``input_scale="auto"``, :func:`_merged_log_cells`), a copy of its
    matrix with the log cells turned back into count-like values (``expm1`` in their base;
    the annotation is still written to ``rna``)."""
    from transanno_sc.data import expm1_rows, get_matrix

    if input_scale != "auto" or rna.isbacked:
        return rna, layer, None
    X = get_matrix(rna, layer)
    found = _merged_log_cells(X)
    if found is None:
        return rna, layer, None
    rows, scale = found
    logger.info(
        "    adata mixes cells of counts (%d) and of %s values (%d): the %s cells are read "
        "as count-like values (expm1).",
        rna.n_obs - rows.size,
        scale,
        rows.size,
        scale,
    )
    Xc = sp.csr_matrix(X, dtype=np.float32, copy=True)
    Xc[rows] = expm1_rows(Xc[rows], scale)
    read = AnnData(X=Xc, obs=pd.DataFrame(index=rna.obs_names.copy()), var=rna.var.copy())
    return read, None, _cells_record(rna.n_obs, rows, scale)


#: The reference's counts are thinned to the query's depth when the query's median counts per
#: cell (over the genes both share) are below this share of the reference's (a shallower
#: technology or run; the median over a whole dataset moves less with its cell types'
#: proportions than the types' own medians differ, 2x and more).
DEPTH_RATIO = 1 / 3
#: Cells of each side whose counts are compared (spread evenly over the matrix).
N_DEPTH_CELLS = 5000


def _integer_counts(rows) -> bool:
    v = rows.data if sp.issparse(rows) else np.asarray(rows).ravel()
    return bool(np.all(v == np.round(v)))


def _match_depth(
    private: AnnData,
    rna: AnnData,
    query_columns: np.ndarray,
    layer: str | None,
    input_scale: str,
    batch_key: str | None,
    random_state: int | None,
) -> tuple[AnnData, dict]:
    """Thin the private reference's counts to the query's depth where the query is much
    shallower (another technology, a shallower run, an imaging panel's few transcripts).

    A model fitted on deep cells reads a shallow cell's missing genes and inflated normalized
    values as another expression profile; trained on the same cells thinned to the query's
    depth (binomial thinning of each count, the sampling a shallower run makes) it sees what
    the query looks like. Applied when both sides hold integer counts, batch by batch of the
    reference (``batch_key``; a reference merged from a deep and a shallow study keeps its
    shallow part as it is): a batch whose median counts per cell over the shared genes are
    over 1 / :data:`DEPTH_RATIO` times the query's is thinned by the ratio of the medians.
    Returns the (new) private reference and the summary for ``uns``.
    """
    from transanno_sc.data import get_matrix, iter_row_chunks, sampled_rows, scale_of_rows

    q_rows = sampled_rows(get_matrix(rna, layer), N_DEPTH_CELLS)
    query_scale = scale_of_rows(q_rows, "adata") if input_scale == "auto" else input_scale
    if private.uns["input_scale"] != "counts" or query_scale != "counts":
        return private, {}
    q_rows = sp.csr_matrix(q_rows)[:, query_columns]
    r_rows = sampled_rows(private.X, N_DEPTH_CELLS)
    if not (_integer_counts(q_rows) and _integer_counts(r_rows)):
        return private, {}
    q_depth = float(np.median(np.asarray(q_rows.sum(1)).ravel()))
    info = {
        "query_median_counts": q_depth,
        "reference_median_counts": float(np.median(np.asarray(r_rows.sum(1)).ravel())),
        "reference_thinned_to": 1.0,
    }
    batches = (
        private.obs[batch_key].astype(str).to_numpy()
        if batch_key is not None
        else np.zeros(private.n_obs, dtype=np.int64)
    )
    factor = np.ones(private.n_obs)
    thinned = {}
    for b in pd.unique(batches):
        cells = np.flatnonzero(batches == b)
        spread = np.linspace(0, cells.size - 1, min(cells.size, N_DEPTH_CELLS))
        pick = np.unique(cells[spread.astype(np.int64)])
        rows = next(iter_row_chunks(private.X, chunk_size=pick.size, indices=pick))[1]
        depth = float(np.median(np.asarray(rows.sum(1)).ravel()))
        if depth > 0 and q_depth < DEPTH_RATIO * depth:
            factor[cells] = q_depth / depth
            thinned[b] = (depth, q_depth / depth)
    if not thinned:
        return private, info
    rng = np.random.default_rng(0 if random_state is None else int(random_state))
    X = sp.csr_matrix(private.X, dtype=np.float32, copy=True)
    X.data = rng.binomial(X.data.astype(np.int64), np.repeat(factor, np.diff(X.indptr)))
    X.data = X.data.astype(np.float32)
    X.eliminate_zeros()
    keep = np.diff(X.indptr) > 0
    logger.info(
        "    adata's median counts per cell are %.0f over the shared genes: the reference's "
        "counts are thinned to that depth for training (%s)%s.",
        q_depth,
        ", ".join(
            (f"batch {b!r}: " if batch_key is not None else "") + f"median {d:.0f}, kept {f:.2f}"
            for b, (d, f) in thinned.items()
        ),
        ""
        if keep.all()
        else f"; {int((~keep).sum())} reference cells left without counts are not used",
    )
    out = AnnData(X=X, obs=private.obs, var=private.var, uns=dict(private.uns))
    if not keep.all():
        out = out[keep].copy()
    # the share of the reference's counts kept, over its cells (the one factor for one batch)
    info["reference_thinned_to"] = float(factor.mean())
    return out, info


def _on_reference_genes(query: AnnData, Xq, var_names: pd.Index, rows, transform=None):
    """The rows of the query's matrix ``Xq`` (all, or the sorted positions ``rows``) on the
    reference's genes ``var_names`` (the query's genes matched to them by name, the rest 0),
    as float32 CSR, read chunk by chunk; ``transform``: applied to each chunk (CSR)."""
    from transanno_sc.data import iter_row_chunks, match_adata_genes

    match = match_adata_genes(query, var_names)
    blocks = []
    for _, chunk in iter_row_chunks(Xq, indices=rows):
        chunk = sp.csr_matrix(chunk)[:, match.source]
        chunk = (transform(chunk) if transform is not None else chunk).tocoo()
        blocks.append(
            sp.csr_matrix(
                (chunk.data, (chunk.row, match.target[chunk.col])),
                shape=(chunk.shape[0], len(var_names)),
                dtype=np.float32,
            )
        )
    return sp.vstack(blocks).tocsr()


#: Query cells (at most) that ``n_top_genes="auto"`` reads for a reference without batches.
_N_QUERY_CELLS = 5_000


def _query_sample(
    private: AnnData, query: AnnData, layer: str | None, input_scale: str, seed: int | None
) -> sp.csr_matrix:
    """log1p CP10k values of (at most :data:`_N_QUERY_CELLS` random) query cells on the
    private reference's genes, normalized over those genes (log1p values are turned back
    with ``expm1`` first, whatever total they were normalized to)."""
    from transanno_sc.data import get_matrix, resolve_input_scale

    from ._query_context import _log_normalize

    Xq = get_matrix(query, layer)
    scale = resolve_input_scale(Xq, input_scale, "adata", quiet=True)  # logged when predicting
    rng = np.random.default_rng(seed)
    rows = (
        np.sort(rng.choice(query.n_obs, _N_QUERY_CELLS, replace=False))
        if query.n_obs > _N_QUERY_CELLS
        else None
    )
    return _log_normalize(_on_reference_genes(query, Xq, private.var_names, rows), scale)


def _reference_vocabulary(
    private: AnnData,
    model_kwargs: dict,
    labels_key: str,
    batch_key: str | None,
    unlabeled_category: str,
    query: Callable | None = None,
) -> tuple[list[str], dict | None]:
    """The gene vocabulary (and how ``n_top_genes="auto"`` chose its count) the model would
    choose from the reference cells (``query``: see
    :func:`~transanno_sc.model.choose_vocabulary`)."""
    import inspect

    from scvi import settings

    from transanno_sc.model import TransAnno, choose_vocabulary

    scale = private.uns["input_scale"]
    default = inspect.signature(TransAnno).parameters["n_top_genes"].default
    labels = private.obs[labels_key].astype(str)
    types = sorted(set(labels) - {unlabeled_category})
    codes = pd.Categorical(labels, categories=types).codes.astype(np.int64)  # unlabeled: -1
    batches = (
        pd.Categorical(private.obs[batch_key].astype(str)).codes
        if batch_key is not None
        else np.zeros(private.n_obs, dtype=np.int64)
    )
    return choose_vocabulary(
        private.X,
        private.var_names,
        model_kwargs.pop("n_top_genes", default),
        scale == "counts",
        codes,
        np.asarray(batches),
        settings.seed,
        query=query,
        log_factor=log_factor(scale) or 1.0,
    )


def _with_query_cells(
    private: AnnData,
    query: AnnData,
    layer: str | None,
    labels_key: str,
    unlabeled_category: str,
    input_scale: str,
) -> AnnData:
    """Reference cells plus the query's, on the reference's genes, query labels unknown.

    Where the two sides differ in scale (log1p values and count-like values, or log1p values
    of different bases), each log side is turned back into count-like values (``expm1`` in
    its base), so the corpus has one scale.
    """
    from transanno_sc.data import expm1_rows, get_matrix, resolve_input_scale

    Xq = get_matrix(query, layer)
    ref_scale = private.uns["input_scale"]
    query_scale = resolve_input_scale(Xq, input_scale, "adata", quiet=True)
    if ref_scale != query_scale and ref_scale != "counts":
        private = AnnData(X=expm1_rows(private.X, ref_scale), obs=private.obs, var=private.var)
        ref_scale = "counts"
    query_X = _on_reference_genes(
        query,
        Xq,
        private.var_names,
        None,
        (lambda rows: expm1_rows(rows, query_scale)) if query_scale != ref_scale else None,
    )
    ref_labels = private.obs[labels_key].astype(str).replace({unlabeled_category: _UNLABELED})
    labels = pd.Categorical([*ref_labels, *([_UNLABELED] * query.n_obs)])
    obs = pd.DataFrame(
        {labels_key: labels},
        index=pd.Index(
            [f"ref-{i}" for i in range(private.n_obs)] + [f"query-{i}" for i in range(query.n_obs)]
        ),
    )
    for col in private.obs.columns:
        if col != labels_key:
            obs[col] = pd.Categorical([*private.obs[col].astype(str), *(["query"] * query.n_obs)])
    X = sp.vstack([sp.csr_matrix(private.X, dtype=np.float32), query_X]).tocsr()
    corpus = AnnData(X=X, obs=obs, var=pd.DataFrame(index=private.var_names.copy()))
    corpus.uns["input_scale"] = ref_scale
    return corpus


def check_train_kwargs(train_kwargs: dict) -> None:
    """Refuse a training argument that neither :meth:`TransAnno.train` nor scvi-tools' and
    Lightning's ``Trainer`` take (a misspelling would otherwise fail once the data is set up,
    from inside Lightning), naming the closest valid ones."""
    import lightning.pytorch as pl
    from scvi.train import Trainer

    from transanno_sc.model import TransAnno

    _refuse_unknown(
        train_kwargs,
        (TransAnno.train, Trainer.__init__, pl.Trainer.__init__),
        "Unknown training arguments {unknown} (extra keyword arguments of transanno_annotate go "
        "to TransAnno.train and Lightning's Trainer)",
    )


def check_model_kwargs(model_kwargs: dict | None) -> None:
    """Refuse a ``model_kwargs`` key that :class:`TransAnno` does not take (it failed once the
    reference was set up), naming the closest valid ones."""
    from transanno_sc.model import TransAnno

    _refuse_unknown(
        model_kwargs or {},
        (TransAnno.__init__,),
        "Unknown model_kwargs {unknown} (they go to TransAnno(...))",
        exclude={"adata"},
    )


def _refuse_unknown(kwargs: dict, fns, message: str, exclude: frozenset = frozenset()) -> None:
    """A ``TypeError`` (``message`` with ``{unknown}``) for the keys of ``kwargs`` that none of
    ``fns`` names as a parameter, with "did you mean" hints."""
    import difflib
    import inspect

    known = set()
    for fn in fns:
        known |= {
            name
            for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in {"self", *exclude}
        }
    unknown = sorted(set(kwargs) - known)
    if unknown:
        close = {u: difflib.get_close_matches(u, sorted(known), n=2) for u in unknown}
        hints = "; ".join(
            f"{u!r}: did you mean {' or '.join(map(repr, c))}?" for u, c in close.items() if c
        )
        msg = message.format(unknown=unknown) + (f". {hints}" if hints else ".")
        raise TypeError(msg)


@contextmanager
def _seeded(random_state: int | None):
    """Seed the training with ``random_state`` (``scvi.settings.seed``, which seeds Python's,
    NumPy's and torch's global generators), then give the caller back its seed and its
    generators' states: a notebook's own random draws after the call are as they would have
    been without it."""
    if random_state is None:
        yield
        return
    import os
    import random

    import torch
    from scvi import settings

    previous_seed = settings.seed
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    env = os.environ.get("PL_GLOBAL_SEED")
    settings.seed = int(random_state)
    try:
        yield
    finally:
        settings.seed = previous_seed
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if env is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = env


def train_on_reference(
    rna: AnnData,
    reference: AnnData,
    *,
    labels_key: str,
    unlabeled_category: str,
    batch_key: str | None,
    layer: str | None,
    input_scale: str,
    random_state: int | None,
    save_model: str | None,
    model_kwargs: dict | None,
    pretrain: bool,
    pretrain_kwargs: dict | None,
    train_kwargs: dict,
    match_depth: bool = True,
    reference_input_scale: str | None = None,
) -> tuple[TransAnno, AnnData, dict]:
    """Train a model on ``reference`` for the query ``rna``, on the genes both have
    (``reference_input_scale``: the reference's scale where it is not ``input_scale``).

    Returns the model, the query restricted to the shared genes (a view) and the gene-sharing
    summary for ``uns``.
    """
    from functools import partial

    from scvi import settings

    from transanno_sc.model import TransAnno

    if not isinstance(reference, AnnData):
        reference = get_rna(reference, "reference")
    private = _private_reference(reference, labels_key, batch_key, layer, unlabeled_category)
    _hint_batch_key(reference, labels_key, unlabeled_category, batch_key, model_kwargs)
    private, query, shared = _shared_genes(private, rna)
    _warn_empty_on_shared(private, labels_key, unlabeled_category, shared["n_shared_genes"])
    if reference_input_scale is None:
        private = _reference_scale(private, batch_key, input_scale)
    else:
        private = _reference_scale(
            private, batch_key, reference_input_scale, "reference_input_scale"
        )
    shared["reference_input_scale"] = private.uns.get(
        "batch_input_scales", private.uns["input_scale"]
    )
    query_columns = shared.pop("query_columns")
    if match_depth:
        private, depth = _match_depth(
            private, rna, query_columns, layer, input_scale, batch_key, random_state
        )
        shared.update(depth)
    with _seeded(random_state), warnings.catch_warnings():
        # warned about above, naming the reference and the shared genes
        warnings.filterwarnings("ignore", message=".*labeled cells have no counts at all")
        model_kwargs = dict(model_kwargs or {})
        selection = None
        auto = model_kwargs.get("n_top_genes", "auto") == "auto"
        if "gene_vocabulary" not in model_kwargs and (pretrain or auto):
            # chosen from the reference's cells (with pretraining too); "auto" without
            # batches to hold out asks the query which gene count carries the labels over
            model_kwargs["gene_vocabulary"], selection = _reference_vocabulary(
                private,
                model_kwargs,
                labels_key,
                batch_key,
                unlabeled_category,
                query=partial(_query_sample, private, query, layer, input_scale, settings.seed)
                if auto
                else None,
            )
        if pretrain:
            private = _with_query_cells(
                private, query, layer, labels_key, unlabeled_category, input_scale
            )
        with warnings.catch_warnings():
            # the reference's labels and batches were checked (and warned about) by name above
            warnings.filterwarnings("ignore", message=".*fewer than .* labelled cells")
            warnings.filterwarnings("ignore", message=r".*batch\(es\) of adata.obs.*fewer than")
            TransAnno.setup_anndata(
                private,
                labels_key=labels_key,
                batch_key=batch_key,
                unlabeled_category=_UNLABELED if pretrain else unlabeled_category,
                input_scale=private.uns["input_scale"],
            )
        model = TransAnno(private, **model_kwargs)
        if selection is not None:
            model.gene_count_selection_ = selection
        if pretrain:
            pretrain_kwargs = dict(pretrain_kwargs or {})
            for key in ("accelerator", "devices", "enable_progress_bar"):
                if key in train_kwargs:
                    pretrain_kwargs.setdefault(key, train_kwargs[key])
            model.pretrain(**pretrain_kwargs)
        model.train(**train_kwargs)
    if save_model is not None:
        model.save(save_model, overwrite=True)
    return model, query, shared
