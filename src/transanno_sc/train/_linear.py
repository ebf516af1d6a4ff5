"""The linear classifier recipe: class weights and a weighted L2 logistic regression."""

from __future__ import annotations

import warnings

import numpy as np


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Per-class weights (count / (n_types x class count)) ** ``power``, averaging 1 over the
    cells; 1 for classes without cells."""
    counts = counts.astype(np.float64)
    weights = np.ones(counts.size)
    seen = counts > 0
    weights[seen] = (counts[seen].sum() / (seen.sum() * counts[seen])) ** power
    weights[seen] /= np.average(weights[seen], weights=counts[seen])
    return weights


def weighting_power(weighting: str, name: str) -> float:
    """The exponent of :func:`class_weights` for a ``class_weighting`` value."""
    powers = {"balanced": 1.0, "sqrt": 0.5, "none": 0.0}
    if weighting not in powers:
        msg = f"{name} must be 'balanced', 'sqrt' or 'none', got {weighting!r}."
        raise ValueError(msg)
    return powers[weighting]


def logistic_regression(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, c: float):
    """The wide path's recipe: a weighted L2 logistic regression (lbfgs) fitted on ``X``."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=1000, tol=1e-4)
    with warnings.catch_warnings():
        # a not fully converged lbfgs is still a regularized linear classifier
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*converge.*")
        clf.fit(X, y, sample_weight=sample_weight)
    return clf
