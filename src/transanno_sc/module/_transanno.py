"""``TransAnnoModule``: tokenize -> encode -> heads -> loss (tensors in, tensors out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from transanno_sc._constants import MODULE_KEYS, REGISTRY_KEYS, TARGET_SUM
from transanno_sc.data import check_positive_int, normalize_log1p, tokenize
from transanno_sc.nn import TransAnnoBackbone, TransAnnoConfig

#: The ways token values are encoded (:func:`~transanno_sc.data.tokenize`).
VALUE_ENCODINGS = ("bins", "quantile")

#: Quantiles of the held-out reference distances kept for novelty p-values.
N_DISTANCE_QUANTILES = 201
#: Reference neighbours averaged by the novelty distance.
N_NEIGHBORS = 10
#: Folds of the cross-fitted (held-out) distances of the reference cells.
N_NOVELTY_FOLDS = 5
#: Quantile of the class-normalized novelty distance matched between a query and the
#: reference's held-out cells (see :meth:`TransAnnoModule.shift_factor`).
SHIFT_QUANTILE = 0.1
#: A query needs at least this many cells for its distances to be matched to the reference's.
MIN_CELLS_SHIFT = 50


class TransAnnoModule(BaseModuleClass):
    """Transformer cell-type classifier.

    Each cell's expression over the model's gene vocabulary is normalized on the device
    (library size + ``log1p`` for counts), its expressed genes become tokens (gene identity +
    value bin, see :func:`transanno_sc.data.tokenize`), a ``[CLS]`` token summarizes the cell, and
    its final state is projected to an ``n_latent`` embedding from which a linear classifier
    predicts the cell type. A "wide" linear path over the normalized expression is added to the
    logits, so the model starts from (and cannot fall far behind) a linear classifier.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary.
    n_classes
        Number of cell types.
    n_hidden
        Width of the Transformer.
    n_layers
        Number of encoder layers.
    n_heads
        Number of attention heads.
    n_latent
        Dimension of the cell embedding.
    max_tokens
        Maximum number of expressed genes used as tokens per cell.
    n_bins
        Number of expression-value bins.
    value_encoding
        ``"bins"`` or ``"quantile"``.
    dropout
        Dropout in the Transformer and before the classifier.
    wide
        Add the linear path over normalized expression.
    wide_dropout
        Dropout applied to the input of the wide path (gene dropout; regularizes it).
    """

    def __init__(
        self,
        n_genes: int,
        n_classes: int,
        n_hidden: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latent: int = 32,
        max_tokens: int = 128,
        n_bins: int = 16,
        value_encoding: str = "bins",
        dropout: float = 0.1,
        wide: bool = True,
        wide_dropout: float = 0.2,
    ):
        super().__init__()
        sizes = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_latent": n_latent,
            "max_tokens": max_tokens,
            "n_bins": n_bins,
        }
        for name, value in sizes.items():
            check_positive_int(value, name)
        if n_hidden % n_heads:
            msg = f"n_hidden ({n_hidden}) must be a multiple of n_heads ({n_heads})."
            raise ValueError(msg)
        if value_encoding not in VALUE_ENCODINGS:
            msg = f"value_encoding must be one of {VALUE_ENCODINGS}, got {value_encoding!r}."
            raise ValueError(msg)
        if not 0.0 <= dropout < 1.0 or not 0.0 <= wide_dropout < 1.0:
            msg = (
                f"dropout and wide_dropout must be in [0, 1), got {dropout!r} and {wide_dropout!r}."
            )
            raise ValueError(msg)
        self.n_genes = n_genes
        self.n_classes = n_classes
        self.config = TransAnnoConfig(
            n_genes=n_genes,
            n_bins=n_bins,
            max_tokens=max_tokens,
            value_encoding=value_encoding,
            hidden_size=n_hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=2 * n_hidden,
            hidden_dropout_prob=dropout,
            # dropout on attention probabilities halves CPU training speed (the SDPA fast path
            # is lost); hidden-state dropout regularizes enough
            attention_probs_dropout_prob=0.0,
        )
        self.backbone = TransAnnoBackbone(self.config)
        self.to_latent = nn.Sequential(nn.Linear(n_hidden, n_latent), nn.LayerNorm(n_latent))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_latent, n_classes))
        self.wide = nn.Linear(n_genes, n_classes) if wide else None
        self.wide_dropout = nn.Dropout(wide_dropout)
        # pretraining head: value bin (1..n_bins) of masked tokens from their final state
        self.value_head = nn.Sequential(
            nn.Linear(n_hidden, n_hidden),
            nn.GELU(),
            nn.LayerNorm(n_hidden),
            nn.Linear(n_hidden, n_bins),
        )
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)
            nn.init.zeros_(self.wide.bias)
        # Positions of the vocabulary genes in the registered AnnData (-1: absent); set by the
        # model before training, not saved (it belongs to the data, not to the weights).
        self.register_buffer("gene_index", torch.arange(n_genes), persistent=False)
        # Calibration and novelty statistics, fitted after training and saved with the weights:
        # logits are divided by `temperature`; the novelty score is the cosine distance of a
        # cell to its nearest reference cells in a PCA of the reference's log-expression
        # (`pca_mean`, `pca_components`, `reference_pcs`), and `distance_quantiles` are
        # quantiles of that distance among held-out reference cells.
        self.register_buffer("temperature", torch.ones(()))
        # weight of the Transformer's logits next to the wide path's: 1 while training, set
        # after training (`TransAnno.train(deep_weight=...)`)
        self.register_buffer("deep_weight", torch.ones(()))
        self.register_buffer("pca_mean", torch.zeros(n_genes))
        self.register_buffer("pca_components", torch.zeros(n_genes, 0))
        self.register_buffer("reference_pcs", torch.zeros(0, 0))
        self.register_buffer("distance_quantiles", torch.zeros(N_DISTANCE_QUANTILES))
        # cell type (class index) of each row of `reference_pcs` (-1 everywhere: a model
        # saved before 0.2, whose novelty distance is not class-conditional), and each type's
        # median held-out distance, which the distances of its cells are divided by
        self.register_buffer("reference_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("class_scale", torch.ones(n_classes))
        # 1: log1p inputs are turned back into count-like values (expm1) and normalized as
        # counts are, so that their normalization total (scanpy's default is the median library
        # size, not 10,000) and the genes they were normalized over do not matter; 0 (model
        # folders saved before this buffer existed): log1p inputs are taken as they are
        self.register_buffer("renormalize_log1p", torch.ones(()))
        # Whether the registered training data hold counts (True) or log1p values (False).
        self.input_is_counts = True
        # What the registered log values are multiplied by to give natural log1p values
        # (ln 2 for log2(1+x) values; 1 for log1p values and counts).
        self.input_log_factor = 1.0

    # ---------------------------------------------------------------- scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        x = tensors[REGISTRY_KEYS.X_KEY]
        if x.layout != torch.strided:  # ``load_sparse_tensor=True``: densified on the device
            x = x.to_dense()
        if not self.input_is_counts and self.input_log_factor != 1.0:
            x = x.float() * self.input_log_factor  # log2(1+x) values -> natural log1p
        library = (x if self.input_is_counts else torch.expm1(x.float())).sum(dim=1)
        idx = self.gene_index
        present = idx >= 0
        xv = torch.zeros((x.shape[0], self.n_genes), dtype=x.dtype, device=x.device)
        xv[:, present] = x[:, idx[present]]
        return {
            MODULE_KEYS.X_KEY: xv,
            MODULE_KEYS.LIBRARY_KEY: library,
            MODULE_KEYS.COUNTS_KEY: self.input_is_counts,
        }

    def _get_generative_input(self, tensors, inference_outputs) -> dict:
        return {}

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        library: torch.Tensor | None = None,
        is_counts: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Embed and classify cells.

        Parameters
        ----------
        x
            ``(n_cells, n_genes)`` expression over the vocabulary (counts or log1p values).
        library
            ``(n_cells,)`` total counts of each cell over all its genes (for log1p values: the
            total of their ``expm1``); the row sums over the vocabulary when ``None``.
        is_counts
            Whether ``x`` holds counts (normalized here) or log1p-normalized values.
        """
        x_log = self.log_expression(x, library, is_counts)
        tokens = tokenize(
            x_log, self.config.max_tokens, self.config.n_bins, self.config.value_encoding
        )
        hidden = self.backbone(*tokens)
        z = self.to_latent(hidden[:, 0])
        deep_logits = self.classifier(z)
        logits = deep_logits
        if self.wide is not None:
            logits = self.deep_weight * deep_logits
            # gene dropout regularizes a wide path that learns, not a fitted (frozen) one
            wide_in = self.wide_dropout(x_log) if self.wide.weight.requires_grad else x_log
            logits = logits + self.wide(wide_in)
        return {
            MODULE_KEYS.Z_KEY: z,
            MODULE_KEYS.LOGITS_KEY: logits / self.temperature,
            MODULE_KEYS.DEEP_LOGITS_KEY: deep_logits,
            MODULE_KEYS.DISTANCE_KEY: self.novelty_distance(x_log, logits.argmax(1)),
            MODULE_KEYS.N_EXPRESSED_KEY: tokens.attention_mask[:, 1:].sum(1),
        }

    @property
    def head_modules(self) -> dict[str, nn.Module]:
        """The parts trained by fine-tuning (everything but the backbone and value head)."""
        heads = {"to_latent": self.to_latent, "classifier": self.classifier}
        if self.wide is not None:
            heads["wide"] = self.wide
        return heads

    # ------------------------------------------------------------------ setters (the model's
    # only way to change the module's fitted state)
    def set_inputs(
        self,
        gene_index: torch.Tensor,
        is_counts: bool | None = None,
        log_factor: float | None = None,
    ) -> None:
        """Point the module at the columns of the registered data: ``gene_index[i]`` is the
        data column of vocabulary gene ``i`` (-1: absent); ``is_counts``: whether those data
        hold counts (normalized on the fly) or log values; ``log_factor``: what those log
        values are multiplied by to give natural log1p values (``ln 2`` for ``log2(1+x)``;
        ``None``: 1)."""
        self.gene_index = gene_index.to(device=self.gene_index.device, dtype=torch.long)
        if is_counts is not None:
            self.input_is_counts = bool(is_counts)
        self.input_log_factor = 1.0 if log_factor is None else float(log_factor)

    @torch.no_grad()
    def set_wide(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the wide path's coefficients (``(n_classes, n_genes)``) and intercepts."""
        self.wide.weight.copy_(weight)
        self.wide.bias.copy_(bias)

    @torch.no_grad()
    def set_calibration(
        self, temperature: float | None = None, deep_weight: float | None = None
    ) -> None:
        """Set the softmax temperature and the weight of the Transformer's logits next to the
        wide path's (``None``: unchanged)."""
        if temperature is not None:
            self.temperature.fill_(float(temperature))
        if deep_weight is not None:
            self.deep_weight.fill_(float(deep_weight))

    def frozen_parts(self, finetune: str, trainable_layers: int = 1) -> list[nn.Module]:
        """The parts that fine-tuning mode ``finetune`` leaves untrained, and the pretraining
        head: nothing of the backbone (``"full"``), all of it (``"head"``), or all but its top
        ``trainable_layers`` encoder layers (``"partial"``)."""
        if finetune == "full":
            parts = []
        elif finetune == "head":
            parts = [self.backbone]
        elif finetune == "partial":
            parts = self.backbone.lower_parts(trainable_layers)
        else:
            msg = f"finetune must be 'full', 'partial' or 'head', got {finetune!r}."
            raise ValueError(msg)
        return [*parts, self.value_head]

    @auto_move_data
    def masked_value_loss(
        self,
        x: torch.Tensor,
        library: torch.Tensor | None = None,
        is_counts: bool = True,
        mask_prob: float = 0.15,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Masked value modelling loss of a batch (self-supervised, no labels).

        About ``mask_prob`` of each cell's expressed-gene tokens get the ``[MASK]`` value (their
        gene identity stays); the backbone and :attr:`value_head` predict their value bins.

        Returns
        -------
        Cross-entropy over the masked tokens, the fraction predicted exactly, and their number.
        """
        x_log = self.log_expression(x, library, is_counts)
        tokens = tokenize(
            x_log, self.config.max_tokens, self.config.n_bins, self.config.value_encoding
        )
        real = tokens.attention_mask.bool()
        real[:, 0] = False  # never the [CLS] token
        masked = (torch.rand(real.shape, device=real.device) < mask_prob) & real
        values = tokens.value_ids.masked_fill(masked, self.config.n_bins + 1)
        hidden = self.backbone(tokens.gene_ids, values, tokens.attention_mask)
        target = tokens.value_ids[masked] - 1
        n_masked = int(target.numel())
        if n_masked == 0:
            zero = hidden.sum() * 0.0
            return zero, zero.detach(), 0
        logits = self.value_head(hidden[masked])
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(1) == target).float().mean().detach()
        return loss, accuracy, n_masked

    def log_expression(
        self, x: torch.Tensor, library: torch.Tensor | None = None, is_counts: bool = True
    ) -> torch.Tensor:
        """Log-normalized expression over the vocabulary (what the tokens are made from).

        Counts are normalized to a total of 10,000 per cell (by ``library``, the cell's total
        over all genes of its data) and log1p-transformed; log1p values are first turned back
        into count-like values (``expm1``, ``library`` then being their total) and normalized
        alike, so that data normalized to another total or over other genes (then subset) give
        the values their counts would.
        """
        x = x.float()
        if not is_counts and self.renormalize_log1p.item():
            x = torch.expm1(x).clamp_min(0.0)
            is_counts = True
        return normalize_log1p(x, library, TARGET_SUM) if is_counts else x

    def resize_fitted_buffers(self, state: dict[str, torch.Tensor]) -> None:
        """Give the data-sized novelty buffers the shapes found in ``state`` before loading;
        fill in the buffers that a model saved before they existed lacks."""
        for name in ("pca_components", "reference_pcs", "reference_labels"):
            if name in state:
                setattr(self, name, torch.zeros_like(state[name], device=self.pca_mean.device))
        if "reference_labels" not in state:  # saved before 0.2: class-agnostic distances
            n_ref = state["reference_pcs"].shape[0] if "reference_pcs" in state else 0
            state["reference_labels"] = torch.full((n_ref,), -1, dtype=torch.long)
            self.reference_labels = torch.zeros_like(state["reference_labels"])
        state.setdefault("class_scale", torch.ones(self.n_classes))

    def project(self, x_log: torch.Tensor) -> torch.Tensor:
        """Unit-length PCA coordinates of log-normalized expression (the novelty space)."""
        pcs = (x_log.float() - self.pca_mean) @ self.pca_components
        return F.normalize(pcs, dim=1)

    @property
    def class_conditional_novelty(self) -> bool:
        """Whether the novelty distance compares a cell with its predicted type's cells."""
        return self.reference_labels.numel() > 0 and bool((self.reference_labels >= 0).all())

    def novelty_distance(
        self, x_log: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Novelty distance of each cell: mean cosine distance to its ``N_NEIGHBORS`` nearest
        reference cells of type ``labels`` (the predicted type), divided by that type's median
        held-out distance (``class_scale``).

        In a PCA of the reference's log-expression (see :meth:`fit_novelty`); zeros before
        that is fitted. A model saved before 0.2 has no reference labels: the distance is to
        the nearest reference cells of any type, not divided.
        """
        if self.reference_pcs.numel() == 0:
            return torch.zeros(x_log.shape[0], device=x_log.device)
        sim = self.project(x_log) @ self.reference_pcs.T
        if labels is None or not self.class_conditional_novelty:
            k = min(N_NEIGHBORS, sim.shape[1])
            return 1.0 - sim.topk(k, dim=1).values.mean(1)
        return _class_distance(sim, self.reference_labels, labels) / self.class_scale[labels]

    @torch.no_grad()
    def fit_novelty(
        self,
        x_reference: torch.Tensor,
        labels_reference: torch.Tensor,
        x_heldout: torch.Tensor,
        labels_heldout: torch.Tensor,
        n_components: int = 50,
        seed: int | None = None,
    ) -> None:
        """Fit the novelty space on reference cells.

        Parameters
        ----------
        x_reference
            Log-normalized expression of (a subsample of) the training cells: they define the
            PCA and are the neighbours a cell is compared with.
        labels_reference
            Their class indices.
        x_heldout
            Log-normalized expression of held-out reference cells (the validation split).
        labels_heldout
            Their class indices.
        n_components
            Number of principal components.
        seed
            Seed of the folds of the cross-fitted distances.

        Notes
        -----
        The held-out distances that calibrate the p-values are those of the validation cells
        and, cross-fitted in ``N_NOVELTY_FOLDS`` folds, of the reference cells themselves
        (each compared with the cells of its type in the other folds). Each type's median
        held-out distance becomes its ``class_scale``; the quantiles of the divided distances,
        all types pooled, are ``distance_quantiles``.
        """
        device = self.pca_mean.device
        xr = x_reference.float().to(device)
        yr = labels_reference.long().to(device)
        mean = xr.mean(0)
        q = int(min(n_components, xr.shape[0] - 1, xr.shape[1]))
        _, _, v = torch.linalg.svd(xr - mean, full_matrices=False)
        self.pca_mean = mean
        self.pca_components = v[:q].T.contiguous()
        self.reference_pcs = self.project(xr)
        self.reference_labels = yr
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        folds = torch.randint(0, N_NOVELTY_FOLDS, (xr.shape[0],), generator=generator).to(device)
        d_ref = torch.full((xr.shape[0],), float("nan"), device=device)
        for fold in range(N_NOVELTY_FOLDS):
            held = folds == fold
            if held.any() and (~held).any():
                sim = self.reference_pcs[held] @ self.reference_pcs[~held].T
                d_ref[held] = _class_distance(sim, yr[~held], yr[held])
        yh = labels_heldout.long().to(device)
        d_held = _class_distance(
            self.project(x_heldout.float().to(device)) @ self.reference_pcs.T, yr, yh
        )
        d = torch.cat([d_ref, d_held])
        y = torch.cat([yr, yh])
        ok = torch.isfinite(d)
        d, y = d[ok], y[ok]
        scale = torch.ones(self.n_classes, device=device)
        overall = d.median() if d.numel() else torch.ones((), device=device)
        for c in range(self.n_classes):
            dc = d[y == c]
            scale[c] = dc.median() if dc.numel() >= 3 else overall
        self.class_scale = scale.clamp_min(1e-6)
        r = d / self.class_scale[y]
        levels = torch.linspace(0, 1, N_DISTANCE_QUANTILES, device=device)
        self.distance_quantiles.copy_(torch.quantile(r, levels))

    def shift_factor(
        self, distance: torch.Tensor, min_cells: int = MIN_CELLS_SHIFT
    ) -> torch.Tensor:
        """How much farther a query as a whole lies from the reference than the reference's
        own held-out cells: the ratio of the ``SHIFT_QUANTILE`` quantiles of the two
        distributions of novelty distances, at least 1 (1 for fewer than ``min_cells`` cells
        or a model without class-conditional distances)."""
        one = torch.ones((), device=distance.device)
        if distance.numel() < min_cells or not self.class_conditional_novelty:
            return one
        levels = self.distance_quantiles.numel() - 1
        ref_q = self.distance_quantiles[round(SHIFT_QUANTILE * levels)].to(distance.device)
        query_q = torch.quantile(distance.float(), SHIFT_QUANTILE)
        return torch.maximum(one, query_q / ref_q.clamp_min(1e-12))

    def novelty_pvalue(self, distance: torch.Tensor) -> torch.Tensor:
        """Fraction of held-out reference cells at least as far from their nearest reference
        cells (of their type) as this cell is from its predicted type's.

        An empirical upper-tail p-value of :meth:`novelty_distance` (1 = typical, 0 = farther
        than any held-out reference cell), interpolated between the stored quantiles.
        """
        q = self.distance_quantiles
        if not bool(q[-1] > 0):  # not fitted (untrained or pretrained-only model)
            return torch.ones_like(distance, dtype=torch.float32)
        levels = torch.linspace(0, 1, q.numel(), device=q.device)
        idx = torch.searchsorted(q, distance.float().contiguous(), right=True).clamp(
            1, q.numel() - 1
        )
        lo, hi = q[idx - 1], q[idx]
        frac = ((distance - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        cdf = levels[idx - 1] + frac * (levels[idx] - levels[idx - 1])
        cdf = torch.where(distance >= q[-1], torch.ones_like(cdf), cdf)
        cdf = torch.where(distance <= q[0], torch.zeros_like(cdf), cdf)
        return 1.0 - cdf

    def generative(self, **kwargs) -> dict:
        return {}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        label_map: torch.Tensor | None = None,
        deep_loss_weight: float = 1.0,
    ) -> LossOutput:
        """Class-weighted cross-entropy over labeled cells (unlabeled ones are ignored).

        The loss of the full logits (Transformer + wide path) plus ``deep_loss_weight`` times
        the loss of the Transformer's logits alone: without it the wide path fits the
        reference within a few epochs and the embedding (``z``) learns little.
        ``label_map`` maps registered label codes to class indices (-100 = unlabeled).
        """
        logits = inference_outputs[MODULE_KEYS.LOGITS_KEY]
        codes = tensors[REGISTRY_KEYS.LABELS_KEY].reshape(-1).long()
        y = label_map.to(codes.device)[codes] if label_map is not None else codes
        labeled = y >= 0
        if labeled.any():
            ce = F.cross_entropy(
                logits[labeled],
                y[labeled],
                weight=class_weights,
                label_smoothing=label_smoothing,
            )
            if deep_loss_weight and self.wide is not None:
                deep = inference_outputs[MODULE_KEYS.DEEP_LOGITS_KEY]
                ce = ce + deep_loss_weight * F.cross_entropy(
                    deep[labeled],
                    y[labeled],
                    weight=class_weights,
                    label_smoothing=label_smoothing,
                )
        else:
            ce = logits.sum() * 0.0
        return LossOutput(
            loss=ce,
            classification_loss=ce,
            logits=logits,
            true_labels=y,
            n_obs_minibatch=int(labeled.sum().item()),
        )

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        """Not a generative model: sampling is not defined."""
        msg = "TransAnnoModule is a classifier and cannot generate samples."
        raise NotImplementedError(msg)


def _class_distance(
    sim: torch.Tensor, reference_labels: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cosine distance of each row of ``sim`` (similarities to reference cells) to its
    ``N_NEIGHBORS`` most similar reference cells of type ``labels`` (fewer when the type has
    fewer cells; 2, the largest cosine distance, when it has none)."""
    same = reference_labels.reshape(1, -1) == labels.reshape(-1, 1)
    masked = sim.masked_fill(~same, float("-inf"))
    k = min(N_NEIGHBORS, sim.shape[1])
    top = masked.topk(k, dim=1).values
    valid = torch.isfinite(top)
    n = valid.sum(1)
    total = torch.where(valid, top, torch.zeros_like(top)).sum(1)
    mean_sim = torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, -1.0))
    return 1.0 - mean_sim
