"""Preprocessing: merging sources, the QC/normalization recipe, gene alignment to a model."""

from ._gene_overlap import gene_overlap
from ._merge import merge
from ._preprocess import preprocess

__all__ = ["gene_overlap", "merge", "preprocess"]
