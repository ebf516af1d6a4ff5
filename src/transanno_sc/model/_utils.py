"""AnnData-side helpers of the model: input checks, scale detection, streaming rows."""

from __future__ import annotations

import atexit
import logging
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

InputScale = Literal["auto", "counts", "log1p"]

logger = logging.getLogger(__name__)

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

    Only ``chunk_size`` rows are read and converted at a time: a sparse or backed sparse matrix
    stays sparse (CSR), so memory is bounded by the chunk, not by the number of cells. With
    ``indices`` (sorted row positions) only those rows are read.
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


def n_tokens(rows, max_tokens: int | None = None) -> np.ndarray:
    """Number of expressed (positive) entries of each row, capped at ``max_tokens``.

    This is the number of gene tokens :func:`~transanno_sc.data.tokenize` makes of a row.
    """
    if sp.issparse(rows):
        n = np.asarray((rows > 0).sum(axis=1)).reshape(-1)
    else:
        n = (np.asarray(rows) > 0).sum(axis=1)
    n = n.astype(np.int64)
    return n if max_tokens is None else np.minimum(n, max_tokens)


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split positions ``0..len(lengths)-1`` into batches of cells of similar length.

    Positions are sorted (stably) by ``lengths`` and cut into consecutive batches of
    ``batch_size``, so padding to the longest cell of a batch wastes little. The module pads
    each batch to its longest cell and masks padding, so a cell's result does not depend on
    which batch it lands in.
    """
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


def n_forward_batches(n: int, batch_size: int, chunk_size: int | None = None) -> int:
    """Number of batches :func:`iter_vocab_batches` yields for ``n`` cells."""
    chunk_size = max(chunk_size or CHUNK_SIZE, batch_size)
    full, rest = divmod(n, chunk_size)
    per_chunk = -(-chunk_size // batch_size)
    return full * per_chunk + (-(-rest // batch_size))


def iter_vocab_batches(
    X,
    source: np.ndarray,
    target: np.ndarray,
    n_vocab: int,
    batch_size: int,
    *,
    indices: np.ndarray | None = None,
    max_tokens: int | None = None,
    chunk_size: int | None = None,
    check=None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream ``X`` as dense forward batches over a gene vocabulary.

    Rows are read ``chunk_size`` at a time with :func:`iter_row_chunks` (sparse and backed
    matrices stay sparse); only one forward batch (``batch_size`` x ``n_vocab``) is ever dense.
    Column ``source[i]`` of ``X`` becomes vocabulary column ``target[i]``; other vocabulary
    genes are 0. With ``max_tokens``, the cells of each chunk are grouped by their number of
    expressed vocabulary genes (:func:`length_batches`, "length bucketing") to cut padding.

    Parameters
    ----------
    X
        ``(n_obs, n_vars)`` dense, sparse or backed matrix.
    source, target
        Matched column positions in ``X`` and in the vocabulary.
    n_vocab
        Size of the vocabulary.
    batch_size
        Cells per forward batch.
    indices
        Sorted row positions to read; all rows when ``None``.
    max_tokens
        Token cap of the model; ``None`` keeps the cells in order (no bucketing).
    chunk_size
        Rows read at once (at least ``batch_size``); :data:`CHUNK_SIZE` when ``None``.
    check
        Called on each raw chunk (e.g. :func:`check_values`).

    Yields
    ------
    ``(positions, x, library)``: output positions of the batch's cells (into ``0..n-1``), their
    ``(len(positions), n_vocab)`` float32 expression and ``(len(positions),)`` total counts over
    all genes of ``X``.
    """
    chunk_size = max(chunk_size or CHUNK_SIZE, batch_size)
    source = np.asarray(source, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    for start, rows in iter_row_chunks(X, chunk_size=chunk_size, indices=indices):
        if check is not None:
            check(rows)
        library = np.asarray(rows.sum(axis=1), dtype=np.float32).reshape(-1)
        sub = rows[:, source]
        if max_tokens is None:
            batches = [
                np.arange(i, min(i + batch_size, rows.shape[0]))
                for i in range(0, rows.shape[0], batch_size)
            ]
        else:
            batches = length_batches(n_tokens(sub, max_tokens), batch_size)
        for batch in batches:
            part = sub[batch]
            x = np.zeros((batch.size, n_vocab), dtype=np.float32)
            x[:, target] = part.toarray() if sp.issparse(part) else part
            yield start + batch, x, library[batch]


def configure_distributed(
    accelerator: str, devices, trainer_kwargs: dict, datasplitter_kwargs: dict
) -> bool:
    """Pick a multi-device strategy and the distributed sampler (edits the dicts in place).

    With more than one device (or ``num_nodes`` > 1) and no ``strategy`` given, Lightning DDP
    is used: ``"ddp_find_unused_parameters_true"`` in scripts (the script is started again for
    the other ranks, also under ``torchrun``/SLURM, whose environment Lightning detects) and
    ``"ddp_notebook_find_unused_parameters_true"`` in Jupyter. Any DDP strategy (string or
    :class:`~lightning.pytorch.strategies.DDPStrategy`) turns on scvi-tools'
    ``BatchDistributedSampler`` so that each process trains on its own shard, and the history
    of rank 0 is written to a private folder, from which spawn-based strategies read it back.

    Returns whether training is distributed.
    """
    from scvi.model._utils import use_distributed_sampler

    n = n_devices(devices, accelerator)
    num_nodes = int(trainer_kwargs.get("num_nodes") or 1)
    if (n > 1 or num_nodes > 1) and trainer_kwargs.get("strategy") is None:
        trainer_kwargs["strategy"] = (
            "ddp_notebook_find_unused_parameters_true"
            if in_notebook()
            else "ddp_find_unused_parameters_true"
        )
    strategy = trainer_kwargs.get("strategy")
    distributed = strategy is not None and use_distributed_sampler(strategy)
    if distributed:
        datasplitter_kwargs.setdefault("distributed_sampler", True)
        if trainer_kwargs.get("logger") is None and not trainer_kwargs.get("log_save_dir"):
            trainer_kwargs["log_save_dir"] = _private_log_dir()
    return distributed


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (where DDP must fork, not start scripts)."""
    return "ipykernel" in sys.modules


def n_devices(devices, accelerator: str = "auto") -> int:
    """Number of devices (processes per node) that ``devices`` asks for.

    Raises a :class:`ValueError` when more GPUs are asked for than this machine has.
    """
    if isinstance(devices, int):
        n = devices if devices > 0 else max(torch.cuda.device_count(), 1)
    elif isinstance(devices, list | tuple):
        n = len(devices)
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        n = int(devices)
        n = n if n > 0 else max(torch.cuda.device_count(), 1)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        n = 1
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        available = torch.cuda.device_count()
        if n > available:
            msg = (
                f"devices={devices!r} asks for {n} GPUs but this machine has {available}. "
                f"Pass devices={available} or fewer (or accelerator='cpu')."
            )
            raise ValueError(msg)
    return n


def _private_log_dir() -> str:
    """A temporary folder for the DDP history file, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="transanno_ddp_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


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
    """Decide from a sample of rows whether ``X`` holds count-like or log1p-normalized values.

    ``"counts"``: integers (UMI or read counts) or non-integer values above
    :data:`MAX_LOG1P_VALUE` (TPM, CPM, RSEM expected counts, Smart-seq read counts): every
    cell is library-size normalized anyway, so their absolute scale does not matter.
    ``"log1p"``: non-integer values up to :data:`MAX_LOG1P_VALUE` (log1p of normalized
    values). The rows read are spread evenly over ``X`` (at most
    :data:`N_ROWS_SCALE_DETECTION`).
    """
    n = min(X.shape[0], N_ROWS_SCALE_DETECTION)
    if n == 0:
        msg = f"{what} has no cells."
        raise ValueError(msg)
    indices = np.unique(np.linspace(0, X.shape[0] - 1, n).astype(np.int64))
    rows = next(iter_row_chunks(X, chunk_size=indices.size, indices=indices))[1]
    check_values(rows, what)
    v = _values(rows)
    v = v[v != 0]
    if v.size == 0:
        msg = f"The {indices.size} cells of {what} read to detect its scale have no non-zero value."
        raise ValueError(msg)
    if np.all(v == np.round(v)) or v.max() > MAX_LOG1P_VALUE:
        return "counts"
    return "log1p"


def resolve_input_scale(X, input_scale: InputScale, what: str = "adata.X") -> str:
    """Check an explicit ``input_scale`` or detect it."""
    if input_scale not in ("auto", "counts", "log1p"):
        msg = f"input_scale must be 'auto', 'counts' or 'log1p', got {input_scale!r}."
        raise ValueError(msg)
    detected = detect_input_scale(X, what)
    if input_scale == "auto":
        logger.info("%s holds %s values (detected).", what, _SCALE_NAMES[detected])
        return detected
    if input_scale != detected:
        warnings.warn(
            f"input_scale={input_scale!r}, but {what} looks like {_SCALE_NAMES[detected]} "
            f"values; they are treated as {_SCALE_NAMES[input_scale]} values as asked.",
            UserWarning,
            stacklevel=3,
        )
    return input_scale


#: How each scale is named in messages.
_SCALE_NAMES = {
    "counts": "count-like (counts, TPM, CPM: normalized per cell, then log1p)",
    "log1p": "log1p-normalized",
}


def expm1_rows(X) -> sp.csr_matrix:
    """``expm1`` of log1p-normalized values as a float32 CSR copy: count-like values that the
    per-cell normalization turns back into the same log1p values (when they were normalized to
    :data:`~transanno_sc._constants.TARGET_SUM`)."""
    out = sp.csr_matrix(X, dtype=np.float32, copy=True)
    out.data = np.expm1(out.data)
    return out


def non_string_labels(labels: pd.Series) -> list:
    """The distinct non-missing labels (categories) that are not strings; scvi-tools' label
    field needs strings."""
    values = labels.cat.categories if isinstance(labels.dtype, pd.CategoricalDtype) else labels
    return [v for v in pd.Series(values).dropna().unique() if not isinstance(v, str)]


def string_labels(labels: pd.Series) -> pd.Series:
    """``labels`` with every non-missing value as a string (``3`` -> ``"3"``), NaN kept."""
    if isinstance(labels.dtype, pd.CategoricalDtype):
        return labels.cat.rename_categories([str(c) for c in labels.cat.categories])
    return labels.map(lambda v: v if pd.isna(v) else str(v)).astype(object)


def check_labels(adata: AnnData, labels_key: str | None, unlabeled_category: str) -> None:
    """Refuse a missing ``labels_key``, labels that are not strings, or missing labels."""
    if labels_key is None:
        return
    if labels_key not in adata.obs:
        msg = (
            f"labels_key={labels_key!r} is not a column of adata.obs "
            f"(columns: {list(adata.obs.columns)})."
        )
        raise KeyError(msg)
    labels = adata.obs[labels_key]
    not_strings = non_string_labels(labels)
    if not_strings:
        example = not_strings[0]
        msg = (
            f"adata.obs[{labels_key!r}] holds labels that are not strings (e.g. {example} of type "
            f"{type(example).__name__}): cell types must be named by strings. Convert them "
            f"first: adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].astype(str)."
        )
        raise TypeError(msg)
    values = set(map(str, labels.dropna().unique()))
    if unlabeled_category not in values:
        lookalike = sorted(v for v in values if v.lower() == str(unlabeled_category).lower())
        if lookalike:
            msg = (
                f"unlabeled_category={unlabeled_category!r} does not occur in "
                f"adata.obs[{labels_key!r}], but {lookalike[0]!r} does: those cells would be "
                f"trained on as a cell type. Pass unlabeled_category={lookalike[0]!r}."
            )
            raise ValueError(msg)
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
        # rounded first: 10 * (1 - 0.9) is 0.9999999999999998 in floating point
        n_val = int(np.floor(round(len(idx) * (1.0 - train_size), 6)))
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
