"""Streaming rows of dense, sparse or backed matrices as forward batches (no AnnData here)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

#: Rows read per chunk when scanning or streaming a matrix.
CHUNK_SIZE = 2048

T = TypeVar("T")


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
        rows = X[start:stop] if indices is None else _read_rows(X, indices[start:stop])
        if sp.issparse(rows):
            rows = sp.csr_matrix(rows, dtype=np.float32)
        else:
            rows = np.asarray(rows, dtype=np.float32)
        yield start, rows


def _read_rows(X, rows: np.ndarray):
    """``X[rows]``, read as one slice when the rows fill a quarter of their span: a backed sparse
    matrix reads an index array row by row (two h5py reads per row, about 20 us per cell),
    a slice in one read."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    if hi - lo > 4 * rows.size:
        return X[rows]
    block = X[lo:hi]
    in_order = hi - lo == rows.size and bool((np.diff(rows) == 1).all())
    return block if in_order else block[rows - lo]


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
    log1p: float = 0.0,
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
    log1p
        Non-zero where ``X`` holds log-normalized values: what they are multiplied by to give
        natural log1p values (1 for log1p values, ``ln 2`` for ``log2(1+x)``; ``log_factor``
        of ``_anndata``), which the batches then hold. The library is then the total of their
        ``expm1`` (the count-like values the model normalizes them back from).

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
        if log1p and log1p != 1.0:
            rows = rows * np.float32(log1p)  # a new matrix: X itself is left as it is
        totals = (rows.expm1() if sp.issparse(rows) else np.expm1(rows)) if log1p else rows
        library = np.asarray(totals.sum(axis=1), dtype=np.float32).reshape(-1)
        sub = rows[:, source]
        if sp.issparse(sub):
            # relabel the columns as vocabulary positions: a batch is then one C-level
            # ``toarray`` (scattering ``n_vocab`` columns with fancy indexing costs ~5x more)
            sub = sp.csr_matrix(
                (sub.data, target[sub.indices], sub.indptr), shape=(sub.shape[0], n_vocab)
            )
        if max_tokens is None:
            batches = [
                np.arange(i, min(i + batch_size, rows.shape[0]))
                for i in range(0, rows.shape[0], batch_size)
            ]
        else:
            batches = length_batches(n_tokens(sub, max_tokens), batch_size)
        for batch in batches:
            if sp.issparse(sub):
                x = sub[batch].toarray()
            else:
                x = np.zeros((batch.size, n_vocab), dtype=np.float32)
                x[:, target] = sub[batch]
            yield start + batch, x, library[batch]


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` with the next ``depth`` of them prepared in a background thread.

    The forward pass on an accelerator then overlaps with reading and densifying the next
    batches on the host (h5py, SciPy and NumPy release the GIL in their C loops). Items come in
    order; an exception raised while preparing one is raised here, at that item; leaving the
    loop early stops the thread.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))
            return
        put((False, None))

    worker = threading.Thread(target=produce, name="transanno-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = slots.get()
            if ok:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        worker.join()


def empty_rows(X) -> np.ndarray:
    """Which rows of ``X`` (dense, sparse or backed) hold no non-zero value."""
    empty = np.zeros(X.shape[0], dtype=bool)
    for start, rows in iter_row_chunks(X):
        nnz = rows.getnnz(axis=1) if sp.issparse(rows) else np.count_nonzero(rows, axis=1)
        empty[start : start + rows.shape[0]] = nnz == 0
    return empty


def type_detection(X, codes: np.ndarray, n_types: int) -> np.ndarray:
    """``(n_types, n_genes)`` share of each type's cells (``codes``; -1: none) with a value
    above 0, read in row chunks (works on backed matrices)."""
    counts = np.zeros((n_types, X.shape[1]), dtype=np.float64)
    for start, rows in iter_row_chunks(X):
        c = codes[start : start + rows.shape[0]]
        keep = c >= 0
        if not keep.any():
            continue
        rows = sp.csr_matrix(rows)[keep]
        rows.data = (rows.data > 0).astype(np.float64)
        onehot = sp.csr_matrix(
            (np.ones(keep.sum()), (c[keep], np.arange(keep.sum()))),
            shape=(n_types, keep.sum()),
        )
        counts += np.asarray((onehot @ rows).todense())
    n = np.bincount(codes[codes >= 0], minlength=n_types).astype(np.float64)
    return (counts / np.maximum(n, 1)[:, None]).astype(np.float32)
