"""The ``transanno`` command: demo, annotate, pretrain, train, evaluate, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import FAST_MODEL, linear_baseline

import transanno_sc as ta
from transanno_sc.cli import CLIError, main

FAST = ["--max-epochs", "3", "--model-kwargs", json.dumps(FAST_MODEL), "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, split):
    """Reference and query .h5ad files (mouse lung, animals h_1,t_1 -> h_2,t_2)."""
    d = tmp_path_factory.mktemp("cli")
    ref, query = split
    ref.write_h5ad(d / "ref.h5ad")
    query.write_h5ad(d / "query.h5ad")
    renamed = query.copy()
    renamed.var_names = [f"ENSMUSG{i:011d}" for i in range(renamed.n_vars)]
    renamed.write_h5ad(d / "query_ensembl.h5ad")
    return d


@pytest.fixture(scope="module")
def annotated(files):
    """One real ``transanno annotate`` run, shared by the tests that read its outputs."""
    out = files / "out.h5ad"
    argv = [
        "annotate",
        "--reference",
        str(files / "ref.h5ad"),
        "--query",
        str(files / "query.h5ad"),
        "--labels-key",
        "cell_type",
        "--out",
        str(out),
        "--save-model",
        str(files / "model"),
        *FAST,
    ]
    rc = main(argv)
    return rc, out


def test_demo_writes_outputs(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--max-epochs", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out
    q = ad.read_h5ad(tmp_path / "query_annotated.h5ad")
    assert "transanno_label" in q.obs and "X_umap" in q.obsm
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1_000


def test_annotate_from_reference_writes_annotated_query(annotated, files, split):
    rc, out = annotated
    assert rc == 0
    q = ad.read_h5ad(out)
    query = split[1]
    assert q.n_obs == query.n_obs and list(q.obs_names) == list(query.obs_names)
    assert {"transanno_label", "transanno_confidence"} <= set(q.obs)
    assert {"X_transanno", "transanno_probabilities"} <= set(q.obsm)
    assert set(q.obs["transanno_label"].cat.categories) == {
        "B cells",
        "NK cells",
        "Neutrophils",
        "T cells",
        "Unassigned",
    }
    assert (q.obs["transanno_confidence"].between(0, 1)).all()
    # trained for real: the most probable types near a logistic regression on the model's genes
    genes = json.loads((files / "model" / "transanno.json").read_text())["var_names"]
    baseline = linear_baseline(split[0], query, genes)["accuracy"]
    probs = q.obsm["transanno_probabilities"]
    pred = np.asarray(probs.columns)[np.asarray(probs).argmax(1)]
    acc = float(np.mean(pred == q.obs["cell_type"].astype(str).to_numpy()))
    assert acc >= baseline - 0.1, (acc, baseline)
    assert (files / "model" / "transanno.json").exists()
    assert not any(k.startswith("_scvi") for k in [*q.obs, *q.uns])


def test_annotate_with_saved_model_gives_same_labels(annotated, files, capsys):
    _, first = annotated
    out = files / "out_model.h5ad"
    argv = ["annotate", "--model", str(files / "model"), "--query", str(files / "query.h5ad")]
    rc = main([*argv, "--out", str(out), "--batch-size", "7", "--unassigned-threshold", "none"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "[transanno] loading model" in stdout and "[transanno] wrote" in stdout
    assert "Unassigned:" not in stdout  # no threshold, no reasons
    a, b = ad.read_h5ad(first), ad.read_h5ad(out)
    assert "Unassigned" not in set(b.obs["transanno_label"].astype(str))
    assigned = a.obs["transanno_label"].astype(str) != "Unassigned"
    pd.testing.assert_series_equal(
        a.obs["transanno_label"].astype(str)[assigned],
        b.obs["transanno_label"].astype(str)[assigned],
    )
    pd.testing.assert_series_equal(a.obs["transanno_confidence"], b.obs["transanno_confidence"])


def test_annotate_without_query_context_is_the_cell_level_call(annotated, files, tmp_path, capsys):
    """``--no-query-context`` gives the labels and confidence of ``model.predict_confidence``;
    a progress line says why cells are "Unassigned"."""
    out = tmp_path / "cell.h5ad"
    argv = ["annotate", "--model", str(files / "model"), "--query", str(files / "query.h5ad")]
    argv += ["--unassigned-threshold", "0.99"]
    assert main([*argv, "--out", str(out), "--no-query-context"]) == 0
    stdout = capsys.readouterr().out
    q = ad.read_h5ad(out)
    n_unassigned = int((q.obs["transanno_label"] == "Unassigned").sum())
    assert n_unassigned and sum(q.uns["transanno"]["unassigned"].values()) == n_unassigned
    assert "[transanno] Unassigned: " in stdout
    model = ta.model.TransAnno.load(str(files / "model"))
    cell = model.predict_confidence(ad.read_h5ad(files / "query.h5ad"))
    np.testing.assert_allclose(q.obs["transanno_confidence"], cell["confidence"], rtol=1e-6)
    assert not q.uns["transanno"]["query_context"]["applied"]
    assert not q.uns["transanno"]["params"]["query_context"]


def test_evaluate_prints_and_writes_reports(annotated, files, split, tmp_path, capsys):
    _, out = annotated
    n = split[1].n_obs
    report, cm_csv, cm_png = tmp_path / "r.csv", tmp_path / "cm.csv", tmp_path / "cm.png"
    argv = ["evaluate", "--adata", str(out), "--true-key", "cell_type", "--out", str(report)]
    assert main([*argv, "--confusion", str(cm_csv)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("[transanno] read adata")
    scores = [ln for ln in stdout.splitlines() if ln.startswith("cells ")]
    assert len(scores) == 1 and scores[0].startswith(f"cells {n}  accuracy ")
    accuracy = float(scores[0].split("accuracy ")[1].split()[0])
    assert 0.6 < accuracy <= 1.0
    assert "macro-F1" in scores[0] and "Unassigned" in scores[0]
    table = pd.read_csv(report, index_col=0)
    assert list(table.columns) == ["precision", "recall", "f1-score", "support"]
    assert sorted(table.index) == ["B cells", "NK cells", "Neutrophils", "T cells"]
    assert table["support"].sum() == n
    confusion = pd.read_csv(cm_csv, index_col=0)
    assert confusion.to_numpy().sum() == n
    assert main([*argv, "--confusion", str(cm_png)]) == 2  # --out exists now
    _assert_one_line_error(capsys, "the file exists; pass --overwrite")
    assert main([*argv, "--confusion", str(cm_png), "--overwrite"]) == 0
    assert cm_png.stat().st_size > 5_000
    mask = os.umask(0)
    os.umask(mask)
    assert report.stat().st_mode & 0o777 == 0o666 & ~mask  # not owner-only


def test_output_paths_of_the_wrong_kind_are_refused_up_front(annotated, files, tmp_path, capsys):
    """Before any file is read or model trained: an output that is a folder where a file is
    written (or the converse, even with --overwrite), a format the command does not write,
    an accelerator this machine lacks."""
    folder, file = tmp_path / "folder", tmp_path / "file.h5ad"
    folder.mkdir()
    file.write_text("x")
    ref = ["--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    query = ["--query", str(files / "query.h5ad")]
    cases = [
        (["annotate", *ref, *query, "--out", str(folder), "--overwrite"], "is an existing folder"),
        (["annotate", *ref, *query, "--out", str(tmp_path / "o.csv")], "ending in .h5ad or .h5mu"),
        (["annotate", *ref, *query, "--out", str(tmp_path / "o.h5ad"), "--save-model", str(file), "--overwrite"], "is an existing file; --save-model names a folder"),
        (["train", *ref, "--out", str(file), "--overwrite"], "is an existing file; --out names a folder"),
        (["pretrain", "--adata", str(files / "ref.h5ad"), "--out", str(file), "--overwrite"], "names a folder"),
        (["evaluate", "--adata", str(annotated[1]), "--true-key", "cell_type", "--out", str(folder)], "is an existing folder; --out names a file"),
        (["evaluate", "--adata", str(annotated[1]), "--true-key", "cell_type", "--confusion", str(tmp_path / "cm")], "ending in .csv or .png or .pdf or .svg"),
        (["annotate", *ref, *query, "--out", str(tmp_path / "o.h5ad"), "--accelerator", "tpu"], "expected 'cpu', 'gpu'"),
    ]  # fmt: skip
    for argv, fragment in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own checks exit
            rc = e.code
        assert rc == 2, argv
        _assert_one_line_error(capsys, fragment)
        assert "[transanno] read" not in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.h5ad", "folder"]


def _assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("transanno: error: "), err
    for f in fragments:
        assert f in lines[0], err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--reference", "{d}/missing.h5ad", "--labels-key", "cell_type"], ["not found"]),
        (["--reference", "{d}/ref.h5ad", "--labels-key", "celltype"], ["'celltype'", "cell_type"]),
        (["--reference", "{d}/ref.h5ad"], ["--labels-key is required"]),
        (["--reference", "{d}/ref.h5ad", "--labels-key", "cell_type", "--model-kwargs", "{{"], ["JSON"]),
        (["--model", "{d}/nowhere"], ["--model folder", "not found"]),
        (["--model", "{d}", "--max-epochs", "3"], ["--max-epochs only applies"]),
        (["--model", "{d}", "--pretrain"], ["--pretrain only applies"]),
        (["--model", "{d}", "--unlabeled-category", "x"], ["--unlabeled-category only applies"]),
        (["--model", "{d}", "--reference-input-scale", "auto"], ["--reference-input-scale only applies"]),
        (["--reference", "{d}/ref.h5ad", "--labels-key", "cell_type", "--unassigned-threshold", "2"], ["[0, 1]"]),
    ],
    ids=["missing-file", "missing-key", "no-labels-key", "bad-json", "no-model", "model-and-epochs", "model-and-pretrain", "model-and-unlabeled", "model-and-reference-scale", "threshold"],
)  # fmt: skip
def test_annotate_bad_input_one_line_error(files, capsys, args, fragments):
    argv = ["annotate", *[a.format(d=files) for a in args]]
    argv += ["--query", str(files / "query.h5ad"), "--out", str(files / "never.h5ad")]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own checks exit
        rc = e.code
    assert rc == 2
    _assert_one_line_error(capsys, *fragments)
    assert not (files / "never.h5ad").exists()


def test_annotate_no_gene_overlap_fails_before_training(files, capsys):
    argv = ["annotate", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--query", str(files / "query_ensembl.h5ad"), "--out", str(files / "never.h5ad")]
    assert main([*argv, *FAST]) == 2
    _assert_one_line_error(capsys, "no gene of the query matches")
    assert not (files / "never.h5ad").exists()


def test_annotate_saved_model_no_gene_overlap(annotated, files, capsys):
    argv = ["annotate", "--model", str(files / "model"), "--query"]
    argv += [str(files / "query_ensembl.h5ad"), "--out", str(files / "never.h5ad")]
    assert main(argv) == 2
    _assert_one_line_error(capsys)
    assert not (files / "never.h5ad").exists()


def test_evaluate_bad_input(files, capsys):
    assert main(["evaluate", "--adata", str(files / "nope.h5ad"), "--true-key", "x"]) == 2
    _assert_one_line_error(capsys, "not found")
    argv = ["evaluate", "--adata", str(files / "query.h5ad"), "--true-key", "cell_type"]
    assert main(argv) == 2  # no predictions in this file
    _assert_one_line_error(capsys, "--pred-key 'transanno_label' is not a column")
    (files / "not_h5ad.h5ad").write_text("hello")
    argv = ["evaluate", "--adata", str(files / "not_h5ad.h5ad"), "--true-key", "cell_type"]
    assert main(argv) == 2
    _assert_one_line_error(capsys, "could not read adata")


@pytest.mark.parametrize("command", ["annotate", "evaluate", "demo", "pretrain", "train"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit, match=r"^0$") as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: transanno {command}")
    assert "--debug" in out
    expected = {
        "annotate": [
            *["--reference", "--model", "--save-model", "--devices", "--pretrain"],
            *["--unlabeled-category", "--input-scale", "--batch-key"],
        ],
        "pretrain": ["--adata", "--out", "--max-epochs", "--input-scale"],
        "train": ["--backbone", "--finetune", "--labels-key", "--batch-key", "--input-scale"],
    }
    for option in expected.get(command, []):
        assert option in out


def test_help_and_bad_command():
    r = subprocess.run(
        [sys.executable, "-m", "transanno_sc.cli", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0
    assert all(c in r.stdout for c in ("demo", "annotate", "evaluate"))
    r = subprocess.run(
        [sys.executable, "-m", "transanno_sc.cli", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("transanno: error: argument COMMAND: invalid choice")
    assert len(r.stderr.strip().splitlines()) == 1


def test_pretrain_then_train_with_backbone_then_annotate(files, split, tmp_path, capsys):
    backbone, model = tmp_path / "backbone", tmp_path / "model"
    device = ["--accelerator", "cpu", "--model-kwargs", json.dumps(FAST_MODEL)]
    # two files of one name in two folders: both are read (named by their paths)
    (tmp_path / "other").mkdir()
    shutil.copy(files / "query.h5ad", tmp_path / "other" / "ref.h5ad")
    argv = ["pretrain", "--adata", str(files / "ref.h5ad"), str(tmp_path / "other" / "ref.h5ad")]
    assert main([*argv, "--out", str(backbone), "--max-epochs", "1", *device]) == 0
    n_cells = split[0].n_obs + split[1].n_obs
    assert f"merged 2 files: {n_cells:,} cells" in capsys.readouterr().out
    assert (backbone / "vocabulary.json").exists() and (backbone / "model.safetensors").exists()
    argv = ["train", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--backbone", str(backbone), "--finetune", "partial", "--out", str(model)]
    assert main([*argv, "--max-epochs", "2", "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning the backbone" in out and "saved the model" in out
    annotated = tmp_path / "annotated.h5ad"
    argv = ["annotate", "--model", str(model), "--query", str(files / "query.h5ad")]
    assert main([*argv, "--out", str(annotated)]) == 0
    labels = ad.read_h5ad(annotated).obs["transanno_label"].astype(str)
    types = sorted(split[1].obs["cell_type"].astype(str).unique())
    assert set(labels) <= {*types, "Unassigned"}
    chance = split[1].obs["cell_type"].value_counts(normalize=True).max()
    assert np.mean(labels.to_numpy() == split[1].obs["cell_type"].astype(str).to_numpy()) > chance
    # a folder that is not a backbone: one line, exit code 2
    argv = ["train", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    assert main([*argv, "--backbone", str(tmp_path), "--out", str(tmp_path / "m2")]) == 2
    assert "not a folder written by `transanno pretrain`" in capsys.readouterr().err


def test_annotate_integer_labels_and_unlabeled_cells(files, split, tmp_path, capsys):
    """Cluster numbers as labels, some cells unlabeled: trained through tl like any reference."""
    ref = split[0].copy()
    types = sorted(ref.obs["cell_type"].astype(str).unique())
    codes = ref.obs["cell_type"].astype(str).map(types.index).to_numpy()
    unlabeled = np.random.default_rng(0).random(ref.n_obs) < 0.1
    ref.obs["cluster"] = np.where(unlabeled, -1, codes)  # int64 column
    ref.write_h5ad(tmp_path / "ref_int.h5ad")
    out = tmp_path / "out.h5ad"
    argv = ["annotate", "--reference", str(tmp_path / "ref_int.h5ad"), "--labels-key", "cluster"]
    argv += ["--unlabeled-category", "-1", "--query", str(files / "query.h5ad"), "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    stdout = capsys.readouterr().out
    assert f"{int(unlabeled.sum())} unlabeled cells" in stdout
    q = ad.read_h5ad(out)
    assert set(q.obs["transanno_label"].cat.categories) == {"0", "1", "2", "3", "Unassigned"}
    predicted = q.obs["transanno_label"].astype(str)
    truth = q.obs["cell_type"].astype(str).map(types.index).astype(str)
    query = split[1].copy()
    query.obs["code"] = query.obs["cell_type"].astype(str).map(types.index).astype(str)
    ref.obs["code"] = ref.obs["cluster"].astype(str)
    labeled = ref[~unlabeled].copy()
    genes = list(labeled.var_names)
    baseline = linear_baseline(labeled, query, genes, labels_key="code")["accuracy"]
    assert (predicted == truth).mean() >= baseline - 0.15, baseline  # Unassigned counts wrong


def test_debug_reraises_with_traceback(files, monkeypatch, capsys):
    argv = ["evaluate", "--adata", str(files / "nope.h5ad"), "--true-key", "cell_type"]
    monkeypatch.delenv("TRANSANNO_DEBUG", raising=False)
    assert main(argv) == 2
    _assert_one_line_error(capsys, "not found")
    with pytest.raises(CLIError, match=r"adata file '.*nope\.h5ad' not found"):
        main(["--debug", *argv])
    with pytest.raises(CLIError, match=r"adata file '.*nope\.h5ad' not found"):
        main([*argv, "--debug"])
    monkeypatch.setenv("TRANSANNO_DEBUG", "1")
    with pytest.raises(CLIError, match=r"adata file '.*nope\.h5ad' not found"):
        main(argv)
    monkeypatch.setenv("TRANSANNO_DEBUG", "0")
    assert main(argv) == 2
    # the console script prints the traceback, and the error is its last line
    r = subprocess.run(
        [sys.executable, "-m", "transanno_sc.cli", "--debug", *argv],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TRANSANNO_DEBUG"},
    )
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):")
    assert "_check_input_file" in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("nope.h5ad' not found.")


def test_console_script_train_then_annotate(files, tmp_path):
    """The installed ``transanno`` command end to end: train, save, load, annotate, write."""
    exe = shutil.which("transanno", path=str(Path(sys.executable).parent))
    assert exe is not None, "the transanno console script is not installed in this environment"
    model, out = tmp_path / "model", tmp_path / "annotated.h5ad"
    argv = [exe, "train", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--batch-key", "batch", "--input-scale", "counts", "--out", str(model), *FAST]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "[transanno] saved the model" in r.stdout
    argv = [exe, "annotate", "--model", str(model), "--query", str(files / "query.h5ad")]
    argv += ["--out", str(out), "--unassigned-threshold", "none", "--input-scale", "counts"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "[transanno] wrote" in r.stdout
    q = ad.read_h5ad(out)
    truth = q.obs["cell_type"].astype(str)
    accuracy = (q.obs["transanno_label"].astype(str) == truth).mean()
    # baseline: the best a constant label can do (the query's most frequent type, 0.33 here);
    # 3 epochs of a tiny model reach about 0.93 (0.2 above the bar)
    baseline = truth.value_counts(normalize=True).max()
    assert baseline < 0.4
    assert accuracy > baseline + 0.4, (accuracy, baseline)


def test_annotate_labels_with_slashes_warns_in_one_line(files, split, tmp_path, capsys):
    """A type named with "/" is written (h5ad keys cannot hold "/": its probability column
    gets "_") and the CLI says so in one line, not with Python's file and source line."""
    ref = split[0].copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str).replace({"NK cells": "NK/ILC"})
    ref.write_h5ad(tmp_path / "ref_slash.h5ad")
    out = tmp_path / "out.h5ad"
    argv = ["annotate", "--reference", str(tmp_path / "ref_slash.h5ad"), "--labels-key"]
    argv += ["cell_type", "--query", str(files / "query.h5ad"), "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    err = capsys.readouterr().err
    assert "transanno: warning: Cell types with '/' name columns" in err, err
    assert "ta.tl.transanno_annotate(" not in err  # no source line
    q = ad.read_h5ad(out)
    assert "NK/ILC" in q.uns["transanno"]["classes"]
    assert "NK_ILC" in q.obsm["transanno_probabilities"].columns


def test_annotate_refuses_to_overwrite_then_replaces_with_overwrite(
    annotated, files, tmp_path, capsys
):
    """An existing ``--out`` (here: the query itself) is an error without ``--overwrite``,
    before any work, and the file is left as it was; with it, the annotated query replaces
    the file."""
    query = tmp_path / "query.h5ad"
    shutil.copy(files / "query.h5ad", query)
    before = query.read_bytes()
    argv = ["annotate", "--model", str(files / "model"), "--query", str(query), "--out", str(query)]
    assert main(argv) == 2
    _assert_one_line_error(capsys, "--out", "exists", "--overwrite")
    assert query.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    written = ad.read_h5ad(query)
    assert "transanno_label" in written.obs
    assert [p.name for p in tmp_path.iterdir()] == ["query.h5ad"]  # no temporary file left
    pd.testing.assert_series_equal(
        written.obs["transanno_confidence"], ad.read_h5ad(annotated[1]).obs["transanno_confidence"]
    )


def test_train_refuses_an_existing_model_folder(annotated, files, capsys):
    argv = ["train", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    assert main([*argv, "--out", str(files / "model"), *FAST]) == 2  # the annotated fixture's
    _assert_one_line_error(capsys, "--out", "folder exists", "--overwrite")


def test_library_messages_use_the_command_line_words(annotated, files, tmp_path, capsys):
    """Errors raised by the library name the options (``--layer``) and the files ("the
    query's X"), not Python arguments (``layer=``) and ``adata``."""
    scaled = ad.read_h5ad(files / "query.h5ad")
    scaled.X = scaled.X.toarray() - 1.0  # centered values
    scaled.write_h5ad(tmp_path / "scaled.h5ad")
    argv = ["annotate", "--model", str(files / "model"), "--query", str(tmp_path / "scaled.h5ad")]
    assert main([*argv, "--out", str(tmp_path / "never.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "the query's X contains negative values" in err and "pass --layer" in err, err
    assert "layer=" not in err and "adata.X" not in err, err
    # a Python call quoted in a message stays Python; the words around it are the command's
    panel = ad.read_h5ad(files / "query.h5ad")[:, :50].copy()
    panel.write_h5ad(tmp_path / "panel.h5ad")
    argv = ["annotate", "--model", str(files / "model"), "--query", str(tmp_path / "panel.h5ad")]
    assert main([*argv, "--out", str(tmp_path / "never.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "`ta.tl.transanno_annotate(adata, reference=" in err, err
    assert "transanno annotate --reference" in err and "the query's var_names" in err, err


def test_query_scale_given_for_the_query_alone(files, tmp_path, capsys):
    """A log2(CPM + 1) query against a reference of counts: --input-scale alone applies to
    both and is refused for the reference, in the command's words, naming
    --reference-input-scale; with it the query is annotated."""
    query = ad.read_h5ad(files / "query.h5ad")
    X = sp.csr_matrix(query.X, dtype=np.float64)
    X = sp.csr_matrix(sp.diags(1e6 / np.asarray(X.sum(1)).ravel().clip(1)) @ X)
    X.data = np.log2(1.0 + X.data)
    query.X = X.astype(np.float32)
    query.write_h5ad(tmp_path / "log2.h5ad")
    argv = ["annotate", "--reference", str(files / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--query", str(tmp_path / "log2.h5ad"), "--input-scale", "log2(1+x)", *FAST]
    assert main([*argv, "--out", str(tmp_path / "never.h5ad")]) == 2
    _assert_one_line_error(capsys, "--input-scale log2(1+x)", "--reference-input-scale auto")
    assert main([*argv, "--reference-input-scale", "auto", "--out", str(tmp_path / "a.h5ad")]) == 0
    uns = ad.read_h5ad(tmp_path / "a.h5ad").uns["transanno"]
    assert uns["gene_overlap"]["input_scale"] == "log2(1+x)"
    assert uns["gene_overlap"]["reference_input_scale"] == "counts"


def test_annotate_h5mu_query_annotates_its_rna_modality(annotated, files, tmp_path, capsys):
    """A .h5mu query: its RNA modality gets what the same cells get as a .h5ad, the other
    modality is left alone, and the file is written back as .h5mu; the output's suffix must
    match the query's."""
    import mudata

    rna = ad.read_h5ad(files / "query.h5ad")
    protein = ad.AnnData(np.ones((rna.n_obs, 2), dtype=np.float32), obs=rna.obs[[]])
    protein.var_names = ["CD3", "CD19"]
    mudata.MuData({"rna": rna, "prot": protein}).write(tmp_path / "query.h5mu")
    argv = ["annotate", "--model", str(files / "model"), "--query", str(tmp_path / "query.h5mu")]
    assert main([*argv, "--out", str(tmp_path / "out.h5ad")]) == 2
    _assert_one_line_error(capsys, "ends in .h5mu exactly when --query does")
    assert main([*argv, "--out", str(tmp_path / "out.h5mu")]) == 0
    assert "warning" not in capsys.readouterr().err  # mudata's notices stay quiet
    out = mudata.read_h5mu(tmp_path / "out.h5mu")
    plain = ad.read_h5ad(annotated[1])
    pd.testing.assert_series_equal(
        out.mod["rna"].obs["transanno_confidence"], plain.obs["transanno_confidence"]
    )
    assert "transanno_label" not in out.mod["prot"].obs
