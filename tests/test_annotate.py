"""tl.transanno_annotate: writes exactly the documented keys, nothing else."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
from conftest import FAST_MODEL

import transanno_sc as ta

#: the smallest model worth training: these tests compare runs, they need no good model
TINY = {
    "model_kwargs": {"n_hidden": 32, "n_heads": 2, "max_tokens": 64, "n_top_genes": 500},
    "max_epochs": 2,
    "enable_progress_bar": False,
}


def _snapshot(a: ad.AnnData) -> dict:
    return {
        "X": a.X.copy(),
        "obs": a.obs.copy(),
        "var": a.var.copy(),
        "obsm": set(a.obsm),
        "uns": set(a.uns),
        "layers": set(a.layers),
    }


def _same_x(a, b) -> bool:
    return (a != b).nnz == 0 if hasattr(a, "nnz") else np.array_equal(a, b)


@pytest.mark.parametrize("key_added", ["transanno", "ta_run2"])
def test_writes_only_documented_keys(trained, query, key_added):
    before = _snapshot(query)
    ta.tl.transanno_annotate(query, trained, key_added=key_added)
    assert _same_x(query.X, before["X"])
    pd.testing.assert_frame_equal(query.obs[before["obs"].columns], before["obs"])
    pd.testing.assert_frame_equal(query.var, before["var"])
    assert set(query.obs.columns) - set(before["obs"].columns) == {
        f"{key_added}_label",
        f"{key_added}_confidence",
    }
    assert set(query.obsm) - before["obsm"] == {f"X_{key_added}", f"{key_added}_probabilities"}
    assert set(query.uns) - before["uns"] == {key_added}
    assert set(query.layers) == before["layers"]
    assert set(query.uns[key_added]) == {
        "params",
        "classes",
        "gene_overlap",
        "calibration",
        "query_context",
        "unassigned",
        "versions",
    }
    assert isinstance(query.obs[f"{key_added}_label"].dtype, pd.CategoricalDtype)
    assert query.obsm[f"X_{key_added}"].shape[0] == query.n_obs


def test_copy_leaves_input_untouched(trained, query):
    before = _snapshot(query)
    out = ta.tl.transanno_annotate(query, trained, copy=True)
    assert isinstance(out, ad.AnnData)
    assert "transanno_label" in out.obs
    assert list(query.obs.columns) == list(before["obs"].columns)
    assert set(query.obsm) == before["obsm"]
    assert set(query.uns) == before["uns"]
    assert ta.tl.transanno_annotate(query, trained) is None


def test_confidence_and_unassigned(trained, query):
    ta.tl.transanno_annotate(query, trained, unassigned_threshold=0.95, query_context=False)
    conf = query.obs["transanno_confidence"].to_numpy()
    probs = query.obsm["transanno_probabilities"].to_numpy()
    # calibrated probability times typicality (<= 1): never above the probability
    assert (conf <= probs.max(1) + 1e-6).all() and (conf >= 0).all()
    unassigned = query.obs["transanno_label"].astype(str).to_numpy() == "Unassigned"
    assert (unassigned == (conf < 0.95)).all()
    # every "Unassigned" cell counted under one reason: its probability, or the novelty
    # typicality that took a probability of 0.95 or more under the threshold
    reasons = query.uns["transanno"]["unassigned"]
    assert sum(reasons.values()) == unassigned.sum()
    assert reasons["unsure_between_types"] == (probs.max(1) < 0.95).sum()
    assert reasons["unlike_reference"] == (unassigned & (probs.max(1) >= 0.95)).sum()
    assert reasons["foreign_markers"] == reasons["undecided_cluster"] == 0  # no query context
    # with the query context (the default) the threshold still reads the stored confidence
    ta.tl.transanno_annotate(query, trained, unassigned_threshold=0.95)
    conf = query.obs["transanno_confidence"].to_numpy()
    assert ((conf >= 0) & (conf <= 1)).all()
    unassigned = query.obs["transanno_label"].astype(str).to_numpy() == "Unassigned"
    assert (unassigned == (conf < 0.95)).all()
    assert sum(query.uns["transanno"]["unassigned"].values()) == unassigned.sum()
    # without the novelty part the confidence is the probability of the predicted type
    ta.tl.transanno_annotate(query, trained, unassigned_threshold=0.95, novelty=False)
    conf = query.obs["transanno_confidence"].to_numpy()
    np.testing.assert_allclose(conf, probs.max(1), rtol=1e-6)
    assert query.uns["transanno"]["params"]["novelty"] is False
    reasons = query.uns["transanno"]["unassigned"]
    assert reasons["unsure_between_types"] == (conf < 0.95).sum() > 0
    assert sum(reasons.values()) == reasons["unsure_between_types"]


def test_result_round_trips_through_h5ad(trained, query, tmp_path):
    ta.tl.transanno_annotate(query, trained)
    query.write_h5ad(tmp_path / "q.h5ad")
    back = ad.read_h5ad(tmp_path / "q.h5ad")
    assert (back.obs["transanno_label"] == query.obs["transanno_label"]).all()
    np.testing.assert_array_equal(back.obsm["X_transanno"], query.obsm["X_transanno"])


def test_trains_from_reference_without_touching_it(ref, query, tmp_path):
    ref_before = _snapshot(ref)
    ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        model_kwargs=FAST_MODEL,
        max_epochs=2,
        enable_progress_bar=False,
        save_model=str(tmp_path / "model"),
    )
    assert list(ref.obs.columns) == list(ref_before["obs"].columns)
    assert set(ref.uns) == ref_before["uns"]
    assert not any(k.startswith("_scvi") for k in query.uns)
    assert not any(c.startswith("_scvi") for c in query.obs.columns)
    assert "transanno_label" in query.obs
    loaded = ta.model.TransAnno.load(str(tmp_path / "model"))
    np.testing.assert_allclose(
        loaded.predict(query, soft=True).to_numpy(),
        query.obsm["transanno_probabilities"].to_numpy(),
        atol=1e-6,
    )


def test_reference_with_cluster_numbers_as_labels(ref, query):
    import scvi

    names = ref.obs["cell_type"].cat.categories
    numbered = ref.copy()
    # integer codes, and a category without cells left from subsetting
    numbered.obs["cluster"] = pd.Categorical(
        ref.obs["cell_type"].cat.codes.to_numpy(), categories=[*range(len(names)), 99]
    )
    before = numbered.obs["cluster"].copy()
    with pytest.raises(TypeError, match=r"not strings.*astype\(str\)"):
        ta.model.TransAnno.setup_anndata(numbered.copy(), labels_key="cluster")
    kwargs = {"model_kwargs": FAST_MODEL, "max_epochs": 2, "enable_progress_bar": False}
    scvi.settings.seed = 0
    by_name = ta.tl.transanno_annotate(
        query, reference=ref, labels_key="cell_type", unassigned_threshold=None, copy=True, **kwargs
    )
    scvi.settings.seed = 0
    by_number = ta.tl.transanno_annotate(
        query,
        reference=numbered,
        labels_key="cluster",
        unassigned_threshold=None,
        copy=True,
        **kwargs,
    )
    pd.testing.assert_series_equal(numbered.obs["cluster"], before)  # the user's column kept
    assert list(by_number.obsm["transanno_probabilities"].columns) == [
        str(i) for i in range(len(names))
    ]  # the empty category is no cell type
    as_names = [
        names[int(v)] if v.isdigit() else v for v in by_number.obs["transanno_label"].astype(str)
    ]
    assert (np.asarray(as_names) == by_name.obs["transanno_label"].astype(str).to_numpy()).all()


def test_mudata_rna_modality(trained, query, tmp_path):
    from mudata import MuData

    protein = ad.AnnData(
        X=np.ones((query.n_obs, 3), dtype=np.float32), obs=pd.DataFrame(index=query.obs_names)
    )
    protein.var_names = ["CD3", "CD19", "NKp46"]
    md = MuData({"rna": query.copy(), "prot": protein})
    ta.tl.transanno_annotate(md, trained)
    # the RNA modality gets exactly what the same cells get as an AnnData
    plain = ta.tl.transanno_annotate(query, trained, copy=True)
    rna = md.mod["rna"]
    pd.testing.assert_series_equal(rna.obs["transanno_label"], plain.obs["transanno_label"])
    np.testing.assert_array_equal(
        rna.obs["transanno_confidence"], plain.obs["transanno_confidence"]
    )
    np.testing.assert_array_equal(rna.obsm["X_transanno"], plain.obsm["X_transanno"])
    pd.testing.assert_frame_equal(
        rna.obsm["transanno_probabilities"], plain.obsm["transanno_probabilities"]
    )
    assert "transanno_label" not in md.mod["prot"].obs
    md.write(tmp_path / "q.h5mu")
    import mudata

    back = mudata.read_h5mu(tmp_path / "q.h5mu")
    assert (back.mod["rna"].obs["transanno_label"] == md.mod["rna"].obs["transanno_label"]).all()


def test_argument_errors(trained, query):
    with pytest.raises(ValueError, match="reference"):
        ta.tl.transanno_annotate(query)
    with pytest.raises(TypeError, match="TransAnno"):
        ta.tl.transanno_annotate(query, "not a model")
    with pytest.raises(ValueError, match="unassigned_threshold"):
        ta.tl.transanno_annotate(query, trained, unassigned_threshold=2.0)
    with pytest.raises(TypeError, match="only apply"):
        ta.tl.transanno_annotate(query, trained, max_epochs=3)
    with pytest.raises(KeyError, match="cell_kind"):
        ta.tl.transanno_annotate(query, reference=query, labels_key="cell_kind")


def test_one_cell_alone_as_in_a_batch(trained, query):
    """A cell annotated alone gets what it gets among all the query's cells (cell by cell:
    the query context reads the query as a whole, and a single cell has none)."""
    full = ta.tl.transanno_annotate(query, trained, copy=True, query_context=False)
    for i in (0, 137, query.n_obs - 1):
        one = ta.tl.transanno_annotate(query[i : i + 1].copy(), trained, copy=True)
        assert not one.uns["transanno"]["query_context"]["applied"]
        np.testing.assert_allclose(
            one.obsm["transanno_probabilities"].to_numpy(),
            full.obsm["transanno_probabilities"].to_numpy()[i : i + 1],
            atol=1e-5,
        )
        np.testing.assert_allclose(
            one.obsm["X_transanno"], full.obsm["X_transanno"][i : i + 1], atol=1e-5
        )
        np.testing.assert_allclose(
            one.obs["transanno_confidence"].to_numpy(),
            full.obs["transanno_confidence"].to_numpy()[i : i + 1],
            atol=1e-5,
        )
        assert one.obs["transanno_label"].iloc[0] == full.obs["transanno_label"].iloc[i]


def _lognorm_with_counts_layer(adata: ad.AnnData) -> ad.AnnData:
    """The usual scanpy layout: log1p CP10k in X, the raw counts in layers["counts"]."""
    out = adata.copy()
    out.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def test_counts_layer_workflow(ref, query):
    """With log-normalized X and ``layer="counts"`` on both sides, training and prediction read
    the counts layer: the result equals the run with the counts in X."""
    kwargs = {"labels_key": "cell_type", "unassigned_threshold": None, "copy": True, **TINY}
    scvi.settings.seed = 0
    on_x = ta.tl.transanno_annotate(query, reference=ref, **kwargs)
    scvi.settings.seed = 0
    on_layer = ta.tl.transanno_annotate(
        _lognorm_with_counts_layer(query),
        reference=_lognorm_with_counts_layer(ref),
        layer="counts",
        **kwargs,
    )
    np.testing.assert_allclose(
        on_layer.obsm["transanno_probabilities"].to_numpy(),
        on_x.obsm["transanno_probabilities"].to_numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(on_layer.obsm["X_transanno"], on_x.obsm["X_transanno"], atol=1e-5)
    assert on_layer.uns["transanno"]["params"]["layer"] == "counts"
    assert on_layer.uns["transanno"]["gene_overlap"]["input_scale"] == "counts"


def _tutorial_state(adata: ad.AnnData) -> ad.AnnData:
    """Where the scanpy tutorial leaves an object: log1p in ``.raw``, ``X`` subset to highly
    variable genes and scaled, a PCA."""
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.raw = a
    sc.pp.highly_variable_genes(a, n_top_genes=500, subset=True)
    sc.pp.scale(a, max_value=10)
    sc.tl.pca(a, n_comps=10)
    return a


def test_objects_in_the_scanpy_tutorial_state_are_read_from_raw(ref, query):
    """Scaled, HVG-subset ``X`` with the log1p values of every gene in ``.raw``, as scanpy
    users hold their data: read from ``.raw`` by default (scaled values are refused), with
    the results of the same call on ``raw.to_adata()``, written to the object itself."""
    kwargs = {"labels_key": "cell_type", "unassigned_threshold": None, **TINY}
    q, r = _tutorial_state(query), _tutorial_state(ref)
    pca = q.obsm["X_pca"].copy()
    want = ta.tl.transanno_annotate(
        q.raw.to_adata(), reference=r.raw.to_adata(), copy=True, **kwargs
    )
    ta.tl.transanno_annotate(q, reference=r, **kwargs)
    np.testing.assert_allclose(
        q.obsm["transanno_probabilities"].to_numpy(),
        want.obsm["transanno_probabilities"].to_numpy(),
        atol=1e-6,
    )
    assert (
        q.uns["transanno"]["params"]["use_raw"] and not want.uns["transanno"]["params"]["use_raw"]
    )
    assert q.uns["transanno"]["gene_overlap"]["n_query_genes"] == query.n_vars
    np.testing.assert_array_equal(q.obsm["X_pca"], pca)  # the user's keys are kept
    assert q.raw is not None and q.n_vars == 500
    with pytest.raises(ValueError, match="negative values"):
        ta.tl.transanno_annotate(q, reference=r, use_raw=False, **kwargs)
    with pytest.raises(ValueError, match="not both"):
        ta.tl.transanno_annotate(q, reference=r, use_raw=True, layer="counts", **kwargs)
    with pytest.raises(ValueError, match=r"use_raw=True, but adata\.raw is None"):
        ta.tl.transanno_annotate(query.copy(), reference=ref, use_raw=True, **kwargs)


#: cell types whose names contain "/" (they become column names of the probabilities)
SLASHED = {"NK cells": "NK/ILC cells", "T cells": "T cells/CD3+"}


@pytest.fixture(scope="module")
def slash_annotated(split):
    ref, query = split[0].copy(), split[1].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str).replace(SLASHED)
    scvi.settings.seed = 0
    with pytest.warns(UserWarning, match=r"'NK/ILC cells': 'NK_ILC cells'"):
        return ta.tl.transanno_annotate(
            query, reference=ref, labels_key="cell_type", copy=True, **TINY
        )


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_labels_with_slashes_round_trip_with_no_slash_in_a_key(slash_annotated, tmp_path, fmt):
    out = slash_annotated
    assert set(SLASHED.values()) <= set(out.obs["transanno_label"].astype(str))
    assert set(SLASHED.values()) <= set(out.uns["transanno"]["classes"])
    probs = out.obsm["transanno_probabilities"]
    assert {"NK_ILC cells", "T cells_CD3+"} <= set(probs.columns)
    assert not any("/" in c for c in probs.columns)
    with warnings.catch_warnings():
        # anndata refuses "/" in keys for zarr and warns (next minor: refuses) for h5ad
        warnings.filterwarnings("error", message="Forward slashes")
        getattr(out, f"write_{fmt}")(tmp_path / f"q.{fmt}")
    back = getattr(ad, f"read_{fmt}")(tmp_path / f"q.{fmt}")
    pd.testing.assert_series_equal(back.obs["transanno_label"], out.obs["transanno_label"])
    pd.testing.assert_frame_equal(back.obsm["transanno_probabilities"], probs)
    assert list(back.uns["transanno"]["classes"]) == list(out.uns["transanno"]["classes"])
    # the evaluation knows the slashed types from uns (not from the renamed columns)
    back.obs["truth"] = back.obs["transanno_label"].astype(str)
    n_assigned = int((back.obs["truth"] != "Unassigned").sum())
    assert ta.tl.evaluate(back, "truth", known_only=True)["n_cells"] == n_assigned


def test_a_reference_type_named_unassigned_is_refused_with_the_way_out(split):
    ref, query = split[0].copy(), split[1].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str).replace({"NK cells": "Unassigned"})
    with pytest.raises(ValueError, match=r"unlabeled_category='Unassigned'"):
        ta.tl.transanno_annotate(query, reference=ref, labels_key="cell_type", **TINY)
    assert "transanno_label" not in query.obs
    out = ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        unlabeled_category="Unassigned",
        copy=True,
        **TINY,
    )
    assert list(out.uns["transanno"]["classes"]) == ["B cells", "Neutrophils", "T cells"]
