"""Saved-model compatibility and crash-safe saving."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import transanno_sc as ta

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def old_query(lung):
    probs = pd.read_csv(os.path.join(DATA, "model_0.1.0_query_probabilities.csv"), index_col=0)
    return lung[probs.index].copy(), probs


def test_model_saved_by_0_1_0_predicts_identically(old_query):
    """A folder written by release 0.1.0 (commit 2935ad1) loads and gives its probabilities."""
    query, expected = old_query
    model = ta.model.TransAnno.load(os.path.join(DATA, "model_0.1.0"))
    probs = model.predict(query, soft=True)
    assert list(probs.columns) == list(expected.columns)
    np.testing.assert_allclose(probs.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-6)


def test_save_records_the_weights_checksum_and_load_refuses_other_weights(trained, tmp_path):
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    trained.save(str(a))
    config = json.loads((a / "transanno.json").read_text())
    assert len(config["weights_sha256"]) == 64
    # weights from another save (other bytes) next to this config
    trained.module.temperature.add_(0.5)
    try:
        trained.save(str(b))
    finally:
        trained.module.temperature.sub_(0.5)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        ta.model.TransAnno.load(str(a))


def test_overwrite_keeps_other_files_and_leaves_no_temporary_folder(trained, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    trained.save(str(target), overwrite=True)
    trained.save(str(target), overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


_SAVE_LOOP = """
import sys, transanno_sc as ta
model = ta.model.TransAnno.load(sys.argv[1])
print("ready", flush=True)
while True:
    model.module.temperature.add_(1.0)
    model.save(sys.argv[2], overwrite=True)
"""


def test_killed_save_leaves_a_loadable_model(trained, tmp_path, query):
    """kill -9 in the middle of repeated saves: the folder holds one whole model, never a mix."""
    import signal
    import subprocess
    import sys
    import time

    src, target = tmp_path / "src", tmp_path / "target"
    trained.save(str(src))
    trained.save(str(target))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVE_LOOP, str(src), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # many saves, each several writes and two renames
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    loaded = ta.model.TransAnno.load(str(target))  # checksum verified inside
    assert float(loaded.module.temperature) >= float(trained.module.temperature)
    # the temperature leaves the labels as they were: the weights are the trained ones
    np.testing.assert_array_equal(loaded.predict(query[:40]), trained.predict(query[:40]))


def test_folder_saved_before_log1p_renormalization_keeps_its_input_handling(
    trained, query, tmp_path
):
    """A folder without the ``renormalize_log1p`` buffer (saved before it existed) takes log1p
    values as they are, as it did; a folder saved now normalizes them back from their expm1."""
    import json

    import scanpy as sc
    from safetensors.torch import load_file, save_file

    from transanno_sc.model.base._save_load import sha256

    new, old = tmp_path / "new", tmp_path / "old"
    trained.save(str(new))
    trained.save(str(old))
    state = load_file(old / "model.safetensors")
    del state["renormalize_log1p"]
    save_file(state, old / "model.safetensors")
    config = json.loads((old / "transanno.json").read_text())
    config["weights_sha256"] = sha256(str(old / "model.safetensors"))
    (old / "transanno.json").write_text(json.dumps(config))

    logq = query.copy()
    sc.pp.normalize_total(logq)  # scanpy's default total: the median library size
    sc.pp.log1p(logq)
    counts = trained.predict(query, soft=True).to_numpy()
    now, before = (ta.model.TransAnno.load(str(p)) for p in (new, old))
    assert float(now.module.renormalize_log1p) == 1.0
    assert float(before.module.renormalize_log1p) == 0.0
    np.testing.assert_allclose(now.predict(logq, soft=True).to_numpy(), counts, atol=1e-4)
    # the old handling: the values as they are, on another scale than the counts'
    assert np.abs(before.predict(logq, soft=True).to_numpy() - counts).max() > 0.05
    np.testing.assert_allclose(before.predict(query, soft=True).to_numpy(), counts, atol=1e-6)
