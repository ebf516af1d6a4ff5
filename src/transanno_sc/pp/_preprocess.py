"""The QC / normalize / log / highly-variable-genes recipe (the seed's step 2)."""

from __future__ import annotations

import logging

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)


def preprocess(
    adata: AnnData,
    *,
    min_genes: int = 200,
    min_cells: int = 3,
    max_pct_mito: float | None = 20.0,
    target_sum: float = 1e4,
    n_top_genes: int | None = 2000,
    counts_layer: str = "counts",
    copy: bool = False,
) -> AnnData | None:
    """Quality control, normalization, ``log1p`` and highly variable genes on raw counts.

    In this order: cells with fewer than ``min_genes`` expressed genes and (when mitochondrial
    genes, named ``MT-``/``mt-``, exist) more than ``max_pct_mito`` percent mitochondrial
    counts are removed; genes expressed in fewer than ``min_cells`` cells are removed; the raw
    counts are kept in ``layers[counts_layer]``; ``X`` is normalized to ``target_sum`` counts
    per cell and log1p-transformed (:func:`scanpy.pp.normalize_total`,
    :func:`scanpy.pp.log1p`); highly variable genes are flagged in ``var['highly_variable']``
    (not subset: TransAnno picks its own vocabulary and reads counts or log values).

    TransAnno does not need this: it normalizes on the fly and takes raw counts. Use it to
    clean a corpus before pretraining, or to follow the TransAnno-Net recipe.

    Parameters
    ----------
    adata
        Raw counts in ``X``.
    min_genes
        Minimum number of expressed genes per cell.
    min_cells
        Minimum number of cells expressing a gene.
    max_pct_mito
        Maximum percentage of mitochondrial counts per cell; ``None`` skips the filter.
    target_sum
        Counts per cell after normalization.
    n_top_genes
        Number of highly variable genes to flag; ``None`` skips the step.
    counts_layer
        Layer to keep the raw counts in.
    copy
        Return a processed copy instead of changing ``adata`` in place.

    Returns
    -------
    Returns `None` if `copy=False`, else returns the processed copy. Sets the following fields:

    `.X`
        log1p of counts per ``target_sum``.
    `.layers['{counts_layer}']`
        The raw counts of the kept cells and genes.
    `.obs['n_genes_by_counts']`, `.obs['total_counts']`, `.obs['pct_counts_mt']`
        Quality metrics (:func:`scanpy.pp.calculate_qc_metrics`).
    `.var['highly_variable']`
        Highly variable genes (when ``n_top_genes`` is set).

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> ta.pp.preprocess(adata, min_genes=100)
    >>> "counts" in adata.layers
    True
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes)."
        raise ValueError(msg)
    X = adata.X
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    sample = values[:100_000]
    if sample.size and (sample.min() < 0 or not np.allclose(sample, np.round(sample))):
        msg = (
            "adata.X does not hold raw counts (negative or non-integer values): preprocess "
            "expects counts. Put them in X (e.g. from a 'counts' layer) first."
        )
        raise ValueError(msg)
    adata = adata.copy() if copy else adata
    if np.issubdtype(adata.X.dtype, np.integer):  # normalized values are fractions
        adata.X = adata.X.astype(np.float32)
    mito = adata.var_names.str.upper().str.startswith("MT-")
    users_mt = adata.var["mt"].copy() if "mt" in adata.var else None  # restored below
    adata.var["mt"] = mito
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], inplace=True, percent_top=None)
    n_genes = adata.obs["n_genes_by_counts"].to_numpy()
    keep = n_genes >= min_genes
    if max_pct_mito is not None and mito.any():
        keep &= adata.obs["pct_counts_mt"].to_numpy() <= max_pct_mito
    if not keep.any():
        msg = (
            f"No cell passes the quality filters: min_genes={min_genes} (cells express "
            f"{int(n_genes.max())} genes at most) and max_pct_mito={max_pct_mito}. Lower them "
            "(max_pct_mito=None skips the mitochondrial filter)."
        )
        raise ValueError(msg)
    n_before = adata.n_obs
    if not keep.all():
        adata._inplace_subset_obs(np.flatnonzero(keep))
    genes = np.asarray((adata.X > 0).sum(0)).ravel() >= min_cells
    if not genes.any():
        msg = f"No gene is expressed in min_cells={min_cells} of the kept cells: lower it."
        raise ValueError(msg)
    if not genes.all():
        adata._inplace_subset_var(np.flatnonzero(genes))
    if users_mt is None:
        del adata.var["mt"]
    else:
        adata.var["mt"] = users_mt.reindex(adata.var_names).to_numpy()
    adata.layers[counts_layer] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    if n_top_genes is not None:
        sc.pp.highly_variable_genes(
            adata, n_top_genes=min(n_top_genes, adata.n_vars), flavor="seurat"
        )
    logger.info(
        "Preprocessed: kept %d of %d cells and %d genes.", adata.n_obs, n_before, adata.n_vars
    )
    return adata if copy else None
