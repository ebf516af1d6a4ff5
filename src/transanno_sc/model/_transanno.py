"""The ``TransAnno`` scvi-tools model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData
from safetensors.torch import load_file, save_file
from scvi import settings
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from scvi.utils import setup_anndata_dsp, track
from scvi.utils._docstrings import devices_dsp

from transanno_sc._constants import (
    DEEP_WEIGHT_GRID,
    DEFAULT_DEEP_WEIGHT,
    MIN_GENE_OVERLAP,
    MODULE_KEYS,
    NOVELTY_ALPHA,
    REGISTRY_KEYS,
    TARGET_SUM,
    UNASSIGNED,
    WARN_GENE_OVERLAP,
)
from transanno_sc.data import GeneMatch, match_genes
from transanno_sc.module import TransAnnoModule
from transanno_sc.train import (
    ClassificationTrainingPlan,
    PretrainingPlan,
    expected_calibration_error,
    fit_temperature,
)

from ._markers import MarkersMixin
from ._utils import (
    InputScale,
    check_labels,
    check_shape_and_names,
    check_values,
    configure_distributed,
    get_matrix,
    history_from_json,
    history_to_json,
    iter_row_chunks,
    iter_vocab_batches,
    n_forward_batches,
    resolve_input_scale,
    scan_matrix,
    stratified_split,
)

logger = logging.getLogger(__name__)

_CONFIG_FILE = "transanno.json"
_VOCAB_FILE = "vocabulary.json"
_WEIGHTS_FILE = "model.safetensors"
_FORMAT_VERSION = 1
_KEEP = object()  # sentinel: "use the layer the model was set up with"
#: Training cells kept as the reference of the novelty score.
_N_REFERENCE_CELLS = 5_000
#: Cell presentations of a default training run (``benchmarks/README.md``: halving the
#: earlier 30,000 left the query macro-F1 of every benchmark task as it was or better).
_TRAIN_PRESENTATIONS = 15_000
#: Training cells the wide path's logistic regression is fitted on (stratified subsample).
_N_LINEAR_CELLS = 20_000
#: Every type keeps at least this many reference cells (all of them when it has fewer).
_MIN_REFERENCE_CELLS_PER_TYPE = 50
#: ``n_top_genes="auto"``: the gene counts compared, the count without a batch to hold out,
#: labeled cells (stratified subsample) and held-out batches used, and the macro-F1 margin a
#: larger count must win by.
_GENE_COUNT_CANDIDATES = (2000, 4000, 8000)
_DEFAULT_GENE_COUNT = 2000
_N_GENE_COUNT_CELLS = 5_000
_MAX_HELD_OUT_BATCHES = 5
_GENE_COUNT_TOLERANCE = 0.005
#: Fraction of the labeled types that some held-out batch must share with the other batches.
_MIN_VALIDATED_TYPES = 0.9


def _log_hvg_subsample(X, var_names: pd.Index, is_counts: bool, seed: int):
    """Log1p CP10k AnnData of (at most 20,000 random rows of) X, with Seurat-flavour dispersions
    in ``var`` (``dispersions_norm``), and the rows it holds (``None``: all of them)."""
    import scanpy as sc

    n_obs = X.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_obs, 20_000, replace=False)) if n_obs > 20_000 else None
    sub = X[rows] if rows is not None else X[:]
    sub = sp.csr_matrix(sub, dtype=np.float32) if sp.issparse(sub) else np.asarray(sub, np.float32)
    tmp = AnnData(sub)
    tmp.var_names = var_names.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_counts:
            sc.pp.normalize_total(tmp, target_sum=1e4)
            sc.pp.log1p(tmp)
    return tmp, rows


def _select_genes(
    X,
    var_names: pd.Index,
    n_top_genes: int | None,
    is_counts: bool,
    seed: int,
    tmp: AnnData | None = None,
) -> list[str]:
    """Pick the gene vocabulary: highly variable genes of (a subsample of) the reference
    (``tmp``: that subsample from :func:`_log_hvg_subsample`, when already made)."""
    import scanpy as sc

    n_vars = X.shape[1]
    if n_top_genes is None or n_top_genes >= n_vars:
        return [str(g) for g in var_names]
    if tmp is None:
        tmp, _ = _log_hvg_subsample(X, var_names, is_counts, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor="seurat")
    hvg = tmp.var["highly_variable"].to_numpy()
    return [str(g) for g in var_names[hvg]]


def _class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Per-class weights (count / (n_types x class count)) ** ``power``, averaging 1 over the
    cells; 1 for classes without cells."""
    counts = counts.astype(np.float64)
    weights = np.ones(counts.size)
    seen = counts > 0
    weights[seen] = (counts[seen].sum() / (seen.sum() * counts[seen])) ** power
    weights[seen] /= np.average(weights[seen], weights=counts[seen])
    return weights


def _weighting_power(weighting: str, name: str) -> float:
    """The exponent of :func:`_class_weights` for a ``class_weighting`` value."""
    powers = {"balanced": 1.0, "sqrt": 0.5, "none": 0.0}
    if weighting not in powers:
        msg = f"{name} must be 'balanced', 'sqrt' or 'none', got {weighting!r}."
        raise ValueError(msg)
    return powers[weighting]


def _logistic_regression(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, c: float):
    """The wide path's recipe: a weighted L2 logistic regression (lbfgs) fitted on ``X``."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=1000, tol=1e-4)
    with warnings.catch_warnings():
        # a not fully converged lbfgs is still a regularized linear classifier
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*converge.*")
        clf.fit(X, y, sample_weight=sample_weight)
    return clf


def _choose_gene_count(
    tmp: AnnData, rows: np.ndarray | None, codes: np.ndarray, batches: np.ndarray, seed: int
) -> dict | None:
    """``n_top_genes="auto"``: the number of highly variable genes (of
    :data:`_GENE_COUNT_CANDIDATES`) whose class-weighted L2 logistic regression (the wide
    path's recipe) transfers labels best from some reference batches to another, by
    leave-one-batch-out macro-F1 on labeled cells (``codes`` >= 0). ``tmp`` and ``rows``:
    the reference subsample of :func:`_log_hvg_subsample`. ``None`` when no held-out batch
    could be scored."""
    import scanpy as sc
    from sklearn.metrics import f1_score

    codes = codes if rows is None else codes[rows]
    batches = batches if rows is None else batches[rows]
    n_vars = tmp.n_vars
    candidates = [k for k in _GENE_COUNT_CANDIDATES if k < n_vars] or [n_vars]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=max(candidates), flavor="seurat")
    dispersion = tmp.var["dispersions_norm"].to_numpy(dtype=np.float64)
    order = np.argsort(-np.nan_to_num(dispersion, nan=-np.inf), kind="stable")
    rng = np.random.default_rng(seed)
    cells = np.flatnonzero(codes >= 0)
    cells = np.sort(cells[_stratified_subsample(codes[cells], _N_GENE_COUNT_CELLS, rng)])
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
    if coverage < _MIN_VALIDATED_TYPES:
        return {
            "n_top_genes": _DEFAULT_GENE_COUNT,
            "scores": {},
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
            weight = _class_weights(np.bincount(y[kept]), 1.0)  # "balanced"
            clf = _logistic_regression(M[kept, :k], y[kept], weight[y[kept]], 0.1)
            shared = np.intersect1d(np.unique(y[held]), clf.classes_)
            keep = np.isin(y[held], shared)
            if keep.any():
                pred = clf.predict(M[held, :k][keep])
                folds.append(f1_score(y[held][keep], pred, labels=shared, average="macro"))
        if folds:
            scores[int(k)] = float(np.mean(folds))
    if not scores:
        return None
    best = max(scores.values())
    # the smallest count within the tolerance of the best: fewer genes unless more clearly help
    chosen = min(k for k, v in scores.items() if v >= best - _GENE_COUNT_TOLERANCE)
    return {
        "n_top_genes": chosen,
        "scores": scores,
        "n_batches": int(held_batches.size),
        "validated_types": float(coverage),
    }


def _choose_vocabulary(
    X,
    var_names: pd.Index,
    n_top_genes: int | str | None,
    is_counts: bool,
    codes: np.ndarray,
    batches: np.ndarray,
    seed: int,
) -> tuple[list[str], dict | None]:
    """The gene vocabulary for ``n_top_genes`` (see :class:`TransAnno`) and, for ``"auto"``
    with several labeled batches, its leave-one-batch-out scores (else ``None``). ``codes``:
    label codes of the rows of ``X``, -1 where unlabeled; ``batches``: batch codes."""
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
        return _select_genes(X, var_names, n_top_genes, is_counts, seed), None
    if np.unique(batches[codes >= 0]).size < 2:  # no labels, or no batch to hold out
        return _select_genes(X, var_names, _DEFAULT_GENE_COUNT, is_counts, seed), None
    t0 = time.perf_counter()
    tmp, rows = _log_hvg_subsample(X, var_names, is_counts, seed)
    choice = _choose_gene_count(tmp, rows, codes, batches, seed)
    if choice is None:
        return _select_genes(X, var_names, _DEFAULT_GENE_COUNT, is_counts, seed, tmp=tmp), None
    logger.info(
        "n_top_genes='auto': %d genes (leave-one-batch-out macro-F1 %s, %d batches, "
        "%.0f %% of the types validated, %.1f s).",
        choice["n_top_genes"],
        {k: round(v, 3) for k, v in choice["scores"].items()},
        choice["n_batches"],
        100 * choice["validated_types"],
        time.perf_counter() - t0,
    )
    genes = _select_genes(X, var_names, choice["n_top_genes"], is_counts, seed, tmp=tmp)
    return genes, choice


def _default_max_epochs(n_cells: int) -> int:
    """About :data:`_TRAIN_PRESENTATIONS` cell presentations, between 10 and 100 epochs."""
    return int(np.clip(np.ceil(_TRAIN_PRESENTATIONS / max(n_cells, 1)), 10, 100))


class TransAnno(MarkersMixin, BaseModelClass):
    """Transformer cell-type annotation :cite:p:`Vaswani2017`.

    Each cell becomes a sequence of tokens, one per expressed gene of the model's vocabulary
    (highly variable genes of the reference), made of a gene-identity embedding and an
    expression-value-bin embedding, plus a ``[CLS]`` token. A bidirectional Transformer encoder
    built from :mod:`transformers` encodes the sequence; the ``[CLS]`` state is projected to the
    cell embedding (``n_latent``) and classified. A linear "wide" path over the normalized
    expression adds to the logits.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden
        Width of the Transformer. The default 64 (with ``max_tokens=128``) gave the same query
        macro-F1 as 128 (with 256) on every benchmark task in about a quarter of the training
        time (``benchmarks/README.md``). Wider models for pretraining on large corpora have not
        been benchmarked.
    n_layers
        Number of encoder layers.
    n_heads
        Number of attention heads.
    n_latent
        Dimension of the cell embedding.
    max_tokens
        Maximum number of expressed genes per cell used as tokens (highest first). The wide
        path reads every vocabulary gene whatever this is.
    n_top_genes
        Size of the gene vocabulary: highly variable genes of ``adata``. ``None`` uses all genes.
        ``"auto"``: 2,000, unless the labeled cells come from several batches (``batch_key`` of
        :meth:`setup_anndata`); then the count among 2,000 / 4,000 / 8,000 whose logistic
        regression (the wide path's recipe) transfers labels best from the other batches to a
        held-out one (mean macro-F1 over held-out batches; a larger count must win by 0.005).
        More genes help across batches and can hurt rare types within one batch
        (``benchmarks/README.md``), so a type that only one batch has cannot be judged this
        way: when fewer than 90 % of the types occur in two batches, 2,000 it is. The scores
        are kept in ``gene_count_selection_``.
    n_bins
        Number of expression-value bins.
    value_encoding
        ``"bins"``: fixed-width bins of log1p(counts per 10k); ``"quantile"``: per-cell rank bins.
    dropout
        Dropout in the encoder and classifier.
    wide
        Add the linear path over normalized expression to the logits.
    gene_vocabulary
        Use these genes as the vocabulary instead of the highly variable genes of ``adata``
        (matched to ``adata`` by name; :meth:`from_pretrained` passes a backbone's).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> ref = adata[adata.obs["condition"] == "healthy"].copy()
    >>> ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    >>> model = ta.model.TransAnno(ref)
    >>> model.train(max_epochs=5)
    >>> labels = model.predict(adata)
    """

    _module_cls = TransAnnoModule
    _training_plan_cls = ClassificationTrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: AnnData,
        n_hidden: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latent: int = 32,
        max_tokens: int = 128,
        n_top_genes: int | Literal["auto"] | None = "auto",
        n_bins: int = 16,
        value_encoding: Literal["bins", "quantile"] = "bins",
        dropout: float = 0.1,
        wide: bool = True,
        gene_vocabulary: Sequence[str] | None = None,
    ):
        super().__init__(adata)
        setup_args = self.adata_manager.registry["setup_args"]
        self.input_scale_ = setup_args["input_scale"]
        mapping = self.adata_manager.get_state_registry(
            REGISTRY_KEYS.LABELS_KEY
        ).categorical_mapping
        # LabelsWithUnlabeledObsField always puts the unlabeled category last
        self.classes_ = [str(c) for c in mapping[:-1]] if setup_args["labels_key"] else []
        self.gene_count_selection_: dict | None = None
        if gene_vocabulary is not None:
            self.var_names_ = _check_vocabulary(gene_vocabulary)
        else:
            n_classes = len(self.classes_)
            codes = np.asarray(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            ).reshape(-1)
            batches = np.asarray(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
            ).reshape(-1)
            self.var_names_, self.gene_count_selection_ = _choose_vocabulary(
                get_matrix(adata, setup_args["layer"]),
                adata.var_names,
                n_top_genes,
                self.input_scale_ == "counts",
                np.where(codes < n_classes, codes, -1).astype(np.int64),
                batches,
                settings.seed,
            )
        self.calibration_: dict | None = None
        self.is_pretrained_ = False
        self.pretrain_history_: dict | None = None
        self.gene_overlap_: dict | None = None
        self.init_params_ = self._get_init_params(locals())
        self._build_module()
        self._set_training_genes(adata)

    # ------------------------------------------------------------------ construction
    def _build_module(self) -> None:
        p = self.init_params_["non_kwargs"]
        self.module = self._module_cls(
            n_genes=len(self.var_names_),
            n_classes=max(len(self.classes_), 1),
            n_hidden=p["n_hidden"],
            n_layers=p["n_layers"],
            n_heads=p["n_heads"],
            n_latent=p["n_latent"],
            max_tokens=p["max_tokens"],
            n_bins=p["n_bins"],
            value_encoding=p["value_encoding"],
            dropout=p["dropout"],
            wide=p["wide"],
        )
        self._model_summary_string = (
            f"TransAnno: {len(self.var_names_)} genes, {len(self.classes_)} cell types, "
            f"{p['n_layers']} layers x {p['n_hidden']} wide, {p['n_heads']} heads, "
            f"max_tokens={p['max_tokens']}, input={self.input_scale_}"
        )

    def _set_training_genes(self, adata: AnnData) -> None:
        """Point the module at the vocabulary genes of the registered AnnData."""
        match = self._match(adata, "adata")
        index = torch.full((len(self.var_names_),), -1, dtype=torch.long)
        index[torch.as_tensor(match.target)] = torch.as_tensor(match.source)
        self.module.gene_index = index.to(self.module.gene_index.device)
        self.gene_overlap_ = match.to_dict()

    def _match(self, adata: AnnData, what: str) -> GeneMatch:
        """Match the model's genes to ``adata`` by name; warn or refuse on a poor overlap."""
        return _checked_match(adata.var_names, self.var_names_, what, stacklevel=4)

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str | None = None,
        unlabeled_category: str = "Unknown",
        batch_key: str | None = None,
        layer: str | None = None,
        input_scale: InputScale = "auto",
        **kwargs,
    ) -> None:
        """%(summary)s.

        Checks every value (NaN, infinite and negative values are refused with a
        :class:`ValueError`) and decides whether the matrix holds raw counts or log1p-normalized
        values.

        Parameters
        ----------
        %(param_adata)s
        %(param_labels_key)s
        %(param_unlabeled_category)s
        %(param_batch_key)s
        %(param_layer)s
        input_scale
            ``"counts"`` (raw counts, normalized on the fly), ``"log1p"`` (log1p of
            library-size-normalized values, e.g. after :func:`scanpy.pp.log1p`) or ``"auto"``
            (integers are counts, other values up to 30 are log1p).
        """
        check_shape_and_names(adata)
        check_labels(adata, labels_key, unlabeled_category)
        input_scale = _check_matrix(adata, layer, input_scale)
        setup_method_args = cls._get_setup_method_args(
            cls=cls,
            adata=adata,
            labels_key=labels_key,
            unlabeled_category=unlabeled_category,
            batch_key=batch_key,
            layer=layer,
            input_scale=input_scale,
        )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            # scvi-tools' LabelsWithUnlabeledObsField fails without a key: plain field then
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category)
            if labels_key is not None
            else CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ training
    @devices_dsp.dedent
    def train(
        self,
        max_epochs: int | None = None,
        lr: float = 1e-3,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        batch_size: int = 64,
        early_stopping: bool = True,
        early_stopping_patience: int = 10,
        class_weighting: Literal["balanced", "sqrt", "none"] = "sqrt",
        finetune: Literal["full", "partial", "head"] = "full",
        trainable_layers: int = 1,
        backbone_lr: float | None = None,
        wide_fit: Literal["logistic", "joint"] = "logistic",
        wide_c: float = 0.1,
        wide_class_weighting: Literal["balanced", "sqrt", "none"] = "balanced",
        deep_weight: float | Literal["auto"] | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the classifier on the labeled cells of the registered AnnData.

        Cells labeled ``unlabeled_category`` are not used. The labeled cells are split,
        stratified by label, into training and validation sets; class weights of the loss come
        from the training split only, and early stopping watches the validation loss.

        Parameters
        ----------
        max_epochs
            Number of passes over the training cells. ``None``: about 15,000 cell presentations,
            clipped to 10-100 epochs.
        lr
            Peak learning rate (linear warm-up, then cosine decay).
        %(param_accelerator)s
        %(param_devices)s
        train_size
            Fraction of the labeled cells used for training; the rest validates.
        batch_size
            Cells per minibatch.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience``
            epochs.
        early_stopping_patience
            Epochs without improvement before stopping.
        class_weighting
            Weight of each class in the loss: ``"balanced"`` (inverse frequency), ``"sqrt"``
            (inverse square root of the frequency) or ``"none"``.
        finetune
            Which part of a (pretrained) backbone is trained: ``"full"`` (all of it),
            ``"partial"`` (only its top ``trainable_layers`` encoder layers; embeddings and
            lower layers frozen, as TransAnno-Net fine-tuned) or ``"head"`` (none: only the
            embedding projection, the classifier and the wide path learn).
        trainable_layers
            Encoder layers trained with ``finetune="partial"``.
        backbone_lr
            Peak learning rate of the backbone; ``lr`` when ``None``. A smaller value (e.g.
            ``lr / 10``) keeps more of a pretrained backbone.
        wide_fit
            How the linear "wide" path (model argument ``wide``) is trained. ``"logistic"``: it
            is fitted first, as an L2-regularized multinomial logistic regression (inverse
            regularization strength ``wide_c``, class weights ``wide_class_weighting``) on the
            log1p-normalized vocabulary expression of at most 20,000 training cells
            (stratified), then kept fixed while the Transformer learns what the linear model
            gets wrong; the model starts from, and stays close to, the baseline that matches
            scBERT-style models in published evaluations. ``"joint"``: trained by gradient
            descent together with the Transformer (the earlier default).
        wide_c
            Inverse L2 regularization strength of ``wide_fit="logistic"`` (scikit-learn's
            ``C``; smaller is stronger).
        wide_class_weighting
            Class weights of ``wide_fit="logistic"``, as ``class_weighting`` (which weights the
            Transformer's loss, and the wide path's with ``wide_fit="joint"``). ``"balanced"``
            (the default since November 2026; ``"sqrt"`` before) raised the query macro-F1 of
            the Baron pancreas split (rare types) from 0.889 to 0.917 and of PBMC from 0.660 to
            0.677 (medians of 8 and 10 seeds), cost the 11 Zilionis subtypes 0.014 and left
            the other tasks as they were (``benchmarks/README.md``).
        deep_weight
            Weight of the Transformer's logits added to the wide path's at prediction (1 while
            training). ``"auto"``: the value in 0, 0.05, ..., 1 with the lowest validation
            negative log-likelihood. ``None``: 0.2 with ``wide_fit="logistic"``, 1 with
            ``"joint"``. A small weight makes the Transformer a correction of the linear
            model: on cross-batch label transfer (``benchmarks/README.md``) the query's
            macro-F1 fell below the linear model's at 1, while validation cells, from the
            reference's own batches, asked for weights of 0.5-1. 0.2 (0.1 until November
            2026; label smoothing keeps the Transformer's logits smaller) raised the mean
            query macro-F1 of all five benchmark tasks, by 0.002-0.018
            (``benchmarks/deep_weight.py``). Without a wide path the weight is 1.
        datasplitter_kwargs
            Passed to :class:`~scvi.dataloaders.DataSplitter`.
        plan_kwargs
            Passed to :class:`~transanno_sc.train.ClassificationTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` and on to Lightning (``precision``,
            ``strategy``, ``num_nodes``, ``enable_progress_bar``, ...).

        Notes
        -----
        **Multi-device and multi-node training.** With ``devices`` > 1 (or ``num_nodes`` > 1)
        and no ``strategy``, Lightning DDP is used with one process per device, each training on
        its own shard of the cells (scvi-tools' ``BatchDistributedSampler``; the effective batch
        is ``batch_size`` x processes):

        - in a script, ``strategy="ddp_find_unused_parameters_true"``: Lightning starts the
          script again for the other ranks, so code after ``train()`` runs in every process
          (guard writes with ``if model.trainer.is_global_zero:``). The calling process (rank
          0) ends with the trained weights and ``model.history``; the others get the same
          weights and an empty history.
        - in Jupyter, ``strategy="ddp_notebook_find_unused_parameters_true"`` (forked
          processes; CUDA must not have been used in the kernel before).
        - override with ``strategy=``: e.g. ``"ddp_spawn"`` (the weights and the history come
          back to the calling process; the script needs an ``if __name__ == "__main__":``
          guard), ``"ddp"`` (no unused-parameter search, slightly faster) or a
          :class:`~lightning.pytorch.strategies.DDPStrategy` instance; any DDP strategy turns
          the distributed sampler on.
        - DDP turns early stopping off (scvi-tools); set ``max_epochs``.

        Several machines: launch the same script on every node with ``devices`` = GPUs per
        node and ``num_nodes`` = number of nodes. Under SLURM (``srun``, ``--ntasks-per-node``
        = devices) or ``torchrun --nnodes N --nproc-per-node D``, Lightning reads the rank and
        the address of rank 0 from the environment and starts no processes itself. See
        ``benchmarks/SCALE.md`` for complete examples.
        """
        setup_args = self.adata_manager.registry["setup_args"]
        if setup_args["labels_key"] is None:
            msg = (
                "The AnnData was set up without `labels_key`: there is nothing to train the "
                "classifier on. Call `TransAnno.setup_anndata(adata, labels_key=...)`."
            )
            raise ValueError(msg)
        if not 0.0 < train_size <= 1.0:
            msg = f"train_size must be in (0, 1], got {train_size}."
            raise ValueError(msg)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(
            -1
        )
        n_classes = len(self.classes_)
        labeled = np.flatnonzero(codes < n_classes)
        if labeled.size == 0:
            msg = (
                f"No labeled cells: every cell of adata.obs[{setup_args['labels_key']!r}] is "
                f"{setup_args['unlabeled_category']!r} (the unlabeled category)."
            )
            raise ValueError(msg)
        present = np.unique(codes[labeled])
        if present.size < 2:
            msg = (
                f"Only one cell type ({self.classes_[int(present[0])]!r}) among the labeled "
                "cells: a classifier needs at least two."
            )
            raise ValueError(msg)
        empty = _empty_rows(get_matrix(self.adata, setup_args["layer"]))
        if empty[labeled].any():
            warnings.warn(
                f"{int(empty[labeled].sum())} labeled cells have no counts at all; they are "
                "left out of training (they would be predicted 'Unassigned').",
                UserWarning,
                stacklevel=2,
            )
            labeled = labeled[~empty[labeled]]
            present = np.unique(codes[labeled])
            if present.size < 2:
                msg = "Fewer than two cell types have cells with counts: nothing to train on."
                raise ValueError(msg)
        tr, va = stratified_split(codes[labeled], train_size, settings.seed)
        train_idx, val_idx = labeled[tr], labeled[va]
        unlabeled = np.setdiff1d(np.arange(codes.size), labeled)

        counts = np.bincount(codes[train_idx], minlength=n_classes).astype(np.float64)
        weights = _class_weights(counts, _weighting_power(class_weighting, "class_weighting"))
        wide_weights = _class_weights(
            counts, _weighting_power(wide_class_weighting, "wide_class_weighting")
        )
        label_map = torch.full((n_classes + 1,), -100, dtype=torch.long)
        label_map[:n_classes] = torch.arange(n_classes)

        self._set_training_genes(self.adata)
        self.module.input_is_counts = self.input_scale_ == "counts"
        if max_epochs is None:
            max_epochs = _default_max_epochs(train_idx.size)
        frozen = self._finetuning_frozen_parts(finetune, trainable_layers)
        if deep_weight is None:
            deep_weight = DEFAULT_DEEP_WEIGHT if wide_fit == "logistic" else 1.0
        if deep_weight != "auto" and not (
            isinstance(deep_weight, int | float) and 0.0 <= deep_weight <= 1.0
        ):
            msg = f"deep_weight must be 'auto' or a number in [0, 1], got {deep_weight!r}."
            raise ValueError(msg)
        if wide_fit not in ("logistic", "joint"):
            msg = f"wide_fit must be 'logistic' or 'joint', got {wide_fit!r}."
            raise ValueError(msg)
        if self.module.wide is not None and wide_fit == "logistic":
            if not wide_c > 0:
                msg = f"wide_c must be positive, got {wide_c!r}."
                raise ValueError(msg)
            self._fit_wide(codes, train_idx, wide_weights, wide_c, batch_size)
            frozen.append(self.module.wide)
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", lr)
        plan_kwargs.setdefault("backbone_lr", backbone_lr)
        plan_kwargs["class_weights"] = torch.as_tensor(weights, dtype=torch.float32)
        plan_kwargs["label_map"] = label_map
        logger.info(
            "Training on %d labeled cells (%d validation, %d unlabeled ignored), %d epochs.",
            train_idx.size,
            val_idx.size,
            unlabeled.size,
            max_epochs,
        )
        self.module.temperature.fill_(1.0)
        self.module.deep_weight.fill_(1.0)
        self._run_plan(
            self._training_plan_cls,
            plan_kwargs,
            [train_idx, val_idx, unlabeled],
            frozen=frozen,
            batch_size=batch_size,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            early_stopping_patience=early_stopping_patience,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        self._merge_pretrain_history()
        self._fit_confidence(codes, train_idx, val_idx, batch_size, deep_weight)

    def _fit_wide(
        self,
        codes: np.ndarray,
        train_idx: np.ndarray,
        class_weights: np.ndarray,
        c: float,
        batch_size: int,
    ) -> None:
        """Fit the wide path as a weighted L2 logistic regression on training cells."""
        rng = np.random.default_rng(settings.seed)
        cells = np.sort(train_idx[_stratified_subsample(codes[train_idx], _N_LINEAR_CELLS, rng)])
        X = self._log_expression(cells, batch_size, sparse=True)
        y = codes[cells]
        t0 = time.perf_counter()
        clf = _logistic_regression(X, y, class_weights[y], c)
        n_classes, n_genes = self.module.wide.weight.shape
        weight = np.zeros((n_classes, n_genes), dtype=np.float32)
        bias = np.full(n_classes, -30.0, dtype=np.float32)  # classes without training cells
        present = clf.classes_.astype(int)
        if present.size == 2:  # scikit-learn keeps one row for two classes
            weight[present] = np.stack([-clf.coef_[0], clf.coef_[0]]) / 2
            bias[present] = np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2
        else:
            weight[present] = clf.coef_
            bias[present] = clf.intercept_
        with torch.no_grad():
            self.module.wide.weight.copy_(torch.from_numpy(weight))
            self.module.wide.bias.copy_(torch.from_numpy(bias))
        logger.info(
            "Wide path: logistic regression (C=%g) on %d cells in %.1f s.",
            c,
            cells.size,
            time.perf_counter() - t0,
        )

    def _finetuning_frozen_parts(self, finetune: str, trainable_layers: int) -> list:
        """The modules that ``finetune`` leaves out, and the pretraining head."""
        backbone = self.module.backbone
        n_layers = len(backbone.encoder.layer)
        if finetune == "full":
            frozen_parts = []
        elif finetune == "head":
            frozen_parts = [backbone]
        elif finetune == "partial":
            if not 0 <= trainable_layers <= n_layers:
                msg = f"trainable_layers must be in [0, {n_layers}], got {trainable_layers}."
                raise ValueError(msg)
            frozen_parts = [
                backbone.gene_embeddings,
                backbone.value_embeddings,
                backbone.layer_norm,
                *backbone.encoder.layer[: n_layers - trainable_layers],
            ]
        else:
            msg = f"finetune must be 'full', 'partial' or 'head', got {finetune!r}."
            raise ValueError(msg)
        return [*frozen_parts, self.module.value_head]

    def _run_plan(
        self,
        plan_cls: type,
        plan_kwargs: dict,
        external_indexing: list[np.ndarray],
        *,
        frozen: list,
        batch_size: int,
        max_epochs: int,
        accelerator: str,
        devices,
        early_stopping: bool,
        early_stopping_monitor: str,
        early_stopping_patience: int,
        datasplitter_kwargs: dict | None,
        trainer_kwargs: dict,
    ) -> None:
        """Fit ``plan_cls(module, **plan_kwargs)`` through scvi-tools' ``DataSplitter`` and
        ``TrainRunner``.

        ``external_indexing`` is ``[train, validation, test]`` cell positions. The modules in
        ``frozen`` take no gradient during the fit (so DDP finds no unused parameter) and are
        trainable again afterwards, also when training fails.
        """
        train_idx, val_idx = external_indexing[0], external_indexing[1]
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        # devices > 1 or num_nodes > 1: DDP strategy + distributed sampler (see "Multi-device")
        configure_distributed(accelerator, devices, trainer_kwargs, datasplitter_kwargs)
        if 0 < train_idx.size % batch_size < 3:
            datasplitter_kwargs.setdefault("drop_last", True)
        data_splitter = self._data_splitter_cls(
            self.adata_manager,
            external_indexing=external_indexing,
            batch_size=batch_size,
            **datasplitter_kwargs,
        )
        training_plan = plan_cls(self.module, **plan_kwargs)
        has_val = val_idx.size > 0
        if has_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        trainer_kwargs.setdefault("early_stopping_monitor", early_stopping_monitor)
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        runner = self._train_runner_cls(
            self,
            training_plan=training_plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping and has_val,
            **trainer_kwargs,
        )
        params = [p for part in frozen for p in part.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            runner()
        finally:
            for p in params:
                p.requires_grad_(True)

    def _merge_pretrain_history(self) -> None:
        """Keep the pretraining curves in ``history`` next to the fine-tuning ones."""
        previous = self.pretrain_history_ or {}
        if isinstance(self.history_, dict):
            for key, frame in previous.items():
                self.history_.setdefault(key, frame)

    @devices_dsp.dedent
    def pretrain(
        self,
        max_epochs: int | None = None,
        mask_prob: float = 0.15,
        lr: float = 1e-3,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.95,
        batch_size: int = 64,
        early_stopping: bool = True,
        early_stopping_patience: int = 5,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Pretrain the backbone on every registered cell by masked value modelling.

        Self-supervised (labels, if any, are not read): in each cell about ``mask_prob`` of the
        expressed-gene tokens have their value masked and the backbone learns to predict their
        value bins from the other genes (:class:`~transanno_sc.train.PretrainingPlan`). Then
        :meth:`train` fine-tunes on labeled cells, or :meth:`save_backbone` keeps the backbone
        for :meth:`from_pretrained` on other data. ``history`` gets ``pretrain_loss``,
        ``pretrain_validation_loss`` and ``pretrain_validation_accuracy``.

        Parameters
        ----------
        max_epochs
            Passes over the cells. ``None``: about 50,000 cell presentations, clipped to 5-50
            epochs.
        mask_prob
            Fraction of each cell's expressed-gene tokens that is masked.
        lr
            Peak learning rate (linear warm-up, then cosine decay).
        %(param_accelerator)s
        %(param_devices)s
        train_size
            Fraction of the cells used for training (random); the rest validates.
        batch_size
            Cells per minibatch.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience``
            epochs.
        early_stopping_patience
            Epochs without improvement before stopping.
        datasplitter_kwargs
            Passed to :class:`~scvi.dataloaders.DataSplitter`.
        plan_kwargs
            Passed to :class:`~transanno_sc.train.PretrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` and on to Lightning (``precision``,
            ``strategy``, ``num_nodes``, ``enable_progress_bar``, ...).

        Examples
        --------
        >>> import transanno_sc as ta
        >>> adata = ta.datasets.zilionis_mouse_lung()
        >>> ta.model.TransAnno.setup_anndata(adata)  # no labels needed
        >>> model = ta.model.TransAnno(adata)
        >>> model.pretrain(max_epochs=2)
        >>> model.save_backbone("lung_backbone")  # doctest: +SKIP
        """
        if not 0.0 < train_size <= 1.0:
            msg = f"train_size must be in (0, 1], got {train_size}."
            raise ValueError(msg)
        n = self.adata.n_obs
        rng = np.random.default_rng(settings.seed)
        order = rng.permutation(n)
        n_val = int(np.floor(round(n * (1.0 - train_size), 6))) if n > 1 else 0
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        self._set_training_genes(self.adata)
        self.module.input_is_counts = self.input_scale_ == "counts"
        if max_epochs is None:
            max_epochs = int(np.clip(np.ceil(50_000 / max(train_idx.size, 1)), 5, 50))
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", lr)
        plan_kwargs.setdefault("mask_prob", mask_prob)
        was_trained = bool(self.is_trained_)
        logger.info(
            "Pretraining on %d cells (%d validation), %d epochs, %.0f%% of tokens masked.",
            train_idx.size,
            val_idx.size,
            max_epochs,
            100 * mask_prob,
        )
        # the classification heads take no part in pretraining
        self._run_plan(
            PretrainingPlan,
            plan_kwargs,
            [train_idx, val_idx, np.array([], dtype=np.int64)],
            frozen=list(self.module.head_modules.values()),
            batch_size=batch_size,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="pretrain_validation_loss",
            early_stopping_patience=early_stopping_patience,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        # pretraining does not train the classifier: predictions stay refused until `train`
        self.is_trained_ = was_trained
        self.is_pretrained_ = True
        self.pretrain_history_ = dict(self.history_ or {})

    def save_backbone(self, dir_path: str, overwrite: bool = False) -> None:
        """Save the backbone, its gene vocabulary and tokenization settings to a folder.

        The folder holds ``config.json`` and ``model.safetensors`` (loadable with
        ``TransAnnoBackbone.from_pretrained(dir_path)`` from :mod:`transanno_sc.nn`, as any
        :mod:`transformers` model) and ``vocabulary.json`` (the genes, in token order, and the
        input normalization). :meth:`from_pretrained` builds a new model on it.

        Parameters
        ----------
        dir_path
            Folder to write.
        overwrite
            Replace a backbone already saved there.
        """
        vocab_path = os.path.join(dir_path, _VOCAB_FILE)
        if os.path.exists(vocab_path) and not overwrite:
            msg = f"{vocab_path} already exists. Pass `overwrite=True` to replace it."
            raise ValueError(msg)
        ours = {_VOCAB_FILE, "config.json", "model.safetensors"}
        with _staged_folder(dir_path, keep=lambda name: name not in ours) as tmp:
            self.module.backbone.save_pretrained(tmp, safe_serialization=True)
            with open(os.path.join(tmp, _VOCAB_FILE), "w") as f:
                json.dump(
                    {
                        "format_version": _FORMAT_VERSION,
                        "transanno_sc_version": _package_version(),
                        "genes": list(self.var_names_),
                        "target_sum": TARGET_SUM,
                        "pretrained": bool(self.is_pretrained_),
                        "input_scale": self.input_scale_,
                    },
                    f,
                    indent=1,
                )

    @classmethod
    def from_pretrained(
        cls,
        adata: AnnData,
        backbone_dir: str,
        reference_genes: int = 2000,
        **model_kwargs,
    ) -> TransAnno:
        """A new model on ``adata`` that starts from a saved backbone.

        ``adata`` (set up with :meth:`setup_anndata`) is mapped onto the backbone's gene
        vocabulary by name (exact, then case-insensitive); vocabulary genes it lacks are
        treated as not expressed. The overlap with the backbone's vocabulary is stored in
        ``adata.uns["transanno_backbone"]`` (with ``n_added_genes``, see below); below 50 % a
        warning is issued, below 10 % a :class:`ValueError` is raised. Then :meth:`train`
        fine-tunes (see its ``finetune``).

        The vocabulary is then extended with ``adata``'s own highly variable genes: a backbone
        pretrained on another tissue or panel lacks many of the reference's marker genes
        however high the name overlap, and a model restricted to the backbone's genes cannot
        see them (``benchmarks/README.md``: a lung immune-cell backbone on pancreas cells
        lowered macro-F1 from 0.88 to 0.49 before this extension). The added genes come after
        the backbone's, in alphabetical order (so the model does not depend on the AnnData's
        gene order); their gene embeddings start at random, with the pretrained embeddings'
        typical length, and are learned with ``finetune="full"`` (with ``"partial"`` and
        ``"head"`` the embeddings stay fixed, the added genes still reach the trained layers
        as distinct tokens, and the wide path reads them in every mode).

        Parameters
        ----------
        adata
            AnnData registered with :meth:`setup_anndata`.
        backbone_dir
            Folder written by :meth:`save_backbone`.
        reference_genes
            Number of highly variable genes of ``adata`` considered for the extension; those
            already in the backbone's vocabulary are not added again. ``0`` keeps the
            backbone's vocabulary as it is.
        **model_kwargs
            Non-architecture arguments of :class:`TransAnno` (``n_latent``, ``dropout``,
            ``wide``); the architecture comes from the backbone.

        Examples
        --------
        >>> import transanno_sc as ta
        >>> adata = ta.datasets.zilionis_mouse_lung()
        >>> ta.model.TransAnno.setup_anndata(adata, labels_key="cell_type")
        >>> model = ta.model.TransAnno.from_pretrained(adata, "lung_backbone")  # doctest: +SKIP
        >>> model.train(finetune="partial")  # doctest: +SKIP
        """
        from transanno_sc.data import N_SPECIAL_GENE_TOKENS
        from transanno_sc.nn import TransAnnoBackbone, TransAnnoConfig

        fixed = {"n_hidden", "n_layers", "n_heads", "max_tokens", "n_bins", "value_encoding"}
        clash = sorted(fixed & set(model_kwargs)) + sorted(
            {"gene_vocabulary", "n_top_genes"} & set(model_kwargs)
        )
        if clash:
            msg = f"{clash} come from the backbone in {backbone_dir!r} and cannot be passed."
            raise TypeError(msg)
        if isinstance(reference_genes, bool) or not (
            isinstance(reference_genes, int | np.integer) and reference_genes >= 0
        ):
            msg = f"reference_genes must be a non-negative integer, got {reference_genes!r}."
            raise ValueError(msg)
        vocab = _read_vocabulary(backbone_dir)
        try:
            config = TransAnnoConfig.from_pretrained(backbone_dir)
            # safetensors only: a pickled checkpoint in the folder is never loaded
            backbone = TransAnnoBackbone.from_pretrained(backbone_dir, use_safetensors=True)
        except (OSError, ValueError) as e:
            msg = f"Could not load the backbone in {backbone_dir!r}: {e}"
            raise ValueError(msg) from e
        if config.n_genes != len(vocab):
            msg = (
                f"{backbone_dir!r} is inconsistent: the backbone has {config.n_genes} genes, "
                f"{_VOCAB_FILE} lists {len(vocab)}."
            )
            raise ValueError(msg)
        manager = cls._get_most_recent_anndata_manager(adata, required=True)
        setup_args = manager.registry["setup_args"]
        match = _checked_match(adata.var_names, vocab, "adata")
        overlap = match.to_dict()
        added = _added_genes(adata, setup_args, match, reference_genes, settings.seed)
        model_kwargs.setdefault("dropout", config.hidden_dropout_prob)
        with warnings.catch_warnings():
            # the overlap was checked (and warned about) against the backbone's vocabulary
            warnings.filterwarnings("ignore", message="Only .* of the model's genes")
            model = cls(
                adata,
                n_hidden=config.hidden_size,
                n_layers=config.num_hidden_layers,
                n_heads=config.num_attention_heads,
                max_tokens=config.max_tokens,
                n_bins=config.n_bins,
                value_encoding=config.value_encoding,
                gene_vocabulary=vocab + added,
                **model_kwargs,
            )
        state = backbone.state_dict()
        if added:
            # pretrained gene embeddings first, the added genes' after them: random
            # directions with the pretrained embeddings' mean length
            old = state["gene_embeddings.weight"]
            length = old[N_SPECIAL_GENE_TOKENS:].norm(dim=1).mean()
            new = torch.randn(len(added), old.shape[1], dtype=old.dtype)
            new = F.normalize(new, dim=1) * length
            state["gene_embeddings.weight"] = torch.cat([old, new])
        try:
            model.module.backbone.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = f"The backbone in {backbone_dir!r} does not fit its own config: {e}"
            raise ValueError(msg) from e
        model.is_pretrained_ = True
        overlap["n_added_genes"] = len(added)
        adata.uns["transanno_backbone"] = {"backbone_dir": str(backbone_dir), **overlap}
        if added:
            logger.info(
                "Vocabulary: %d backbone genes + %d highly variable genes of adata.",
                len(vocab),
                len(added),
            )
        return model

    @torch.inference_mode()
    def _log_expression(
        self, indices: np.ndarray, batch_size: int, sparse: bool = False
    ) -> torch.Tensor | sp.csr_matrix:
        """Log-normalized vocabulary expression of registered cells ``indices`` (sorted), as
        a dense tensor or (``sparse``) a float32 CSR matrix."""
        X = get_matrix(self.adata, self.registry_["setup_args"]["layer"])
        match = match_genes(self.adata.var_names, self.var_names_)
        out = None if sparse else torch.zeros((len(indices), len(self.var_names_)))
        blocks = []
        for pos, x, library in iter_vocab_batches(
            X, match.source, match.target, match.n_vocab, batch_size, indices=np.sort(indices)
        ):
            values = self.module.log_expression(
                torch.from_numpy(x),
                torch.from_numpy(library),
                is_counts=self.input_scale_ == "counts",
            )
            if sparse:
                blocks.append((pos, sp.csr_matrix(values.numpy())))
            else:
                out[torch.as_tensor(pos)] = values
        if not sparse:
            return out
        if not blocks:
            return sp.csr_matrix((0, len(self.var_names_)), dtype=np.float32)
        rows = np.concatenate([pos for pos, _ in blocks])
        stacked = sp.vstack([block for _, block in blocks], format="csr")
        return stacked[np.argsort(rows)]  # row i: the cell at output position i

    def _fit_confidence(
        self,
        codes: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        batch_size: int,
        deep_weight: float | str = 1.0,
    ) -> None:
        """Temperature scaling and the novelty space, from the reference only.

        The temperature minimizes the validation cells' negative log-likelihood. The novelty
        space is a PCA of the log-expression of (at most 5,000, stratified by type) training
        cells, which are kept as the neighbours a cell is compared with; the reference
        distribution of the novelty distance comes from those cells (leave-one-out) and the
        validation cells.
        """
        rng = np.random.default_rng(settings.seed)
        heldout = val_idx if val_idx.size else train_idx
        if not val_idx.size:
            warnings.warn(
                "No validation cells (train_size=1, or too few labeled cells per type for one "
                "to be held out): the temperature is fitted on training cells and the "
                "confidence will be over-confident.",
                UserWarning,
                stacklevel=3,
            )
        reference = np.sort(
            train_idx[_stratified_subsample(codes[train_idx], _N_REFERENCE_CELLS, rng)]
        )
        novelty_heldout = np.sort(val_idx)[:_N_REFERENCE_CELLS]
        self.module.fit_novelty(
            self._log_expression(reference, batch_size),
            torch.as_tensor(codes[reference]),
            self._log_expression(novelty_heldout, batch_size),
            torch.as_tensor(codes[novelty_heldout]),
            seed=settings.seed,
        )
        y = codes[heldout]
        if self.module.wide is None:
            deep_weight = 1.0
        elif deep_weight == "auto":
            deep_weight = self._fit_deep_weight(heldout, y, batch_size)
        self.module.deep_weight.fill_(float(deep_weight))
        held = self._forward(self.adata, indices=heldout, batch_size=batch_size)
        log_probs = np.log(np.clip(held.probs, 1e-30, None))
        temperature = fit_temperature(log_probs, y)
        self.module.temperature.fill_(temperature)
        calibrated = torch.softmax(torch.from_numpy(log_probs) / temperature, 1).numpy()
        self.calibration_ = {
            "deep_weight": deep_weight,
            "temperature": temperature,
            "ece_uncalibrated": expected_calibration_error(held.probs, y),
            "ece_calibrated": expected_calibration_error(calibrated, y),
            "n_cells": int(y.size),
        }
        if isinstance(self.history_, dict):
            epoch = pd.Index([len(self.history_.get("train_loss", [])) - 1], name="epoch")
            for key in ("deep_weight", "temperature", "ece_uncalibrated", "ece_calibrated"):
                name = f"calibration_{key}"
                self.history_[name] = pd.DataFrame({name: [self.calibration_[key]]}, index=epoch)
        logger.info(
            "Calibrated on %d validation cells: temperature %.2f, ECE %.3f -> %.3f.",
            y.size,
            temperature,
            self.calibration_["ece_uncalibrated"],
            self.calibration_["ece_calibrated"],
        )

    def _fit_deep_weight(self, heldout: np.ndarray, y: np.ndarray, batch_size: int) -> float:
        """Weight of the Transformer's logits added to the wide path's: the value in
        ``DEEP_WEIGHT_GRID`` whose temperature-scaled mixture has the lowest negative
        log-likelihood on the held-out cells (a stacking of the two classifiers)."""
        log_probs = []
        for weight in (0.0, 1.0):
            self.module.deep_weight.fill_(weight)
            out = self._forward(self.adata, indices=heldout, batch_size=batch_size)
            log_probs.append(np.log(np.clip(out.probs, 1e-30, None)))
        wide, both = log_probs
        deep = both - wide  # the deep logits up to a per-cell constant
        y_t = torch.as_tensor(y, dtype=torch.long)
        best, best_nll = 1.0, np.inf
        for w in DEEP_WEIGHT_GRID:
            mix = wide + w * deep
            t = fit_temperature(mix, y)
            nll = float(F.cross_entropy(torch.as_tensor(mix / t), y_t))
            if nll < best_nll - 1e-9:
                best, best_nll = float(w), nll
        logger.info("Transformer logits weighted %.2f next to the wide path's.", best)
        return best

    # ------------------------------------------------------------------ inference
    def _query_layer(self, adata: AnnData, layer) -> str | None:
        if layer is not _KEEP:
            return layer
        setup_layer = self.registry_["setup_args"]["layer"]
        return setup_layer if setup_layer in adata.layers else None

    @torch.inference_mode()
    def _forward(
        self,
        adata: AnnData | None,
        *,
        indices=None,
        batch_size: int | None = None,
        layer=_KEEP,
        input_scale: InputScale = "auto",
    ) -> _Outputs:
        """Stream ``adata`` through the module (probabilities, embedding, novelty, overlap)."""
        self._check_if_trained(warn=False)
        adata = self.adata if adata is None else adata
        if adata is None:
            msg = "The model holds no AnnData: pass `adata=`."
            raise ValueError(msg)
        check_shape_and_names(adata)
        layer = self._query_layer(adata, layer)
        X = get_matrix(adata, layer)
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        scale = resolve_input_scale(X, input_scale, where)
        match = self._match(adata, "adata")
        if indices is not None:
            indices = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1))
        n = adata.n_obs if indices is None else indices.size
        batch_size = batch_size or settings.batch_size
        device = self.device
        self.module.eval()
        probs = np.empty((n, len(self.classes_)), dtype=np.float32)
        latent = np.empty((n, self.module.to_latent[0].out_features), dtype=np.float32)
        distance = np.empty(n, dtype=np.float32)
        n_expressed = np.empty(n, dtype=np.int64)
        # streams CHUNK_SIZE rows at a time (sparse/backed stay sparse; one batch is dense);
        # cells of a chunk are grouped by number of expressed genes to cut padding
        batches = iter_vocab_batches(
            X,
            match.source,
            match.target,
            match.n_vocab,
            batch_size,
            indices=indices,
            max_tokens=self.module.config.max_tokens,
            check=lambda rows: check_values(rows, where),
        )
        n_batches = n_forward_batches(n, batch_size)
        t0 = time.perf_counter()
        for pos, x, library in track(
            batches,
            description="Predicting",
            disable=n_batches < 20 or not settings.progress_bar_style,
            style="tqdm",
            total=n_batches,
        ):
            out = self.module.inference(
                torch.from_numpy(x).to(device),
                torch.from_numpy(library).to(device),
                is_counts=scale == "counts",
            )
            probs[pos] = torch.softmax(out[MODULE_KEYS.LOGITS_KEY].float(), 1).cpu()
            latent[pos] = out[MODULE_KEYS.Z_KEY].float().cpu()
            distance[pos] = out[MODULE_KEYS.DISTANCE_KEY].float().cpu()
            n_expressed[pos] = out[MODULE_KEYS.N_EXPRESSED_KEY].cpu()
        elapsed = max(time.perf_counter() - t0, 1e-9)
        logger.info("Predicted %d cells in %.1f s (%.0f cells/s).", n, elapsed, n / elapsed)
        overlap = match.to_dict()
        overlap["input_scale"] = scale
        distance_t = torch.from_numpy(distance).to(device)
        shift = self.module.shift_factor(distance_t[torch.from_numpy(n_expressed > 0)])
        pvalue = self.module.novelty_pvalue(distance_t / shift).cpu().numpy()
        return _Outputs(probs, latent, distance, pvalue, n_expressed, overlap, float(shift))

    def predict(
        self,
        adata: AnnData | None = None,
        indices=None,
        soft: bool = False,
        unassigned_threshold: float | None = None,
        batch_size: int | None = None,
        novelty: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """Predict cell types.

        Genes are matched to the model's vocabulary by name (gene order and extra genes do not
        matter; missing genes count as not expressed), so ``adata`` may be any AnnData with
        counts or log1p-normalized values, also opened with ``backed="r"``.

        Parameters
        ----------
        adata
            AnnData to annotate; the registered one when ``None``.
        indices
            Positions of the cells to predict; all when ``None``.
        soft
            Return the (calibrated) class probabilities instead of labels.
        unassigned_threshold
            Cells whose confidence (see :meth:`predict_confidence`) is below this are labeled
            ``"Unassigned"`` (hard predictions only); ``None`` labels every cell.
        batch_size
            Cells per forward pass.
        novelty
            Let the novelty score lower the confidence (see :meth:`predict_confidence`).

        Returns
        -------
        An array of labels, or (``soft=True``) a DataFrame of probabilities with the cells as
        index and the cell types as columns.
        """
        out = self._forward(adata, indices=indices, batch_size=batch_size)
        names = self._obs_names(adata, indices)
        if soft:
            return pd.DataFrame(out.probs, index=names, columns=self.classes_)
        return self._labels(out, unassigned_threshold, novelty=novelty)

    def predict_confidence(
        self,
        adata: AnnData | None = None,
        indices=None,
        batch_size: int | None = None,
        novelty: bool = True,
    ) -> pd.DataFrame:
        """Confidence of each cell's predicted type, and what it is made of.

        ``confidence = probability x typicality``: the calibrated probability of the predicted
        type (temperature scaling on the validation split, :cite:p:`Guo2017`) times the
        typicality of the cell, ``p / (p + NOVELTY_ALPHA)`` with ``p`` its novelty p-value.

        The novelty distance of a cell is its mean cosine distance to the 10 nearest reference
        cells *of its predicted type* (in a PCA of the reference's log-expression), divided by
        that type's median held-out distance, so tight and diffuse types are judged alike. The
        p-value is the fraction of held-out reference cells (validation cells, and reference
        cells cross-fitted in 5 folds, all types pooled) whose divided distance is at least
        as large. A cell of a type the reference never contained lies far from the type it is
        forced into, however sure the classifier is. A query of at least 50 cells that lies
        farther from the reference as a whole (another technology, shallower sequencing, a
        reference of near-duplicate cells) has its distances divided by the ratio of its 10th
        percentile to the reference's (when above 1; ``novelty_shift`` in
        ``uns["transanno"]["calibration"]``), so a shift of the whole query is not read as
        novelty; the p-values of a cell then depend on the other cells scored with it. Cells with no expressed gene of the
        vocabulary get confidence 0. This is the score that ``unassigned_threshold``
        thresholds and that :func:`~transanno_sc.tl.transanno_annotate` writes.

        Parameters
        ----------
        adata
            AnnData to score; the registered one when ``None``.
        indices
            Positions of the cells to score; all when ``None``.
        batch_size
            Cells per forward pass.
        novelty
            Include the typicality factor (``False``: confidence = probability).

        Returns
        -------
        A DataFrame indexed by cell with columns ``label`` (predicted type), ``confidence``,
        ``probability``, ``novelty_pvalue`` and ``n_expressed_genes``.
        """
        out = self._forward(adata, indices=indices, batch_size=batch_size)
        return pd.DataFrame(
            {
                "label": np.asarray(self.classes_, dtype=object)[out.probs.argmax(1)],
                "confidence": self._confidence(out, novelty=novelty),
                "probability": out.probs.max(1),
                "novelty_pvalue": out.novelty_pvalue,
                "n_expressed_genes": out.n_expressed,
            },
            index=self._obs_names(adata, indices),
        )

    def _obs_names(self, adata: AnnData | None, indices) -> pd.Index:
        adata = self.adata if adata is None else adata
        return adata.obs_names if indices is None else adata.obs_names[np.sort(indices)]

    @staticmethod
    def _confidence(out: _Outputs, novelty: bool = True) -> np.ndarray:
        """The confidence score of :meth:`predict_confidence`, from one pass's outputs."""
        conf = out.probs.max(1).astype(np.float64)
        if novelty:
            p = out.novelty_pvalue.astype(np.float64)
            conf = conf * p / (p + NOVELTY_ALPHA)
        conf[out.n_expressed == 0] = 0.0
        return conf

    def _labels(
        self, out: _Outputs, unassigned_threshold: float | None, novelty: bool = True
    ) -> np.ndarray:
        """Predicted types, ``"Unassigned"`` where the confidence is below the threshold."""
        labels = np.asarray(self.classes_, dtype=object)[out.probs.argmax(1)]
        if unassigned_threshold is not None:
            _check_threshold(unassigned_threshold)
            labels[self._confidence(out, novelty) < unassigned_threshold] = UNASSIGNED
        return labels

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices=None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Cell embedding ``(n_cells, n_latent)``, float32.

        Parameters
        ----------
        adata
            AnnData to embed; the registered one when ``None``.
        indices
            Positions of the cells to embed; all when ``None``.
        batch_size
            Cells per forward pass.
        """
        return self._forward(adata, indices=indices, batch_size=batch_size).latent

    def compile(self, **compile_kwargs) -> None:
        """Compile the Transformer backbone with :func:`torch.compile`, in place.

        Later :meth:`train`, :meth:`pretrain`, :meth:`predict` and the other forward passes
        run the compiled encoder (element-wise operations fused with the matrix products);
        weights, :meth:`save` and :meth:`save_backbone` are unchanged. The first batches pay
        the compilation (tens of seconds on CPU; each new batch shape may add a little), so
        compile for long runs: millions of cells, many epochs. ``benchmarks/README.md`` has
        the measured speed-up. Needs a C++ compiler on CPU and Triton on GPU (both come with
        the usual PyTorch installations on Linux).

        Parameters
        ----------
        **compile_kwargs
            Passed to :meth:`torch.nn.Module.compile`; ``dynamic=True`` by default (batch
            sizes and token lengths vary from batch to batch).
        """
        compile_kwargs.setdefault("dynamic", True)
        self.module.backbone.compile(**compile_kwargs)

    # ------------------------------------------------------------------ persistence
    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to ``dir_path``.

        Weights go to ``model.safetensors`` (no pickle), everything else (hyperparameters,
        gene vocabulary, cell types, setup arguments, training history) to ``transanno.json``.

        Parameters
        ----------
        dir_path
            Folder to write.
        prefix
            Prefix of the file names.
        overwrite
            Overwrite an existing folder's model files.
        save_anndata
            Also write the registered AnnData as ``adata.h5ad``.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad`.
        """
        prefix = prefix or ""
        config_path = os.path.join(dir_path, f"{prefix}{_CONFIG_FILE}")
        if os.path.exists(config_path) and not overwrite:
            msg = f"{config_path} already exists. Pass `overwrite=True` to replace it."
            raise ValueError(msg)
        ours = {f"{prefix}{name}" for name in (_CONFIG_FILE, _WEIGHTS_FILE, "adata.h5ad")}
        with _staged_folder(dir_path, keep=lambda name: name not in ours) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
            weights_path = os.path.join(tmp, f"{prefix}{_WEIGHTS_FILE}")
            save_file(state, weights_path)
            config = {
                "format_version": _FORMAT_VERSION,
                "transanno_sc_version": _package_version(),
                "model_class": type(self).__name__,
                "init_params": self.init_params_,
                "setup_args": dict(self.registry_["setup_args"]),
                "classes": list(self.classes_),
                "var_names": list(self.var_names_),
                "input_scale": self.input_scale_,
                "is_trained": bool(self.is_trained_),
                "calibration": self.calibration_,
                "gene_count_selection": self.gene_count_selection_,
                "is_pretrained": bool(self.is_pretrained_),
                "history": history_to_json(
                    self.history_ if isinstance(self.history_, dict) else None
                ),
                "weights_sha256": _sha256(weights_path),
            }
            with open(os.path.join(tmp, f"{prefix}{_CONFIG_FILE}"), "w") as f:
                json.dump(config, f, indent=1)
            if save_anndata and self.adata is not None:
                self.adata.write_h5ad(
                    os.path.join(tmp, f"{prefix}adata.h5ad"), **anndata_write_kwargs
                )

    @classmethod
    @devices_dsp.dedent
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ) -> TransAnno:
        """Load a model saved with :meth:`save`.

        Only JSON and safetensors are read: loading never executes code from the folder.
        Without ``adata`` the model can predict on any AnnData; with ``adata`` (set up with the
        saved arguments when it is not yet) it can also be trained further.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Optional AnnData to attach.
        %(param_accelerator)s
        device
            Device index or ``"auto"``.
        prefix
            Prefix of the file names.
        """
        from scvi.model._utils import parse_device_args

        prefix = prefix or ""
        config = _read_config(os.path.join(dir_path, f"{prefix}{_CONFIG_FILE}"))
        if config.get("model_class") != cls.__name__:
            msg = f"{dir_path} holds a {config.get('model_class')!r} model, not {cls.__name__!r}."
            raise ValueError(msg)
        weights_path = os.path.join(dir_path, f"{prefix}{_WEIGHTS_FILE}")
        if not os.path.exists(weights_path):
            msg = f"{weights_path} is missing: {dir_path} is not a complete TransAnno model."
            raise FileNotFoundError(msg)
        expected = config.get("weights_sha256")  # folders saved before 0.2 have none
        if expected is not None and _sha256(weights_path) != expected:
            msg = (
                f"{weights_path} does not match the SHA-256 recorded in {_CONFIG_FILE}: the "
                "folder is corrupt or its files come from different saves. Save the model again."
            )
            raise ValueError(msg)
        try:
            state = load_file(weights_path)
        except Exception as e:
            msg = f"Could not read {weights_path} as safetensors ({e}). The file is corrupt."
            raise ValueError(msg) from e

        model = cls.__new__(cls)
        registry = {
            "setup_args": config["setup_args"],
            "setup_method_name": "setup_anndata",
            "model_name": cls.__name__,
            "field_registries": {},
        }
        BaseModelClass.__init__(model, registry=registry)
        model.init_params_ = config["init_params"]
        model.classes_ = list(config["classes"])
        model.var_names_ = list(config["var_names"])
        model.input_scale_ = config["input_scale"]
        model._build_module()
        model.module.resize_fitted_buffers(state)
        # model folders written before the weight existed: the Transformer at full weight
        state.setdefault("deep_weight", torch.ones(()))
        try:
            model.module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = f"The weights in {weights_path} do not match {_CONFIG_FILE}: {e}"
            raise ValueError(msg) from e
        model.is_trained_ = bool(config["is_trained"])
        model.calibration_ = config.get("calibration")
        selection = config.get("gene_count_selection")
        if selection is not None:  # JSON keys are strings
            selection["scores"] = {int(k): v for k, v in selection["scores"].items()}
        model.gene_count_selection_ = selection
        model.is_pretrained_ = bool(config.get("is_pretrained", False))
        model.pretrain_history_ = None
        model.gene_overlap_ = None
        model.history_ = history_from_json(config.get("history", {}))
        model.module.eval()
        if adata is not None:
            if cls._get_most_recent_anndata_manager(adata) is None:
                cls.setup_anndata(adata, **config["setup_args"])
            model._adata = adata
            model._adata_manager = cls._get_most_recent_anndata_manager(adata, required=True)
            model._register_manager_for_instance(model._adata_manager)
            model.registry_ = model._adata_manager.registry
            model._set_training_genes(adata)
        _, _, torch_device = parse_device_args(
            accelerator=accelerator, devices=device, return_device="torch"
        )
        model.to_device(torch_device)
        return model


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transanno-sc")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _staged_folder(dir_path: str, keep=lambda name: True):
    """Write a folder crash-safely: yield a temporary folder beside ``dir_path`` to write into;
    on success it replaces ``dir_path`` by renames (the files of an existing ``dir_path`` for
    which ``keep(name)`` is true are carried over, as hard links where possible). An
    interrupted write leaves ``dir_path`` as it was and at most a hidden temporary folder."""
    dir_path = os.path.abspath(dir_path)
    parent, name = os.path.split(dir_path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.saving-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(dir_path):
            for entry in os.listdir(dir_path):
                src = os.path.join(dir_path, entry)
                if keep(entry) and not os.path.exists(os.path.join(tmp, entry)):
                    if os.path.isdir(src):
                        shutil.copytree(src, os.path.join(tmp, entry))
                    else:
                        try:
                            os.link(src, os.path.join(tmp, entry))
                        except OSError:
                            shutil.copy2(src, os.path.join(tmp, entry))
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rmdir(old)
            os.rename(dir_path, old)
            os.rename(tmp, dir_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dir_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stratified_subsample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most about ``n`` cells, proportional per label but at least
    :data:`_MIN_REFERENCE_CELLS_PER_TYPE` of each (all of a smaller type)."""
    if labels.size <= n:
        return np.arange(labels.size)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(round(n * idx.size / labels.size), _MIN_REFERENCE_CELLS_PER_TYPE)
        keep.append(rng.choice(idx, min(k, idx.size), replace=False))
    return np.sort(np.concatenate(keep))


class _Outputs(NamedTuple):
    """What one pass of the model over an AnnData gives, row-aligned with its cells."""

    probs: np.ndarray
    latent: np.ndarray
    distance: np.ndarray
    novelty_pvalue: np.ndarray
    n_expressed: np.ndarray
    overlap: dict
    #: Query-level distance factor of the novelty p-values (1: no shift; see
    #: ``TransAnnoModule.shift_factor``).
    novelty_shift: float = 1.0


def _empty_rows(X) -> np.ndarray:
    """Which rows of ``X`` (dense, sparse or backed) hold no non-zero value."""
    empty = np.zeros(X.shape[0], dtype=bool)
    for start, rows in iter_row_chunks(X):
        nnz = rows.getnnz(axis=1) if sp.issparse(rows) else np.count_nonzero(rows, axis=1)
        empty[start : start + rows.shape[0]] = nnz == 0
    return empty


def _check_vocabulary(genes: Sequence[str]) -> list[str]:
    genes = [str(g) for g in genes]
    if not genes:
        msg = "gene_vocabulary is empty."
        raise ValueError(msg)
    if len(set(genes)) != len(genes):
        msg = "gene_vocabulary has duplicate genes."
        raise ValueError(msg)
    return genes


#: How to train for a query's own genes (named in gene-overlap errors and warnings).
_RETRAIN_HINT = (
    "`ta.tl.transanno_annotate(adata, reference=ref, labels_key=...)` (CLI: `transanno annotate "
    "--reference ref.h5ad --labels-key ...`) uses only the genes the reference and the query share."
)


def _checked_match(
    var_names: pd.Index, vocab: Sequence[str], what: str, stacklevel: int = 3
) -> GeneMatch:
    """Match ``vocab`` to ``var_names`` by name; warn or refuse on a poor overlap."""
    match = match_genes(var_names, vocab)
    if match.fraction < MIN_GENE_OVERLAP:
        example = ", ".join(map(str, var_names[:3]))
        data_ids = str(var_names[0]).upper().startswith("ENS")
        model_ids = str(vocab[0]).upper().startswith("ENS")
        if data_ids and not model_ids:
            hint = (
                " The data look like Ensembl IDs while the model uses gene symbols: map them "
                "to symbols first (e.g. from a `var` column such as 'feature_name')."
            )
        elif model_ids and not data_ids:
            hint = (
                " The model uses Ensembl IDs while the data look like gene symbols: use the "
                "same IDs (e.g. from a `var` column such as 'gene_ids')."
            )
        else:
            hint = " Check the species and the gene naming convention (symbols vs IDs)."
        msg = (
            f"Only {match.n_matched} of the model's {match.n_vocab} genes "
            f"({match.fraction:.1%}) are in {what}.var_names (e.g. {example}); at least "
            f"{MIN_GENE_OVERLAP:.0%} are needed.{hint} If {what} was measured on a smaller "
            f"gene panel, train a model for its genes: {_RETRAIN_HINT}"
        )
        raise ValueError(msg)
    if match.fraction < WARN_GENE_OVERLAP:
        warnings.warn(
            f"Only {match.fraction:.1%} of the model's genes are in {what}; missing genes "
            "are treated as not expressed and predictions may suffer. A model trained on the "
            f"genes both share does better: {_RETRAIN_HINT}",
            UserWarning,
            stacklevel=stacklevel,
        )
    logger.info(
        "Gene overlap: %d of %d model genes found (%d by case-insensitive name, %d without "
        "Ensembl version suffix).",
        match.n_matched,
        match.n_vocab,
        match.n_case_insensitive,
        match.n_unversioned,
    )
    return match


def _added_genes(
    adata: AnnData, setup_args: dict, match: GeneMatch, n_top_genes: int, seed: int
) -> list[str]:
    """Highly variable genes of ``adata`` that a vocabulary lacks (``match``: the
    vocabulary matched to ``adata``; its matched genes are not added)."""
    if n_top_genes == 0:
        return []
    X = get_matrix(adata, setup_args["layer"])
    hvg = _select_genes(
        X, adata.var_names, n_top_genes, setup_args["input_scale"] == "counts", seed
    )
    matched = set(adata.var_names[match.source].astype(str))
    return sorted(g for g in hvg if g not in matched)


def _read_vocabulary(backbone_dir: str) -> list[str]:
    path = os.path.join(backbone_dir, _VOCAB_FILE)
    if not os.path.exists(path):
        msg = f"{path} not found: {backbone_dir!r} was not written by `TransAnno.save_backbone`."
        raise FileNotFoundError(msg)
    try:
        with open(path) as f:
            vocab = json.load(f)
        genes = vocab["genes"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        msg = f"{path} is not a valid vocabulary file ({e!r})."
        raise ValueError(msg) from e
    return _check_vocabulary(genes)


def _check_threshold(unassigned_threshold: float) -> None:
    if not 0.0 <= unassigned_threshold <= 1.0:
        msg = f"unassigned_threshold must be in [0, 1] or None, got {unassigned_threshold}."
        raise ValueError(msg)


def _check_matrix(adata: AnnData, layer: str | None, input_scale: InputScale) -> str:
    """Scan every value of the registered matrix and resolve its scale."""
    X = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    scan_matrix(X, where)
    return resolve_input_scale(X, input_scale, where)


def _read_config(path: str) -> dict:
    if not os.path.exists(path):
        msg = f"{path} not found: the folder was not written by `TransAnno.save`."
        raise FileNotFoundError(msg)
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path} is not valid JSON ({e}): the model folder is corrupt."
        raise ValueError(msg) from e
    required = {"init_params", "setup_args", "classes", "var_names", "input_scale", "is_trained"}
    if not isinstance(config, dict) or not required <= set(config):
        missing = sorted(required - set(config)) if isinstance(config, dict) else sorted(required)
        msg = f"{path} lacks {missing}: the model folder is corrupt or from another tool."
        raise ValueError(msg)
    if config.get("format_version", 0) > _FORMAT_VERSION:
        msg = (
            f"{path} was written by a newer transanno-sc "
            f"({config.get('transanno_sc_version')}); upgrade with `pip install -U transanno-sc`."
        )
        raise ValueError(msg)
    return config
