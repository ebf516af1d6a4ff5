"""Technology shifts simulated on the bundled counts (``ta.datasets.simulate_*``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import transanno_sc as ta


def _dense(adata) -> np.ndarray:
    return np.asarray(sp.csr_matrix(adata.X).todense(), dtype=np.float64)


def test_depth_keeps_the_share_asked_for_and_leaves_the_input(lung):
    before = lung.X.copy()
    shallow = ta.datasets.simulate_depth(lung, 0.1, random_state=3)
    X, Y = _dense(lung), _dense(shallow)
    assert abs(Y.sum() / X.sum() - 0.1) < 0.005
    assert np.all(Y <= X)
    assert np.array_equal(Y, np.round(Y))
    assert (lung.X != before).nnz == 0
    assert shallow.obs.equals(lung.obs)
    assert shallow.var_names.equals(lung.var_names)
    same = ta.datasets.simulate_depth(lung, 0.1, random_state=3)
    other = ta.datasets.simulate_depth(lung, 0.1, random_state=4)
    assert (same.X != shallow.X).nnz == 0
    assert (other.X != shallow.X).nnz > 0


def test_ambient_rna_adds_the_pooled_profile_to_every_cell(lung):
    soupy = ta.datasets.simulate_ambient_rna(lung, 0.2)
    X, Y = _dense(lung), _dense(soupy)
    assert np.all(Y >= X)
    added = (Y - X).sum(1) / Y.sum(1)
    assert np.all(np.abs(added - 0.2) < 0.01)
    # a neutrophil transcript, abundant in the pool, shows up in the T cells
    t = (lung.obs["cell_type"] == "T cells").to_numpy()
    g = lung.var_names.get_loc("S100A8")
    assert Y[t, g].mean() > 3 * X[t, g].mean() + 0.1


def test_read_counts_amplify_each_molecule(lung):
    reads = ta.datasets.simulate_read_counts(lung, 20)
    X, Y = _dense(lung), _dense(reads)
    assert 10 < Y.sum() / X.sum() < 40
    assert np.array_equal(Y, np.round(Y))
    assert not np.any((Y > 0) & (X == 0))
    # genes differ in amplification: reads per molecule spread over genes
    ratio = Y.sum(0)[X.sum(0) > 50] / X.sum(0)[X.sum(0) > 50]
    assert np.quantile(ratio, 0.9) > 2 * np.quantile(ratio, 0.1)


def test_tpm_sums_to_a_million_per_cell(lung):
    tpm = ta.datasets.simulate_tpm(lung[:20])
    Y = _dense(tpm)
    assert np.allclose(Y.sum(1), 1e6, rtol=1e-4)
    assert not np.array_equal(Y, np.round(Y))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda a: ta.datasets.simulate_depth(a, 0.0),
            ValueError,
            r"fraction must lie in \(0, 1\]",
        ),
        (lambda a: ta.datasets.simulate_ambient_rna(a, 1.0), ValueError, r"in \[0, 1\)"),
        (lambda a: ta.datasets.simulate_read_counts(a, -1), ValueError, "must be positive"),
        (lambda a: ta.datasets.simulate_depth(a.X, 0.5), TypeError, "takes an AnnData"),
    ],
)
def test_bad_arguments_are_refused(lung, call, error, match):
    with pytest.raises(error, match=match):
        call(lung[:10])


def test_log_values_are_refused_with_the_way_to_the_counts(lung):
    logged = lung[:10].copy()
    logged.X = sp.csr_matrix(np.log1p(_dense(logged)).astype(np.float32))
    for simulate in (
        ta.datasets.simulate_depth,
        ta.datasets.simulate_ambient_rna,
        ta.datasets.simulate_read_counts,
    ):
        kwargs = {"fraction": 0.5} if simulate is ta.datasets.simulate_depth else {}
        with pytest.raises(ValueError, match=r"raw \(integer\) counts.*layers\['counts'\]"):
            simulate(logged, **kwargs)


@pytest.mark.parametrize(
    "simulate",
    [
        lambda a: ta.datasets.simulate_depth(a, 0.5),
        ta.datasets.simulate_ambient_rna,
        ta.datasets.simulate_read_counts,
        ta.datasets.simulate_tpm,
    ],
)
def test_only_obs_and_var_come_along_with_the_shifted_counts(lung, simulate):
    """A 'counts' layer, .raw, embeddings and uns hold the unshifted data: they are left out."""
    adata = lung[:50].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 2), dtype=np.float32)
    adata.uns["log1p"] = {"base": None}
    shifted = simulate(adata)
    assert (shifted.X != adata.X).nnz > 0
    assert not shifted.layers and shifted.raw is None
    assert not shifted.obsm and not shifted.uns
    assert shifted.obs.equals(adata.obs) and shifted.var.equals(adata.var)
    shifted.obs["new"] = 1
    assert "new" not in adata.obs
    assert "counts" in adata.layers and adata.raw is not None
