"""Loss and validation metrics over the training epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._utils import savefig_or_show

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from transanno_sc.model import TransAnno

_LABELS = {
    "train_loss": "train loss",
    "validation_loss": "validation loss",
    "validation_accuracy": "validation accuracy",
    "validation_f1_macro": "validation macro-F1",
    "pretrain_loss": "pretraining loss",
    "pretrain_validation_loss": "pretraining validation loss",
    "pretrain_validation_accuracy": "masked-value accuracy (validation)",
}


def _as_series(history: Mapping, key: str) -> pd.Series:
    value = history[key]
    if isinstance(value, pd.DataFrame):
        value = value.iloc[:, 0]
    return pd.Series(value, dtype=float).dropna()


def training_history(
    model: TransAnno | Mapping[str, pd.DataFrame],
    keys: Sequence[str] | None = None,
    *,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> list[Axes] | None:
    """Training and validation loss, and validation accuracy and macro-F1, per epoch.

    Two panels: the losses (``train_loss``, ``validation_loss``) and the validation metrics
    (``validation_accuracy``, ``validation_f1_macro``), read from ``model.history`` as scvi-tools
    records it. The epoch with the lowest validation loss, the one early stopping keeps in
    view, is marked.

    Parameters
    ----------
    model
        A trained :class:`~transanno_sc.model.TransAnno` (or any scvi-tools model), or its
        ``history``: a mapping of metric names to one-column DataFrames indexed by epoch.
    keys
        The metrics to draw; names ending in ``loss`` go to the first panel, the others to the
        second. ``None``: every ``*_loss`` metric and every validation metric in the history.
    ax
        Two axes to draw the panels into, or one axes (the metrics then share it, on a second
        y axis at the right); a new figure when ``None``.
    show
        Show the figure; by default when ``ax`` is ``None``, ``save`` is not given and
        matplotlib is interactive.
    save
        File to save the figure to (the format follows the extension).

    Returns
    -------
    A list with the loss and the metric :class:`~matplotlib.axes.Axes` when ``show`` is
    ``False``, else ``None``.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> ta.model.TransAnno.setup_anndata(adata, labels_key="cell_type")
    >>> model = ta.model.TransAnno(adata, n_layers=1, max_tokens=64)
    >>> model.train(max_epochs=2)  # doctest: +SKIP
    >>> loss_ax, metric_ax = ta.pl.training_history(model, show=False)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = model if isinstance(model, Mapping) else getattr(model, "history", None)
    if not history:
        msg = (
            "The model has no training history: train it first with `model.train()` (a model "
            "loaded from a folder keeps the history it was saved with)."
        )
        raise ValueError(msg)
    keys = _history_keys(history, keys)
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if not k.endswith("loss")]

    own_figure = ax is None
    is_pair = isinstance(ax, Sequence | np.ndarray)
    if own_figure:
        _, axs = plt.subplots(1, 2, figsize=(9.0, 3.4))
        loss_ax, metric_ax = axs
    elif is_pair:
        if len(ax) != 2:
            msg = f"ax must be one axes or a pair of axes, got {len(ax)}."
            raise ValueError(msg)
        loss_ax, metric_ax = ax
    else:
        loss_ax, metric_ax = ax, ax.twinx()

    for k in loss_keys:
        s = _as_series(history, k)
        loss_ax.plot(s.index, s.to_numpy(), marker="o", ms=3, label=_LABELS.get(k, k))
    if "validation_loss" in loss_keys:
        s = _as_series(history, "validation_loss")
        if len(s):
            best = s.idxmin()
            loss_ax.axvline(best, color="0.6", ls=":", lw=1, label=f"best epoch ({best})")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    if loss_keys:
        loss_ax.legend(fontsize=8, frameon=False)

    shared = not own_figure and not is_pair  # metrics on a twin y axis of the loss axes
    for k in metric_keys:
        s = _as_series(history, k)
        metric_ax.plot(
            s.index,
            s.to_numpy(),
            marker="s",
            ms=3,
            ls="--" if shared else "-",
            label=_LABELS.get(k, k),
        )
    if metric_keys:
        metric_ax.set_ylim(0, 1.02)
        metric_ax.set_ylabel("score")
        metric_ax.legend(fontsize=8, frameon=False, loc="lower right")
    if not shared:
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        metric_ax.set_xlabel("epoch")
        metric_ax.set_title("validation metrics")
    if own_figure:
        loss_ax.figure.tight_layout()
    shown = savefig_or_show(loss_ax.figure, show=show, save=save, own_figure=own_figure)
    return None if shown else [loss_ax, metric_ax]


def _history_keys(history: Mapping[str, pd.DataFrame], keys: Sequence[str] | str | None):
    """The metrics :func:`training_history` draws: ``keys`` (checked), or every loss and
    validation metric of ``history``."""
    if keys is None:
        keys = [k for k in _LABELS if k in history]
        keys += sorted(
            k
            for k in history
            # validation_* of training, pretrain_validation_* of pretraining
            if k not in keys and (k.endswith("_loss") or "validation_" in k)
        )
    else:
        keys = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in keys if k not in history]
        if missing:
            msg = f"{missing[0]!r} is not in the training history (recorded: {sorted(history)})."
            raise KeyError(msg)
    if not keys:
        msg = f"Nothing to plot: no loss or validation metric in the history ({sorted(history)})."
        raise KeyError(msg)
    return keys
