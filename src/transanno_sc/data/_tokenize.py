"""Turn expression rows into Transformer tokens (pure torch, no AnnData)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

#: Special gene-token ids; genes are numbered from ``N_SPECIAL_GENE_TOKENS`` on.
PAD_ID, CLS_ID, MASK_ID = 0, 1, 2
N_SPECIAL_GENE_TOKENS = 3
#: Upper edge of the fixed-width value bins, in log1p(counts per 10k) units.
MAX_LOG_VALUE = 8.0

ValueEncoding = Literal["bins", "quantile"]


class Tokens(NamedTuple):
    """A tokenized batch of cells.

    ``gene_ids`` and ``value_ids`` are ``(n_cells, 1 + n_tokens)`` with the ``[CLS]`` token in
    position 0; ``attention_mask`` is 1 for real tokens and 0 for padding.
    """

    gene_ids: torch.Tensor
    value_ids: torch.Tensor
    attention_mask: torch.Tensor


def normalize_log1p(
    x: torch.Tensor, library: torch.Tensor | None, target_sum: float = 1e4
) -> torch.Tensor:
    """Library-size normalize counts to ``target_sum`` and apply ``log1p``.

    Parameters
    ----------
    x
        ``(n_cells, n_genes)`` counts.
    library
        ``(n_cells,)`` total counts of each cell; the row sums of ``x`` when ``None``.
    target_sum
        Total count each cell is scaled to.
    """
    if library is None:
        library = x.sum(dim=1)
    library = library.reshape(-1, 1).clamp_min(1e-8)
    return torch.log1p(x * (target_sum / library))


def value_bins(
    values: torch.Tensor,
    rank: torch.Tensor,
    n_expressed: torch.Tensor,
    n_bins: int,
    encoding: ValueEncoding,
) -> torch.Tensor:
    """Map log-normalized values of the selected tokens to bins ``1..n_bins`` (0 = padding).

    ``"bins"`` cuts ``(0, MAX_LOG_VALUE]`` into ``n_bins`` equal-width bins (values above go to the
    last bin). ``"quantile"`` uses the rank of the gene among the cell's expressed genes, so the
    bins are independent of sequencing depth (highest-expressed genes get bin ``n_bins``).
    """
    if encoding == "bins":
        b = torch.floor(values * (n_bins / MAX_LOG_VALUE)).long() + 1
        return b.clamp(1, n_bins)
    if encoding == "quantile":
        q = 1.0 - rank.float() / n_expressed.clamp_min(1).float().unsqueeze(1)
        return torch.ceil(q * n_bins).long().clamp(1, n_bins)
    msg = f"value_encoding must be 'bins' or 'quantile', got {encoding!r}."
    raise ValueError(msg)


def tokenize(
    x_log: torch.Tensor,
    max_tokens: int,
    n_bins: int,
    encoding: ValueEncoding = "bins",
) -> Tokens:
    """Tokenize log-normalized expression rows.

    Each cell becomes ``[CLS]`` followed by its expressed genes, highest value first, cut at
    ``max_tokens``. Sequences are padded to the longest cell in the batch (at most
    ``max_tokens``), so a cell's tokens do not depend on the other cells in the batch.

    Parameters
    ----------
    x_log
        ``(n_cells, n_genes)`` log-normalized expression over the model's gene vocabulary.
    max_tokens
        Maximum number of gene tokens per cell.
    n_bins
        Number of value bins.
    encoding
        ``"bins"`` or ``"quantile"``, see :func:`value_bins`.
    """
    n_cells = x_log.shape[0]
    device = x_log.device
    values, idx, n_expressed = top_expressed(x_log, max_tokens)
    k = values.shape[1]
    mask = values > 0
    rank = torch.arange(k, device=device).expand(n_cells, k)
    gene_ids = torch.where(mask, idx + N_SPECIAL_GENE_TOKENS, torch.full_like(idx, PAD_ID))
    value_ids = value_bins(values, rank, n_expressed, n_bins, encoding)
    value_ids = torch.where(mask, value_ids, torch.zeros_like(value_ids))
    cls_gene = torch.full((n_cells, 1), CLS_ID, dtype=torch.long, device=device)
    cls_value = torch.zeros((n_cells, 1), dtype=torch.long, device=device)
    ones = torch.ones((n_cells, 1), dtype=torch.long, device=device)
    return Tokens(
        gene_ids=torch.cat([cls_gene, gene_ids], dim=1),
        value_ids=torch.cat([cls_value, value_ids], dim=1),
        attention_mask=torch.cat([ones, mask.long()], dim=1),
    )


def top_expressed(
    x_log: torch.Tensor, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The expressed genes of each cell, highest value first, cut at ``max_tokens``.

    Ties are broken by gene index (lower first), so the result is exactly that of a stable
    descending sort of each row. Only the non-zero entries are sorted (two stable 1-D sorts
    over all expressed entries of the batch instead of a sort of every row over all genes),
    which is what makes tokenization cheap: cells express a few hundred of the vocabulary's
    genes. A cell's result depends only on its own row.

    Parameters
    ----------
    x_log
        ``(n_cells, n_genes)`` non-negative expression.
    max_tokens
        Maximum number of genes kept per cell.

    Returns
    -------
    ``values`` and gene indices ``idx``, both ``(n_cells, k)`` with ``k`` the largest number of
    kept genes in the batch (at least 1); positions past a cell's expressed genes hold 0
    (``values == 0`` marks padding). Also the ``(n_cells,)`` number of expressed genes.
    """
    n_cells, n_genes = x_log.shape
    device = x_log.device
    expressed = x_log > 0
    n_expressed = expressed.sum(dim=1)
    k = int(min(max_tokens, n_genes, max(int(n_expressed.max().item()) if n_cells else 0, 1)))
    # row-major non-zeros: ordered by cell, then by gene index
    row, col = expressed.nonzero(as_tuple=True)
    val = x_log[row, col]
    # stable sorts: value (descending) keeps gene order among ties, then cell keeps that order
    order = torch.argsort(val, descending=True, stable=True)
    order = order[torch.argsort(row[order], stable=True)]
    row, col, val = row[order], col[order], val[order]
    starts = torch.cumsum(n_expressed, 0) - n_expressed
    rank = torch.arange(row.numel(), device=device) - starts[row]
    keep = rank < k
    row, col, val, rank = row[keep], col[keep], val[keep], rank[keep]
    values = torch.zeros((n_cells, k), dtype=x_log.dtype, device=device)
    idx = torch.zeros((n_cells, k), dtype=torch.long, device=device)
    values[row, rank] = val
    idx[row, rank] = col
    return values, idx, n_expressed
