"""Shared fixtures: the bundled real mouse-lung data and one model trained on it."""

from __future__ import annotations

import logging
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
