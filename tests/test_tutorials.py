"""The tutorials run, and compute what they say they compute."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).parents[1] / "tutorials"


def _summary(nb) -> dict:
    cells = [c for c in nb.cells if "summary" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook must have exactly one cell tagged 'summary'"
    text = "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream")
    return json.loads(text)


def _execute(name: str, tmp_path: Path):
    """Run tutorials/``name`` in ``tmp_path`` (where it writes its files); no cell may fail."""
    path = tmp_path / name
    shutil.copy(TUTORIALS / name, path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return nb


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_label_transfer_notebook(tmp_path):
    nb = _execute("label_transfer.ipynb", tmp_path)
    summary = _summary(nb)
    # the published labels of the tumour-bearing animals are recovered
    assert summary["n_query"] == 513
    assert summary["accuracy"] > 0.85, summary
    assert summary["f1_macro"] > 0.85, summary
    assert summary["unassigned_fraction"] < 0.15, summary
    out = tmp_path / "label_transfer_outputs"
    for name in ("umap.png", "confusion_matrix.png", "confidence.png", "training_history.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert (out / "lung_model" / "transanno.json").exists()
    assert (out / "query_annotated.h5ad").exists()
    assert set(summary["files"]) >= {"umap.png", "query_annotated.h5ad", "lung_model"}
    # the figures are in the notebook itself, for the rendered docs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    # the UMAP groups cells by type: most neighbours in X_transanno share the cell's type
    assert summary["neighbour_agreement"] > 0.25, summary
    if summary["neighbour_agreement"] < 0.8:
        pytest.xfail(
            "known issue: obsm['X_transanno'] separates cell types poorly "
            f"(neighbour agreement {summary['neighbour_agreement']:.2f} while accuracy is "
            f"{summary['accuracy']:.2f}): the wide path fits the reference before the encoder learns"
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretraining_notebook(tmp_path):
    nb = _execute("pretraining_finetuning.ipynb", tmp_path)
    summary = _summary(nb)
    # pretraining learned something: held-out masked value bins are predicted better
    assert summary["masked_accuracy_last"] > summary["masked_accuracy_first"], summary
    assert summary["overlap"] == 1.0
    assert summary["n_labeled"] == 40 and summary["n_query"] == 371
    # 4 types (chance 0.25); logistic regression on the same 40 labels reaches about 0.91
    for name, res in summary["results"].items():
        assert res["f1_macro"] > 0.75, (name, res)
    out = tmp_path / "pretraining_outputs"
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
