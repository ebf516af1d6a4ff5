"""Merge several AnnData sources into one corpus (the seed's step 1)."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from transanno_sc.data import detect_input_scale, gene_key

logger = logging.getLogger(__name__)


def merge(
    adatas: Mapping[str, AnnData] | Sequence[AnnData],
    *,
    source_key: str = "source",
    layer: str | None = None,
    case_insensitive: bool = True,
    drop_ensembl_versions: bool = True,
) -> AnnData:
    """Merge datasets into one corpus for pretraining or a joint reference.

    Genes are joined by name (an outer join: a gene missing from a source is 0 there). With
    ``case_insensitive`` names differing only in case are one gene (mouse ``Gnai3`` and
    upper-case ``GNAI3``), spelled as in the first source that has it (names that differ only
    in case within one source stay apart); with ``drop_ensembl_versions`` so are Ensembl IDs
    that differ only in their version suffix (``ENSG00000141510.17`` and ``ENSG00000141510``).
    Expression stays sparse
    (CSR, float32); cell names that clash are made unique by appending the source name; every
    cell's source is recorded in ``obs[source_key]``. ``obs`` columns shared by all sources are
    kept. Values are not normalized: merge raw counts with raw counts (sources of different
    scales, counts next to log1p values, are warned about).

    Parameters
    ----------
    adatas
        The sources, named by the mapping's keys (or ``"0"``, ``"1"``, ... for a list).
    source_key
        Column of ``obs`` recording each cell's source.
    layer
        Layer holding the expression in every source; ``X`` when ``None``.
    case_insensitive
        Treat gene names that differ only in case as the same gene.
    drop_ensembl_versions
        Treat Ensembl IDs that differ only in their version suffix as the same gene.

    Returns
    -------
    A new :class:`~anndata.AnnData`; the sources are not changed.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> lung = ta.datasets.zilionis_mouse_lung()
    >>> corpus = ta.pp.merge({"healthy": lung[lung.obs["condition"] == "healthy"],
    ...                       "tumor": lung[lung.obs["condition"] == "tumor"]})
    >>> corpus.obs["source"].value_counts().to_dict()
    {'tumor': 513, 'healthy': 287}
    """
    if isinstance(adatas, Mapping):
        items = [(str(k), v) for k, v in adatas.items()]
    else:
        items = [(str(i), v) for i, v in enumerate(adatas)]
    if not items:
        msg = "adatas is empty: pass at least one AnnData."
        raise ValueError(msg)
    parts = []
    spelling: dict[str, str] = {}
    scales: dict[str, str] = {}
    for name, a in items:
        if not isinstance(a, AnnData):
            msg = f"Source {name!r} is a {type(a).__name__}, not an AnnData."
            raise TypeError(msg)
        if not a.var_names.is_unique:
            msg = f"Source {name!r} has duplicate gene names: run `var_names_make_unique()` first."
            raise ValueError(msg)
        if layer is not None and layer not in a.layers:
            msg = (
                f"layer={layer!r} is not a layer of source {name!r} "
                f"(its layers: {list(a.layers)}). Pass a layer every source has, or "
                "layer=None for X."
            )
            raise KeyError(msg)
        if source_key in a.obs:
            msg = (
                f"Source {name!r} already has obs[{source_key!r}], which merge writes each "
                "cell's source to: pass another source_key=."
            )
            raise ValueError(msg)
        X = a.X if layer is None else a.layers[layer]
        if X is None:
            msg = f"Source {name!r} has no X: pass layer= with its expression."
            raise ValueError(msg)
        X = sp.csr_matrix(X, dtype=np.float32)
        genes = [str(g) for g in a.var_names]
        if case_insensitive or drop_ensembl_versions:
            loose = [
                gene_key(g, case_insensitive=case_insensitive, drop_versions=drop_ensembl_versions)
                for g in genes
            ]
            n_loose = Counter(loose)
            # names that clash within this source only by case or version keep their spelling
            keys = [k if n_loose[k] == 1 else g for g, k in zip(genes, loose)]
            for g, k in zip(genes, keys):
                spelling.setdefault(k, g)
            genes = keys
        part = AnnData(X=X, obs=a.obs.copy())
        part.var_names = genes
        parts.append(part)
        if X.nnz:
            try:
                scales[name] = detect_input_scale(X, f"source {name!r}")
            except ValueError:  # negative or NaN values: refused where they are read
                pass
    # obs columns: those every source has (anndata's outer join would keep the others,
    # filled with NaN, and turn integer columns into floats)
    shared = [c for c in parts[0].obs.columns if all(c in p.obs.columns for p in parts)]
    for part in parts:
        part.obs = part.obs[shared]
    with warnings.catch_warnings():
        # clashing cell names are made unique just below
        warnings.filterwarnings("ignore", message=".*names are not unique")
        merged = ad.concat(
            parts,
            join="outer",
            label=source_key,
            keys=[n for n, _ in items],
            index_unique=None,
            fill_value=0,
        )
    if not merged.obs_names.is_unique:
        merged.obs_names = [
            f"{cell}-{src}" for cell, src in zip(merged.obs_names, merged.obs[source_key])
        ]
        merged.obs_names_make_unique()
    if case_insensitive or drop_ensembl_versions:
        merged.var_names = [spelling[g] for g in merged.var_names]
    merged.X = sp.csr_matrix(merged.X, dtype=np.float32)
    logger.info("Merged %d sources: %d cells x %d genes.", len(items), merged.n_obs, merged.n_vars)
    if len(set(scales.values())) > 1:
        warnings.warn(
            f"The sources hold values of different scales ({scales}): the merged matrix mixes "
            "them. As the reference of tl.transanno_annotate, pass "
            f"batch_key={source_key!r} (each batch's scale is then detected on its own); "
            "elsewhere, merge data of one scale (np.expm1 turns log1p values back).",
            UserWarning,
            stacklevel=2,
        )
    return merged
