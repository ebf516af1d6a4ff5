"""Stratified splits and subsamples of labeled cells."""

from __future__ import annotations

import numpy as np


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


#: Every type keeps at least this many reference cells (all of them when it has fewer).
MIN_CELLS_PER_TYPE = 50


def stratified_subsample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most about ``n`` cells, proportional per label but at least
    :data:`MIN_CELLS_PER_TYPE` of each (all of a smaller type)."""
    if labels.size <= n:
        return np.arange(labels.size)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(round(n * idx.size / labels.size), MIN_CELLS_PER_TYPE)
        keep.append(rng.choice(idx, min(k, idx.size), replace=False))
    return np.sort(np.concatenate(keep))
