"""AnnData-side helpers of the model: input checks, scale detection, streaming rows."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

InputScale = Literal["auto", "counts", "log1p"]

#: Rows read per chunk when scanning or streaming a matrix.
CHUNK_SIZE = 2048
#: Rows inspected to decide whether a matrix holds counts or log1p values.
N_ROWS_SCALE_DETECTION = 2000
#: log1p(counts per 10k) never exceeds this in practice; larger non-integer values are not log.
MAX_LOG1P_VALUE = 30.0


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error when it is missing."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is None: store the expression matrix in adata.X or pass `layer=`."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"layer={layer!r} not found in adata.layers (available: {list(adata.layers)}). "
            "Pass one of these or `layer=None` to use adata.X."
        )
        raise KeyError(msg)
    return adata.layers[layer]


def check_shape_and_names(adata: AnnData, what: str = "adata") -> None:
    """Refuse empty objects and duplicate gene names."""
    if not isinstance(adata, AnnData):
        msg = f"{what} must be an AnnData, got {type(adata).__name__}."
        raise TypeError(msg)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"{what} is empty ({adata.n_obs} cells x {adata.n_vars} genes)."
        raise ValueError(msg)
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        msg = (
            f"{what}.var_names are not unique (e.g. {dup}); genes are matched by name. "
            f"Run `{what}.var_names_make_unique()` first."
        )
        raise ValueError(msg)


def iter_row_chunks(
    X, chunk_size: int = CHUNK_SIZE, indices: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield ``(start, rows)`` chunks of ``X`` (dense, sparse or backed) as float32.

    With ``indices`` (sorted row positions) only those rows are read.
    """
    n = X.shape[0] if indices is None else len(indices)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = X[start:stop] if indices is None else X[indices[start:stop]]
        if sp.issparse(rows):
            rows = sp.csr_matrix(rows, dtype=np.float32)
        else:
            rows = np.asarray(rows, dtype=np.float32)
        yield start, rows


def _values(rows) -> np.ndarray:
    return rows.data if sp.issparse(rows) else np.asarray(rows).ravel()


def check_values(rows, what: str = "adata.X") -> None:
    """Raise a ``ValueError`` naming the problem when ``rows`` hold NaN, inf or negatives."""
    v = _values(rows)
    if v.size == 0:
        return
    if not np.isfinite(v).all():
        n_bad = int((~np.isfinite(v)).sum())
        msg = (
            f"{what} contains {n_bad} NaN or infinite values. Remove or impute them "
            "(e.g. `np.nan_to_num`) before annotation."
        )
        raise ValueError(msg)
    if v.min() < 0:
        msg = (
            f"{what} contains negative values (min {v.min():.3g}): it looks scaled or "
            "centered (`sc.pp.scale`). TransAnno needs raw counts or log1p-normalized values: "
            "pass `layer=` with counts, or use `adata.raw.to_adata()`."
        )
        raise ValueError(msg)


def scan_matrix(X, what: str = "adata.X") -> None:
    """Check every value of ``X`` chunk by chunk (works on backed matrices)."""
    for _, rows in iter_row_chunks(X):
        check_values(rows, what)


def detect_input_scale(X, what: str = "adata.X") -> Literal["counts", "log1p"]:
    """Decide from the first rows whether ``X`` holds raw counts or log1p-normalized values.

    Integer values are counts; non-integer values up to :data:`MAX_LOG1P_VALUE` are taken as
    log1p-normalized. Anything else (normalized but not logged, for instance) is refused.
    """
    n = min(X.shape[0], N_ROWS_SCALE_DETECTION)
    rows = next(iter_row_chunks(X, chunk_size=n))[1]
    check_values(rows, what)
    v = _values(rows)
    v = v[v != 0]
    if v.size == 0:
        msg = f"The first {n} cells of {what} have no non-zero value."
        raise ValueError(msg)
    if np.all(v == np.round(v)):
        return "counts"
    if v.max() <= MAX_LOG1P_VALUE:
        return "log1p"
    msg = (
        f"{what} holds non-integer values up to {v.max():.3g}: neither raw counts nor "
        "log1p-normalized values. Run `sc.pp.log1p` after normalizing, store raw counts, or "
        "pass `input_scale='counts'`/`'log1p'` explicitly."
    )
    raise ValueError(msg)


def resolve_input_scale(X, input_scale: InputScale, what: str = "adata.X") -> str:
    """Check an explicit ``input_scale`` or detect it."""
    if input_scale not in ("auto", "counts", "log1p"):
        msg = f"input_scale must be 'auto', 'counts' or 'log1p', got {input_scale!r}."
        raise ValueError(msg)
    detected = detect_input_scale(X, what)
    if input_scale == "auto":
        return detected
    if input_scale == "counts" and detected != "counts":
        warnings.warn(
            f"input_scale='counts' but {what} holds non-integer values; they are treated as "
            "counts (library-size normalized and log1p-transformed).",
            UserWarning,
            stacklevel=3,
        )
    return input_scale


def check_labels(adata: AnnData, labels_key: str | None, unlabeled_category: str) -> None:
    """Refuse a missing ``labels_key`` or labels with missing values."""
    if labels_key is None:
        return
    if labels_key not in adata.obs:
        msg = (
            f"labels_key={labels_key!r} is not a column of adata.obs "
            f"(columns: {list(adata.obs.columns)})."
        )
        raise KeyError(msg)
    labels = adata.obs[labels_key]
    if labels.isna().any():
        msg = (
            f"adata.obs[{labels_key!r}] has {int(labels.isna().sum())} missing values. Set them "
            f"to unlabeled_category={unlabeled_category!r} to mark those cells as unlabeled."
        )
        raise ValueError(msg)


def stratified_split(
    labels: np.ndarray, train_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split cell positions into train and validation, stratified by label.

    Every class keeps at least one training cell; classes with a single cell get no
    validation cell.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(np.floor(len(idx) * (1.0 - train_size)))
        n_val = min(n_val, len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def history_to_json(history: dict[str, pd.DataFrame] | None) -> dict:
    """Serialize ``model.history`` (dict of one-column DataFrames) to plain lists."""
    if not history:
        return {}
    return {
        k: {"index": [int(i) for i in v.index], "values": v.iloc[:, 0].astype(float).tolist()}
        for k, v in history.items()
    }


def history_from_json(data: dict) -> dict[str, pd.DataFrame]:
    """Inverse of :func:`history_to_json`."""
    return {
        k: pd.DataFrame({k: v["values"]}, index=pd.Index(v["index"], name="epoch"))
        for k, v in data.items()
    }
