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


def _with_a_type_the_model_lacks(lung):
    """Every cell labelled right but the NK cells, a type the model does not know: half of
    them "Unassigned" at confidence 0.1, half called T cells at 0.95 (known cells: 0.9)."""
    a = lung.copy()
    truth = a.obs["cell_type"].astype(str).to_numpy()
    labels, confidence = truth.copy(), np.full(a.n_obs, 0.9)
    nk = np.flatnonzero(truth == "NK cells")
    labels[nk[:100]], confidence[nk[:100]] = "Unassigned", 0.1
    labels[nk[100:]], confidence[nk[100:]] = "T cells", 0.95
    a.obs["transanno_label"] = labels
    a.obs["transanno_confidence"] = confidence
    a.uns["transanno"] = {"classes": np.array(["B cells", "Neutrophils", "T cells"], dtype=object)}
    return a


def test_cells_of_a_type_the_model_lacks(lung):
    """The "Unassigned" call on cells of a true type the model does not know: their share
    "Unassigned", the AUROC of the confidence (known against them) and macro-F1 over every
    cell, where the NK cells called T cells are T cells' false positives."""
    a = _with_a_type_the_model_lacks(lung)
    res = ta.tl.evaluate(a, "cell_type")
    assert res["f1_macro"] == 1.0 and res["n_cells"] == 600  # the known cells only
    assert res["novel_types"] == ["NK cells"] and res["n_novel"] == 200
    assert res["novel_unassigned_fraction"] == 0.5
    # every known cell (0.9) above the Unassigned NK cells (0.1), below the others (0.95)
    assert res["novelty_auroc"] == pytest.approx(0.5)
    # T cells: precision 200 / 300, recall 1 -> F1 0.8; B cells and neutrophils 1
    assert res["f1_macro_all_cells"] == pytest.approx((1 + 1 + 0.8) / 3)
    # the same with every cell scored, and without a record of the model's types: no novelty
    assert ta.tl.evaluate(a, "cell_type", known_only=False)["n_novel"] == 200
    del a.uns["transanno"]
    bare = ta.tl.evaluate(a, "cell_type")
    assert bare["n_novel"] == 0 and bare["novel_types"] == []
    assert np.isnan(bare["novelty_auroc"]) and np.isnan(bare["novel_unassigned_fraction"])


def test_evaluate_command_reports_the_cells_of_a_type_the_model_lacks(lung, tmp_path, capsys):
    from transanno_sc.cli import main

    path = tmp_path / "annotated.h5ad"
    _with_a_type_the_model_lacks(lung).write_h5ad(path)
    assert main(["evaluate", "--adata", str(path), "--true-key", "cell_type"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "does not know" in ln]
    assert lines == [
        "types the model does not know: NK cells (200 cells): Unassigned 50.0%  AUROC of the "
        "confidence (known against them) 0.500  macro-F1 over all cells 0.933"
    ]
