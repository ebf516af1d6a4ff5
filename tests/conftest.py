"""Shared fixtures: the bundled real mouse-lung data and one model trained on it."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import numpy as np
import pytest
import scvi

import transanno_sc as ta

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning").setLevel(logging.ERROR)

#: Small but real model settings, to keep the suite fast on two cores.
FAST_MODEL = {"n_hidden": 64, "n_layers": 2, "n_heads": 4, "max_tokens": 128, "n_top_genes": 1000}
FAST_TRAIN = {"max_epochs": 12, "enable_progress_bar": False, "batch_size": 64}


def pytest_configure(config):
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def lung():
    """The bundled Zilionis mouse-lung data (800 cells, raw counts)."""
    return ta.datasets.zilionis_mouse_lung()


@pytest.fixture(scope="session")
def split(lung):
    """Reference: animals h_1 and t_1; query: animals h_2 and t_2 (a cross-batch split)."""
    is_ref = lung.obs["batch"].isin(["h_1", "t_1"]).to_numpy()
    return lung[is_ref].copy(), lung[~is_ref].copy()


@pytest.fixture
def ref(split):
    return split[0].copy()


@pytest.fixture
def query(split):
    return split[1].copy()


@pytest.fixture(scope="session")
def trained(split):
    """A model trained on the reference (fast settings), shared by read-only tests."""
    scvi.settings.seed = 0
    ref = split[0].copy()
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref, **FAST_MODEL)
    model.train(**FAST_TRAIN)
    return model


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------- baselines
# Accuracy floors are set against baselines computed in the same test, not as fixed numbers:
# a linear model on the same genes (what the model's wide path alone would give) and chance.


def log_cp10k(adata, genes) -> np.ndarray:
    """log1p of counts per 10,000 over ``genes`` (library size over all of ``adata``'s genes,
    as the model normalizes counts), dense."""
    import scipy.sparse as sp

    X = adata.X
    library = np.asarray(X.sum(1)).reshape(-1)
    sub = adata[:, list(genes)].X
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    return np.log1p(sub * (1e4 / np.maximum(library, 1e-12))[:, None])


def linear_baseline(ref, query, genes, labels_key: str = "cell_type") -> dict:
    """Macro-F1 and accuracy on ``query`` of a class-balanced L2 logistic regression (C=0.1,
    the recipe of the model's wide path) fitted on every labeled cell of ``ref`` over those of
    ``genes`` that both have."""
    from sklearn.linear_model import LogisticRegression

    genes = [g for g in genes if g in ref.var_names and g in query.var_names]
    y = ref.obs[labels_key].astype(str).to_numpy()
    clf = LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced")
    clf.fit(log_cp10k(ref, genes), y)
    return scores(query.obs[labels_key], clf.predict(log_cp10k(query, genes)))


def scores(truth, pred) -> dict:
    """Macro-F1 and accuracy of ``pred`` against ``truth`` (both as strings)."""
    from sklearn.metrics import f1_score

    truth = np.asarray(truth).astype(str)
    pred = np.asarray(pred).astype(str)
    return {
        "f1_macro": float(f1_score(truth, pred, average="macro")),
        "accuracy": float(np.mean(truth == pred)),
    }


@contextlib.contextmanager
def transformer_alone(model):
    """Within the block, ``model`` predicts from the Transformer's logits alone: the linear
    wide path is taken out of the module (and put back afterwards)."""
    wide = model.module.wide
    model.module.wide = None
    try:
        yield model
    finally:
        model.module.wide = wide


def shared_data(name: str) -> str:
    """A file of the project's shared data folder (next to the repository in CI)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "..", "..", "shared", "data"), "/work/shared/data"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    pytest.skip(f"{name} not found in the shared data folder")
