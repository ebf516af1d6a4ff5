"""Small real datasets shipped with the package."""

from ._datasets import zilionis_mouse_lung

__all__ = ["zilionis_mouse_lung"]
