"""Small real datasets shipped with the package, and technology shifts simulated on counts."""

from ._datasets import zilionis_mouse_lung
from ._simulate import simulate_ambient_rna, simulate_depth, simulate_read_counts, simulate_tpm

__all__ = [
    "simulate_ambient_rna",
    "simulate_depth",
    "simulate_read_counts",
    "simulate_tpm",
    "zilionis_mouse_lung",
]
