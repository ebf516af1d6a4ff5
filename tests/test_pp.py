"""Data preparation: merging sources and the preprocessing recipe, on real .h5ad files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import transanno_sc as ta


def test_merge_outer_join_sources_and_unique_names(lung, tmp_path):
    a = lung[:300].copy()
    b = lung[250:500, :20000].copy()  # overlapping cells (clashing names), fewer genes
    b.var_names = [g.capitalize() for g in b.var_names]  # mouse-style symbols: Cd3e vs CD3E
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    merged = ta.pp.merge(
        {"a": ad.read_h5ad(tmp_path / "a.h5ad"), "b": ad.read_h5ad(tmp_path / "b.h5ad")}
    )
    assert merged.n_obs == 550 and merged.obs_names.is_unique
    assert merged.n_vars == lung.n_vars  # case-insensitive: b's genes fold into a's
    assert sp.issparse(merged.X) and merged.X.dtype == np.float32
    assert merged.obs["source"].value_counts().to_dict() == {"a": 300, "b": 250}
    # b lacks the last genes: zeros there; shared genes keep their counts
    col = merged.var_names.get_loc(lung.var_names[0])
    np.testing.assert_array_equal(
        merged.X[300:, col].toarray().ravel(), lung.X[250:500, 0].toarray().ravel()
    )
    missing = merged.var_names.get_loc(lung.var_names[-1])  # a gene that b lacks
    assert merged.X[300:, missing].nnz == 0
    merged.write_h5ad(tmp_path / "merged.h5ad")


def test_merge_folds_ensembl_versions(lung):
    ids = [f"ENSMUSG{i:011d}" for i in range(100)]
    a = lung[:50, :100].copy()
    a.var_names = [f"{g}.{i % 5 + 1}" for i, g in enumerate(ids)]  # GENCODE: versioned
    b = lung[50:80, :100].copy()
    b.var_names = ids
    merged = ta.pp.merge({"a": a, "b": b})
    assert merged.n_vars == 100 and list(merged.var_names) == list(a.var_names)
    np.testing.assert_array_equal(merged.X[50:].toarray(), b.X.toarray())
    apart = ta.pp.merge({"a": a, "b": b}, drop_ensembl_versions=False)
    assert apart.n_vars == 200


def test_merge_of_sources_of_different_scales_warns(lung):
    """Counts next to log1p values: the merge says so and names batch_key=source."""
    import warnings

    counts = lung[:100].copy()
    logged = lung[100:200].copy()
    X = sp.csr_matrix(logged.X, dtype=np.float32)
    X = sp.csr_matrix(sp.diags(1e4 / np.asarray(X.sum(1)).ravel()) @ X)
    X.data = np.log1p(X.data)
    logged.X = X
    with pytest.warns(
        UserWarning,
        match=r"different scales.*'a': 'counts', 'b': 'log1p'.*"
        r"batch_key='source'",
    ):
        ta.pp.merge({"a": counts, "b": logged})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ta.pp.merge({"a": counts, "b": lung[200:300]})


def test_merge_errors(lung):
    with pytest.raises(ValueError, match="empty"):
        ta.pp.merge({})
    with pytest.raises(TypeError, match="not an AnnData"):
        ta.pp.merge([lung, "x"])
    a, b = lung[:20].copy(), lung[20:40].copy()
    b.layers["counts"] = b.X.copy()
    with pytest.raises(
        KeyError, match=r"layer='counts' is not a layer of source '0' \(its layers: \[\]\)"
    ):
        ta.pp.merge([a, b], layer="counts")
    a.obs["source"] = "lab A"
    with pytest.raises(
        ValueError, match=r"Source '0' already has obs\['source'\].*another source_key="
    ):
        ta.pp.merge([a, b])
    assert "source" not in lung.obs


def test_merge_keeps_the_obs_columns_every_source_has(lung):
    """As documented: a column only one source has is left out (an outer join filled it with
    NaN and turned its integers into floats); shared ones keep their dtype."""
    a, b = lung[:20].copy(), lung[20:40].copy()
    a.obs["n"] = np.arange(20)
    b.obs["n"] = np.arange(20)
    a.obs["only_a"] = 1
    merged = ta.pp.merge({"a": a, "b": b})
    assert "only_a" not in merged.obs and merged.obs["n"].dtype == np.int64
    assert list(merged.obs.columns) == [*lung.obs.columns, "n", "source"]


def test_preprocess_recipe_keeps_counts(lung):
    out = ta.pp.preprocess(lung, min_genes=300, copy=True)
    assert out is not lung and "counts" not in lung.layers
    assert (out.obs["n_genes_by_counts"] >= 300).all()
    assert out.var["highly_variable"].sum() == 2000
    counts = out.layers["counts"]
    np.testing.assert_allclose(counts.data, np.round(counts.data))
    np.testing.assert_allclose(np.expm1(out.X[:5].toarray()).sum(1), 1e4, rtol=1e-3)
    with pytest.raises(ValueError, match="raw counts"):
        ta.pp.preprocess(out)


def test_preprocess_of_dense_counts_matches_sparse_and_keeps_the_users_columns(lung):
    """Dense float or integer counts give what sparse counts give; a ``var['mt']`` of the
    user's own survives (the recipe uses the name for its QC and removed it)."""
    sparse = lung[:300].copy()
    sparse.var["mt"] = "mine"
    want = ta.pp.preprocess(sparse, min_genes=300, copy=True)
    assert (want.var["mt"] == "mine").all() and (sparse.var["mt"] == "mine").all()
    for dtype in (np.float32, np.int64):
        dense = lung[:300].copy()
        dense.X = dense.X.toarray().astype(dtype)
        got = ta.pp.preprocess(dense, min_genes=300, copy=True)
        assert "mt" not in got.var
        assert list(got.obs_names) == list(want.obs_names)
        assert list(got.var_names) == list(want.var_names)
        np.testing.assert_allclose(np.asarray(got.X), want.X.toarray(), rtol=1e-5, atol=1e-6)
        assert (got.var["highly_variable"] == want.var["highly_variable"]).all()


def test_preprocess_errors_name_the_filter(lung):
    with pytest.raises(ValueError, match="adata is empty"):
        ta.pp.preprocess(lung[:0].copy())
    with pytest.raises(ValueError, match=r"No cell passes the quality filters: min_genes=100000"):
        ta.pp.preprocess(lung[:50].copy(), min_genes=100_000)
