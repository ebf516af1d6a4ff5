"""Preprocessing: gene alignment between data and models."""

from ._gene_overlap import gene_overlap

__all__ = ["gene_overlap"]
