"""No leakage: the query's labels are never read, and training sees reference cells only.

Issue #3 asks for an honest benchmark: class weights, HVG selection and early stopping must use
reference cells only, and the query's labels may be read only by the metric code. The runs
here are real (scvi-tools' TrainRunner, Lightning, the data loaders); a Lightning callback
records which cells the loaders yield.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scvi
from conftest import FAST_MODEL, FAST_TRAIN
from lightning.pytorch.callbacks import Callback, EarlyStopping

import transanno_sc as ta
from transanno_sc.model import TransAnno

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


class RecordBatches(Callback):
    """A Lightning callback recording which cells every batch of the training and validation
    loaders holds (identified by their expression rows), with the label codes the batch
    carries, per training plan (pretraining or classification); and, at the start of each
    fit, the loss's class weights and the early-stopping monitors."""

    def __init__(self, *adatas: ad.AnnData):
        self.cells: dict[bytes, str] = {}
        for adata in adatas:
            X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
            for name, row in zip(adata.obs_names, X.astype(np.float32)):
                self.cells[row.tobytes()] = name
        n = sum(a.n_obs for a in adatas)
        assert len(self.cells) == n, "cells with identical rows cannot be told apart"
        self.batches: dict[tuple[str, str], list[tuple[list[str], np.ndarray]]] = {}
        self.fits: list[dict] = []

    def on_fit_start(self, trainer, pl_module):
        weights = pl_module.loss_kwargs.get("class_weights")
        self.fits.append(
            {
                "plan": type(pl_module).__name__,
                "class_weights": None if weights is None else weights.cpu().numpy().copy(),
                "early_stopping": sorted(
                    cb.monitor for cb in trainer.callbacks if isinstance(cb, EarlyStopping)
                ),
            }
        )

    def _record(self, pl_module, batch, stage: str) -> None:
        X = batch["X"].detach().cpu().numpy().astype(np.float32)
        names = [self.cells[row.tobytes()] for row in X]
        labels = batch["labels"].detach().cpu().numpy().reshape(-1)
        key = (type(pl_module).__name__, stage)
        self.batches.setdefault(key, []).append((names, labels))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._record(pl_module, batch, "train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._record(pl_module, batch, "validation")

    def names(self, plan: str, stage: str) -> set[str]:
        return {n for names, _ in self.batches.get((plan, stage), []) for n in names}

    def labels(self, plan: str, stage: str, cells: set[str]) -> set[int]:
        """Label codes the loaders gave ``cells`` in ``plan``'s ``stage`` batches."""
        return {
            int(code)
            for names, codes in self.batches.get((plan, stage), [])
            for name, code in zip(names, codes)
            if name in cells
        }


CLASSIFY, PRETRAIN = "ClassificationTrainingPlan", "PretrainingPlan"


def _check_classification_batches(rec: RecordBatches, allowed: set[str]) -> tuple[set, set]:
    """Training and validation batches hold only ``allowed`` cells, in disjoint sets."""
    train, val = rec.names(CLASSIFY, "train"), rec.names(CLASSIFY, "validation")
    assert train and val
    assert train <= allowed, sorted(train - allowed)[:5]
    assert val <= allowed, sorted(val - allowed)[:5]
    assert not train & val
    return train, val


def test_annotate_trains_on_reference_cells_only(ref, query, tmp_path):
    """Vocabulary (HVGs), class weights, train/validation split: the query changes none, and
    the loaders yield reference cells only."""
    other = query[query.obs["cell_type"] == "T cells"].copy()  # other cells, other composition
    other.X = other.X * 7
    runs = []
    for i, q in enumerate((query, other)):
        rec = RecordBatches(ref, q)
        scvi.settings.seed = 0
        ta.tl.transanno_annotate(
            q.copy(),
            reference=ref,
            labels_key="cell_type",
            model_kwargs=LEAK_MODEL,
            save_model=str(tmp_path / f"m{i}"),
            callbacks=[rec],
            **LEAK_TRAIN,
        )
        train, val = _check_classification_batches(rec, set(ref.obs_names))
        assert train | val == set(ref.obs_names)  # every reference cell is labeled
        assert rec.fits[0]["early_stopping"] == ["validation_loss"]
        vocabulary = TransAnno.load(str(tmp_path / f"m{i}")).var_names_
        runs.append((train, val, rec.fits[0]["class_weights"], vocabulary))
    (train_a, val_a, weights_a, vocab_a), (train_b, val_b, weights_b, vocab_b) = runs
    assert vocab_a == vocab_b
    np.testing.assert_array_equal(weights_a, weights_b)
    assert (train_a, val_a) == (train_b, val_b)


def test_unlabeled_cells_stay_out_of_weights_split_and_early_stopping(ref, query):
    """Query cells registered as "Unknown" (semi-supervised use) are neither trained on,
    validated on (early stopping) nor counted in the class weights."""
    scvi.settings.seed = 0
    alone = ref.copy()
    TransAnno.setup_anndata(alone, labels_key="cell_type")
    solo = RecordBatches(ref)
    model = TransAnno(alone, **LEAK_MODEL)
    model.train(**LEAK_TRAIN, callbacks=[solo])

    q = query.copy()
    q.obs["cell_type"] = "Unknown"
    both = ad.concat([ref, q])
    scvi.settings.seed = 0
    TransAnno.setup_anndata(both, labels_key="cell_type", unlabeled_category="Unknown")
    mixed = RecordBatches(ref, q)
    TransAnno(both, **LEAK_MODEL).train(**LEAK_TRAIN, callbacks=[mixed])

    train, val = _check_classification_batches(mixed, set(ref.obs_names))
    assert train | val == set(ref.obs_names)  # every reference cell is used
    assert (train, val) == (solo.names(CLASSIFY, "train"), solo.names(CLASSIFY, "validation"))
    assert mixed.fits[0]["early_stopping"] == ["validation_loss"]
    weights = solo.fits[0]["class_weights"]
    np.testing.assert_allclose(mixed.fits[0]["class_weights"], weights, rtol=1e-6)
    # the weights follow the training split's class counts (rarer class, larger weight)
    types = ref.obs["cell_type"].astype(str)
    counts = types[sorted(train)].value_counts().reindex(model.classes_).to_numpy()
    order = np.argsort(counts)
    assert np.all(np.diff(weights[order]) <= 1e-6)


def test_pretraining_on_the_query_reads_no_query_label(ref, query):
    """``pretrain=True`` pretrains on the reference and query cells together: the query's
    cells reach the pretraining loaders with the unlabeled code only, never the
    classification loaders, and permuting the query's labels changes nothing."""
    kwargs = {
        "reference": ref,
        "labels_key": "cell_type",
        "unassigned_threshold": None,
        "copy": True,
        "pretrain": True,
        "model_kwargs": LEAK_MODEL,
        **LEAK_TRAIN,
    }
    rec = RecordBatches(ref, query)
    scvi.settings.seed = 0
    base = ta.tl.transanno_annotate(
        query, pretrain_kwargs={"max_epochs": 1, "callbacks": [rec]}, callbacks=[rec], **kwargs
    )
    ref_cells, query_cells = set(ref.obs_names), set(query.obs_names)
    seen = rec.names(PRETRAIN, "train") | rec.names(PRETRAIN, "validation")
    assert seen == ref_cells | query_cells  # the query's cells are pretrained on
    query_codes = rec.labels(PRETRAIN, "train", query_cells)
    ref_codes = rec.labels(PRETRAIN, "train", ref_cells)
    assert len(query_codes) == 1 and not query_codes & ref_codes  # one code: "unlabeled"
    assert [f["plan"] for f in rec.fits] == [PRETRAIN, CLASSIFY]
    train, val = _check_classification_batches(rec, ref_cells)
    assert train | val == ref_cells

    shuffled = query.copy()
    shuffled.obs["cell_type"] = np.random.default_rng(0).permutation(query.obs["cell_type"])
    scvi.settings.seed = 0
    again = ta.tl.transanno_annotate(shuffled, pretrain_kwargs={"max_epochs": 1}, **kwargs)
    np.testing.assert_array_equal(
        again.obsm["transanno_probabilities"].to_numpy(),
        base.obsm["transanno_probabilities"].to_numpy(),
    )
