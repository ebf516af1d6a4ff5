"""Transformer cell-type annotation for single-cell RNA-seq, in the scverse way."""

from importlib.metadata import PackageNotFoundError, version

from . import data, datasets, model, pl, pp, tl

try:
    __version__ = version("transanno-sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__", "data", "datasets", "model", "pl", "pp", "tl"]
