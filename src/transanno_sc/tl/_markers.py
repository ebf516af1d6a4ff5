"""``tl.transanno_markers``: the genes that drive each predicted cell type, scanpy style."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from transanno_sc.data import get_rna

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from transanno_sc.model import TransAnno

logger = logging.getLogger(__name__)

#: Fields of ``uns[key]`` that hold one record array (one field per type) each.
SCORE_FIELDS = ("scores", "wide", "transformer", "mean_log_expression", "fraction_expressed")


def transanno_markers(
    adata: AnnData | MuData,
    model: TransAnno,
    *,
    n_genes: int = 20,
    groupby: str | None = None,
    key_added: str = "transanno",
    method: Literal["integrated_gradients", "gradient"] = "integrated_gradients",
    max_cells_per_type: int | None = 300,
    batch_size: int = 64,
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Marker genes of each predicted cell type: the genes that drive the model's calls.

    Runs :meth:`~transanno_sc.model.TransAnno.marker_genes` on ``adata``'s cells grouped by
    their label (by default the one :func:`transanno_annotate` wrote) and stores the ranking
    the way :func:`scanpy.tl.rank_genes_groups` does, so that scanpy's readers work on it:
    ``sc.get.rank_genes_groups_df(adata, None, key="transanno_markers")`` and
    ``sc.pl.rank_genes_groups_dotplot(adata, key="transanno_markers")``, or
    :func:`transanno_sc.pl.marker_genes`.

    Parameters
    ----------
    adata
        AnnData (or MuData with an RNA modality) with the cells to explain.
    model
        The trained model that labeled them.
    n_genes
        Genes per type.
    groupby
        Column of ``obs`` with each cell's type; ``"{key_added}_label"`` when ``None``.
        Cells whose value is not one of the model's types (``"Unassigned"``) are left out.
    key_added
        Prefix of the label column and of the ``uns`` key written (``"{key_added}_markers"``).
    method
        ``"integrated_gradients"`` or ``"gradient"``, see
        :meth:`~transanno_sc.model.TransAnno.marker_genes`.
    max_cells_per_type
        Cells averaged per type, at most (a random subset); ``None``: all.
    batch_size
        Cells per forward/backward pass.
    random_state
        Seed of the subset of cells.
    copy
        Return a copy with the result instead of writing to ``adata``.

    Returns
    -------
    Returns `None` if `copy=False`, else the copy of `adata`. Sets (on the RNA modality of a
    MuData) `.uns['{key_added}_markers']`, a :class:`dict` laid out like
    :func:`scanpy.tl.rank_genes_groups`'s result:

    ``names``
        Record array, one field per cell type: the genes (names as in ``adata.var_names``),
        highest contribution first.
    ``scores``
        The genes' mean contribution to the type's logit (calibrated logit units), split
        into ``wide`` (linear path) and ``transformer`` (the Transformer's attribution
        times its weight); ``mean_log_expression`` and ``fraction_expressed`` over the
        type's cells that were averaged. All record arrays like ``names``.
    ``logfoldchanges``, ``pvals``, ``pvals_adj``
        Not computed (NaN); there because scanpy's readers expect them.
    ``n_cells``
        Record array (one row): cells averaged per type.
    ``params``
        ``groupby``, ``method``, ``n_genes``, ``max_cells_per_type``, ``random_state``,
        ``model`` (the model's summary) and scanpy's ``reference`` (``"rest"``), ``use_raw``
        (``False``), ``corr_method`` (``""``).

    A separate key, not ``uns['{key_added}']``, because scanpy's readers take a top-level
    key and :func:`transanno_annotate`'s result stays as it wrote it.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> ref = adata[adata.obs["condition"] == "healthy"].copy()
    >>> query = adata[adata.obs["condition"] == "tumor"].copy()
    >>> ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    >>> model = ta.model.TransAnno(ref)
    >>> model.train(max_epochs=5)
    >>> ta.tl.transanno_annotate(query, model)
    >>> ta.tl.transanno_markers(query, model)
    >>> ta.pl.marker_genes(query)  # doctest: +SKIP
    """
    from transanno_sc.model import TransAnno

    start = time.perf_counter()
    if not isinstance(model, TransAnno):
        msg = f"model must be a transanno_sc.model.TransAnno, got {type(model).__name__}."
        raise TypeError(msg)
    rna = get_rna(adata, "adata")
    groupby = f"{key_added}_label" if groupby is None else groupby
    if groupby not in rna.obs:
        msg = (
            f"groupby={groupby!r} is not a column of adata.obs (columns: "
            f"{list(rna.obs.columns)}). Run `ta.tl.transanno_annotate(adata, model)` first, "
            "or pass the column with each cell's type as `groupby=`."
        )
        raise KeyError(msg)
    table = model.marker_genes(
        rna,
        n_genes=n_genes,
        groupby=groupby,
        method=method,
        max_cells_per_type=max_cells_per_type,
        batch_size=batch_size,
        random_state=random_state,
        return_scores=True,
    )
    if copy:
        adata = adata.copy()
        rna = get_rna(adata, "adata")
    key = f"{key_added}_markers"
    rna.uns[key] = markers_to_uns(table, n_genes)
    rna.uns[key]["params"] = {
        "groupby": groupby,
        "reference": "rest",
        "method": f"transanno_{method}",
        "use_raw": False,
        "corr_method": "",
        "n_genes": int(n_genes),
        "max_cells_per_type": -1 if max_cells_per_type is None else int(max_cells_per_type),
        "random_state": int(random_state),
        "model": model._model_summary_string,
    }
    logger.info(
        "    finished (%.1f s): added\n    '%s' (adata.uns)", time.perf_counter() - start, key
    )
    return adata if copy else None


def markers_to_uns(table: pd.DataFrame, n_genes: int) -> dict:
    """``marker_genes(..., return_scores=True)``'s long table as scanpy's record arrays."""
    types = list(dict.fromkeys(table["cell_type"]))
    width = int(table["rank"].max()) if len(table) else 0

    def records(column: str, fill, dtype) -> np.recarray:
        cols = []
        for t in types:
            values = table.loc[table["cell_type"] == t].sort_values("rank")[column].tolist()
            cols.append(np.asarray(values + [fill] * (width - len(values)), dtype=dtype))
        return np.rec.fromarrays(cols, names=types)

    out = {"names": records("gene", "", object)}
    for field, column in zip(
        SCORE_FIELDS,
        ("score", "wide", "transformer", "mean_log_expression", "fraction_expressed"),
        strict=True,
    ):
        out[field] = records(column, np.nan, np.float32)
    nan = np.rec.fromarrays([np.full(width, np.nan, np.float32) for _ in types], names=types)
    for field in ("logfoldchanges", "pvals", "pvals_adj"):
        out[field] = nan.copy()
    n_cells = table.groupby("cell_type", sort=False)["n_cells"].first()
    out["n_cells"] = np.rec.fromarrays(
        [np.asarray([int(n_cells[t])], dtype=np.int64) for t in types], names=types
    )
    return out


def markers_var_names(rna: AnnData, key: str, n_genes: int | None = None) -> dict[str, list]:
    """``{type: genes}`` from ``uns[key]`` (as written by :func:`transanno_markers`)."""
    names = rna.uns[key]["names"]
    out = {}
    for t in names.dtype.names:
        genes = [str(g) for g in names[t] if isinstance(g, str) and g]
        out[t] = genes if n_genes is None else genes[:n_genes]
    return out


def markers_df(rna: AnnData, key: str = "transanno_markers") -> pd.DataFrame:
    """``uns[key]`` (from :func:`transanno_markers`) as a long table: one row per type and
    gene, with the columns of ``TransAnno.marker_genes(..., return_scores=True)``."""
    uns = rna.uns[key]
    names = uns["names"]
    frames = []
    for t in names.dtype.names:
        genes = [str(g) for g in names[t]]
        n = sum(1 for g in genes if g)
        frame = pd.DataFrame({"cell_type": t, "rank": np.arange(1, n + 1), "gene": genes[:n]})
        for field in SCORE_FIELDS:
            if field in uns:
                column = "score" if field == "scores" else field
                frame[column] = np.asarray(uns[field][t][:n], dtype=np.float64)
        if "n_cells" in uns:
            frame["n_cells"] = int(uns["n_cells"][t][0])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
