"""No leakage: the query's labels are never read, and training sees reference cells only.

Issue #3 asks for an honest benchmark: class weights, HVG selection and early stopping must use
reference cells only, and the query's labels may be read only by the metric code.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from conftest import FAST_MODEL, FAST_TRAIN
from scvi.dataloaders import DataSplitter

import transanno_sc as ta
from transanno_sc.model import TransAnno
from transanno_sc.train import ClassificationTrainingPlan

#: smaller than FAST_MODEL/FAST_TRAIN: the test compares runs, it does not need a good model
LEAK_MODEL = {**FAST_MODEL, "max_tokens": 64, "n_top_genes": 500}
LEAK_TRAIN = {**FAST_TRAIN, "max_epochs": 3, "batch_size": 128}


def _annotate(query: ad.AnnData, ref: ad.AnnData, seed: int = 0) -> np.ndarray:
    scvi.settings.seed = seed
    out = ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        unassigned_threshold=None,
        copy=True,
        model_kwargs=LEAK_MODEL,
        **LEAK_TRAIN,
    )
    return out.obsm["transanno_probabilities"].to_numpy()


def test_query_labels_do_not_change_predictions(ref, query, rng):
    """Shuffling or deleting the query's label columns leaves predictions bit-identical."""
    base = _annotate(query, ref)

    shuffled = query.copy()
    for col in ("cell_type", "cell_subtype"):
        shuffled.obs[col] = rng.permutation(shuffled.obs[col].to_numpy())
    assert (shuffled.obs["cell_type"] != query.obs["cell_type"]).mean() > 0.5
    np.testing.assert_array_equal(_annotate(shuffled, ref), base)

    deleted = query.copy()
    deleted.obs = pd.DataFrame(index=query.obs_names)
    np.testing.assert_array_equal(_annotate(deleted, ref), base)

    # the comparison is sensitive: the same run with the reference's labels permuted
    # (what reading labels from the wrong place would do) moves the probabilities
    ref_shuffled = ref.copy()
    ref_shuffled.obs["cell_type"] = rng.permutation(ref.obs["cell_type"].to_numpy())
    assert np.abs(_annotate(query, ref_shuffled) - base).max() > 0.05


class _Spy:
    """Record what ``TransAnno.train`` hands to the training plan, data splitter and runner."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        spy = self

        class Plan(ClassificationTrainingPlan):
            def __init__(self, module, **kwargs):
                spy.calls[-1]["class_weights"] = kwargs["class_weights"].numpy().copy()
                super().__init__(module, **kwargs)

        class Splitter(DataSplitter):
            def __init__(self, adata_manager, *args, external_indexing=None, **kwargs):
                spy.calls.append(
                    {
                        "obs_names": adata_manager.adata.obs_names.copy(),
                        "train": np.asarray(external_indexing[0]),
                        "val": np.asarray(external_indexing[1]),
                    }
                )
                super().__init__(
                    adata_manager, *args, external_indexing=external_indexing, **kwargs
                )

        class Runner:  # skips the optimization itself: the test is about what goes in
            def __init__(self, model, training_plan, data_splitter, max_epochs, **kwargs):
                spy.calls[-1]["runner"] = kwargs
                spy.calls[-1]["vocabulary"] = list(model.var_names_)
                self.model = model

            def __call__(self):
                self.model.is_trained_ = True

        monkeypatch.setattr(TransAnno, "_training_plan_cls", Plan)
        monkeypatch.setattr(TransAnno, "_data_splitter_cls", Splitter)
        monkeypatch.setattr(TransAnno, "_train_runner_cls", Runner)


def test_annotate_trains_on_reference_cells_only(ref, query, monkeypatch):
    """Vocabulary (HVGs), class weights, train/validation split: the query changes none."""
    spy = _Spy(monkeypatch)
    other = query[query.obs["cell_type"] == "T cells"].copy()  # other cells, other composition
    other.X = other.X * 7
    for q in (query, other):
        scvi.settings.seed = 0
        ta.tl.transanno_annotate(
            q.copy(), reference=ref, labels_key="cell_type", model_kwargs=LEAK_MODEL, **LEAK_TRAIN
        )
    a, b = spy.calls
    for call in (a, b):
        assert list(call["obs_names"]) == list(ref.obs_names)  # only reference cells registered
        assert call["runner"]["early_stopping"] is True
        assert call["runner"]["early_stopping_monitor"] == "validation_loss"
        assert len(call["val"]) > 0
        assert np.intersect1d(call["train"], call["val"]).size == 0
    assert a["vocabulary"] == b["vocabulary"]
    np.testing.assert_array_equal(a["class_weights"], b["class_weights"])
    np.testing.assert_array_equal(a["val"], b["val"])


def test_unlabeled_cells_stay_out_of_weights_split_and_early_stopping(ref, query, monkeypatch):
    """Query cells registered as "Unknown" (semi-supervised use) are neither trained on,
    validated on (early stopping) nor counted in the class weights."""
    spy = _Spy(monkeypatch)
    scvi.settings.seed = 0
    alone = ref.copy()
    TransAnno.setup_anndata(alone, labels_key="cell_type")
    TransAnno(alone, **LEAK_MODEL).train(**LEAK_TRAIN)

    q = query.copy()
    q.obs["cell_type"] = "Unknown"
    both = ad.concat([ref, q])
    scvi.settings.seed = 0
    TransAnno.setup_anndata(both, labels_key="cell_type", unlabeled_category="Unknown")
    TransAnno(both, **LEAK_MODEL).train(**LEAK_TRAIN)

    solo, mixed = spy.calls
    n_ref = ref.n_obs
    used = np.concatenate([mixed["train"], mixed["val"]])
    assert used.max() < n_ref  # no query position in training or validation
    assert np.sort(used).tolist() == list(range(n_ref))  # every reference cell is used
    np.testing.assert_array_equal(mixed["train"], solo["train"])
    np.testing.assert_array_equal(mixed["val"], solo["val"])
    np.testing.assert_allclose(mixed["class_weights"], solo["class_weights"], rtol=1e-6)
    # the weights follow the training split's class counts (rarer class, larger weight)
    codes = pd.Categorical(ref.obs["cell_type"]).codes[solo["train"]]
    counts = np.bincount(codes)
    order = np.argsort(counts)
    assert np.all(np.diff(solo["class_weights"][order]) <= 1e-6)
