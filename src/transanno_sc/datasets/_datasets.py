"""Loaders of the bundled example data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

_HERE = Path(__file__).parent


def zilionis_mouse_lung() -> ad.AnnData:
    """Mouse lung CD45+ immune cells, raw UMI counts :cite:p:`Zilionis2019`.

    800 cells x 24,248 genes (upper-case symbols) from healthy and tumour-bearing mice: the
    example subset distributed with the R package CLUEY (GEO GSE127465).

    ``obs`` columns: ``cell_type`` (B cells, NK cells, Neutrophils, T cells; 200 each),
    ``cell_subtype`` (11 subsets), ``batch`` (animals ``h_1``, ``h_2``, ``t_1``, ``t_2``),
    ``condition`` (healthy / tumor), ``library``, ``library_prep_batch``.

    Returns
    -------
    A new :class:`~anndata.AnnData` with counts in ``X`` (CSR, float32).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> adata.shape
    (800, 24248)
    """
    return ad.read_h5ad(_HERE / "zilionis_mouse_lung.h5ad")
