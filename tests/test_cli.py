"""The ``transanno`` command."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad

from transanno_sc.cli import main


def test_demo_writes_outputs(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--max-epochs", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out
    q = ad.read_h5ad(tmp_path / "query_annotated.h5ad")
    assert "transanno_label" in q.obs and "X_umap" in q.obsm
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1_000


def test_help_and_bad_command():
    r = subprocess.run(
        [sys.executable, "-m", "transanno_sc.cli", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "demo" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "transanno_sc.cli", "nope"], capture_output=True, text=True
    )
    assert r.returncode != 0
