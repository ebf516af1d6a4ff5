"""Confusion matrix of predicted against known cell types."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from ._utils import savefig_or_show


def confusion_matrix(
    adata: AnnData,
    true_key: str,
    pred_key: str = "transanno_label",
    *,
    normalize: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Heat map of true (rows) against predicted (columns) cell types.

    Parameters
    ----------
    adata
        Annotated AnnData.
    true_key
        Column of ``obs`` with the known cell types.
    pred_key
        Column of ``obs`` with the predictions.
    normalize
        Show the fraction of each true type (rows sum to 1) instead of counts.
    ax
        Axes to draw into; a new figure when ``None``.
    show
        Show the figure; by default when ``ax`` is ``None``, ``save`` is not given and
        matplotlib is interactive.
    save
        File to save the figure to (the format follows the extension).

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` when ``show`` is ``False``, else ``None``.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> adata.obs["transanno_label"] = adata.obs["cell_type"]
    >>> ax = ta.pl.confusion_matrix(adata, "cell_type", show=False)
    """
    import matplotlib.pyplot as plt

    from transanno_sc.tl import evaluate

    conf = evaluate(adata, true_key, pred_key, known_only=False)["confusion"]
    values = conf.to_numpy().astype(float)
    if normalize:
        values = values / np.maximum(values.sum(1, keepdims=True), 1)
    own_figure = ax is None
    if own_figure:
        size = 1.0 + 0.45 * max(conf.shape)
        _, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(conf.shape[1]), conf.columns, rotation=90)
    ax.set_yticks(range(conf.shape[0]), conf.index)
    ax.grid(False)  # scanpy's styles turn the grid on; it would cross the cells
    ax.set_xlabel(f"predicted ({pred_key})")
    ax.set_ylabel(f"true ({true_key})")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if values[i, j] > 0:
                text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
                color = "white" if values[i, j] > 0.6 * values.max() else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if own_figure:
        ax.figure.tight_layout()
    shown = savefig_or_show(ax.figure, show=show, save=save, own_figure=own_figure)
    return None if shown else ax
