"""Tokenization of expression rows and gene-vocabulary matching (no AnnData here)."""

from ._tokenize import (
    CLS_ID,
    MASK_ID,
    N_SPECIAL_GENE_TOKENS,
    PAD_ID,
    Tokens,
    normalize_log1p,
    tokenize,
    value_bins,
)
from ._vocab import GeneMatch, match_genes

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "N_SPECIAL_GENE_TOKENS",
    "PAD_ID",
    "GeneMatch",
    "Tokens",
    "match_genes",
    "normalize_log1p",
    "tokenize",
    "value_bins",
]
