"""The Transformer backbone, built from ``transformers`` building blocks."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEncoder

from transanno_sc.data import N_SPECIAL_GENE_TOKENS


class TransAnnoConfig(BertConfig):
    """Configuration of :class:`TransAnnoBackbone`.

    A :class:`~transformers.BertConfig` (so the encoder layers find every attribute they read)
    with the gene-token settings added. ``vocab_size`` is derived from ``n_genes``.

    Parameters
    ----------
    n_genes
        Number of genes in the model's vocabulary.
    n_bins
        Number of expression-value bins.
    max_tokens
        Maximum number of gene tokens per cell.
    value_encoding
        ``"bins"`` (fixed-width bins of log1p values) or ``"quantile"`` (per-cell rank bins).
    **kwargs
        Passed to :class:`~transformers.BertConfig` (``hidden_size``, ``num_hidden_layers``,
        ``num_attention_heads``, ``intermediate_size``, dropout probabilities, ...).
    """

    model_type = "transanno"

    def __init__(
        self,
        n_genes: int = 2000,
        n_bins: int = 16,
        max_tokens: int = 256,
        value_encoding: str = "bins",
        **kwargs,
    ):
        kwargs.setdefault("max_position_embeddings", max_tokens + 1)
        kwargs["vocab_size"] = n_genes + N_SPECIAL_GENE_TOKENS
        super().__init__(**kwargs)
        self.n_genes = n_genes
        self.n_bins = n_bins
        self.max_tokens = max_tokens
        self.value_encoding = value_encoding


class TransAnnoBackbone(PreTrainedModel):
    """Bidirectional encoder over gene tokens.

    A token is the sum of a gene-identity embedding and an expression-value-bin embedding; there
    are no positional embeddings (a cell is a set of genes). Attention runs through PyTorch SDPA
    by default. Saved and loaded with ``save_pretrained`` / ``from_pretrained``.
    """

    config_class = TransAnnoConfig
    base_model_prefix = "transanno"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: TransAnnoConfig):
        super().__init__(config)
        self.gene_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        # bins 1..n_bins, 0 = padding/[CLS], n_bins + 1 = [MASK]
        self.value_embeddings = nn.Embedding(config.n_bins + 2, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.encoder = BertEncoder(config)
        self.post_init()

    def forward(
        self,
        gene_ids: torch.Tensor,
        value_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Encode tokens; returns the last hidden states ``(n_cells, n_tokens, hidden_size)``."""
        h = self.gene_embeddings(gene_ids) + self.value_embeddings(value_ids)
        h = self.dropout(self.layer_norm(h))
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=h, attention_mask=attention_mask
        )
        return self.encoder(h, attention_mask=mask).last_hidden_state

    def lower_parts(self, trainable_layers: int) -> list[nn.Module]:
        """Everything below the top ``trainable_layers`` encoder layers: the embeddings, their
        normalization and the lower layers (what partial fine-tuning keeps fixed)."""
        n_layers = len(self.encoder.layer)
        if not 0 <= trainable_layers <= n_layers:
            msg = f"trainable_layers must be in [0, {n_layers}], got {trainable_layers}."
            raise ValueError(msg)
        return [
            self.gene_embeddings,
            self.value_embeddings,
            self.layer_norm,
            *self.encoder.layer[: n_layers - trainable_layers],
        ]

    @staticmethod
    def extend_gene_embeddings(
        state: dict[str, torch.Tensor], n_added: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """A copy of a backbone ``state_dict`` with ``n_added`` gene embeddings appended:
        random directions with the existing gene embeddings' mean length (the special tokens'
        rows excluded), so added genes start as distinct tokens of a typical size."""
        from transanno_sc.data import N_SPECIAL_GENE_TOKENS

        state = dict(state)
        if n_added:
            old = state["gene_embeddings.weight"]
            length = old[N_SPECIAL_GENE_TOKENS:].norm(dim=1).mean()
            new = torch.randn(n_added, old.shape[1], dtype=old.dtype, generator=generator)
            new = nn.functional.normalize(new, dim=1) * length
            state["gene_embeddings.weight"] = torch.cat([old, new])
        return state
