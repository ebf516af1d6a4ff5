"""Marker genes and per-cell attributions (issue #19), checked against known biology."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import scvi
import torch
from conftest import FAST_MODEL, FAST_TRAIN

import transanno_sc as ta
from transanno_sc.model._attribution import _gated_deep_logits, _gene_embeddings, attribute

DATA = "/work/shared/data/baron_mouse_pancreas.h5ad"

#: Textbook markers (issue #19), upper case as the Zilionis symbols are.
ZILIONIS_MARKERS = {
    "B cells": "Cd79a Cd79b Ms4a1 Cd19 Cd74 Ebf1 Pax5 Cd22 Fcmr",
    "T cells": "Cd3e Cd3d Cd3g Cd2 Trbc2 Bcl11b Tcf7 Lef1 Il7r Thy1 Cd28 Cd5 Cd6",
    "NK cells": "Nkg7 Gzma Gzmb Ncr1 Klrb1c Klrd1 Klrk1 Il2rb Eomes Prf1",
    "Neutrophils": "S100a8 S100a9 Retnlg Csf3r Il1b Cxcr2 Ly6g Mmp8 Mmp9 Cxcl2",
}
BARON_HORMONES = {"alpha": ["Gcg"], "beta": ["Ins1", "Ins2"], "delta": ["Sst"], "gamma": ["Ppy"]}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def healthy_model(lung):
    """Trained on the healthy animals with the default 2,000 genes (fast training)."""
    scvi.settings.seed = 0
    ref = lung[(lung.obs["condition"] == "healthy").to_numpy()].copy()
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref, **{**FAST_MODEL, "n_top_genes": 2000})
    model.train(**FAST_TRAIN)
    return model


@pytest.fixture(scope="module")
def tumor(lung):
    return lung[(lung.obs["condition"] == "tumor").to_numpy()].copy()


def test_zilionis_markers_are_canonical(healthy_model):
    markers = healthy_model.marker_genes(n_genes=20, max_cells_per_type=50)
    assert list(markers.columns) == sorted(ZILIONIS_MARKERS)
    assert markers.shape == (20, 4)
    vocab = set(healthy_model.var_names_)
    for cell_type, genes in ZILIONIS_MARKERS.items():
        canonical = [g.upper() for g in genes.split()]
        # the check means something only if the vocabulary holds some of them
        assert sum(g in vocab for g in canonical) >= 2, cell_type
        hits = [g for g in markers[cell_type] if g in canonical]
        assert len(hits) >= 2, (cell_type, list(markers[cell_type]))


def test_baron_hormones_rank_top5():
    scvi.settings.seed = 0
    baron = ad.read_h5ad(DATA)
    ta.model.TransAnno.setup_anndata(baron, labels_key="cell_type")
    model = ta.model.TransAnno(baron, **{**FAST_MODEL, "n_top_genes": 2000})
    model.train(**{**FAST_TRAIN, "max_epochs": 6})
    markers = model.marker_genes(n_genes=5, max_cells_per_type=25)
    for cell_type, hormones in BARON_HORMONES.items():
        top5 = list(markers[cell_type])
        assert any(h in top5 for h in hormones), (cell_type, top5)


def test_scores_add_up_and_predictions_do_not_change(healthy_model, tumor):
    """Scores = wide + Transformer parts; the Transformer's add up to its logit minus the
    logit without gene tokens (integrated gradients' completeness); nothing is changed."""
    before = healthy_model.predict(tumor, soft=True)
    table = healthy_model.marker_genes(tumor, n_genes=5, return_scores=True, max_cells_per_type=10)
    np.testing.assert_allclose(table.score, table.wide + table.transformer, rtol=1e-5)
    assert set(table.columns) >= {"cell_type", "rank", "gene", "fraction_expressed"}
    after = healthy_model.predict(tumor, soft=True)
    pd.testing.assert_frame_equal(before, after)
    assert all(p.grad is None for p in healthy_model.module.parameters())

    module = healthy_model.module
    data, _ = healthy_model._markers_data(tumor)
    pos, x_log = next(healthy_model._iter_log_expression(data, np.arange(16), 16))
    part = attribute(module, x_log, None, n_steps=16)
    # the logits it explains are the model's own
    probs = torch.softmax(part.logits, 1).numpy()
    np.testing.assert_allclose(probs, before.to_numpy()[pos], atol=1e-5)
    tokens, h = _gene_embeddings(module, x_log)
    with torch.no_grad():
        full = _gated_deep_logits(module, h, tokens.attention_mask, None)
        empty = _gated_deep_logits(module, h, tokens.attention_mask, torch.full(h.shape[:2], 1e-30))
    target = part.logits.argmax(1)

    def centered(out):
        return (out - out.mean(1, keepdim=True)).gather(1, target[:, None])[:, 0]

    scale = float(module.deep_weight) / float(module.temperature)
    want = (centered(full) - centered(empty)).numpy() * scale
    np.testing.assert_allclose(part.transformer.sum(1).numpy(), want, rtol=0.02, atol=1e-3)
    # a gene not expressed in a cell contributes nothing to it
    assert (part.transformer[x_log == 0] == 0).all()
    assert (part.wide[x_log == 0] == 0).all()


def test_cell_attributions_do_not_depend_on_the_batch(healthy_model, tumor):
    alone = healthy_model.cell_attributions(tumor, [7], n_genes=20)
    batch = healthy_model.cell_attributions(tumor, [3, 7, 120, 399, 0], n_genes=20)
    mine = batch[batch["cell"] == tumor.obs_names[7]].reset_index(drop=True)
    assert list(mine["gene"]) == list(alone["gene"])
    np.testing.assert_allclose(mine["score"], alone["score"], rtol=1e-4, atol=1e-6)
    assert list(dict.fromkeys(batch["cell"])) == list(tumor.obs_names[[3, 7, 120, 399, 0]])
    predicted = healthy_model.predict(tumor)
    assert alone["predicted"].iloc[0] == predicted[7] == alone["cell_type"].iloc[0]
    assert alone["score"].is_monotonic_decreasing
    assert (alone["log_expression"] > 0).all()


def test_cell_attributions_target(healthy_model, tumor):
    out = healthy_model.cell_attributions(tumor, [0], n_genes=None, target="NK cells")
    assert set(out["cell_type"]) == {"NK cells"}
    assert len(out) > 20  # every gene with a contribution
    with pytest.raises(ValueError, match="target='Monocytes' is not one of the model's types"):
        healthy_model.cell_attributions(tumor, [0], target="Monocytes")
    n = tumor.n_obs
    with pytest.raises(IndexError, match=re.escape(f"must be positions in 0..{n - 1}")):
        healthy_model.cell_attributions(tumor, [n])
    with pytest.raises(TypeError, match="must be integer positions of cells or a boolean mask"):
        healthy_model.cell_attributions(tumor, [0.0, 1.0])
    mask = np.zeros(n, dtype=bool)
    mask[[3, 1]] = True
    by_mask = healthy_model.cell_attributions(tumor, mask, n_genes=5, method="gradient")
    by_pos = healthy_model.cell_attributions(tumor, [1, 3], n_genes=5, method="gradient")
    pd.testing.assert_frame_equal(by_mask, by_pos)


def test_marker_genes_of_a_query_follow_the_predictions(healthy_model, tumor):
    """Grouped by the predicted type: the same as grouping by a column holding it."""
    query = tumor.copy()
    query.obs["pred"] = healthy_model.predict(query)
    kw = {"n_genes": 10, "method": "gradient", "max_cells_per_type": 30}
    a = healthy_model.marker_genes(query, **kw)
    b = healthy_model.marker_genes(query, groupby="pred", **kw)
    pd.testing.assert_frame_equal(a, b)
    # cells of no model type are left out; types without cells too
    query.obs["pred2"] = np.where(query.obs["pred"] == "B cells", "Unassigned", query.obs["pred"])
    c = healthy_model.marker_genes(query, groupby="pred2", **kw)
    assert "B cells" not in c.columns and "T cells" in c.columns


def test_marker_genes_errors(healthy_model, tumor):
    with pytest.raises(ValueError, match="n_genes must be a positive integer"):
        healthy_model.marker_genes(n_genes=0)
    with pytest.raises(ValueError, match="method must be 'integrated_gradients' or 'gradient'"):
        healthy_model.marker_genes(method="attention")
    with pytest.raises(KeyError, match=re.escape("groupby='nope' is not a column of adata.obs")):
        healthy_model.marker_genes(tumor, groupby="nope")
    with pytest.raises(ValueError, match=re.escape("No value of adata.obs['batch'] is one of")):
        healthy_model.marker_genes(tumor, groupby="batch")


def test_tl_markers_and_dotplot(healthy_model, tumor, tmp_path):
    query = tumor.copy()
    ta.tl.transanno_annotate(query, healthy_model)
    before = set(query.uns), set(query.obs), set(query.obsm)
    kw = {"method": "gradient", "max_cells_per_type": 30}
    ta.tl.transanno_markers(query, healthy_model, n_genes=8, **kw)
    assert set(query.uns) == before[0] | {"transanno_markers"}
    assert (set(query.obs), set(query.obsm)) == before[1:]
    uns = query.uns["transanno_markers"]
    assert uns["params"]["groupby"] == "transanno_label"
    called = set(query.obs["transanno_label"].astype(str)) - {"Unassigned"}
    assert set(uns["names"].dtype.names) == called
    # scanpy's readers take it as they take rank_genes_groups' result
    df = sc.get.rank_genes_groups_df(query, None, key="transanno_markers")
    assert len(df) == 8 * len(called)
    assert set(df["names"]) <= set(query.var_names)
    direct = healthy_model.marker_genes(query, n_genes=8, groupby="transanno_label", **kw)
    for t in called:
        assert list(uns["names"][t]) == list(direct[t])
    axes = ta.pl.marker_genes(query, n_genes=3, show=False)
    labels = [t.get_text() for t in axes["mainplot_ax"].get_xticklabels()]
    assert set(labels) == {g for t in called for g in direct[t][:3]}
    # the user's order of the groups is kept, and cells without a group are not drawn
    order = ["T cells", "Neutrophils", "NK cells", "B cells"]
    query.obs["ordered"] = pd.Categorical(query.obs["cell_type"].astype(str), categories=order)
    query.obs.loc[query.obs_names[:5], "ordered"] = np.nan
    axes = ta.pl.marker_genes(query, n_genes=3, groupby="ordered", show=False)
    rows = [t.get_text() for t in axes["mainplot_ax"].get_yticklabels()]
    assert rows == order
    # a dendrogram cannot place a group that expresses none of the plotted genes: left out,
    # with a warning (scipy raised "Distance matrix 'X' must be symmetric")
    silent = query.copy()
    silent.obs["grp"] = silent.obs["cell_type"].astype(str).to_numpy()
    empty = silent.obs_names[:3]
    silent.obs.loc[empty, "grp"] = "empty"
    X = sp.lil_matrix(silent.X)
    X[:3] = 0
    silent.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match=r"Groups \['empty'\] of 'grp' express none"):
        ta.pl.marker_genes(silent, n_genes=3, groupby="grp", dendrogram=True, show=False)
    # written to .h5ad and read back
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert list(back.uns["transanno_markers"]["names"][sorted(called)[0]]) == list(
        direct[sorted(called)[0]]
    )


def test_tl_markers_errors(healthy_model, tumor):
    with pytest.raises(KeyError, match=re.escape("Run `ta.tl.transanno_annotate")):
        ta.tl.transanno_markers(tumor, healthy_model)
    with pytest.raises(TypeError, match=re.escape("model must be a transanno_sc.model.TransAnno")):
        ta.tl.transanno_markers(tumor, "model", groupby="cell_type")
    with pytest.raises(KeyError, match=re.escape("Run `ta.tl.transanno_markers")):
        ta.pl.marker_genes(tumor)
    copy = ta.tl.transanno_markers(
        tumor,
        healthy_model,
        groupby="cell_type",
        method="gradient",
        max_cells_per_type=5,
        copy=True,
    )
    assert "transanno_markers" in copy.uns and "transanno_markers" not in tumor.uns
    with pytest.raises(KeyError, match="groupby 'nope' is not a column"):
        ta.pl.marker_genes(copy, groupby="nope")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        healthy_model.marker_genes(tumor, groupby="cell_type", batch_size=0)


def test_markers_of_a_loaded_model(healthy_model, tumor, tmp_path):
    """A model loaded without its AnnData explains a query as the original does."""
    healthy_model.save(str(tmp_path / "model"))
    loaded = ta.model.TransAnno.load(str(tmp_path / "model"))
    kw = {"n_genes": 10, "max_cells_per_type": 10, "groupby": "cell_type"}
    pd.testing.assert_frame_equal(
        loaded.marker_genes(tumor, **kw), healthy_model.marker_genes(tumor, **kw)
    )
    with pytest.raises(ValueError, match="The model holds no AnnData"):
        loaded.marker_genes()
