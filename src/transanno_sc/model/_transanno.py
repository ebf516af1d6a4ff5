"""The ``TransAnno`` scvi-tools model."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
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
    MIN_GENE_OVERLAP,
    MODULE_KEYS,
    REGISTRY_KEYS,
    UNASSIGNED,
    WARN_GENE_OVERLAP,
)
from transanno_sc.data import GeneMatch, match_genes
from transanno_sc.module import TransAnnoModule
from transanno_sc.train import ClassificationTrainingPlan

from ._utils import (
    InputScale,
    check_labels,
    check_shape_and_names,
    check_values,
    get_matrix,
    history_from_json,
    history_to_json,
    iter_row_chunks,
    resolve_input_scale,
    scan_matrix,
    stratified_split,
)

logger = logging.getLogger(__name__)

_CONFIG_FILE = "transanno.json"
_WEIGHTS_FILE = "model.safetensors"
_FORMAT_VERSION = 1
_KEEP = object()  # sentinel: "use the layer the model was set up with"


def _select_genes(
    X, var_names: pd.Index, n_top_genes: int | None, is_counts: bool, seed: int
) -> list[str]:
    """Pick the gene vocabulary: highly variable genes of (a subsample of) the reference."""
    import scanpy as sc

    n_obs, n_vars = X.shape
    if n_top_genes is None or n_top_genes >= n_vars:
        return [str(g) for g in var_names]
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
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor="seurat")
    hvg = tmp.var["highly_variable"].to_numpy()
    return [str(g) for g in var_names[hvg]]


def _default_max_epochs(n_cells: int) -> int:
    """About 30k cell presentations, between 10 and 100 epochs."""
    return int(np.clip(np.ceil(30_000 / max(n_cells, 1)), 10, 100))


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class TransAnno(BaseModelClass):
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
        Width of the Transformer.
    n_layers
        Number of encoder layers.
    n_heads
        Number of attention heads.
    n_latent
        Dimension of the cell embedding.
    max_tokens
        Maximum number of expressed genes per cell used as tokens (highest first).
    n_top_genes
        Size of the gene vocabulary: highly variable genes of ``adata``. ``None`` uses all genes.
    n_bins
        Number of expression-value bins.
    value_encoding
        ``"bins"``: fixed-width bins of log1p(counts per 10k); ``"quantile"``: per-cell rank bins.
    dropout
        Dropout in the encoder and classifier.
    wide
        Add the linear path over normalized expression to the logits.

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
        n_hidden: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latent: int = 32,
        max_tokens: int = 256,
        n_top_genes: int | None = 2000,
        n_bins: int = 16,
        value_encoding: Literal["bins", "quantile"] = "bins",
        dropout: float = 0.1,
        wide: bool = True,
    ):
        super().__init__(adata)
        setup_args = self.adata_manager.registry["setup_args"]
        self.input_scale_ = setup_args["input_scale"]
        mapping = self.adata_manager.get_state_registry(
            REGISTRY_KEYS.LABELS_KEY
        ).categorical_mapping
        # LabelsWithUnlabeledObsField always puts the unlabeled category last
        self.classes_ = [str(c) for c in mapping[:-1]] if setup_args["labels_key"] else []
        X = get_matrix(adata, setup_args["layer"])
        self.var_names_ = _select_genes(
            X, adata.var_names, n_top_genes, self.input_scale_ == "counts", settings.seed
        )
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
        match = match_genes(adata.var_names, self.var_names_)
        if match.fraction < MIN_GENE_OVERLAP:
            example = ", ".join(map(str, adata.var_names[:3]))
            hint = (
                " The data look like Ensembl IDs while the model uses gene symbols: map them "
                "to symbols first."
                if str(adata.var_names[0]).upper().startswith("ENS")
                and not str(self.var_names_[0]).upper().startswith("ENS")
                else " Check the species and the gene naming convention (symbols vs IDs)."
            )
            msg = (
                f"Only {match.n_matched} of the model's {match.n_vocab} genes "
                f"({match.fraction:.1%}) are in {what}.var_names (e.g. {example}); at least "
                f"{MIN_GENE_OVERLAP:.0%} are needed.{hint}"
            )
            raise ValueError(msg)
        if match.fraction < WARN_GENE_OVERLAP:
            warnings.warn(
                f"Only {match.fraction:.1%} of the model's genes are in {what}; missing genes "
                "are treated as not expressed and predictions may suffer.",
                UserWarning,
                stacklevel=3,
            )
        logger.info(
            "Gene overlap: %d of %d model genes found (%d by case-insensitive name).",
            match.n_matched,
            match.n_vocab,
            match.n_case_insensitive,
        )
        return match

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
            Number of passes over the training cells. ``None``: about 30,000 cell presentations,
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
        datasplitter_kwargs
            Passed to :class:`~scvi.dataloaders.DataSplitter`.
        plan_kwargs
            Passed to :class:`~transanno_sc.train.ClassificationTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` and on to Lightning (``precision``,
            ``strategy``, ``num_nodes``, ``enable_progress_bar``, ...).
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
        tr, va = stratified_split(codes[labeled], train_size, settings.seed)
        train_idx, val_idx = labeled[tr], labeled[va]
        unlabeled = np.setdiff1d(np.arange(codes.size), labeled)

        counts = np.bincount(codes[train_idx], minlength=n_classes).astype(np.float64)
        weights = np.ones(n_classes)
        seen = counts > 0
        if class_weighting != "none":
            power = {"balanced": 1.0, "sqrt": 0.5}.get(class_weighting)
            if power is None:
                msg = f"class_weighting must be 'balanced', 'sqrt' or 'none', got {class_weighting!r}."
                raise ValueError(msg)
            weights[seen] = (counts[seen].sum() / (seen.sum() * counts[seen])) ** power
            weights[seen] /= np.average(weights[seen], weights=counts[seen])
        label_map = torch.full((n_classes + 1,), -100, dtype=torch.long)
        label_map[:n_classes] = torch.arange(n_classes)

        self._set_training_genes(self.adata)
        self.module.input_is_counts = self.input_scale_ == "counts"
        if max_epochs is None:
            max_epochs = _default_max_epochs(train_idx.size)

        if _n_devices(devices) > 1 and "strategy" not in trainer_kwargs:
            trainer_kwargs["strategy"] = (
                "ddp_notebook_find_unused_parameters_true"
                if _in_notebook()
                else "ddp_find_unused_parameters_true"
            )
        strategy = trainer_kwargs.get("strategy")
        distributed = isinstance(strategy, str) and "ddp" in strategy
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        if distributed:
            datasplitter_kwargs.setdefault("distributed_sampler", True)
        if 0 < train_idx.size % batch_size < 3:
            datasplitter_kwargs.setdefault("drop_last", True)
        data_splitter = self._data_splitter_cls(
            self.adata_manager,
            external_indexing=[train_idx, val_idx, unlabeled],
            batch_size=batch_size,
            **datasplitter_kwargs,
        )
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", lr)
        training_plan = self._training_plan_cls(
            self.module,
            class_weights=torch.as_tensor(weights, dtype=torch.float32),
            label_map=label_map,
            **plan_kwargs,
        )
        has_val = val_idx.size > 0
        if has_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        es = early_stopping and has_val
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        logger.info(
            "Training on %d labeled cells (%d validation, %d unlabeled ignored), %d epochs.",
            train_idx.size,
            val_idx.size,
            unlabeled.size,
            max_epochs,
        )
        runner = self._train_runner_cls(
            self,
            training_plan=training_plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=es,
            **trainer_kwargs,
        )
        return runner()

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
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Stream ``adata`` through the module; returns probabilities, embedding, gene overlap."""
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
        chunks = iter_row_chunks(X, chunk_size=batch_size, indices=indices)
        n_chunks = int(np.ceil(n / batch_size))
        t0 = time.perf_counter()
        for start, rows in track(
            chunks,
            description="Predicting",
            disable=n_chunks < 20 or not settings.progress_bar_style,
            style="tqdm",
            total=n_chunks,
        ):
            check_values(rows, where)
            library = np.asarray(rows.sum(axis=1)).reshape(-1)
            sub = rows[:, match.source]
            sub = sub.toarray() if sp.issparse(sub) else sub
            x = np.zeros((rows.shape[0], match.n_vocab), dtype=np.float32)
            x[:, match.target] = sub
            out = self.module.inference(
                torch.from_numpy(x).to(device),
                torch.from_numpy(library).to(device),
                is_counts=scale == "counts",
            )
            stop = start + rows.shape[0]
            probs[start:stop] = torch.softmax(out[MODULE_KEYS.LOGITS_KEY].float(), 1).cpu()
            latent[start:stop] = out[MODULE_KEYS.Z_KEY].float().cpu()
        elapsed = max(time.perf_counter() - t0, 1e-9)
        logger.info("Predicted %d cells in %.1f s (%.0f cells/s).", n, elapsed, n / elapsed)
        overlap = match.to_dict()
        overlap["input_scale"] = scale
        return probs, latent, overlap

    def predict(
        self,
        adata: AnnData | None = None,
        indices=None,
        soft: bool = False,
        unassigned_threshold: float | None = None,
        batch_size: int | None = None,
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
            Return the class probabilities instead of labels.
        unassigned_threshold
            Cells whose highest probability is below this are labeled ``"Unassigned"``
            (hard predictions only).
        batch_size
            Cells per forward pass.

        Returns
        -------
        An array of labels, or (``soft=True``) a DataFrame of probabilities with the cells as
        index and the cell types as columns.
        """
        probs, _, _ = self._forward(adata, indices=indices, batch_size=batch_size)
        return self._format_predictions(
            probs, adata if adata is not None else self.adata, indices, soft, unassigned_threshold
        )

    def _format_predictions(self, probs, adata, indices, soft, unassigned_threshold):
        names = adata.obs_names if indices is None else adata.obs_names[np.sort(indices)]
        if soft:
            return pd.DataFrame(probs, index=names, columns=self.classes_)
        labels = np.asarray(self.classes_, dtype=object)[probs.argmax(1)]
        if unassigned_threshold is not None:
            labels[probs.max(1) < unassigned_threshold] = UNASSIGNED
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
        _, latent, _ = self._forward(adata, indices=indices, batch_size=batch_size)
        return latent

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
        os.makedirs(dir_path, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, os.path.join(dir_path, f"{prefix}{_WEIGHTS_FILE}"))
        import transanno_sc

        config = {
            "format_version": _FORMAT_VERSION,
            "transanno_sc_version": transanno_sc.__version__,
            "model_class": type(self).__name__,
            "init_params": self.init_params_,
            "setup_args": dict(self.registry_["setup_args"]),
            "classes": list(self.classes_),
            "var_names": list(self.var_names_),
            "input_scale": self.input_scale_,
            "is_trained": bool(self.is_trained_),
            "history": history_to_json(self.history_ if isinstance(self.history_, dict) else None),
        }
        with open(config_path, "w") as f:
            json.dump(config, f, indent=1)
        if save_anndata and self.adata is not None:
            self.adata.write_h5ad(
                os.path.join(dir_path, f"{prefix}adata.h5ad"), **anndata_write_kwargs
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
        try:
            model.module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = f"The weights in {weights_path} do not match {_CONFIG_FILE}: {e}"
            raise ValueError(msg) from e
        model.is_trained_ = bool(config["is_trained"])
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


def _n_devices(devices) -> int:
    if isinstance(devices, int):
        return devices if devices > 0 else max(torch.cuda.device_count(), 1)
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return 1
