"""scvi-tools models."""

from ._gene_selection import choose_vocabulary
from ._markers import MarkersMixin
from ._transanno import TransAnno

__all__ = ["MarkersMixin", "TransAnno", "choose_vocabulary"]
