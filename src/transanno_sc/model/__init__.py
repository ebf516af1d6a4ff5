"""scvi-tools models."""

from ._markers import MarkersMixin
from ._transanno import TransAnno

__all__ = ["MarkersMixin", "TransAnno"]
