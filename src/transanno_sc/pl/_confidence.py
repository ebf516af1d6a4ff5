"""Distribution of the prediction confidence per predicted cell type."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from transanno_sc._constants import UNASSIGNED
from transanno_sc.data import get_rna

from ._utils import missing_obs_key, savefig_or_show

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from mudata import MuData

_HINT = "Run `ta.tl.transanno_annotate` first, or pass the keys it wrote with `key_added`."


def confidence(
    adata: AnnData | MuData,
    pred_key: str = "transanno_label",
    confidence_key: str = "transanno_confidence",
    *,
    threshold: float | None = None,
    max_points: int = 500,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Confidence of the predictions, per predicted cell type, and the Unassigned fraction.

    One box per predicted type (``"Unassigned"`` last) over the confidence of its cells, with
    the cells drawn as points; the tick labels give the number and fraction of cells, the title
    the fraction left ``"Unassigned"``, and a dashed line marks the threshold below which
    cells were left unassigned.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`~transanno_sc.tl.transanno_annotate` (or a MuData whose
        RNA modality was).
    pred_key
        Column of ``obs`` with the predicted cell types.
    confidence_key
        Column of ``obs`` with the confidence of each prediction.
    threshold
        Where to draw the "Unassigned" threshold. ``None`` reads it from
        ``uns[prefix]['params']`` (prefix: ``pred_key`` without ``_label``), when there.
    max_points
        Cells drawn as points per type, at most (a random subset on large data); the boxes
        always use every cell.
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
    >>> import numpy as np
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> adata.obs["transanno_label"] = adata.obs["cell_type"]
    >>> adata.obs["transanno_confidence"] = np.random.default_rng(0).uniform(0.3, 1, adata.n_obs)
    >>> ax = ta.pl.confidence(adata, threshold=0.5, show=False)
    >>> ax.get_title()  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    rna = get_rna(adata, "adata")
    if pred_key not in rna.obs:
        raise missing_obs_key(rna, pred_key, "pred_key", _HINT)
    if confidence_key not in rna.obs:
        raise missing_obs_key(rna, confidence_key, "confidence_key", _HINT)
    if max_points < 0:
        msg = f"max_points must be >= 0, got {max_points}."
        raise ValueError(msg)
    pred = rna.obs[pred_key]
    conf = pd.to_numeric(rna.obs[confidence_key], errors="coerce").to_numpy(dtype=float)
    if threshold is None:
        params = rna.uns.get(pred_key.removesuffix("_label"), {})
        params = params.get("params", {}) if isinstance(params, dict) else {}
        value = params.get("unassigned_threshold")
        threshold = float(value) if value is not None and float(value) >= 0 else None

    categories = (
        [str(c) for c in pred.cat.categories]
        if isinstance(pred.dtype, pd.CategoricalDtype)
        else sorted(pred.astype(str).unique())
    )
    labels = pred.astype(str).to_numpy()
    present = set(labels)
    groups = [c for c in categories if c in present and c != UNASSIGNED]
    groups += sorted(present - set(groups) - {UNASSIGNED})
    if UNASSIGNED in present or UNASSIGNED in categories:
        groups.append(UNASSIGNED)
    n = len(labels)
    values = [conf[labels == g] for g in groups]
    unassigned = float(np.mean(labels == UNASSIGNED)) if n else 0.0

    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(figsize=(1.2 + 0.75 * max(len(groups), 3), 4.0))
    positions = np.arange(len(groups))
    nonempty = [i for i, v in enumerate(values) if v.size]
    ax.boxplot(
        [values[i] for i in nonempty],
        positions=positions[nonempty],
        widths=0.6,
        showfliers=False,
        patch_artist=True,
        boxprops={"facecolor": "#dbe6f3", "edgecolor": "#4a6e96"},
        medianprops={"color": "#1f3b5c"},
        whiskerprops={"color": "#4a6e96"},
        capprops={"color": "#4a6e96"},
    )
    rng = np.random.default_rng(0)
    for i, (g, v) in enumerate(zip(groups, values)):
        if v.size > max_points:
            v = rng.choice(v, max_points, replace=False)
        x = i + rng.uniform(-0.22, 0.22, v.size)
        color = "#b0b0b0" if g == UNASSIGNED else "#2b6cb0"
        ax.scatter(x, v, s=6, alpha=0.5, color=color, linewidths=0, zorder=3)
    if threshold is not None:
        ax.axhline(threshold, color="#c53030", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    ticks = [f"{g}\n{v.size} ({v.size / max(n, 1):.0%})" for g, v in zip(groups, values)]
    ax.set_xticks(positions, ticks, rotation=45 if len(groups) > 6 else 0, fontsize=8)
    ax.grid(False, axis="x")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    top = np.nanmax(conf) if np.isfinite(conf).any() else 1.0
    ax.set_ylim(0, max(1.02, 1.02 * top))
    ax.set_xlabel(f"predicted ({pred_key})")
    ax.set_ylabel(f"confidence ({confidence_key})")
    ax.set_title(f"{UNASSIGNED}: {unassigned:.1%} of {n} cells")
    if own_figure:
        ax.figure.tight_layout()
    shown = savefig_or_show(ax.figure, show=show, save=save, own_figure=own_figure)
    return None if shown else ax
