"""``TransAnnoModule``: tokenize -> encode -> heads -> loss (tensors in, tensors out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from transanno_sc._constants import MODULE_KEYS, REGISTRY_KEYS, TARGET_SUM
from transanno_sc.data import normalize_log1p, tokenize
from transanno_sc.nn import TransAnnoBackbone, TransAnnoConfig


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
        n_hidden: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        n_latent: int = 32,
        max_tokens: int = 256,
        n_bins: int = 16,
        value_encoding: str = "bins",
        dropout: float = 0.1,
        wide: bool = True,
        wide_dropout: float = 0.2,
    ):
        super().__init__()
        if n_hidden % n_heads:
            msg = f"n_hidden ({n_hidden}) must be a multiple of n_heads ({n_heads})."
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
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)
            nn.init.zeros_(self.wide.bias)
        # Positions of the vocabulary genes in the registered AnnData (-1: absent); set by the
        # model before training, not saved (it belongs to the data, not to the weights).
        self.register_buffer("gene_index", torch.arange(n_genes), persistent=False)
        # Whether the registered training data hold counts (True) or log1p values (False).
        self.input_is_counts = True

    # ---------------------------------------------------------------- scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        x = tensors[REGISTRY_KEYS.X_KEY]
        library = x.sum(dim=1) if self.input_is_counts else None
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
            ``(n_cells,)`` total counts of each cell over all its genes (counts only); the row
            sums of ``x`` when ``None``.
        is_counts
            Whether ``x`` holds counts (normalized here) or log1p-normalized values.
        """
        x = x.float()
        x_log = normalize_log1p(x, library, TARGET_SUM) if is_counts else x
        tokens = tokenize(
            x_log, self.config.max_tokens, self.config.n_bins, self.config.value_encoding
        )
        hidden = self.backbone(*tokens)
        z = self.to_latent(hidden[:, 0])
        logits = self.classifier(z)
        if self.wide is not None:
            logits = logits + self.wide(self.wide_dropout(x_log))
        return {MODULE_KEYS.Z_KEY: z, MODULE_KEYS.LOGITS_KEY: logits}

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
    ) -> LossOutput:
        """Class-weighted cross-entropy over labeled cells (unlabeled ones are ignored).

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
