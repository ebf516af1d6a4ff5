"""The ``TransAnno`` scvi-tools model."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup uses it without importing it)
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import settings
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from scvi.utils import setup_anndata_dsp, track

from transanno_sc._constants import (
    MODULE_KEYS,
    REGISTRY_KEYS,
)
from transanno_sc.data import (
    GeneMatch,
    InputScale,
    check_batches,
    check_labels,
    check_matrix,
    check_shape_and_names,
    check_values,
    get_matrix,
    iter_vocab_batches,
    log_factor,
    match_genes,
    n_forward_batches,
    prefetch,
    resolve_input_scale,
)
from transanno_sc.module import TransAnnoModule
from transanno_sc.train import (
    ClassificationTrainingPlan,
)

from ._gene_selection import check_vocabulary, checked_match, choose_vocabulary
from ._markers import MarkersMixin
from .base import (
    ConfidenceMixin,
    ForwardOutputs,
    PretrainingMixin,
    SaveLoadMixin,
    TrainingMixin,
    assign_labels,
    cell_positions,
)

logger = logging.getLogger(__name__)

_KEEP = object()  # sentinel: "use the layer the model was set up with"


class TransAnno(
    TrainingMixin,
    PretrainingMixin,
    ConfidenceMixin,
    MarkersMixin,
    SaveLoadMixin,
    BaseModelClass,
):
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
        way: when fewer than 90 % of the types occur in two batches, 2,000 it is. (Trained
        for a query, :func:`~transanno_sc.tl.transanno_annotate` asks the query instead in
        these two cases.) The scores are kept in ``gene_count_selection_``.
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
            self.var_names_ = check_vocabulary(gene_vocabulary)
        else:
            n_classes = len(self.classes_)
            codes = np.asarray(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            ).reshape(-1)
            batches = np.asarray(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
            ).reshape(-1)
            self.var_names_, self.gene_count_selection_ = choose_vocabulary(
                get_matrix(adata, setup_args["layer"]),
                adata.var_names,
                n_top_genes,
                self.input_scale_ == "counts",
                np.where(codes < n_classes, codes, -1).astype(np.int64),
                batches,
                settings.seed,
                log_factor=log_factor(self.input_scale_) or 1.0,
            )
        self.calibration_: dict | None = None
        # per-type gene detection of the reference, for tl.transanno_annotate's query context
        self.type_detection_: tuple[list[str], np.ndarray] | None = None
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
        self.module.set_inputs(
            index,
            is_counts=self.input_scale_ == "counts",
            log_factor=log_factor(self.input_scale_) or None,
        )
        self.gene_overlap_ = match.to_dict()

    def _match(self, adata: AnnData, what: str) -> GeneMatch:
        """Match the model's genes to ``adata`` by name (``var_names``, or a gene-name column
        of ``adata.var``); warn or refuse on a poor overlap."""
        return checked_match(adata, self.var_names_, what, stacklevel=4)

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
            library-size-normalized values, e.g. after :func:`scanpy.pp.log1p`; a base of 2
            or 10, as in log2(TPM + 1) tables, is detected), ``"log2(1+x)"`` or
            ``"log10(1+x)"`` (log values of that base) or ``"auto"`` (integers are counts,
            other values up to 30 are log values, their base detected).
        """
        check_shape_and_names(adata)
        check_labels(adata, labels_key, unlabeled_category)
        check_batches(adata, batch_key, labels_key)
        input_scale = check_matrix(adata, layer, input_scale)
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
        with warnings.catch_warnings():
            # check_labels and check_batches warned by the user's names; scvi-tools' twin
            # names its internal codes
            warnings.filterwarnings("ignore", message=".*_scvi_(labels|batch).*fewer than")
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ training

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
            X,
            match.source,
            match.target,
            match.n_vocab,
            batch_size,
            indices=np.sort(indices),
            log1p=log_factor(self.input_scale_),
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
    ) -> ForwardOutputs:
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
        registered = adata is self.adata and layer == self.registry_["setup_args"]["layer"]
        if registered and input_scale == "auto":
            scale = self.input_scale_  # the registered data's, resolved by setup_anndata
        else:
            scale = resolve_input_scale(X, input_scale, where)
        match = self._match(adata, "adata")
        positions = cell_positions(indices, adata.n_obs)
        # the cells are read once each, in file order (a backed matrix needs it); the outputs
        # are put back in the caller's order at the end
        indices, order = (
            (None, None) if positions is None else np.unique(positions, return_inverse=True)
        )
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
            log1p=log_factor(scale),
        )
        if device.type != "cpu":
            # the accelerator computes while a thread prepares the next batches; on the CPU
            # that thread would only compete with torch for the cores
            batches = prefetch(batches)
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
        out = ForwardOutputs(probs, latent, distance, pvalue, n_expressed, overlap, float(shift))
        return out if order is None else out.take(order)

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
            Positions of the cells to predict (or a boolean mask), in the order wanted; all
            when ``None``.
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
        return assign_labels(self.classes_, out, unassigned_threshold, novelty=novelty)

    def _obs_names(self, adata: AnnData | None, indices) -> pd.Index:
        adata = self.adata if adata is None else adata
        positions = cell_positions(indices, adata.n_obs)
        return adata.obs_names if positions is None else adata.obs_names[positions]

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
            Positions of the cells to embed (or a boolean mask), in the order wanted; all
            when ``None``.
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
