"""GPU check (issue #18): training throughput on 1 and 2 GPUs, bf16 streaming inference, GPU/CPU
agreement, in one command with a time bound.

Run from the repository root on a machine with CUDA::

    python benchmarks/gpu_check.py                      # defaults fit in ~8 minutes on an H200
    python benchmarks/gpu_check.py --time-limit 420 --infer-cells 1000000 --train-cells 100000
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check   # CPU, tiny sizes, < 1 min

Without CUDA (and without ``--dry-run``) it prints one line and exits 0.

What it measures (each step in a fresh process unless ``--no-isolate``; ``--dry-run`` runs the
same code on the CPU with tiny sizes, in-process unless ``--isolate``, and skips the 2-device
run unless ``--dry-run-ddp``):

1. **Training** of the default ``TransAnno`` (64 wide, 2 layers, ``max_tokens=128``, default
   ``batch_size=64``) on ``--train-cells`` Zilionis cells tiled with binomial thinning
   (``scale.tile_cells``), ``devices=1`` and, with two GPUs, ``devices=2`` (what a user runs:
   ``model.train(accelerator="gpu", devices=2)``, i.e. Lightning DDP started from a script,
   here the worker subprocess). Epochs are bounded (``--train-epochs`` x
   ``--train-batches`` batches per device; validation off while timing); cells/s are
   training cells over the epochs after the first (warm-up), summed over devices. The whole
   ``train()`` call (gene selection excluded; logistic-regression wide path, confidence
   fitting included) is timed too.
2. **Streaming inference**: ``--infer-cells`` thinned copies written to an .h5ad chunk by chunk
   (``scale.make_file``, in the background while training runs), opened with
   ``backed="r"``, ``predict_confidence`` in slices of 100,000 cells with ``--batch-size``, in
   fp32 and in bf16 (``torch.autocast(device, dtype=torch.bfloat16)`` around the call: the
   model has no precision argument for inference). Cells/s, ``torch.cuda.max_memory_allocated``
   and the process's peak RSS (VmHWM). Each precision stops after ``--infer-seconds`` and
   reports how many cells it did.
3. **Agreement**: the first ``--agree-cells`` cells predicted on the CPU (fp32) and on the GPU
   (fp32 and bf16): fraction of identical labels (target >= 99.5 %) and the largest absolute
   difference of the class probabilities (tolerance :data:`PROB_TOL`).
4. ``gpu_check.json`` and ``gpu_check.md`` in ``--out`` (default ``benchmarks/results/``):
   device name, torch and CUDA versions, every number against the issue's targets.

Data files and the trained model go to ``benchmarks/results_tmp/gpu_check/`` (git-ignored;
``<out>/tmp`` with ``--dry-run``); the 1M-cell file is reused when present.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402  (benchmarks/scale.py: tiling, backed files, peak RSS)

RESULTS = HERE / "results"
WORK = HERE / "results_tmp" / "gpu_check"

#: Issue #18's targets (one H100/H200-class GPU, default model).
TARGETS = {
    "inference_bf16_cells_per_s": 50_000,
    "train_cells_per_s": 5_000,
    "ddp_ratio": 1.7,
    "label_agreement": 0.995,
}
#: Training variants ``--train-variants`` can time besides the default (devices=1).
TRAIN_VARIANTS = {
    "sparse": "datasplitter_kwargs={'load_sparse_tensor': True}: CSR batches, dense on the GPU",
    "pinned": "datasplitter_kwargs={'pin_memory': True}",
    "compile": "model.compile() before train() (first epoch, the warm-up, compiles)",
    "sparse_compile": "both",
}
#: Largest absolute difference of class probabilities accepted between GPU and CPU.
PROB_TOL = {"fp32": 1e-3, "bf16": 5e-2}
#: Tiny model and sizes of ``--dry-run``.
DRY_MODEL = {
    "n_hidden": 16,
    "n_layers": 1,
    "n_heads": 2,
    "n_latent": 8,
    "max_tokens": 32,
    "n_top_genes": 300,
}
DRY_SIZES = {
    "train_cells": 400,
    "train_epochs": 2,
    "train_batches": 3,
    "infer_cells": 600,
    "agree_cells": 200,
    "batch_size": 128,
    "infer_seconds": 30,
}


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cuda_sync(device: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gpu_gb(device: str) -> float | None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return None


def _reset_gpu_peak(device: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _autocast(device: str, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------ training
def train_worker(cfg: dict) -> dict | None:
    """Train the default model on tiled cells with ``cfg["devices"]`` devices; rank 0 returns
    (and writes) the throughput and, with ``cfg["save"]``, saves the model."""
    import scvi
    import torch
    from lightning.pytorch.callbacks import Callback

    import transanno_sc as ta

    torch.set_num_threads(cfg["threads"])
    device = cfg["device"]

    class Clock(Callback):
        """Per-epoch training time (device synchronized) and training batches."""

        def __init__(self):
            self.epochs: list[tuple[float, int]] = []
            self._t = 0.0
            self._n = 0

        def on_train_epoch_start(self, trainer, pl_module):
            _cuda_sync(device)
            self._t, self._n = time.perf_counter(), 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._n += 1

        def on_train_epoch_end(self, trainer, pl_module):
            _cuda_sync(device)
            self.epochs.append((time.perf_counter() - self._t, self._n))

    scvi.settings.seed = 0
    t0 = time.perf_counter()
    adata = scale.tile_cells(ta.datasets.zilionis_mouse_lung(), cfg["train_cells"], seed=0)
    t_data = time.perf_counter() - t0
    ta.model.TransAnno.setup_anndata(adata, labels_key="cell_type")
    t0 = time.perf_counter()
    model = ta.model.TransAnno(adata, **cfg["model_kwargs"])
    t_init = time.perf_counter() - t0
    clock = Clock()
    _reset_gpu_peak(device)
    extra = {"strategy": cfg["strategy"]} if cfg.get("strategy") else {}
    variant = cfg.get("variant") or "default"
    if variant in ("sparse", "sparse_compile"):
        extra["datasplitter_kwargs"] = {"load_sparse_tensor": True}
    if variant == "pinned":
        extra["datasplitter_kwargs"] = {"pin_memory": True}
    if variant in ("compile", "sparse_compile"):
        model.compile()
    t0 = time.perf_counter()
    model.train(
        max_epochs=cfg["train_epochs"],
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=cfg["devices"],
        batch_size=cfg["train_batch_size"],
        limit_train_batches=cfg["train_batches"],
        early_stopping=False,
        check_val_every_n_epoch=cfg["train_epochs"] + 1,  # no validation while timing
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        **extra,
    )
    t_train = time.perf_counter() - t0
    trainer = model.trainer
    if trainer is not None and trainer.global_rank != 0:
        return None
    world = trainer.world_size if trainer is not None else 1
    timed = clock.epochs[1:] or clock.epochs  # first epoch = warm-up (kept if it is the only one)
    seconds = sum(s for s, _ in timed)
    cells = sum(n for _, n in timed) * cfg["train_batch_size"] * world
    res = {
        "variant": variant,
        "devices": cfg["devices"],
        "world_size": world,
        "strategy": str(getattr(trainer, "strategy", None).__class__.__name__),
        "n_cells": cfg["train_cells"],
        "batch_size_per_device": cfg["train_batch_size"],
        "epochs": len(clock.epochs),
        "batches_per_epoch_per_device": [n for _, n in clock.epochs],
        "epoch_seconds": [s for s, _ in clock.epochs],
        "timed_epochs": len(timed),
        "train_cells_per_s": cells / max(seconds, 1e-9),
        "train_call_s": t_train,
        "model_init_s": t_init,
        "data_s": t_data,
        "peak_gpu_gb": _peak_gpu_gb(device),
        "peak_rss_gb": scale._peak_rss_gb(),
    }
    if cfg.get("save"):
        model.save(cfg["save"], overwrite=True)
    if cfg.get("json_out"):
        Path(cfg["json_out"]).write_text(json.dumps(res, indent=1))
    return res


# ----------------------------------------------------------------------------------- inference
def infer_worker(cfg: dict) -> dict:
    """Backed ``predict_confidence`` over the file in slices until done or out of time."""
    import anndata as ad
    import torch

    import transanno_sc as ta

    torch.set_num_threads(cfg["threads"])
    device, precision, bs = cfg["device"], cfg["precision"], cfg["batch_size"]
    model = ta.model.TransAnno.load(
        cfg["model_dir"], accelerator="gpu" if device == "cuda" else "cpu"
    )
    adata = ad.read_h5ad(cfg["path"], backed="r")
    n_total = adata.n_obs
    with _autocast(device, precision):  # warm-up: kernels, allocator, page cache of the start
        model.predict_confidence(adata, indices=np.arange(min(4096, n_total)), batch_size=bs)
    _cuda_sync(device)
    _reset_gpu_peak(device)
    rss_ready = scale._peak_rss_gb()
    deadline = time.perf_counter() + cfg["infer_seconds"]
    done, slices, labels = 0, [], {}
    t0 = time.perf_counter()
    for start in range(0, n_total, scale.PROGRESS_SLICE):
        stop = min(start + scale.PROGRESS_SLICE, n_total)
        ts = time.perf_counter()
        with _autocast(device, precision):
            conf = model.predict_confidence(adata, indices=np.arange(start, stop), batch_size=bs)
        _cuda_sync(device)
        assert len(conf) == stop - start
        done = stop
        for k, v in conf["label"].value_counts().items():
            labels[str(k)] = labels.get(str(k), 0) + int(v)
        slices.append({"cells": stop, "cells_per_s": (stop - start) / (time.perf_counter() - ts)})
        _log(f"infer {precision}: {stop:,} cells, {slices[-1]['cells_per_s']:.0f} cells/s")
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - t0
    return {
        "precision": precision,
        "n_cells_file": n_total,
        "n_cells": done,
        "completed": done == n_total,
        "seconds": seconds,
        "cells_per_s": done / max(seconds, 1e-9),
        "batch_size": bs,
        "peak_gpu_gb": _peak_gpu_gb(device),
        "peak_rss_gb": scale._peak_rss_gb(),
        "rss_before_predict_gb": rss_ready,
        "label_counts": labels,
        "slices": slices,
    }


# ----------------------------------------------------------------------------------- agreement
def agree_worker(cfg: dict) -> dict:
    """Probabilities of the first cells on the CPU (fp32) and on the device (fp32, bf16)."""
    import anndata as ad
    import torch

    import transanno_sc as ta

    torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    backed = ad.read_h5ad(cfg["path"], backed="r")
    adata = backed[: min(cfg["agree_cells"], backed.n_obs)].to_memory()
    cpu = ta.model.TransAnno.load(cfg["model_dir"], accelerator="cpu")
    ref = cpu.predict(adata, soft=True, batch_size=cfg["batch_size"]).to_numpy()
    dev = ta.model.TransAnno.load(
        cfg["model_dir"], accelerator="gpu" if device == "cuda" else "cpu"
    )
    res = {"n_cells": adata.n_obs, "reference": "cpu fp32", "device": device}
    for precision in ("fp32", "bf16"):
        with _autocast(device, precision):
            p = dev.predict(adata, soft=True, batch_size=cfg["batch_size"]).to_numpy()
        res[precision] = {
            "label_agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(p - ref).max()),
            "tolerance": PROB_TOL[precision],
        }
    return res


def make_file_worker(cfg: dict) -> dict:
    scale.WORK = Path(cfg["work"])
    t0 = time.perf_counter()
    path = scale.make_file(cfg["infer_cells"])
    return {"path": str(path), "seconds": time.perf_counter() - t0}


WORKERS = {
    "train": train_worker,
    "infer": infer_worker,
    "agree": agree_worker,
    "make_file": make_file_worker,
}


# ------------------------------------------------------------------------------------- running
class Runner:
    """Runs workers in a subprocess (``isolate``) or in this process, within a deadline."""

    def __init__(self, isolate: bool, deadline: float, work: Path):
        self.isolate, self.deadline, self.work = isolate, deadline, work

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def command(self, name: str, cfg: dict) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "_worker", name, json.dumps(cfg)]

    def start(self, name: str, cfg: dict) -> subprocess.Popen:
        out = self.work / f"{name}_{cfg.get('tag', '')}.json"
        cfg = {**cfg, "json_out": str(out)}
        return subprocess.Popen(self.command(name, cfg), cwd=HERE.parent)

    def finish(self, proc: subprocess.Popen, name: str, cfg: dict, timeout: float) -> dict:
        out = self.work / f"{name}_{cfg.get('tag', '')}.json"
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            msg = f"{name} ({cfg.get('tag', '')}) ran out of time ({timeout:.0f} s)"
            raise TimeoutError(msg) from None
        if rc:
            msg = f"{name} ({cfg.get('tag', '')}) failed with exit code {rc}"
            raise RuntimeError(msg)
        return json.loads(out.read_text())

    def run(self, name: str, cfg: dict, timeout: float) -> dict:
        timeout = min(timeout, self.remaining())
        if timeout < 5:
            msg = f"no time left for {name} ({cfg.get('tag', '')})"
            raise TimeoutError(msg)
        if not self.isolate and not cfg.get("force_subprocess"):
            return WORKERS[name](cfg)
        out = self.work / f"{name}_{cfg.get('tag', '')}.json"
        out.unlink(missing_ok=True)
        return self.finish(self.start(name, cfg), name, cfg, timeout)


def _versions() -> dict:
    import anndata
    import lightning
    import scvi
    import torch

    import transanno_sc as ta

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "n_gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "lightning": lightning.__version__,
        "scvi_tools": scvi.__version__,
        "anndata": anndata.__version__,
        "transanno_sc": getattr(ta, "__version__", "?"),
        "transanno_sc_path": str(Path(ta.__file__).parent),
        "git_commit": commit,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
    }


def _checks(res: dict) -> list[dict]:
    """Every measured number against its target (``passed`` None when not measured)."""
    rows = []

    def add(name, value, target, op, unit=""):
        passed = None if value is None else (value >= target if op == ">=" else value <= target)
        rows.append(
            {"check": name, "value": value, "target": f"{op} {target:g}{unit}", "passed": passed}
        )

    tr = res.get("train", {})
    inf = res.get("inference", {})
    ag = res.get("agreement", {})

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or d.get(k) is None:
                return None
            d = d[k]
        return d

    add(
        "training cells/s, devices=1",
        get(tr, "devices_1", "train_cells_per_s"),
        TARGETS["train_cells_per_s"],
        ">=",
    )
    add("training devices=2 / devices=1", get(tr, "ratio"), TARGETS["ddp_ratio"], ">=", "x")
    add(
        "inference cells/s, bf16",
        get(inf, "bf16", "cells_per_s"),
        TARGETS["inference_bf16_cells_per_s"],
        ">=",
    )
    add("inference cells/s, fp32 (no target)", get(inf, "fp32", "cells_per_s"), 0, ">=")
    for p in ("fp32", "bf16"):
        add(
            f"labels identical to CPU, {p}",
            get(ag, p, "label_agreement"),
            TARGETS["label_agreement"],
            ">=",
        )
        add(f"max |prob - CPU prob|, {p}", get(ag, p, "max_abs_prob_diff"), PROB_TOL[p], "<=")
    return rows


def _fmt(v) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def write_report(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    v = res["versions"]
    lines = [
        f"# GPU check{' (DRY RUN, CPU, tiny sizes: not GPU numbers)' if res['dry_run'] else ''}",
        "",
        f"Device: **{v['device_name']}** ({v['n_gpus']} GPU(s)), torch {v['torch']}, "
        f"CUDA {v['cuda']}, cuDNN {v['cudnn']}, Lightning {v['lightning']}, "
        f"scvi-tools {v['scvi_tools']}, commit {v['git_commit']}, {v['host_cpus']} host CPUs. "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(res['started']))}, "
        f"{res['total_s']:.0f} s in all.",
        "",
        "| check | value | target | passed |",
        "| --- | --- | --- | --- |",
    ]
    for c in res["checks"]:
        passed = {True: "yes", False: "**no**", None: "-"}[c["passed"]]
        lines.append(f"| {c['check']} | {_fmt(c['value'])} | {c['target']} | {passed} |")
    lines += ["", "| step | details |", "| --- | --- |"]
    for d in ["devices_1", "devices_2"] + [k for k in res.get("train", {}) if "variant" in k]:
        t = res.get("train", {}).get(d)
        if isinstance(t, dict) and "train_cells_per_s" in t:
            gpu = f"{t['peak_gpu_gb']:.2f} GB" if t["peak_gpu_gb"] is not None else "-"
            lines.append(
                f"| train {d.replace('_', '=')} | {t['n_cells']:,} cells, {t['timed_epochs']} "
                f"timed epochs of {t['batches_per_epoch_per_device'][-1]} batches x "
                f"{t['batch_size_per_device']} x {t['world_size']} device(s): "
                f"{t['train_cells_per_s']:,.0f} cells/s; whole train() {t['train_call_s']:.1f} s; "
                f"peak GPU {gpu}, peak RSS {t['peak_rss_gb']:.2f} GB |"
            )
        elif t is not None:
            lines.append(f"| train {d.replace('_', '=')} | {t} |")
    for p in ("fp32", "bf16"):
        r = res.get("inference", {}).get(p)
        if isinstance(r, dict) and "cells_per_s" in r:
            gpu = f"{r['peak_gpu_gb']:.2f} GB" if r["peak_gpu_gb"] is not None else "-"
            lines.append(
                f"| backed inference {p} | {r['n_cells']:,} of {r['n_cells_file']:,} cells "
                f"({'all' if r['completed'] else 'stopped at the time limit'}), batch "
                f"{r['batch_size']}: {r['cells_per_s']:,.0f} cells/s; peak GPU {gpu}, "
                f"peak RSS {r['peak_rss_gb']:.2f} GB |"
            )
        elif r is not None:
            lines.append(f"| backed inference {p} | {r} |")
    ag = res.get("agreement")
    if isinstance(ag, dict) and "fp32" in ag:
        lines.append(
            f"| agreement | {ag['n_cells']:,} cells, {ag['device']} vs CPU fp32: labels "
            f"{ag['fp32']['label_agreement']:.4f} (fp32), {ag['bf16']['label_agreement']:.4f} "
            f"(bf16); max prob diff {ag['fp32']['max_abs_prob_diff']:.2e} (fp32, tol "
            f"{PROB_TOL['fp32']:g}), {ag['bf16']['max_abs_prob_diff']:.2e} (bf16, tol "
            f"{PROB_TOL['bf16']:g}) |"
        )
    elif ag is not None:
        lines.append(f"| agreement | {ag} |")
    if res["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in res["errors"]]
    lines += ["", f"Command: `{res['command']}`", ""]
    (out / "gpu_check.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (the test suite's run)")
    p.add_argument("--dry-run-ddp", action="store_true", help="dry run: also devices=2 on CPU")
    p.add_argument("--out", type=Path, default=None, help="folder of the JSON and markdown")
    p.add_argument("--time-limit", type=float, default=None, help="seconds for everything")
    p.add_argument("--train-cells", type=int, default=None)
    p.add_argument("--train-epochs", type=int, default=None)
    p.add_argument("--train-batches", type=int, default=None, help="per epoch and device")
    p.add_argument("--train-batch-size", type=int, default=64)
    p.add_argument("--infer-cells", type=int, default=None)
    p.add_argument("--infer-seconds", type=float, default=None, help="per precision")
    p.add_argument("--agree-cells", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="inference batch size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-isolate", action="store_true", help="run steps in this process")
    p.add_argument("--isolate", action="store_true", help="dry run: steps in subprocesses too")
    p.add_argument("--skip", nargs="*", default=[], choices=["ddp", "infer", "agree"])
    p.add_argument(
        "--train-variants",
        nargs="*",
        default=[],
        choices=list(TRAIN_VARIANTS),
        help="extra devices=1 training runs, timed after the other steps",
    )
    a = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.dry_run:
        print(
            "CUDA is not available: no GPU check run (use --dry-run to exercise the script on CPU)."
        )
        return 0
    started = time.time()
    t_start = time.perf_counter()
    dry = a.dry_run
    defaults = (
        DRY_SIZES
        if dry
        else {
            "train_cells": 100_000,
            "train_epochs": 3,
            "train_batches": 300,
            "infer_cells": 1_000_000,
            "agree_cells": 5_000,
            "batch_size": 1024,
            "infer_seconds": 75,
        }
    )
    size = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in defaults.items()}
    time_limit = a.time_limit or (60 if dry else 480)
    out = a.out or RESULTS
    work = (out / "tmp") if dry else WORK
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda and not dry else "cpu"
    threads = a.threads or (1 if dry else max(1, min(8, os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    n_gpus = torch.cuda.device_count() if device == "cuda" else 0
    runner = Runner(
        isolate=not a.no_isolate and (a.isolate or not dry),
        deadline=t_start + time_limit,
        work=work,
    )
    base = {"device": device, "threads": threads, "batch_size": size["batch_size"]}
    model_kwargs = DRY_MODEL if dry else {}
    model_dir = str(work / "model")
    res: dict = {
        "dry_run": dry,
        "started": started,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            **size,
            "time_limit_s": time_limit,
            "threads": threads,
            "train_batch_size": a.train_batch_size,
            "model_kwargs": model_kwargs,
            "isolate": runner.isolate,
        },
        "targets": TARGETS,
        "prob_tolerance": PROB_TOL,
        "versions": _versions(),
        "train": {},
        "inference": {},
        "errors": [],
    }
    _log(f"device {res['versions']['device_name']}, {n_gpus} GPU(s), limit {time_limit:.0f} s")

    def attempt(what: str, fn):
        try:
            return fn()
        except Exception as e:  # report, go on with the other steps
            msg = f"{what}: {type(e).__name__}: {e}"
            _log(msg)
            res["errors"].append(msg)
            if not isinstance(e, TimeoutError | RuntimeError):
                traceback.print_exc()
            return {"error": msg}

    # the big file is written in the background while training runs (isolated runs only)
    file_cfg = {"work": str(work), "infer_cells": size["infer_cells"], "tag": "file"}
    file_proc = None
    if runner.isolate and "infer" not in a.skip:
        file_proc = runner.start("make_file", file_cfg)
    train_cfg = {
        **base,
        "train_cells": size["train_cells"],
        "train_epochs": size["train_epochs"],
        "train_batches": size["train_batches"],
        "train_batch_size": a.train_batch_size,
        "model_kwargs": model_kwargs,
    }
    # (1) training: devices=1 (saves the model the other steps use), then devices=2
    res["train"]["devices_1"] = attempt(
        "train devices=1",
        lambda: runner.run(
            "train",
            {**train_cfg, "devices": 1, "save": model_dir, "tag": "d1"},
            timeout=0.35 * time_limit,
        ),
    )
    two = n_gpus >= 2 or (dry and a.dry_run_ddp)
    if "ddp" in a.skip or not two:
        why = (
            "skipped (--skip ddp)"
            if "ddp" in a.skip
            else (
                "skipped: dry run (--dry-run-ddp runs it on 2 CPU processes)"
                if dry
                else f"skipped: {n_gpus} GPU(s)"
            )
        )
        res["train"]["devices_2"] = why
    else:
        # Lightning DDP from a script: the worker subprocess is started again for rank 1
        res["train"]["devices_2"] = attempt(
            "train devices=2",
            lambda: runner.run(
                "train",
                {**train_cfg, "devices": 2, "tag": "d2", "force_subprocess": True},
                timeout=0.3 * time_limit,
            ),
        )
    d1, d2 = res["train"]["devices_1"], res["train"]["devices_2"]
    if isinstance(d2, dict) and "train_cells_per_s" in d2 and "train_cells_per_s" in d1:
        res["train"]["ratio"] = d2["train_cells_per_s"] / d1["train_cells_per_s"]

    have_model = (Path(model_dir) / "transanno.json").exists() or any(
        Path(model_dir).glob("*.json")
    )
    if not have_model:
        res["errors"].append("no trained model: inference and agreement skipped")
    else:
        if "infer" in a.skip:
            path = None
        elif file_proc is not None:
            path = attempt(
                "write backed file",
                lambda: runner.finish(
                    file_proc, "make_file", file_cfg, timeout=runner.remaining() - 10
                )["path"],
            )
        else:
            path = attempt("write backed file", lambda: make_file_worker(file_cfg)["path"])
        if isinstance(path, str):
            # (3) agreement, then (2) inference in bf16 (the target) and fp32
            if "agree" not in a.skip:
                res["agreement"] = attempt(
                    "agreement",
                    lambda: runner.run(
                        "agree",
                        {
                            **base,
                            "path": path,
                            "model_dir": model_dir,
                            "agree_cells": size["agree_cells"],
                            "tag": "agree",
                        },
                        timeout=120,
                    ),
                )
            for precision in ("bf16", "fp32"):
                budget = min(size["infer_seconds"], max(runner.remaining() - 60, 5))
                res["inference"][precision] = attempt(
                    f"inference {precision}",
                    lambda precision=precision, budget=budget: runner.run(
                        "infer",
                        {
                            **base,
                            "path": path,
                            "model_dir": model_dir,
                            "precision": precision,
                            "infer_seconds": budget,
                            "tag": precision,
                        },
                        timeout=budget + 60,
                    ),
                )
    if file_proc is not None and file_proc.poll() is None:
        file_proc.kill()
    for variant in a.train_variants:
        res["train"][f"variant_{variant}"] = attempt(
            f"train variant {variant}",
            lambda variant=variant: runner.run(
                "train",
                {**train_cfg, "devices": 1, "variant": variant, "tag": variant},
                timeout=min(0.35 * time_limit, runner.remaining() - 15),
            ),
        )
    res["checks"] = _checks(res)
    res["total_s"] = time.perf_counter() - t_start
    write_report(res, out)
    for c in res["checks"]:
        _log(f"{c['check']}: {_fmt(c['value'])} (target {c['target']}, passed {c['passed']})")
    _log(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({res['total_s']:.0f} s)")
    return 0


def _worker_main(name: str, cfg_json: str) -> int:
    cfg = json.loads(cfg_json)
    res = WORKERS[name](cfg)
    if res is not None and cfg.get("json_out") and name != "train":
        Path(cfg["json_out"]).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
