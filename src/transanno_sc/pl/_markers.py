"""Dot plot of the marker genes that drive each predicted cell type."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from transanno_sc.data import check_positive_int, get_rna
from transanno_sc.tl._markers import markers_var_names

from ._utils import missing_obs_key, savefig_or_show

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from mudata import MuData


def marker_genes(
    adata: AnnData | MuData,
    n_genes: int = 5,
    *,
    key: str = "transanno_markers",
    groupby: str | None = None,
    layer: str | None = None,
    standard_scale: str | None = "var",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
    **kwds,
) -> dict[str, Axes] | None:
    """Dot plot of each predicted type's marker genes (:func:`scanpy.pl.dotplot` underneath).

    The genes come from :func:`~transanno_sc.tl.transanno_markers` (the ``n_genes`` with the
    largest contribution to each type's logit), grouped by type; the rows are the cells'
    labels. Dot size: fraction of a group's cells expressing the gene; colour: their mean
    expression. Counts are shown as log1p(counts per 10,000), as the model reads them.

    Parameters
    ----------
    adata
        AnnData (or MuData with an RNA modality) with ``uns[key]`` from
        :func:`~transanno_sc.tl.transanno_markers`.
    n_genes
        Genes per type (at most those stored).
    key
        Key of ``uns`` holding the markers.
    groupby
        Column of ``obs`` to group the cells by; the one the markers were computed for
        (``uns[key]['params']['groupby']``, by default ``"transanno_label"``) when ``None``.
    layer
        Layer holding the expression shown; ``adata.X`` when ``None``.
    standard_scale
        ``"var"`` scales each gene's mean expression to 0-1 across groups (genes of very
        different levels side by side); ``None`` shows the values themselves.
    ax
        Axes to draw into; a new figure when ``None``.
    show
        Show the figure; by default when ``ax`` is ``None``, ``save`` is not given and
        matplotlib is interactive.
    save
        File to save the figure to (the format follows the extension).
    **kwds
        Passed to :func:`scanpy.pl.dotplot` (``cmap``, ``dendrogram``, ``swap_axes``, ...).

    Returns
    -------
    The dot plot's axes (a dict, as :meth:`scanpy.pl.DotPlot.get_axes` gives them) when
    ``show`` is ``False``, else ``None``.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> ta.tl.transanno_markers(query, model)  # doctest: +SKIP
    >>> ta.pl.marker_genes(query, n_genes=5)  # doctest: +SKIP
    """
    import scanpy as sc

    rna = get_rna(adata, "adata")
    if key not in rna.uns or "names" not in rna.uns[key]:
        msg = (
            f"adata.uns has no markers under {key!r} (keys: {list(rna.uns)}). Run "
            "`ta.tl.transanno_markers(adata, model)` first, or pass its key as `key=`."
        )
        raise KeyError(msg)
    n_genes = check_positive_int(n_genes, "n_genes")
    if groupby is None:
        groupby = str(rna.uns[key].get("params", {}).get("groupby", "transanno_label"))
    if groupby not in rna.obs:
        raise missing_obs_key(
            rna, groupby, "groupby", "Pass the column with each cell's type as `groupby=`."
        )
    var_names = markers_var_names(rna, key, n_genes)
    genes = list(dict.fromkeys(g for gs in var_names.values() for g in gs))
    missing = [g for g in genes if g not in rna.var_names]
    if missing:
        msg = f"Marker genes {missing[:5]} are not in adata.var_names: was uns[{key!r}] written "
        msg += "for another AnnData?"
        raise KeyError(msg)
    groups = rna.obs[groupby]
    if isinstance(groups.dtype, pd.CategoricalDtype):  # the user's order of the groups
        groups = groups.cat.remove_unused_categories()
    else:
        groups = groups.map(lambda v: v if pd.isna(v) else str(v)).astype("category")
    keep = groups.notna().to_numpy()  # cells without a group are not drawn
    plot_data = _log_expression_of(rna, genes, layer)
    if not keep.all():
        plot_data = plot_data[keep].copy()
    plot_data.obs[groupby] = pd.Categorical(groups[keep]).remove_unused_categories()
    if kwds.get("dendrogram"):
        plot_data = _without_silent_groups(plot_data, groupby)
    own_figure = ax is None
    dp = sc.pl.dotplot(
        plot_data,
        var_names,
        groupby,
        standard_scale=standard_scale,
        ax=ax,
        return_fig=True,
        show=False,
        **kwds,
    )
    dp.make_figure()
    axes = dp.get_axes()
    fig = axes["mainplot_ax"].figure
    shown = savefig_or_show(fig, show=show, save=save, own_figure=own_figure)
    return None if shown else axes


def _without_silent_groups(plot_data: AnnData, groupby: str) -> AnnData:
    """``plot_data`` without the groups that express none of the plotted genes (a dendrogram
    cannot place them: their correlations are undefined), with a warning naming them."""
    expressed = np.asarray((plot_data.X != 0).sum(1)).ravel() > 0
    groups = plot_data.obs[groupby]
    silent = [g for g in groups.cat.categories if not expressed[(groups == g).to_numpy()].any()]
    if not silent:
        return plot_data
    warnings.warn(
        f"Groups {silent} of {groupby!r} express none of the plotted genes: left out of the "
        "plot, which a dendrogram cannot order with them.",
        UserWarning,
        stacklevel=3,
    )
    out = plot_data[~groups.isin(silent).to_numpy()].copy()
    out.obs[groupby] = out.obs[groupby].cat.remove_unused_categories()
    return out


def _log_expression_of(rna: AnnData, genes: list[str], layer: str | None) -> AnnData:
    """A small AnnData with the log1p CP10k expression of ``genes`` (library sizes from all
    genes), or the values themselves when they are log-normalized already."""
    from anndata import AnnData

    from transanno_sc.data import get_matrix, log_factor, resolve_input_scale

    X = get_matrix(rna, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    scale = resolve_input_scale(X, "auto", where)
    cols = rna.var_names.get_indexer(genes)
    sub = X[:, cols]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    sub = sub.astype(np.float32)
    if scale == "counts":
        library = np.asarray(X.sum(axis=1), dtype=np.float64).reshape(-1, 1)
        sub = np.log1p(sub / np.maximum(library, 1e-8) * 1e4).astype(np.float32)
    else:  # log2(1+x) values and the like: natural log1p values
        sub *= np.float32(log_factor(scale))
    out = AnnData(X=sub, obs=pd.DataFrame(index=rna.obs_names.copy()))
    out.var_names = pd.Index(genes)
    return out
