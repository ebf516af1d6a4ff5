"""tl.transanno_annotate: writes exactly the documented keys, nothing else."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import FAST_MODEL

import transanno_sc as ta


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
    ta.tl.transanno_annotate(query, trained, unassigned_threshold=0.95)
    conf = query.obs["transanno_confidence"].to_numpy()
    probs = query.obsm["transanno_probabilities"].to_numpy()
    # calibrated probability times typicality (<= 1): never above the probability
    assert (conf <= probs.max(1) + 1e-6).all() and (conf >= 0).all()
    unassigned = query.obs["transanno_label"].astype(str).to_numpy() == "Unassigned"
    assert (unassigned == (conf < 0.95)).all()
    # without the novelty part the confidence is the probability of the predicted type
    ta.tl.transanno_annotate(query, trained, unassigned_threshold=0.95, novelty=False)
    conf = query.obs["transanno_confidence"].to_numpy()
    np.testing.assert_allclose(conf, probs.max(1), rtol=1e-6)
    assert query.uns["transanno"]["params"]["novelty"] is False


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

    md = MuData({"rna": query.copy()})
    ta.tl.transanno_annotate(md, trained)
    assert "transanno_label" in md.mod["rna"].obs
    assert "X_transanno" in md.mod["rna"].obsm
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
