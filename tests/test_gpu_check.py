"""benchmarks/gpu_check.py and gpu_smoke.py (issue #18): the CPU dry run, and the one line
without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=SCRIPT.parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_dry_run_writes_every_promised_number(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check (DRY RUN")
    assert res["dry_run"] is True
    assert res["errors"] == []
    for key in (
        "versions",
        "config",
        "targets",
        "prob_tolerance",
        "train",
        "inference",
        "agreement",
        "checks",
        "total_s",
    ):
        assert key in res, key
    for key in ("device_name", "torch", "cuda", "n_gpus"):
        assert key in res["versions"], key
    train = res["train"]["devices_1"]
    assert train["train_cells_per_s"] > 0
    assert train["world_size"] == 1
    assert res["train"]["devices_2"].startswith("skipped")
    for precision in ("fp32", "bf16"):
        inf = res["inference"][precision]
        assert inf["completed"] and inf["n_cells"] == res["config"]["infer_cells"]
        assert inf["cells_per_s"] > 0 and inf["peak_rss_gb"] > 0
        assert inf["peak_gpu_gb"] is None  # no CUDA call on the CPU path
        assert sum(inf["label_counts"].values()) == inf["n_cells"]
    agree = res["agreement"]
    # the dry run compares the CPU path with itself: fp32 must be identical
    assert agree["fp32"]["label_agreement"] == 1.0
    assert agree["fp32"]["max_abs_prob_diff"] == 0.0
    assert 0.0 <= agree["bf16"]["max_abs_prob_diff"] <= res["prob_tolerance"]["bf16"]
    names = {c["check"] for c in res["checks"]}
    assert "inference cells/s, bf16" in names and "training devices=2 / devices=1" in names
    assert res["total_s"] < 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_one_line_and_exit_0(tmp_path):
    proc = _run("--out", str(tmp_path), timeout=60)
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CUDA is not available")
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_smoke_without_cuda_one_line_and_exit_0(tmp_path):
    smoke = SCRIPT.with_name("gpu_smoke.py")
    proc = subprocess.run(
        [sys.executable, str(smoke), "--out", str(tmp_path)],
        cwd=SCRIPT.parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CUDA is not available")
    assert not (tmp_path / "gpu_smoke.json").exists()
