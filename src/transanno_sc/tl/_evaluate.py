"""``tl.evaluate``: compare predicted with known cell types."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import accuracy_score, classification_report, f1_score

from transanno_sc._constants import UNASSIGNED
from transanno_sc.data import get_rna


def evaluate(
    adata: AnnData,
    true_key: str,
    pred_key: str = "transanno_label",
    *,
    known_only: bool = True,
) -> dict:
    """Accuracy, macro/weighted F1, per-class report and confusion matrix.

    Parameters
    ----------
    adata
        Annotated AnnData (or MuData, RNA modality).
    true_key
        Column of ``obs`` with the true cell types; cells where it is missing (NaN) are not
        scored.
    pred_key
        Column of ``obs`` with the predictions.
    known_only
        Score only cells whose true type is one the model could predict (in
        ``uns['{prefix}']['classes']`` or, without it, a column of
        ``obsm['{prefix}_probabilities']``; any predicted type when both are absent). Cells
        predicted ``"Unassigned"`` count as errors.

    Returns
    -------
    A dict with ``accuracy``, ``f1_macro``, ``f1_weighted``, ``unassigned_fraction``,
    ``n_cells``, ``report`` (:class:`pandas.DataFrame`, one row per type) and ``confusion``
    (:class:`pandas.DataFrame`, true types as rows, predicted as columns); and, for the cells
    of true types the model does not know (where ``adata`` records the types it knows, as
    ``transanno_annotate`` writes them), how the "Unassigned" call did:

    - ``novel_types``: those true types (empty where there are none);
    - ``n_novel``: their cells;
    - ``novel_unassigned_fraction``: the share of them predicted ``"Unassigned"`` (NaN
      without such cells);
    - ``novelty_auroc``: the AUROC of ``obs['{prefix}_confidence']`` for the known cells
      (positive) against them: 1 where every novel cell is less confident than every known
      one, 0.5 for no better than chance (NaN without such cells or without the column);
    - ``f1_macro_all_cells``: macro-F1 over the known types on every cell, a novel cell
      predicted a known type counting as a false positive of that type ("Unassigned" novel
      cells are no error), which ``f1_macro`` (known cells only) does not see.

    Examples
    --------
    >>> import transanno_sc as ta
    >>> adata = ta.datasets.zilionis_mouse_lung()
    >>> adata.obs["transanno_label"] = adata.obs["cell_type"]
    >>> ta.tl.evaluate(adata, "cell_type")["accuracy"]
    1.0
    """
    rna = get_rna(adata, "adata")
    for key in (true_key, pred_key):
        if key not in rna.obs:
            msg = f"{key!r} is not a column of adata.obs (columns: {list(rna.obs.columns)})."
            raise KeyError(msg)
    labelled = rna.obs[true_key].notna().to_numpy()  # cells of unknown truth are not scored
    true = rna.obs[true_key].astype(str).to_numpy()[labelled]
    pred = rna.obs[pred_key].astype(str).to_numpy()[labelled]
    prefix = pred_key.removesuffix("_label")
    probs = rna.obsm.get(f"{prefix}_probabilities")
    info = rna.uns.get(prefix)
    classes = info.get("classes") if isinstance(info, dict) else None
    recorded = None  # the types the model knows, where adata records them
    if classes is not None:
        recorded = set(map(str, classes))
    elif isinstance(probs, pd.DataFrame):
        recorded = set(map(str, probs.columns))
    novelty = _novelty_scores(rna, labelled, true, pred, recorded, prefix)
    if known_only:
        known = recorded if recorded is not None else set(pred) - {UNASSIGNED}
        keep = np.isin(true, list(known))
        true, pred = true[keep], pred[keep]
    if true.size == 0:
        if not labelled.any():
            msg = f"No cell left to evaluate: adata.obs[{true_key!r}] has no value."
        elif known_only and classes is None and not isinstance(probs, pd.DataFrame):
            msg = (
                "No cell left to evaluate: no true label is among the predicted cell types, "
                "and adata has no record of the types the model knows (uns or obsm of "
                f"{prefix!r}). Pass known_only=False to score every cell."
            )
        else:
            msg = "No cell left to evaluate: no true label is among the model's cell types."
        raise ValueError(msg)
    labels = sorted(set(true))
    cols = sorted(set(true) | set(pred))
    confusion = pd.crosstab(
        pd.Categorical(true, categories=labels),
        pd.Categorical(pred, categories=cols),
        dropna=False,
    )
    confusion.index.name, confusion.columns.name = "true", "predicted"
    report = pd.DataFrame(
        classification_report(true, pred, labels=labels, output_dict=True, zero_division=0)
    ).T.loc[labels]
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "f1_macro": float(f1_score(true, pred, labels=labels, average="macro", zero_division=0)),
        "f1_weighted": float(
            f1_score(true, pred, labels=labels, average="weighted", zero_division=0)
        ),
        "unassigned_fraction": float(np.mean(pred == UNASSIGNED)),
        "n_cells": int(true.size),
        "report": report,
        "confusion": confusion,
        **novelty,
    }


def _novelty_scores(
    rna: AnnData,
    labelled: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    known: set | None,
    prefix: str,
) -> dict:
    """The "Unassigned" call on cells of types the model does not know (see ``evaluate``)."""
    from sklearn.metrics import roc_auc_score

    out = {
        "novel_types": [],
        "n_novel": 0,
        "novel_unassigned_fraction": float("nan"),
        "novelty_auroc": float("nan"),
        "f1_macro_all_cells": float("nan"),
    }
    if known is None:
        return out
    novel = ~np.isin(true, list(known))
    labels = sorted(set(true[~novel]))
    if labels:
        out["f1_macro_all_cells"] = float(
            f1_score(true, pred, labels=labels, average="macro", zero_division=0)
        )
    if not novel.any():
        return out
    out["novel_types"] = sorted(set(true[novel]))
    out["n_novel"] = int(novel.sum())
    out["novel_unassigned_fraction"] = float(np.mean(pred[novel] == UNASSIGNED))
    key = f"{prefix}_confidence"
    if key in rna.obs and (~novel).any():
        confidence = rna.obs[key].to_numpy(dtype=float)[labelled]
        if np.isfinite(confidence).all():
            out["novelty_auroc"] = float(roc_auc_score(~novel, confidence))
    return out
