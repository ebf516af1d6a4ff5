"""scvi-tools models."""

from ._transanno import TransAnno

__all__ = ["TransAnno"]
