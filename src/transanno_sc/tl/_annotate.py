"""``tl.transanno_annotate``: label transfer in one call, scanpy style."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from transanno_sc._constants import NOVELTY_ALPHA, UNASSIGNED

from ._utils import get_rna, versions

if TYPE_CHECKING:
    from mudata import MuData

    from transanno_sc.model import TransAnno

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
        return cls(
            label=f"{key_added}_label",
            confidence=f"{key_added}_confidence",
            embedding=f"X_{key_added}",
            probabilities=f"{key_added}_probabilities",
            uns=key_added,
        )


def _private_reference(
    reference: AnnData, labels_key: str, batch_key: str | None, layer: str | None
) -> AnnData:
    """A light AnnData sharing the reference's matrix, so scvi-tools' keys stay off the user's."""
    from transanno_sc.model._utils import get_matrix, non_string_labels, string_labels

    if not isinstance(reference, AnnData):
        reference = get_rna(reference, "reference")
    X = get_matrix(reference, layer)
    cols = [c for c in (labels_key, batch_key) if c is not None]
    missing = [c for c in cols if c not in reference.obs]
    if missing:
        msg = (
            f"{missing[0]!r} is not a column of reference.obs "
            f"(columns: {list(reference.obs.columns)})."
        )
        raise KeyError(msg)
    obs = reference.obs[cols].copy()
    if non_string_labels(obs[labels_key]):
        # cluster numbers as labels: named by their strings here (the user's column is kept)
        obs[labels_key] = string_labels(obs[labels_key])
    if isinstance(obs[labels_key].dtype, pd.CategoricalDtype):
        # a category without cells (left from subsetting) is no cell type to predict
        obs[labels_key] = obs[labels_key].cat.remove_unused_categories()
    private = AnnData(X=X, obs=obs, var=pd.DataFrame(index=reference.var_names.copy()))
    return private


#: Label of the query cells in the private pretraining corpus (never a user's label).
_UNLABELED = "__transanno_query__"


def _reference_vocabulary(
    private: AnnData,
    model_kwargs: dict,
    labels_key: str,
    batch_key: str | None,
    unlabeled_category: str,
) -> tuple[list[str], dict | None]:
    """The gene vocabulary (and ``n_top_genes="auto"``'s scores) the model would choose from
    the reference cells alone."""
    import inspect

    from scvi import settings

    from transanno_sc.model import TransAnno
    from transanno_sc.model._transanno import _choose_vocabulary
    from transanno_sc.model._utils import resolve_input_scale

    scale = resolve_input_scale(private.X, "auto", "reference.X")
    default = inspect.signature(TransAnno).parameters["n_top_genes"].default
    labels = private.obs[labels_key].astype(str)
    types = sorted(set(labels) - {unlabeled_category})
    codes = pd.Categorical(labels, categories=types).codes.astype(np.int64)  # unlabeled: -1
    batches = (
        pd.Categorical(private.obs[batch_key].astype(str)).codes
        if batch_key is not None
        else np.zeros(private.n_obs, dtype=np.int64)
    )
    return _choose_vocabulary(
        private.X,
        private.var_names,
        model_kwargs.pop("n_top_genes", default),
        scale == "counts",
        codes,
        np.asarray(batches),
        settings.seed,
    )


def _with_query_cells(
    private: AnnData, query: AnnData, layer: str | None, labels_key: str, unlabeled_category: str
) -> AnnData:
    """Reference cells plus the query's, on the reference's genes, query labels unknown."""
    from transanno_sc.data import match_genes
    from transanno_sc.model._utils import get_matrix, iter_row_chunks, resolve_input_scale

    Xq = get_matrix(query, layer)
    ref_scale = resolve_input_scale(private.X, "auto", "reference")
    query_scale = resolve_input_scale(Xq, "auto", "adata")
    if ref_scale != query_scale:
        msg = (
            f"pretrain=True pretrains on reference and query together, but the reference holds "
            f"{ref_scale} and adata holds {query_scale} values: give both on the same scale "
            "(e.g. raw counts, with `layer=`)."
        )
        raise ValueError(msg)
    match = match_genes(private.var_names, query.var_names)
    # match_genes(dataset, vocab): here the reference is the dataset, the query the vocab
    ref_cols, query_cols = match.source, match.target
    blocks = []
    for _, rows in iter_row_chunks(Xq):
        rows = sp.csr_matrix(rows)[:, query_cols].tocoo()
        blocks.append(
            sp.csr_matrix(
                (rows.data, (rows.row, ref_cols[rows.col])),
                shape=(rows.shape[0], private.n_vars),
                dtype=np.float32,
            )
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
    X = sp.vstack([sp.csr_matrix(private.X, dtype=np.float32), *blocks]).tocsr()
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=private.var_names.copy()))


def transanno_annotate(
    adata: AnnData | MuData,
    model: TransAnno | None = None,
    *,
    reference: AnnData | None = None,
    labels_key: str | None = None,
    unlabeled_category: str = "Unknown",
    batch_key: str | None = None,
    layer: str | None = None,
    unassigned_threshold: float | None = 0.5,
    novelty: bool = True,
    key_added: str = "transanno",
    copy: bool = False,
    save_model: str | None = None,
    model_kwargs: dict | None = None,
    pretrain: bool = False,
    pretrain_kwargs: dict | None = None,
    batch_size: int | None = None,
    **train_kwargs,
) -> AnnData | MuData | None:
    """Annotate cell types with a TransAnno model :cite:p:`Vaswani2017`.

    Either pass a trained ``model``, or a labeled ``reference`` and ``labels_key``: a model is
    then trained on the reference (on a private object: nothing is added to ``reference``) and
    applied to ``adata``. Genes are matched by name, so ``adata`` may have another gene set or
    order than the reference; it may hold raw counts or log1p-normalized values.

    Parameters
    ----------
    adata
        The cells to annotate: an :class:`~anndata.AnnData`, or a :class:`~mudata.MuData` whose
        RNA modality (``"rna"``, ``"RNA"`` or ``"gex"``) is annotated.
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
    layer
        Layer holding the expression in both ``reference`` and ``adata``; ``adata.X`` if
        ``None``.
    unassigned_threshold
        Cells whose confidence is below this are labeled ``"Unassigned"``; ``None`` turns this
        off. The default 0.5 is TransAnno-Net's.
    novelty
        Lower the confidence of cells unlike every reference cell (the novelty score of
        :meth:`~transanno_sc.model.TransAnno.predict_confidence`), so that cells of a type the
        reference never contained come out ``"Unassigned"``. ``False``: the confidence is the
        calibrated probability alone.
    key_added
        Prefix of the keys written to ``adata``.
    copy
        Return an annotated copy instead of writing to ``adata``.
    save_model
        Folder to save the model trained inside this call to.
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
        :meth:`~transanno_sc.model.TransAnno.predict_confidence`). This is the score that
        ``unassigned_threshold`` thresholds.
    `.obsm['X_{key_added}']` : :class:`numpy.ndarray` (dtype `float32`)
        Cell embedding, for :func:`scanpy.pp.neighbors` with ``use_rep``.
    `.obsm['{key_added}_probabilities']` : :class:`pandas.DataFrame`
        Calibrated probability of every reference cell type.
    `.uns['{key_added}']` : :class:`dict`
        ``params``, ``classes``, ``gene_overlap``, ``calibration`` (temperature and the
        validation expected calibration error before and after) and ``versions``.

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
    if unassigned_threshold is not None and not 0.0 <= unassigned_threshold <= 1.0:
        msg = f"unassigned_threshold must be in [0, 1] or None, got {unassigned_threshold}."
        raise ValueError(msg)

    if model is None:
        private = _private_reference(reference, labels_key, batch_key, layer)
        model_kwargs = dict(model_kwargs or {})
        selection = None
        if pretrain and "gene_vocabulary" not in model_kwargs:
            # chosen from the reference's cells only, as without pretraining
            model_kwargs["gene_vocabulary"], selection = _reference_vocabulary(
                private, model_kwargs, labels_key, batch_key, unlabeled_category
            )
        if pretrain:
            private = _with_query_cells(private, rna, layer, labels_key, unlabeled_category)
        TransAnno.setup_anndata(
            private,
            labels_key=labels_key,
            batch_key=batch_key,
            unlabeled_category=_UNLABELED if pretrain else unlabeled_category,
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
    elif train_kwargs or model_kwargs:
        msg = (
            f"Training arguments {sorted(train_kwargs) + sorted(model_kwargs or {})} were given "
            "with a trained `model=`; they only apply when a model is trained from `reference=`."
        )
        raise TypeError(msg)

    out = model._forward(rna, batch_size=batch_size, layer=layer)
    probs = out.probs

    if copy:
        adata = adata.copy()
        rna = get_rna(adata, "adata")
    classes = list(model.classes_)
    confidence = model._confidence(out, novelty=novelty)
    labels = model._labels(out, unassigned_threshold, novelty=novelty)
    categories = [*classes, UNASSIGNED] if UNASSIGNED not in classes else classes
    rna.obs[keys.label] = pd.Categorical(labels, categories=categories)
    rna.obs[keys.confidence] = confidence
    rna.obsm[keys.embedding] = out.latent
    rna.obsm[keys.probabilities] = pd.DataFrame(probs, index=rna.obs_names, columns=classes)
    rna.uns[keys.uns] = {
        "params": {
            "unassigned_threshold": -1.0 if unassigned_threshold is None else unassigned_threshold,
            "layer": "X" if layer is None else layer,
            "labels_key": labels_key if labels_key is not None else "",
            "novelty": novelty,
            "novelty_alpha": NOVELTY_ALPHA,
            "model": model._model_summary_string,
        },
        "classes": np.asarray(classes, dtype=object),
        "gene_overlap": out.overlap,
        "calibration": dict(model.calibration_ or {}),
        "versions": versions(),
    }
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
