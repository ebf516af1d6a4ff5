"""What one forward pass of a model over an AnnData gives."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ForwardOutputs(NamedTuple):
    """What one pass of the model over an AnnData gives, row-aligned with its cells.

    ``probs`` (calibrated class probabilities), ``latent`` (cell embedding), ``distance``
    (novelty distance), ``novelty_pvalue``, ``n_expressed`` (expressed vocabulary genes),
    ``overlap`` (gene overlap and input scale of the AnnData) and ``novelty_shift``, the
    query-level distance factor of the novelty p-values (1: no shift; see
    :meth:`~transanno_sc.module.TransAnnoModule.shift_factor`).
    """

    probs: np.ndarray
    latent: np.ndarray
    distance: np.ndarray
    novelty_pvalue: np.ndarray
    n_expressed: np.ndarray
    overlap: dict
    novelty_shift: float = 1.0

    def take(self, rows: np.ndarray) -> ForwardOutputs:
        """The outputs of cells ``rows`` (positions into these outputs, repeats allowed)."""
        return self._replace(
            probs=self.probs[rows],
            latent=self.latent[rows],
            distance=self.distance[rows],
            novelty_pvalue=self.novelty_pvalue[rows],
            n_expressed=self.n_expressed[rows],
        )


def cell_positions(indices, n_obs: int) -> np.ndarray | None:
    """``indices`` as integer positions of cells, in the caller's order (``None``: all cells).

    Accepts integer positions (negative ones count from the end, as in numpy; repeats are
    kept) or a boolean mask of length ``n_obs``, as scvi-tools' models do.
    """
    if indices is None:
        return None
    idx = np.asarray(indices).reshape(-1)
    if idx.dtype == bool:
        if idx.size != n_obs:
            msg = (
                f"A boolean `indices` mask must have one entry per cell ({n_obs}), got {idx.size}."
            )
            raise ValueError(msg)
        return np.flatnonzero(idx)
    if idx.size == 0:
        return idx.astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        msg = (
            "`indices` must be integer positions of cells or a boolean mask, got dtype "
            f"{idx.dtype} (for obs names use `np.flatnonzero(adata.obs_names.isin(names))`)."
        )
        raise TypeError(msg)
    if idx.min() < -n_obs or idx.max() >= n_obs:
        msg = f"`indices` must be positions in 0..{n_obs - 1} (the AnnData has {n_obs} cells)."
        raise IndexError(msg)
    return np.where(idx < 0, idx + n_obs, idx).astype(np.int64)
