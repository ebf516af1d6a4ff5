"""``tl.transanno_annotate``: label transfer in one call, scanpy style."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData, ImplicitModificationWarning

from transanno_sc._constants import NOVELTY_ALPHA, UNASSIGNED, UNASSIGNED_REASONS
from transanno_sc.data import get_rna
from transanno_sc.model.base import confidence_score

from . import _query_context as qc
from ._reference import (
    check_model_kwargs,
    check_train_kwargs,
    query_read_as_counts,
    train_on_reference,
)
from ._utils import versions

if TYPE_CHECKING:
    from mudata import MuData

    from transanno_sc.model import TransAnno
    from transanno_sc.model.base import ForwardOutputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _AnnotationKeys:
    label: str
    confidence: str
    embedding: str
    probabilities: str
    uns: str

    @classmethod
    def from_key_added(cls, key_added: str) -> _AnnotationKeys:
        if not isinstance(key_added, str) or not key_added or "/" in key_added:
            msg = (
                f"key_added must be a non-empty string without '/' (h5ad and zarr files cannot "
                f"store '/' in key names), got {key_added!r}."
            )
            raise ValueError(msg)
        return cls(
            label=f"{key_added}_label",
            confidence=f"{key_added}_confidence",
            embedding=f"X_{key_added}",
            probabilities=f"{key_added}_probabilities",
            uns=key_added,
        )


def transanno_annotate(
    adata: AnnData | MuData,
    model: TransAnno | None = None,
    *,
    reference: AnnData | None = None,
    labels_key: str | None = None,
    unlabeled_category: str = "Unknown",
    batch_key: str | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    unassigned_threshold: float | None = 0.5,
    novelty: bool = True,
    query_context: bool = True,
    key_added: str = "transanno",
    copy: bool = False,
    save_model: str | None = None,
    model_kwargs: dict | None = None,
    pretrain: bool = False,
    pretrain_kwargs: dict | None = None,
    batch_size: int | None = None,
    input_scale: str = "auto",
    reference_input_scale: str | None = None,
    random_state: int | None = 0,
    match_depth: bool = True,
    **train_kwargs,
) -> AnnData | MuData | None:
    """Annotate cell types with a TransAnno model :cite:p:`Vaswani2017`.

    Either pass a trained ``model``, or a labeled ``reference`` and ``labels_key``: a model is
    then trained on the reference (on a private object: nothing is added to ``reference``) and
    applied to ``adata``. Genes are matched by name, so ``adata`` may have another gene set or
    order than the reference; a model trained here uses only the genes both have (so a query
    on a smaller panel works). Where ``var_names`` do not match (Ensembl IDs on one side,
    symbols on the other), a gene-name column of ``var`` such as ``feature_name``,
    ``gene_ids`` or Bioconductor's ``Symbol`` is used
    (:func:`~transanno_sc.data.match_adata_genes`). Both may hold raw counts, other
    count-like values (TPM, CPM, expected counts) or log1p-normalized values.

    Parameters
    ----------
    adata
        The cells to annotate: an :class:`~anndata.AnnData`, or a :class:`~mudata.MuData` whose
        RNA modality (``"rna"``, ``"RNA"`` or ``"gex"``) is annotated. A view (``adata[mask]``)
        is annotated as an AnnData of its own, with a warning: the AnnData it was taken from
        is not changed.
    model
        A trained :class:`~transanno_sc.model.TransAnno`.
    reference
        Labeled reference cells to train a model on (when ``model`` is ``None``).
    labels_key
        Column of ``reference.obs`` with the cell types. Labels that are not strings (cluster
        numbers) are used as their strings (``3`` -> ``"3"``), and categories without cells
        are no cell types; ``reference`` itself is not changed.
    unlabeled_category
        Value of ``reference.obs[labels_key]`` marking reference cells without a label (not
        trained on; used by ``pretrain``).
    batch_key
        Column of ``reference.obs`` with the batch (sample, donor, animal). With several
        batches the default ``n_top_genes="auto"`` chooses the number of genes by
        leave-one-batch-out validation (see :class:`~transanno_sc.model.TransAnno`).
        Without batches (or when most types live in one batch) it chooses with ``adata``:
        the count of 2,000 / 4,000 / 8,000 whose labels survive the round trip reference ->
        ``adata`` -> reference best (logistic regressions; a larger count must raise the
        round trip's macro-F1 by 0.01 and cut its error by a quarter). Depth matching and scale
        detection also work batch by batch. Without ``batch_key``, an INFO line names the
        columns of ``reference.obs`` that look like batches (``batch``, ``sample``,
        ``donor``, ``library``, ...) and share the types.
    layer
        Layer holding the expression in both ``reference`` and ``adata``; ``adata.X`` if
        ``None``.
    use_raw
        Read the expression of ``adata`` and ``reference`` from their ``.raw`` (as scanpy's
        functions take it). ``None`` (default): for each of the two that has a ``.raw`` and no
        ``layer`` is given, where its ``X`` holds scaled values (negative ones, after
        :func:`scanpy.pp.scale`) or fewer genes than ``.raw`` (subset to highly variable
        genes), the state the scanpy tutorial leaves an object in. The annotation is written
        to ``adata`` itself either way; ``uns[key_added]['params']['use_raw']`` records
        whether ``adata.raw`` was read.
    unassigned_threshold
        Cells whose confidence is below this are labeled ``"Unassigned"``; ``None`` turns this
        off. The default 0.5 is TransAnno-Net's.
    novelty
        Lower the confidence of cells unlike every reference cell (the novelty score of
        :meth:`~transanno_sc.model.TransAnno.predict_confidence`), so that cells of a type the
        reference never contained come out ``"Unassigned"``. ``False``: the confidence is the
        calibrated probability alone.
    query_context
        With ``novelty``, refine each cell's confidence with the query's own structure
        (queries of at least 50 cells; over 100,000 cells or backed, read in chunks, with the
        PCA and clusters fitted on 50,000 sampled cells and the neighbours searched within
        parts of about 25,000 cells): a cell's confidence is raised to its query
        neighbourhood's mean (a known cell unsure alone among confident cells like it keeps its
        label), and capped where most of its query cluster's marker genes are not detected by
        the reference cells of its predicted type (a type the reference lacks, called as its
        nearest known type; below one half where over half of the markers are such). Cells
        of clusters whose markers the reference cells of their type do detect (at most a
        quarter foreign) are judged novel against the query's other cells called that type,
        not only against the query as a whole: a known type in a state or tissue the
        reference lacks (lung neutrophils against marrow granulocytes) is not left
        ``"Unassigned"`` as a block. A cluster the classifier is undecided on (median
        probability of its type under 2/3) while another cluster called that type is decided
        (at least 8 times the odds) is taken for a type the reference lacks: its cells called
        that type with under 8 : 1 odds are capped under one half, and so are its cells called
        another type on which they are undecided too (a new type split between two known
        ones). The cell-level confidence of
        :meth:`~transanno_sc.model.TransAnno.predict_confidence` does none of this. ``False``:
        cell by cell. A query of one population (over 90 % of its cells called one type: a
        sorted or pre-gated sample) has no other types to take markers against: its clusters'
        markers count only in their excess over the rest of the query's detection, so that
        parts of a known type do not look foreign, and a type the reference lacks is seldom
        caught. A ``UserWarning`` says so (with the count of cells capped as foreign).
    key_added
        Prefix of the keys written to ``adata``.
    copy
        Return an annotated copy instead of writing to ``adata`` (an in-memory copy where
        ``adata`` is backed).
    save_model
        Folder to save the model trained inside this call to. A model saved there before is
        replaced (so a notebook can be re-run); other files in the folder are left alone.
    model_kwargs
        Passed to :class:`~transanno_sc.model.TransAnno` when a model is trained here.
    pretrain
        Before training on ``reference``, pretrain the backbone self-supervised
        (:meth:`~transanno_sc.model.TransAnno.pretrain`) on the reference and ``adata``'s cells
        together (``adata``'s genes matched to the reference's by name; its labels, if any,
        are never read). The gene vocabulary still comes from the reference alone.
    pretrain_kwargs
        Passed to :meth:`~transanno_sc.model.TransAnno.pretrain` (``max_epochs``,
        ``mask_prob``, ...); ``accelerator``, ``devices`` and ``enable_progress_bar`` default
        to those of the training.
    batch_size
        Cells per forward pass when predicting.
    input_scale
        What the expression values are: ``"auto"`` (detected, and logged), ``"counts"``
        (raw counts or any other count-like values: TPM, CPM, expected counts; each cell is
        normalized to 10,000 and log1p-transformed) or ``"log1p"`` (log1p of
        library-size-normalized values, to any total). The base of log values is detected
        too: log2(TPM + 1) or log2(CPM + 1) tables are read as the count-like values they came
        from (``"log2(1+x)"``, ``"log10(1+x)"`` force a base). Applies to ``reference`` and
        ``adata``; only needed when the detection is wrong. The scales found are in
        ``uns[key_added]["gene_overlap"]`` (``input_scale``: the query's;
        ``reference_input_scale``: the reference's, per batch where its batches differ). With
        ``"auto"``, a matrix merged from cells of counts and cells of log values (each at
        least 5 % of the cells) is read cell by cell: the log cells are turned back into
        count-like values (the query from a copy; ``input_scale_per_cell`` counts them).
    reference_input_scale
        What ``reference``'s values are, where they are on another scale than ``adata``'s
        and ``input_scale`` is not ``"auto"`` (a log2(TPM + 1) query against a reference of
        counts: ``input_scale="log2(1+x)", reference_input_scale="auto"``). Takes the values
        of ``input_scale``; ``None`` (default): ``input_scale`` applies to both.
    random_state
        Seed of the training (weights, data splits, subsamples), as ``random_state`` in
        scanpy's tools: the same call gives the same result. ``None``: scvi-tools'
        ``scvi.settings.seed`` is left as it is. Python's, NumPy's and torch's global
        generators are given back in the state they were in.
    match_depth
        When a model is trained from ``reference`` and both hold integer counts, but the
        query's median counts per cell (over the genes both share) are under a third of the
        reference's (a shallower technology or run), train on the reference's counts thinned
        to the query's depth (binomial thinning; with ``batch_key`` each reference batch is
        compared with the query on its own; recorded in ``uns[key_added]["gene_overlap"]`` as
        ``reference_thinned_to``). ``False``: train on the counts as they are.
    **train_kwargs
        Passed to :meth:`~transanno_sc.model.TransAnno.train` (``max_epochs``, ``accelerator``,
        ``devices``, ...).

    Returns
    -------
    Returns `None` if `copy=False`, else returns the annotated copy of `adata`.
    Sets the following fields (on the RNA modality of a MuData):

    `.obs['{key_added}_label']` : :class:`pandas.Categorical`
        Predicted cell type, or ``"Unassigned"``.
    `.obs['{key_added}_confidence']` : :class:`numpy.ndarray` (dtype `float`)
        Confidence in the predicted type, in [0, 1], higher is more confident: the calibrated
        probability of the type times the cell's typicality (see
        :meth:`~transanno_sc.model.TransAnno.predict_confidence`), refined by
        ``query_context``. This is the score that ``unassigned_threshold`` thresholds.
    `.obsm['X_{key_added}']` : :class:`numpy.ndarray` (dtype `float32`)
        Cell embedding, for :func:`scanpy.pp.neighbors` with ``use_rep``.
    `.obsm['{key_added}_probabilities']` : :class:`pandas.DataFrame`
        Calibrated probability of every reference cell type, in the order of
        ``uns['{key_added}']['classes']``. The columns are named by the types, except that a
        ``"/"`` in a name becomes ``"_"`` (``"NK/ILC"`` -> ``"NK_ILC"``): ``.h5ad`` and
        ``.zarr`` files cannot store column names with ``"/"``. The labels and ``classes``
        keep the names as they are.
    `.uns['{key_added}']` : :class:`dict`
        ``params``, ``classes``, ``gene_overlap`` (with ``n_shared_genes`` when a model was
        trained here), ``calibration`` (temperature, the validation expected calibration
        error before and after, and ``novelty_shift``, the factor this query's novelty
        distances were divided by), ``query_context`` (its clusters whose markers are foreign
        to their predicted type, with ``n_cells_kept``, their cells in a part whose own
        markers are native to its type and left uncapped; in ``undecided_clusters`` the
        undecided clusters' groups of cells called one type, their type, median and decided
        probabilities and their cells capped under one half; in ``state_shift`` the types
        whose cells were judged against the query's cells of their type (or of their type in
        their cluster), with the numbers of cells whose novelty p-value that raised;
        ``one_population``: over 90 % of the query called one type, a sorted population, whose
        clusters' markers then count only in their excess over the rest of the query),
        ``unassigned`` (the number of ``"Unassigned"`` cells per reason, each cell under the
        first that applies: ``no_expression``, no expressed gene of the model;
        ``foreign_markers`` and ``undecided_cluster``, capped by the query context;
        ``unlike_reference``, a probability of the predicted type at the threshold or above
        that the novelty typicality took under it, a cell unlike the reference cells of its
        type; ``unsure_between_types``, a probability under the threshold; also logged) and
        ``versions``. ``params`` stores ``-1.0`` for an
        ``unassigned_threshold`` of ``None`` and ``""`` for no ``labels_key``, so that the
        AnnData can be written to ``.h5ad``.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> ref = adata[adata.obs["condition"] == "healthy"].copy()
    >>> query = adata[adata.obs["condition"] == "tumor"].copy()
    >>> ta.tl.transanno_annotate(query, reference=ref, labels_key="cell_type", max_epochs=5)
    >>> query.obs["transanno_label"].value_counts()  # doctest: +SKIP
    """
    from transanno_sc.model import TransAnno

    start = time.perf_counter()
    logger.info("annotating cell types with TransAnno")
    keys = _AnnotationKeys.from_key_added(key_added)
    rna = get_rna(adata, "adata")
    if model is None:
        if reference is None or labels_key is None:
            msg = (
                "Pass a trained `model=`, or a labeled `reference=` together with `labels_key=` "
                "to train one."
            )
            raise ValueError(msg)
    elif not isinstance(model, TransAnno):
        msg = f"model must be a transanno_sc.model.TransAnno, got {type(model).__name__}."
        raise TypeError(msg)
    elif reference is not None:
        msg = (
            "Pass either a trained `model=` or a `reference=` to train one, not both (the "
            "model would be used and the reference ignored)."
        )
        raise ValueError(msg)
    _refuse_backed_view(rna)
    if rna.is_view and not copy:
        _warn_view()
    # where the expression is read from: X (or the layer), or .raw (the annotation is still
    # written to rna)
    source = _expression_source(rna, layer, use_raw=use_raw, what="adata")
    used_raw = source is not rna
    if reference is not None:
        reference = _expression_source(
            get_rna(reference, "reference"), layer, use_raw=use_raw, what="reference"
        )
    if model is None:
        # what the prediction would refuse, refused before training (a trained model's
        # prediction checks the same before computing)
        _check_query(source, layer, input_scale)
        check_train_kwargs(train_kwargs)
        check_model_kwargs(model_kwargs)
        if save_model is not None:
            _check_save_path(save_model)
    if unassigned_threshold is not None and not 0.0 <= unassigned_threshold <= 1.0:
        msg = f"unassigned_threshold must be in [0, 1] or None, got {unassigned_threshold}."
        raise ValueError(msg)

    shared = None
    # a query merged from cells of counts and cells of log values is read from a copy in
    # which the log cells are counts again; the annotation is written to rna all the same
    read, read_layer, per_cell = query_read_as_counts(source, layer, input_scale)
    query = read
    if model is None:
        model, query, shared = train_on_reference(
            read,
            reference,
            labels_key=labels_key,
            unlabeled_category=unlabeled_category,
            batch_key=batch_key,
            layer=read_layer,
            input_scale=input_scale,
            random_state=random_state,
            save_model=save_model,
            model_kwargs=model_kwargs,
            pretrain=pretrain,
            pretrain_kwargs=pretrain_kwargs,
            train_kwargs=train_kwargs,
            match_depth=match_depth,
            reference_input_scale=reference_input_scale,
        )
    elif train_kwargs or model_kwargs or reference_input_scale is not None:
        given = sorted(train_kwargs) + sorted(model_kwargs or {})
        if reference_input_scale is not None:
            given.append("reference_input_scale")
        msg = (
            f"Training arguments {given} were given with a trained `model=`; they only apply "
            "when a model is trained from `reference=`."
        )
        raise TypeError(msg)

    # the one friend call of the model: a single pass gives labels, confidence and embedding
    out = model._forward(query, batch_size=batch_size, layer=read_layer, input_scale=input_scale)
    if per_cell is not None:
        out.overlap["input_scale_per_cell"] = per_cell
    if copy:
        # a backed AnnData cannot be copied without a new file: its copy is an in-memory one
        backed = isinstance(adata, AnnData) and adata.isbacked
        adata = adata.to_memory() if backed else adata.copy()
        rna = get_rna(adata, "adata")
    params = {
        "unassigned_threshold": -1.0 if unassigned_threshold is None else unassigned_threshold,
        "layer": "X" if layer is None else layer,
        "use_raw": used_raw,
        "labels_key": labels_key if labels_key is not None else "",
        "novelty": novelty,
        "novelty_alpha": NOVELTY_ALPHA,
        "query_context": bool(query_context and novelty),
        "input_scale": input_scale,
        # the reference's, as asked ("" where no model was trained here)
        "reference_input_scale": ""
        if shared is None
        else (input_scale if reference_input_scale is None else reference_input_scale),
        "random_state": -1 if random_state is None else int(random_state),
        "match_depth": bool(match_depth),
        "model": model._model_summary_string,
    }
    confidence = confidence_score(out, novelty=novelty)
    context = None
    if query_context and novelty:
        context = _context(read, model, out, confidence, read_layer, random_state)
        if context is not None:
            confidence = context.confidence()
            confidence[out.n_expressed == 0] = 0.0
            _warn_one_population(context, out.probs.argmax(1), list(model.classes_))
    with warnings.catch_warnings():
        # a view becomes an AnnData of its own at the first write, as _warn_view said
        warnings.filterwarnings("ignore", category=ImplicitModificationWarning)
        _write_annotation(
            rna, keys, model, out, confidence, unassigned_threshold, params, shared, context
        )
    _warn_weak_evidence(rna.uns[keys.uns]["unassigned"], out, unassigned_threshold, keys)
    logger.info(
        "    finished (%.1f s): added\n"
        "    '%s', '%s' (adata.obs)\n    '%s', '%s' (adata.obsm)\n    '%s' (adata.uns)",
        time.perf_counter() - start,
        keys.label,
        keys.confidence,
        keys.embedding,
        keys.probabilities,
        keys.uns,
    )
    return adata if copy else None


def _expression_source(
    rna: AnnData, layer: str | None, *, use_raw: bool | None, what: str
) -> AnnData:
    """``rna``, or an AnnData of ``rna.raw``'s expression and genes with ``rna``'s cells (and
    ``obs``, which the reference's labels and batches are read from): see ``use_raw``."""
    if use_raw is None:
        use_raw = layer is None and rna.raw is not None and not rna.isbacked and _raw_is_wanted(rna)
    if not use_raw:
        return rna
    if rna.isbacked:
        msg = f"use_raw=True with a backed {what}: load it into memory (`.to_memory()`) first."
        raise ValueError(msg)
    if layer is not None:
        msg = f"Pass either use_raw=True or layer={layer!r}, not both."
        raise ValueError(msg)
    if rna.raw is None:
        msg = f"use_raw=True, but {what}.raw is None."
        raise ValueError(msg)
    logger.info(
        "    reading %s.raw (%d genes; %s.X has %d)", what, rna.raw.n_vars, what, rna.n_vars
    )
    return AnnData(X=rna.raw.X, obs=rna.obs, var=rna.raw.var.copy())


def _raw_is_wanted(rna: AnnData) -> bool:
    """``X`` (in memory) holds scaled values or fewer genes than ``.raw``."""
    if rna.raw.n_vars > rna.n_vars or rna.X is None:
        return True
    X = rna.X
    values = X.data if sp.issparse(X) else np.asarray(X)
    return bool(values.size) and float(values.min()) < 0


def _refuse_backed_view(rna: AnnData) -> None:
    """A view of a backed AnnData cannot take the annotation: refuse it before any work."""
    if rna.is_view and rna.isbacked:
        msg = (
            "adata is a view (a subset) of a backed AnnData, which the annotation cannot be "
            "written to. Load the subset into memory first (`adata = adata.to_memory()`), or "
            "write it to its own file and open that one backed."
        )
        raise ValueError(msg)


def _warn_view() -> None:
    """Say what writing the annotation to a view does, before any work (anndata's own
    warning at the first write, "initializing view as actual", does not say that the
    AnnData the view was taken from stays unannotated)."""
    warnings.warn(
        "adata is a view of another AnnData (a subset such as `adata[mask]`). The annotation "
        "is written to this view, which becomes an AnnData of its own; the AnnData it was "
        "taken from is not annotated. Pass `adata[mask].copy()` (kept in a variable) to make "
        "this explicit, or annotate the whole AnnData.",
        UserWarning,
        stacklevel=3,  # transanno_annotate's caller
    )


def _check_query(rna: AnnData, layer: str | None, input_scale: str) -> None:
    """Refuse a query that annotation would fail on, before training for it: no cells or
    duplicate gene names, a missing layer, NaN, infinite or negative values (every value of an
    in-memory matrix; a sample of a backed one, whose rows are checked as they stream), no
    expression, or values that cannot be on the ``input_scale`` asked for."""
    from transanno_sc.data import (
        check_shape_and_names,
        get_matrix,
        resolve_input_scale,
        scan_matrix,
    )

    check_shape_and_names(rna, "adata")
    X = get_matrix(rna, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if not rna.isbacked:
        scan_matrix(X, where)
    resolve_input_scale(X, input_scale, where, quiet=True)


def _check_save_path(path) -> None:
    """Refuse a ``save_model`` path that names an existing file (a model is a folder), before
    training."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        msg = (
            f"save_model={str(path)!r} is an existing file; a model is saved as a folder. "
            "Pass a new path or a folder."
        )
        raise ValueError(msg)


def _h5_safe_names(classes: list[str]) -> list[str]:
    """Column names for ``classes`` that ``.h5ad`` and ``.zarr`` files can store: ``"/"``
    becomes ``"_"`` (more ``"_"`` where that name is taken), with a warning."""
    if not any("/" in c for c in classes):
        return list(classes)
    taken = set(classes)
    names = []
    for c in classes:
        if "/" in c:
            name = c.replace("/", "_")
            while name in taken:
                name += "_"
            taken.add(name)
            c = name
        names.append(c)
    renamed = {c: n for c, n in zip(classes, names, strict=True) if c != n}
    warnings.warn(
        f"Cell types with '/' name columns of obsm probabilities as {renamed} (h5ad and zarr "
        "files cannot store '/' in column names); labels and uns classes keep the names.",
        UserWarning,
        stacklevel=4,  # transanno_annotate's caller
    )
    return names


def _warn_one_population(context: qc.QueryContext, forced: np.ndarray, classes: list) -> None:
    """Warn where the query is one population (a sorted or pre-gated sample,
    :func:`~transanno_sc.tl._query_context.one_population`).

    The query context takes a cluster's markers against the rest of the query. In a query of
    one cell type the rest is the same type, so the markers are weak differences between its
    parts, often genes the reference's technology detects less; they then count only in
    their excess over the rest's detection, which keeps a known type's parts from looking
    foreign. A type the reference lacks, called one known type throughout, still has no
    contrast (``benchmarks/README.md``, "sorted populations"): Zilionis' B cells alone,
    against a reference without B cells, are all called T cells and none "Unassigned" (96 %
    in the whole query).
    """
    if not context.summary["one_population"]:
        return
    counts = np.bincount(forced, minlength=len(classes))
    top = int(counts.argmax())
    share = counts[top] / forced.size
    called = classes[top]
    n_capped = sum(
        r["n_cells"] - r.get("n_cells_kept", 0)
        for r in context.summary["foreign_clusters"]
        if r["type"] == called
    )
    capped = f" Here {n_capped} cells called {called!r} were capped as foreign." if n_capped else ""
    warnings.warn(
        f"{share:.0%} of adata's cells are called {called!r}: the query looks like one "
        "population (a sorted or pre-gated sample, or a tissue of mostly one type). The query "
        "context then has few other cell types to contrast its clusters with, so a population "
        "of a type the reference lacks, called one known type throughout, is seldom caught as "
        "'Unassigned'; its clusters' markers count only in their excess over the rest of the "
        f"query, so that parts of a known type do not look foreign.{capped} Check the "
        "population's marker genes (tl.transanno_markers) before trusting its label.",
        UserWarning,
        stacklevel=3,  # transanno_annotate's caller
    )


#: Share of the query's cells left "Unassigned" for want of evidence (no expressed gene of the
#: model, or no type at the threshold) above which ``transanno_annotate`` warns.
WEAK_EVIDENCE_SHARE = 1 / 3

#: Share of the query's cells without any expressed gene of the model above which
#: ``transanno_annotate`` warns in any case (in a whole-transcriptome query only empty
#: droplets have none; on 60 random genes of Zilionis' cells, a quarter of the cells).
EMPTY_SHARE = 0.1

#: A model reading fewer of the query's genes than this is named as the likely cause.
FEW_GENES = 500


def _warn_weak_evidence(
    reasons: dict, out: ForwardOutputs, threshold: float | None, keys: _AnnotationKeys
) -> None:
    """Warn where over :data:`WEAK_EVIDENCE_SHARE` of the cells are "Unassigned" because they
    express none of the model's genes or no type reaches the threshold (not because the query
    context or the novelty score set them apart), or over :data:`EMPTY_SHARE` express none.

    A query on a few dozen genes of the reference's (a small targeted panel) is the common
    cause: cells without counts in them, and probabilities spread over the types (60 random
    genes of Zilionis' lung cells: 25 % of the cells without counts, 22 % unsure). Cells of
    types the reference lacks, where they make much of the query, are the other: a whole
    tissue against an immune reference (55-76 % of Baron's pancreas cells against Tabula
    Muris' immune cells). Within one study, the benchmark's largest share is 27 % (Baron's
    ductal cells held out, a quarter of the query), under the bar.
    """
    n_cells = out.probs.shape[0]
    empty = reasons.get("no_expression", 0)
    unsure = reasons.get("unsure_between_types", 0)
    weak = empty + unsure > WEAK_EVIDENCE_SHARE * n_cells or empty > EMPTY_SHARE * n_cells
    if threshold is None or not n_cells or not weak:
        return
    n_genes = int(out.overlap.get("n_matched", 0))
    parts = []
    if empty:
        parts.append(f"{empty} express none of the {n_genes} genes the model reads in adata")
    if unsure:
        parts.append(f"{unsure} have no cell type with probability {threshold:g} or more")
    few = (
        f" The model reads only {n_genes} of adata's genes, which may be too few to tell the "
        "types apart."
        if n_genes < FEW_GENES
        else ""
    )
    warnings.warn(
        f"{(empty + unsure) / n_cells:.0%} of adata's cells are 'Unassigned' for want of "
        f"evidence: {' and '.join(parts)}.{few} Cells of types the reference lacks also end "
        f"here. Each cell's most likely type and its probability are in "
        f"adata.obsm[{keys.probabilities!r}]; lowering `unassigned_threshold=` keeps more "
        "labels, with more errors.",
        UserWarning,
        stacklevel=3,  # transanno_annotate's caller
    )


def _context(
    rna: AnnData,
    model: TransAnno,
    out: ForwardOutputs,
    confidence: np.ndarray,
    layer: str | None,
    random_state: int | None,
) -> qc.QueryContext | None:
    """The query-level refinement of ``confidence`` (:mod:`transanno_sc.tl._query_context`),
    with the novelty of cells in clusters of their predicted type compared type by type and
    cluster by cluster (:meth:`~transanno_sc.model.TransAnno._typewise_pvalue`);
    ``summary["state_shift"]`` counts, per type, the cells whose p-value that raised."""
    shifted = {}
    forced = out.probs.argmax(1)

    def rescore(groups: np.ndarray) -> np.ndarray:
        pvalue = model._typewise_pvalue(out, groups)
        raised = forced[(groups >= 0) & (pvalue > out.novelty_pvalue)]
        for c, n in zip(*np.unique(raised, return_counts=True)):
            shifted[str(model.classes_[c])] = int(n)
        return confidence_score(out._replace(novelty_pvalue=pvalue), novelty=True)

    context = qc.query_context(
        rna,
        layer=layer,
        scale=out.overlap["input_scale"],
        confidence=confidence,
        forced=forced,
        detection=model.type_detection_,
        classes=list(model.classes_),
        seed=0 if random_state is None else int(random_state),
        rescore=rescore,
        probability=out.probs.max(1),
    )
    if context is not None:
        context.summary["state_shift"] = shifted
        if shifted:
            logger.info(
                "    query cells compared with the query's cells of their type (a known type "
                "in another state): %s",
                ", ".join(f"{n} called {t}" for t, n in shifted.items()),
            )
    return context


def _write_annotation(
    rna: AnnData,
    keys: _AnnotationKeys,
    model: TransAnno,
    out: ForwardOutputs,
    confidence: np.ndarray,
    unassigned_threshold: float | None,
    params: dict,
    shared: dict | None,
    context: qc.QueryContext | None,
) -> None:
    """Write labels, confidence, embedding, probabilities and ``uns`` of one forward pass."""
    classes = list(model.classes_)
    labels = np.asarray(classes, dtype=object)[out.probs.argmax(1)]
    if unassigned_threshold is not None:
        labels[confidence < unassigned_threshold] = UNASSIGNED
    categories = [*classes, UNASSIGNED] if UNASSIGNED not in classes else classes
    rna.obs[keys.label] = pd.Categorical(labels, categories=categories)
    rna.obs[keys.confidence] = confidence
    rna.obsm[keys.embedding] = out.latent
    rna.obsm[keys.probabilities] = pd.DataFrame(
        out.probs, index=rna.obs_names, columns=_h5_safe_names(classes)
    )
    rna.uns[keys.uns] = {
        "params": params,
        "classes": np.asarray(classes, dtype=object),
        "gene_overlap": {**out.overlap, **(shared or {})},
        "calibration": {**(model.calibration_ or {}), "novelty_shift": out.novelty_shift},
        "query_context": _uns_context(context),
        "unassigned": _unassigned_reasons(out, confidence, context, unassigned_threshold),
        "versions": versions(),
    }


def _unassigned_reasons(
    out: ForwardOutputs,
    confidence: np.ndarray,
    context: qc.QueryContext | None,
    threshold: float | None,
) -> dict[str, int]:
    """The number of "Unassigned" cells per reason (:data:`UNASSIGNED_REASONS`, in that
    order; logged): no expression; a cap of the query context under the threshold (foreign
    markers, undecided cluster); a probability of the predicted type at the threshold or
    above that the novelty typicality took under it; a probability under it."""
    counts = dict.fromkeys(UNASSIGNED_REASONS, 0)
    if threshold is None:
        return counts
    left = confidence < threshold
    n_unassigned = int(left.sum())
    masks = {
        "no_expression": out.n_expressed == 0,
        "foreign_markers": None if context is None else context.foreign_cap() < threshold,
        "undecided_cluster": None if context is None else context.undecided < threshold,
        "unlike_reference": out.probs.max(1) >= threshold,
        "unsure_between_types": np.ones(left.size, dtype=bool),
    }
    for reason, mask in masks.items():
        if mask is not None:
            counts[reason] = int((left & mask).sum())
            left &= ~mask
    if n_unassigned:
        logger.info(
            "    %d cells 'Unassigned': %s",
            n_unassigned,
            ", ".join(f"{n} {UNASSIGNED_REASONS[r]}" for r, n in counts.items() if n),
        )
    return counts


def _uns_context(context: qc.QueryContext | None) -> dict:
    """``uns`` form of the query context (h5ad-writable: no ``None``, clusters as a frame's
    columns of equal length)."""
    if context is None:
        return {"applied": False}
    flagged = context.summary["foreign_clusters"]
    shifted = context.summary.get("state_shift", {})
    undecided = context.summary.get("undecided_clusters", [])
    return {
        "applied": True,
        "n_neighbors": context.summary["n_neighbors"],
        "n_clusters": context.summary["n_clusters"],
        "foreign_markers": context.summary["foreign_markers"],
        # streamed (large or backed query): cells the PCA and centres were fitted on, and the
        # parts the neighbours were searched within; all cells and one part otherwise
        "sampled_cells": int(context.summary.get("sampled_cells", context.neighbourhood.size)),
        "neighbour_parts": int(context.summary.get("neighbour_parts", 1)),
        # over 90 % of the cells called one type: markers counted in their excess over the rest
        "one_population": bool(context.summary.get("one_population", False)),
        "foreign_clusters": {
            "n_cells": np.asarray([r["n_cells"] for r in flagged], dtype=np.int64),
            "type": np.asarray([r["type"] for r in flagged], dtype=object),
            "foreign_share": np.asarray([r["foreign_share"] for r in flagged], dtype=np.float64),
            # cells of the cluster in a part of it whose own markers are native to their type
            "n_cells_kept": np.asarray([r.get("n_cells_kept", 0) for r in flagged], dtype=np.int64),
        },
        # clusters undecided between known types while others are called their type decisively
        "undecided_clusters": {
            key: np.asarray([r[key] for r in undecided], dtype=dtype)
            for key, dtype in (
                ("n_cells", np.int64),
                ("type", object),
                ("probability", np.float64),
                ("decided_probability", np.float64),
                ("n_cells_capped", np.int64),
            )
        },
        # cells whose novelty was compared with the query's cells of their type, per type
        "state_shift": {
            "type": np.asarray(list(shifted), dtype=object),
            "n_cells": np.asarray(list(shifted.values()), dtype=np.int64),
        },
    }
