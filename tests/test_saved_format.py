"""Saved-model compatibility and crash-safe saving."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import transanno_sc as ta

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def old_query(lung):
    probs = pd.read_csv(os.path.join(DATA, "model_0.1.0_query_probabilities.csv"), index_col=0)
    return lung[probs.index].copy(), probs


def test_model_saved_by_0_1_0_predicts_identically(old_query):
    """A folder written by release 0.1.0 (commit 2935ad1) loads and gives its probabilities."""
    query, expected = old_query
    model = ta.model.TransAnno.load(os.path.join(DATA, "model_0.1.0"))
    probs = model.predict(query, soft=True)
    assert list(probs.columns) == list(expected.columns)
    np.testing.assert_allclose(probs.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-6)
