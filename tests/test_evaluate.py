"""tl.evaluate and pl.confusion_matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import transanno_sc as ta


def test_perfect_and_imperfect(lung):
    a = lung.copy()
    a.obs["transanno_label"] = a.obs["cell_type"]
    res = ta.tl.evaluate(a, "cell_type")
    assert res["accuracy"] == 1.0
    assert res["f1_macro"] == 1.0
    assert res["confusion"].to_numpy().trace() == a.n_obs
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:100] = "Unassigned"
    a.obs["transanno_label"] = labels
    res = ta.tl.evaluate(a, "cell_type")
    assert res["accuracy"] == pytest.approx(1 - 100 / a.n_obs)
    assert res["unassigned_fraction"] == pytest.approx(100 / a.n_obs)


def test_cells_of_unknown_truth_are_not_scored(lung):
    """NaN truth was scored as a type named "nan" (every such cell an error)."""
    a = lung.copy()
    a.obs["transanno_label"] = a.obs["cell_type"]
    truth = a.obs["cell_type"].astype(object)
    truth.iloc[:50] = np.nan
    a.obs["truth"] = truth
    for known_only in (True, False):
        res = ta.tl.evaluate(a, "truth", known_only=known_only)
        assert res["accuracy"] == 1.0 and res["n_cells"] == a.n_obs - 50
        assert "nan" not in res["confusion"].index
    a.obs["transanno_label"] = "Unassigned"
    with pytest.raises(ValueError, match="Pass known_only=False"):
        ta.tl.evaluate(a, "truth")
    assert ta.tl.evaluate(a, "truth", known_only=False)["accuracy"] == 0.0


def test_missing_key(lung):
    with pytest.raises(KeyError, match="transanno_label"):
        ta.tl.evaluate(lung, "cell_type")


def test_confusion_matrix_plot(lung, tmp_path):
    a = lung.copy()
    a.obs["transanno_label"] = np.roll(a.obs["cell_type"].to_numpy(), 5)
    ax = ta.pl.confusion_matrix(a, "cell_type", save=str(tmp_path / "cm.png"), show=False)
    assert (tmp_path / "cm.png").stat().st_size > 1000
    assert len(ax.get_xticklabels()) == 4
