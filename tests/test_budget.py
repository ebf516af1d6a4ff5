"""The default training budget stays bounded as references grow (#18)."""

from __future__ import annotations

import numpy as np
import scvi

import transanno_sc as ta
from transanno_sc.model.base import _training_mixin as training


def test_default_budget_is_bounded_in_presentations():
    # small references: whole epochs, about 15,000 presentations (at least 10 epochs)
    assert training.default_budget(300, 64) == (50, None)
    assert training.default_budget(1_000, 64) == (15, None)
    assert training.default_budget(training.MAX_EPOCH_CELLS, 64) == (10, None)
    # large references: 10 epochs of MAX_EPOCH_CELLS random cells, whatever the size
    limit = int(np.ceil(training.MAX_EPOCH_CELLS / 64))
    presentations = []
    for n in (training.MAX_EPOCH_CELLS + 1, 100_000, 1_000_000, 10_000_000):
        epochs, batches = training.default_budget(n, 64)
        assert (epochs, batches) == (10, limit)
        presentations.append(epochs * batches * 64)
    assert max(presentations) <= 10 * (training.MAX_EPOCH_CELLS + 64)
    # pretraining's numbers: about 50,000 presentations, 5-50 epochs of at most 10,000 cells
    assert training.default_budget(3_000, 64, 50_000, (5, 50), 10_000) == (17, None)
    assert training.default_budget(200_000, 64, 50_000, (5, 50), 10_000) == (5, 157)


def test_monitored_validation_cells_are_a_stratified_subsample(monkeypatch):
    monkeypatch.setattr(training, "MAX_MONITOR_CELLS", 100)
    codes = np.repeat([0, 1, 2], [700, 250, 50])
    val = np.arange(codes.size)
    small = training.monitored_cells(val[:80], codes, seed=0)
    np.testing.assert_array_equal(small, val[:80])  # below the cap: every cell
    watched = training.monitored_cells(val, codes, seed=0)
    # about 100, plus at least 50 cells of each type
    assert watched.size <= 100 + 3 * 50 and np.all(np.diff(watched) > 0)
    counts = np.bincount(codes[watched], minlength=3)
    assert counts[2] == 50  # a rare type keeps its cells (at least 50 per type)
    assert counts[0] > counts[1] > 0


def test_large_reference_trains_epochs_of_a_random_subset(split, monkeypatch):
    """With more training cells than an epoch holds, each default epoch draws a bounded number
    of batches (Lightning's limit_train_batches over the shuffled loader), and early stopping
    watches a subsample of the validation cells (the others still calibrate)."""
    from transanno_sc.data import _split
    from transanno_sc.model.base import _pretraining_mixin as pretraining

    monkeypatch.setattr(training, "MAX_EPOCH_CELLS", 128)
    monkeypatch.setattr(training, "TRAIN_PRESENTATIONS", 100)  # 10 epochs
    monkeypatch.setattr(training, "MAX_MONITOR_CELLS", 20)  # of 43 validation cells
    monkeypatch.setattr(pretraining, "MAX_MONITOR_CELLS", 10)  # of 21 validation cells
    monkeypatch.setattr(_split, "MIN_CELLS_PER_TYPE", 2)
    scvi.settings.seed = 0
    ref = split[0].copy()
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref, n_hidden=32, n_layers=1, n_top_genes=500)
    model.train(batch_size=64, early_stopping=False, enable_progress_bar=False)
    assert model.trainer.num_training_batches == 2
    assert len(model.history["train_loss"]) == 10
    watched = len(model.trainer.datamodule.val_idx)
    assert 15 <= watched < 30
    assert model.calibration_["n_cells"] >= 40 > watched  # every validation cell calibrates
    model.pretrain(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert len(model.trainer.datamodule.val_idx) == 10
    # an explicit limit wins over the default epoch size
    model.train(batch_size=64, early_stopping=False, limit_train_batches=1)
    assert model.trainer.num_training_batches == 1
