"""What one forward pass of a model over an AnnData gives."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ForwardOutputs(NamedTuple):
    """What one pass of the model over an AnnData gives, row-aligned with its cells."""

    probs: np.ndarray
    latent: np.ndarray
    distance: np.ndarray
    novelty_pvalue: np.ndarray
    n_expressed: np.ndarray
    overlap: dict
    #: Query-level distance factor of the novelty p-values (1: no shift; see
    #: ``TransAnnoModule.shift_factor``).
    novelty_shift: float = 1.0
