"""The tutorials run, and compute what they say they compute.

Each executed notebook is checked against baselines computed here on the same cells. In CI
(``.ci/run``) this is where the tutorials run: the documentation build there renders them
without executing them again.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from conftest import linear_baseline, log_cp10k, scores

import transanno_sc as ta

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).parents[1] / "tutorials"


def _summary(nb) -> dict:
    cells = [c for c in nb.cells if "summary" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook must have exactly one cell tagged 'summary'"
    text = "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream")
    return json.loads(text)


def _execute(name: str, tmp_path: Path, folder: Path = TUTORIALS):
    """Run ``folder``/``name`` in ``tmp_path`` (where it writes its files); no cell may fail."""
    path = tmp_path / name
    if folder != tmp_path:
        shutil.copy(folder / name, path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return nb


def _probe(nb, source: str) -> None:
    """Append a code cell to the (copied) notebook: it runs after the tutorial's own cells, in
    the same kernel, and writes what the tests need to compute their baselines."""
    nb.cells.append(nbformat.v4.new_code_cell(source))


def _neighbour_agreement(graph, types: np.ndarray) -> float:
    """The tutorial's measure: mean fraction of a cell's neighbours that share its type."""
    graph = graph.tocsr()
    return float(np.mean([np.mean(types[graph[i].indices] == types[i]) for i in range(len(types))]))


@pytest.fixture(scope="module")
def label_transfer(tmp_path_factory):
    """The label-transfer tutorial, executed once for the tests below; its written files, and
    the baselines on the same cells: a class-balanced logistic regression on the model's genes
    (the model's wide path alone is one) and the neighbour agreement of a 50-component PCA of
    the query's log-expression (the embedding one would use without the model)."""
    tmp_path = tmp_path_factory.mktemp("label_transfer")
    nb = _execute("label_transfer.ipynb", tmp_path)
    summary = _summary(nb)
    out = tmp_path / "label_transfer_outputs"
    lung = ta.datasets.zilionis_mouse_lung()
    ref = lung[lung.obs["condition"] == "healthy"].copy()
    query = lung[lung.obs["condition"] == "tumor"].copy()
    model = ta.model.TransAnno.load(str(out / "lung_model"))
    annotated = ad.read_h5ad(out / "query_annotated.h5ad")
    assert (annotated.obs_names == query.obs_names).all()
    pcs = query.copy()
    sc.pp.normalize_total(pcs, target_sum=1e4)
    sc.pp.log1p(pcs)
    sc.pp.pca(pcs, n_comps=50, random_state=0)
    sc.pp.neighbors(pcs, use_rep="X_pca")
    types = query.obs["cell_type"].to_numpy()
    baselines = {
        "linear": linear_baseline(ref, query, model.var_names_),
        "pca_neighbour_agreement": _neighbour_agreement(pcs.obsp["distances"], types),
    }
    return {"nb": nb, "summary": summary, "out": out, "annotated": annotated, **baselines}


@pytest.mark.slow
def test_label_transfer_notebook(label_transfer):
    summary, out, nb = label_transfer["summary"], label_transfer["out"], label_transfer["nb"]
    # the published labels of the tumour-bearing animals are recovered as well as a logistic
    # regression on the model's genes recovers them (the model's most probable type; cells
    # left Unassigned are counted apart)
    annotated, base = label_transfer["annotated"], label_transfer["linear"]
    probs = annotated.obsm["transanno_probabilities"]
    got = scores(annotated.obs["cell_type"], probs.columns[probs.to_numpy().argmax(1)])
    assert summary["n_query"] == 513
    assert got["f1_macro"] >= base["f1_macro"] - 0.02, (got, base)
    assert got["accuracy"] >= base["accuracy"] - 0.02, (got, base)
    # the summary's metrics are those of the written labels, Unassigned counted as errors
    written = scores(annotated.obs["cell_type"], annotated.obs["transanno_label"])
    assert summary["accuracy"] == pytest.approx(written["accuracy"])
    assert summary["unassigned_fraction"] < 0.15, summary
    for name in ("umap.png", "confusion_matrix.png", "confidence.png", "training_history.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert (out / "lung_model" / "transanno.json").exists()
    assert (out / "query_annotated.h5ad").exists()
    assert set(summary["files"]) >= {"umap.png", "query_annotated.h5ad", "lung_model"}
    # the figures are in the notebook itself, for the rendered docs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4


@pytest.mark.slow
def test_label_transfer_embedding_groups_cell_types(label_transfer):
    """The UMAP the tutorial draws groups cells by type: in X_transanno most of a cell's
    neighbours share its type, as many as in a PCA of the expression (0.25 would be a random
    embedding: four types of similar size)."""
    summary = label_transfer["summary"]
    annotated = label_transfer["annotated"]
    types = annotated.obs["cell_type"].to_numpy()
    ours = _neighbour_agreement(annotated.obsp["distances"], types)
    assert summary["neighbour_agreement"] == pytest.approx(ours)
    pca = label_transfer["pca_neighbour_agreement"]
    assert ours >= pca - 0.05, (ours, pca)
    assert ours >= 0.8, (ours, pca)


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pretraining")
    path = tmp_path / "pretraining_finetuning.ipynb"
    shutil.copy(TUTORIALS / path.name, path)
    nb = nbformat.read(path, as_version=4)
    # for the baselines: which cells were labeled, and each model's genes
    _probe(
        nb,
        "json.dump({'labeled': [str(c) for c in ref.obs_names[ref.obs['few_labels'] != "
        "'Unknown']], 'genes': {'pretrained + fine-tuned': list(finetuned.var_names_), "
        "'from scratch': list(scratch.var_names_)}}, open('probe.json', 'w'))",
    )
    nbformat.write(nb, path)
    nb = _execute(path.name, tmp_path, folder=tmp_path)
    probe = json.loads((tmp_path / "probe.json").read_text())
    return {"nb": nb, "summary": _summary(nb), "out": tmp_path / "pretraining_outputs", **probe}


@pytest.mark.slow
def test_pretraining_notebook(pretraining):
    summary, nb, out = pretraining["summary"], pretraining["nb"], pretraining["out"]
    # pretraining learned something: held-out masked value bins are predicted better
    assert summary["masked_accuracy_last"] > summary["masked_accuracy_first"], summary
    assert summary["overlap"] == 1.0
    assert summary["n_labeled"] == 40 and summary["n_query"] == 371
    # each model against a logistic regression on the same 40 labeled cells and its genes
    lung = ta.datasets.zilionis_mouse_lung()
    query = lung[lung.obs["batch"].isin(["h_2", "t_2"])].copy()
    labeled = lung[pretraining["labeled"]].copy()
    assert labeled.n_obs == 40
    for name, res in summary["results"].items():
        base = linear_baseline(labeled, query, pretraining["genes"][name])
        assert res["f1_macro"] >= base["f1_macro"] - 0.05, (name, res, base)
    backbone = out / "lung_backbone"
    assert {p.name for p in backbone.iterdir()} == {
        "config.json",
        "model.safetensors",
        "vocabulary.json",
    }
    for name in ("pretraining_history.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 10_000, name
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


#: Marker genes of mouse NK cells (cytotoxic granules, NK receptors, NK1.1 = Klrb1c).
NK_MARKERS = {"GZMA", "GZMB", "NKG7", "PRF1", "KLRB1C", "KLRD1", "KLRK1", "NCR1", "CCL5"}


@pytest.mark.slow
def _hvg_logistic_regression(ref):
    """The benchmarks' baseline recipe: an L2 logistic regression (C=0.1) on log1p CP10k of
    the reference's 2,000 Seurat highly variable genes; the fitted model and the genes."""
    from sklearn.linear_model import LogisticRegression

    hvg = ref.copy()
    sc.pp.normalize_total(hvg, target_sum=1e4)
    sc.pp.log1p(hvg)
    sc.pp.highly_variable_genes(hvg, n_top_genes=2000, flavor="seurat")
    genes = list(hvg.var_names[hvg.var["highly_variable"]])
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(
        log_cp10k(ref, genes), ref.obs["cell_type"].astype(str)
    )
    return clf, genes


def test_novel_cell_types_notebook(tmp_path):
    """The reference without NK cells: most of the query's NK cells come out "Unassigned",
    few known cells do, the reasons add up, the "Unassigned" cells' top markers are NK-cell
    genes, and the confidence tells NK from known cells better than a logistic regression's
    maximum probability on the same reference (the recipe of the benchmarks' baseline)."""
    from sklearn.metrics import f1_score, roc_auc_score

    nb = _execute("novel_cell_types.ipynb", tmp_path)
    summary = _summary(nb)
    out = tmp_path / "novel_cell_types_outputs"
    annotated = ad.read_h5ad(out / "query_annotated.h5ad")
    published = annotated.obs["cell_type"].astype(str).to_numpy()
    labels = annotated.obs["transanno_label"].astype(str).to_numpy()
    novel = published == "NK cells"
    assert summary["n_query"] == annotated.n_obs == 513
    assert summary["nk_unassigned"] == pytest.approx(np.mean(labels[novel] == "Unassigned"))
    assert summary["known_unassigned"] == pytest.approx(np.mean(labels[~novel] == "Unassigned"))
    assert summary["nk_unassigned"] >= 0.5, summary
    assert summary["known_unassigned"] <= 0.05, summary
    assert sum(summary["unassigned_reasons"].values()) == np.sum(labels == "Unassigned")
    # the text reads the "Unassigned" cells as a cluster with foreign markers
    assert summary["unassigned_reasons"]["foreign_markers"] >= 0.5 * np.sum(labels == "Unassigned")
    assert len(NK_MARKERS & set(summary["top_markers"][:10])) >= 3, summary["top_markers"]

    lung = ta.datasets.zilionis_mouse_lung()
    healthy = lung.obs["condition"] == "healthy"
    ref = lung[healthy & (lung.obs["cell_type"] != "NK cells")].copy()
    clf, genes = _hvg_logistic_regression(ref)
    baseline = roc_auc_score(~novel, clf.predict_proba(log_cp10k(annotated, genes)).max(1))
    confidence = annotated.obs["transanno_confidence"].to_numpy()
    assert summary["auroc"] == pytest.approx(roc_auc_score(~novel, confidence))
    # tl.evaluate's macro-F1 over all cells: an NK cell called T cell is a false T cell
    known = sorted(set(published[~novel]))
    all_cells = f1_score(published, labels, labels=known, average="macro", zero_division=0)
    assert summary["f1_macro_all_cells"] == pytest.approx(all_cells)
    assert summary["auroc"] >= max(0.85, baseline + 0.1), (summary["auroc"], baseline)
    for name in ("umap.png", "unassigned_markers.png"):
        assert (out / name).stat().st_size > 10_000, name
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


def test_cross_study_notebook(tmp_path):
    """The 300-gene panel with other gene names: every gene matched (by case), labels within
    0.05 of a logistic regression on the same genes (computed here), the whole-reference
    model refused with the way out named; the log2(TPM + 1) table detected as such and
    annotated as well as a logistic regression on the counts it came from."""
    from sklearn.linear_model import LogisticRegression

    nb = _execute("cross_study.ipynb", tmp_path)
    summary = _summary(nb)
    out = tmp_path / "cross_study_outputs"
    panel = ad.read_h5ad(out / "panel_annotated.h5ad")
    table = ad.read_h5ad(out / "table_annotated.h5ad")
    assert summary["n_panel_genes"] == panel.n_vars == summary["n_shared_genes"] == 300
    overlap = panel.uns["transanno"]["gene_overlap"]
    assert overlap["n_exact"] + overlap["n_case_insensitive"] == 300
    assert summary["n_case_insensitive"] >= 290  # the names differ in case, as written
    lung = ta.datasets.zilionis_mouse_lung()
    ref = lung[lung.obs["condition"] == "healthy"].copy()
    tumour = lung[lung.obs["condition"] == "tumor"].copy()
    genes = [g.upper() for g in panel.var_names]
    truth = panel.obs["published"].astype(str).to_numpy()
    assert (truth == tumour.obs["cell_type"].astype(str).to_numpy()).all()
    labels = panel.obs["transanno_label"].astype(str).to_numpy()
    assert summary["panel_accuracy"] == pytest.approx(np.mean(labels == truth))
    # normalized over the panel's genes, the only ones the query has
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(
        log_cp10k(ref[:, genes], genes), ref.obs["cell_type"].astype(str)
    )
    baseline = float(np.mean(clf.predict(log_cp10k(tumour[:, genes], genes)) == truth))
    assert summary["baseline_accuracy"] == pytest.approx(baseline, abs=0.005)
    assert summary["panel_accuracy"] >= baseline - 0.05, (summary, baseline)
    assert summary["panel_unassigned"] <= 0.05, summary
    assert "reference=ref" in summary["refusal"] and "share" in summary["refusal"]
    # the table: its base detected, its labels as good as a linear model on its counts
    assert summary["table_scale"] == table.uns["transanno"]["gene_overlap"]["input_scale"]
    assert summary["table_scale"] == "log2(1+x)"
    table_labels = table.obs["transanno_label"].astype(str).to_numpy()
    assert summary["table_accuracy"] == pytest.approx(np.mean(table_labels == truth))
    clf, hv = _hvg_logistic_regression(ref)
    counts_baseline = float(np.mean(clf.predict(log_cp10k(tumour, hv)) == truth))
    assert summary["table_accuracy"] >= counts_baseline - 0.05, (summary, counts_baseline)


def test_multi_gpu_notebook_is_valid_python():
    """Shown, not executed: at least check that every code cell parses."""
    nb = nbformat.read(TUTORIALS / "multi_gpu_large_data.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("devices=2" in c for c in code) and any('backed="r"' in c for c in code)
    for source in code:
        lines = [ln for ln in source.splitlines() if not ln.startswith(("%", "!"))]
        ast.parse("\n".join(lines))


def test_notebooks_are_stored_without_outputs():
    """Outputs are produced when the docs are built, not committed."""
    for path in TUTORIALS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
