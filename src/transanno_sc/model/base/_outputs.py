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
