"""scvi-tools modules (tensors in, tensors out)."""

from ._transanno import TransAnnoModule

__all__ = ["TransAnnoModule"]
