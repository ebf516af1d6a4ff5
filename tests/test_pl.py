"""Plots: ``pl.confidence``, ``pl.training_history``, ``pl.confusion_matrix``."""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.axes
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import transanno_sc as ta


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def annotated(lung):
    """The mouse-lung cells with fake predictions: known confidences, 25 % Unassigned."""
    adata = lung.copy()
    rng = np.random.default_rng(0)
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    conf = rng.uniform(0.6, 1.0, adata.n_obs)
    low = rng.choice(adata.n_obs, adata.n_obs // 4, replace=False)
    conf[low] = rng.uniform(0.2, 0.45, low.size)
    labels[low] = "Unassigned"
    classes = sorted(adata.obs["cell_type"].unique())
    adata.obs["transanno_label"] = pd.Categorical(labels, categories=[*classes, "Unassigned"])
    adata.obs["transanno_confidence"] = conf
    adata.uns["transanno"] = {"params": {"unassigned_threshold": 0.5}}
    return adata


@pytest.fixture
def history():
    epochs = pd.RangeIndex(6, name="epoch")

    def col(name, values):
        return pd.DataFrame({name: values}, index=epochs)

    return {
        "train_loss": col("train_loss", [1.2, 0.8, 0.5, 0.4, 0.3, 0.25]),
        "validation_loss": col("validation_loss", [1.0, 0.7, 0.5, 0.45, 0.5, 0.55]),
        "validation_accuracy": col("validation_accuracy", [0.5, 0.7, 0.8, 0.9, 0.88, 0.87]),
        "validation_f1_macro": col("validation_f1_macro", [0.4, 0.6, 0.75, 0.85, 0.84, 0.8]),
    }


def test_confidence_draws_one_group_per_type_and_unassigned_fraction(annotated):
    ax = ta.pl.confidence(annotated, show=False)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert [t.split("\n")[0] for t in ticks] == [
        "B cells",
        "NK cells",
        "Neutrophils",
        "T cells",
        "Unassigned",
    ]
    # counts in the tick labels add up to every cell
    assert sum(int(t.split("\n")[1].split(" ")[0]) for t in ticks) == annotated.n_obs
    assert ax.get_title() == "Unassigned: 25.0% of 800 cells"
    # the threshold is read from uns['transanno']['params']
    hlines = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [0.5, 0.5]]
    assert len(hlines) == 1
    # every cell drawn as a point (fewer than max_points per type), y = its confidence
    points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    np.testing.assert_allclose(np.sort(points), np.sort(annotated.obs["transanno_confidence"]))


def test_confidence_subsamples_points_and_draws_into_given_ax(annotated):
    _, given = plt.subplots()
    ax = ta.pl.confidence(annotated, threshold=0.3, max_points=10, ax=given, show=False)
    assert ax is given
    assert all(len(c.get_offsets()) <= 10 for c in ax.collections)
    assert any(list(ln.get_ydata()) == [0.3, 0.3] for ln in ax.get_lines())


def test_confidence_save_writes_file(annotated, tmp_path):
    path = tmp_path / "confidence.png"
    out = ta.pl.confidence(annotated, save=str(path))
    # not shown under Agg, so the axes drawn (and saved) come back
    assert isinstance(out, matplotlib.axes.Axes)
    assert out.get_title() == "Unassigned: 25.0% of 800 cells"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pred_key": "nope_label"}, r"pred_key 'nope_label' is not a column of adata.obs"),
        ({"confidence_key": "nope"}, r"confidence_key 'nope' .*transanno_annotate"),
    ],
)
def test_confidence_missing_key(annotated, kwargs, match):
    with pytest.raises(KeyError, match=match):
        ta.pl.confidence(annotated, show=False, **kwargs)


def test_confidence_on_mudata(annotated):
    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"rna": annotated})
    ax = ta.pl.confidence(mdata, show=False)
    assert ax.get_title().startswith("Unassigned: 25.0%")


def test_training_history_panels(history):
    loss_ax, metric_ax = ta.pl.training_history(history, show=False)
    losses = {ln.get_label(): ln for ln in loss_ax.get_lines()}
    assert {"train loss", "validation loss"} <= set(losses)
    np.testing.assert_allclose(losses["train loss"].get_ydata(), history["train_loss"].iloc[:, 0])
    # the best validation epoch (3) is marked
    assert "best epoch (3)" in losses
    metrics = {ln.get_label() for ln in metric_ax.get_lines()}
    assert metrics == {"validation accuracy", "validation macro-F1"}
    assert metric_ax.get_ylim() == (0, 1.02)


def test_training_history_of_pretraining_shows_masked_accuracy():
    """A pretrain-only history: its validation accuracy goes to the metrics panel."""
    epochs = pd.Index(range(3), name="epoch")
    history = {
        "pretrain_loss": pd.DataFrame({"pretrain_loss": [2.0, 1.6, 1.5]}, index=epochs),
        "pretrain_validation_loss": pd.DataFrame(
            {"pretrain_validation_loss": [1.8, 1.6, 1.5]}, index=epochs
        ),
        "pretrain_validation_accuracy": pd.DataFrame(
            {"pretrain_validation_accuracy": [0.50, 0.52, 0.55]}, index=epochs
        ),
    }
    loss_ax, metric_ax = ta.pl.training_history(history, show=False)
    assert len(loss_ax.get_lines()) == 2
    (line,) = metric_ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.50, 0.52, 0.55])
    assert "masked-value accuracy" in metric_ax.get_legend().get_texts()[0].get_text()
    plt.close("all")


def test_training_history_keys_single_ax_and_save(history, tmp_path):
    _, ax = plt.subplots()
    path = tmp_path / "history.pdf"
    loss_ax, metric_ax = ta.pl.training_history(
        history, ["validation_loss", "validation_accuracy"], ax=ax, save=str(path), show=False
    )
    assert loss_ax is ax and metric_ax is not ax  # metrics on a twin y axis
    assert [ln.get_label() for ln in metric_ax.get_lines()] == ["validation accuracy"]
    assert path.stat().st_size > 1_000


def test_training_history_errors(history):
    with pytest.raises(KeyError, match=r"'val_acc' is not in the training history \(recorded: "):
        ta.pl.training_history(history, ["val_acc"], show=False)
    with pytest.raises(ValueError, match="train it first"):
        ta.pl.training_history({}, show=False)
    with pytest.raises(ValueError, match="pair of axes"):
        ta.pl.training_history(history, ax=[plt.gca()] * 3, show=False)


def test_training_history_of_a_trained_model(trained, tmp_path):
    path = tmp_path / "history.png"
    axs = ta.pl.training_history(trained, save=str(path), show=False)
    labels = {ln.get_label() for ax in axs for ln in ax.get_lines()}
    assert {"train loss", "validation loss", "validation accuracy"} <= labels
    assert path.stat().st_size > 5_000


def test_confusion_matrix_values_and_save(annotated, tmp_path):
    path = tmp_path / "cm.png"
    ax = ta.pl.confusion_matrix(annotated, "cell_type", save=str(path), show=False)
    assert path.stat().st_size > 5_000
    assert [t.get_text() for t in ax.get_yticklabels()] == sorted(
        annotated.obs["cell_type"].unique()
    )
    # rows are fractions: each row's annotated cells sum to 1
    image = ax.get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(image).sum(1), 1.0)
    with pytest.raises(KeyError, match=r"not a column of adata\.obs"):
        ta.pl.confusion_matrix(annotated, "nope", show=False)


@pytest.mark.parametrize("func", [ta.pl.confidence, ta.pl.training_history, ta.pl.confusion_matrix])
def test_scanpy_plotting_conventions(func):
    """``ax``, ``show`` and ``save`` keyword-only; at most three positional parameters."""
    sig = inspect.signature(func)
    for name in ("ax", "show", "save"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert sig.parameters[name].default is None
    positional = [p for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert len(positional) <= 3
    assert ">>> " in func.__doc__
