"""Multi-device training (issue #5): DDP over gloo on CPU, then prediction in the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import FAST_MODEL, linear_baseline, scores

import transanno_sc as ta
from transanno_sc.train import configure_distributed, n_devices

# Lightning's default DDP launcher starts `sys.argv` again for rank 1: inside pytest that would
# re-run the test session, so the training runs as a script in a subprocess, exactly as a user's
# `python train.py` would. Each rank writes what it ends up with.
SCRIPT = """
import json, os, sys
import numpy as np, scvi, torch
from lightning.pytorch.callbacks import Callback
import transanno_sc as ta

FAST_MODEL = {fast_model!r}


class CountCells(Callback):
    def __init__(self):
        self.cells = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.cells.append(0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.cells[-1] += int(batch["X"].shape[0])


def main(out):
    torch.set_num_threads(1)
    scvi.settings.seed = 0
    lung = ta.datasets.zilionis_mouse_lung()
    is_ref = lung.obs["batch"].isin(["h_1", "t_1"]).to_numpy()
    ref, query = lung[is_ref].copy(), lung[~is_ref].copy()
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref, **FAST_MODEL)
    init = model.module.classifier[-1].weight.detach().clone()
    counter = CountCells()
    model.train(
        max_epochs=3,
        accelerator="cpu",
        devices=2,
        batch_size=32,
        enable_progress_bar=False,
        callbacks=[counter],
    )
    rank = model.trainer.global_rank
    weights = model.module.classifier[-1].weight.detach()
    pred = model.predict(query)
    result = {{
        "rank": rank,
        "pid": os.getpid(),
        "world_size": model.trainer.world_size,
        "strategy": type(model.trainer.strategy).__name__,
        "n_train": int(len(model.train_indices)),
        "cells_per_epoch": counter.cells,
        "pred": [str(p) for p in pred],
        "genes": list(model.var_names_),
        "history": {{k: len(v) for k, v in model.history.items()}},
        "is_trained": bool(model.is_trained_),
        "weights": weights.numpy().ravel().tolist(),
        "changed": bool((weights - init).abs().max() > 0),
    }}
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.mark.timeout(300)
def test_train_ddp_two_cpu_processes(tmp_path, ref, query):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(fast_model=FAST_MODEL)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    r0, r1 = ranks
    assert r0["pid"] != r1["pid"]
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["strategy"] == "DDPStrategy"
    # the caller (rank 0) holds the trained weights, the history and the flag
    assert r0["is_trained"] and r0["changed"]
    assert r0["history"]["train_loss"] == 3
    assert r0["history"]["validation_loss"] == 3
    # DDP keeps the replicas identical
    np.testing.assert_allclose(r0["weights"], r1["weights"], atol=1e-6)
    # each process trained on its own shard: half of the training cells per epoch
    for r in ranks:
        assert all(c == int(np.ceil(r0["n_train"] / 2)) for c in r["cells_per_epoch"]), r
    # the model trained on two processes predicts as well as a logistic regression on its genes
    # (fitted here on the same reference cells; the model's own wide path is one)
    got = scores(query.obs["cell_type"], r0["pred"])
    base = linear_baseline(ref, query, r0["genes"])
    assert got["accuracy"] >= base["accuracy"] - 0.03, (got, base)


def test_configure_distributed_defaults(monkeypatch):
    trainer_kwargs, ds_kwargs = {}, {}
    assert configure_distributed("cpu", 2, trainer_kwargs, ds_kwargs)
    assert trainer_kwargs["strategy"] == "ddp_find_unused_parameters_true"
    assert ds_kwargs == {"distributed_sampler": True}
    assert os.path.isdir(trainer_kwargs["log_save_dir"])
    # notebooks fork instead of starting the script again
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    trainer_kwargs = {}
    configure_distributed("cpu", "2", trainer_kwargs, {})
    assert trainer_kwargs["strategy"] == "ddp_notebook_find_unused_parameters_true"
    monkeypatch.delitem(sys.modules, "ipykernel")
    # multi-node with one device per node is distributed too
    trainer_kwargs = {"num_nodes": 4}
    assert configure_distributed("gpu", 1, trainer_kwargs, {})
    # an explicit strategy is kept; a user's logger is not replaced
    trainer_kwargs = {"strategy": "ddp_spawn", "logger": False}
    assert configure_distributed("cpu", [0, 1], trainer_kwargs, ds_kwargs)
    assert trainer_kwargs == {"strategy": "ddp_spawn", "logger": False}
    # one device: nothing changes
    trainer_kwargs, ds_kwargs = {}, {}
    assert not configure_distributed("cpu", 1, trainer_kwargs, ds_kwargs)
    assert trainer_kwargs == ds_kwargs == {}
    assert n_devices("0,1") == 2
    assert n_devices([0, 1, 2]) == 3


def test_train_bf16_mixed_on_cpu(ref, query):
    """`precision="bf16-mixed"` (autocast) trains and predicts; on CPU too."""
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref, **FAST_MODEL)
    model.train(
        max_epochs=2,
        accelerator="cpu",
        precision="bf16-mixed",
        batch_size=64,
        enable_progress_bar=False,
    )
    probs = model.predict(query, soft=True)
    assert np.isfinite(probs.to_numpy()).all()
    np.testing.assert_allclose(probs.to_numpy().sum(1), 1.0, atol=1e-5)
