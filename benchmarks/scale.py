"""Scale benchmark (issue #5): streaming inference, FLOP utilization, padding, DDP training.

Run from the repository root (heavy: prefix with ``nice -n 10``)::

    python benchmarks/scale.py all --sizes 10000 100000 1000000
    python benchmarks/scale.py infer-sizes --sizes 10000 100000   # throughput + peak RSS
    python benchmarks/scale.py mfu                                # FLOP utilization, padding
    python benchmarks/scale.py compile                            # model.compile() vs eager
    python benchmarks/scale.py train-ddp --repeats 3              # devices=1 vs devices=2
    python benchmarks/scale.py e2e --sizes 1000 10000 50000       # train + annotate, per size
    python benchmarks/scale.py e2e --sizes 100000 --train-kwargs '{"max_epochs": 10}'

Data: the bundled Zilionis mouse-lung cells (raw counts, 24,248 genes, ~840 expressed genes and
~1,850 UMIs per cell) tiled to the requested size, each copy binomially thinned (keep 70-100% of
the UMIs) so that cells differ, written chunk by chunk into ``benchmarks/results_tmp/scale/``
(git-ignored; deleted with ``--cleanup``). Inference reads the file with ``backed="r"`` in a
fresh process per size and reports cells/s of ``model.predict`` and the process's peak RSS.
The model is ``TransAnno`` with 2,000 genes, 2 layers x 128, 4 heads, ``max_tokens=256``
(:data:`ARCH`: the defaults when benchmarks/README.md's scale numbers were measured; the
defaults are now 64 wide with ``max_tokens=128``, about 3x fewer FLOPs per token), briefly
trained on the Zilionis cells (weights do not affect speed).

``e2e`` is what a new user runs: ``tl.transanno_annotate(query, reference=ref,
labels_key="cell_type")`` with the package defaults (``--train-kwargs`` adds train arguments),
the reference being the 287 healthy Zilionis cells and the query the 513 tumour cells, each
tiled in memory to the size (:func:`tile_cells`, binomial thinning; reference = query size).
Each size runs in a fresh process (``SCALE_THREADS`` torch threads, default 2), which reports
the wall time of the call (and of the tiling apart), the Transformer's epochs and presented
cells, the query's macro-F1 and its own peak RSS (VmHWM, and ``getrusage`` ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "results_tmp" / "scale"
MODEL_DIR = WORK / "model"
#: Architecture of the measured model (the package defaults before the 64-wide ones).
ARCH = {"n_hidden": 128, "max_tokens": 256}
WRITE_CHUNK = 50_000
#: Cells per progress report of the inference worker.
PROGRESS_SLICE = 100_000


def _log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- data
def _lung():
    import transanno_sc as ta

    return ta.datasets.zilionis_mouse_lung()


def make_file(n_cells: int, seed: int = 0) -> Path:
    """Write ``n_cells`` thinned copies of the Zilionis cells to an .h5ad, chunk by chunk."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    path = WORK / f"cells_{n_cells}.h5ad"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    lung = _lung()
    base = sp.csr_matrix(lung.X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")

    def chunk(n: int) -> sp.csr_matrix:
        rows = rng.integers(0, base.shape[0], n)
        x = base[rows]
        keep = rng.uniform(0.7, 1.0, n)
        x.data = rng.binomial(x.data.astype(np.int64), np.repeat(keep, np.diff(x.indptr)))
        x.data = x.data.astype(np.float32)
        x.eliminate_zeros()
        return x

    first = min(WRITE_CHUNK, n_cells)
    ad.AnnData(X=chunk(first), var=pd.DataFrame(index=lung.var_names)).write_h5ad(tmp)
    written = first
    with h5py.File(tmp, "r+") as f:
        X = sparse_dataset(f["X"])
        while written < n_cells:
            n = min(WRITE_CHUNK, n_cells - written)
            X.append(chunk(n))
            written += n
        del f["obs"]
        obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)], dtype=str))
        write_elem(f, "obs", obs)
    tmp.rename(path)
    _log(f"wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB")
    return path


def tile_cells(adata, n_cells: int, seed: int = 0, keep: tuple[float, float] = (0.7, 1.0)):
    """``n_cells`` in-memory copies of ``adata``'s cells (counts), with their ``obs``.

    Every cell is used equally often (``n_cells // n_obs`` or one more times, in random order;
    ``n_cells < n_obs`` is a subsample without replacement) and each copy is binomially
    thinned as in :func:`make_file` (keep a uniform 70-100 % of its UMIs), so that copies
    differ. ``var`` is kept; ``obs_names`` become ``t0, t1, ...``.
    """
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    base = sp.csr_matrix(adata.X, dtype=np.float32)
    rows = np.concatenate(
        [rng.permutation(adata.n_obs) for _ in range(-(-n_cells // adata.n_obs))]
    )[:n_cells]
    blocks = []
    for start in range(0, n_cells, WRITE_CHUNK):
        part = rows[start : start + WRITE_CHUNK]
        x = base[part]
        frac = rng.uniform(keep[0], keep[1], part.size)
        x.data = rng.binomial(x.data.astype(np.int64), np.repeat(frac, np.diff(x.indptr)))
        x.data = x.data.astype(np.float32)
        x.eliminate_zeros()
        blocks.append(x)
    obs = adata.obs.iloc[rows].copy()
    obs.index = [f"t{i}" for i in range(n_cells)]
    return ad.AnnData(sp.vstack(blocks, format="csr"), obs=obs, var=adata.var.copy())


def train_model() -> Path:
    """The default TransAnno model, briefly trained (speed does not depend on the weights)."""
    if (MODEL_DIR / "transanno.json").exists():
        return MODEL_DIR
    import scvi

    import transanno_sc as ta

    scvi.settings.seed = 0
    lung = _lung()
    ta.model.TransAnno.setup_anndata(lung, labels_key="cell_type")
    model = ta.model.TransAnno(lung, **ARCH)
    model.train(max_epochs=2, enable_progress_bar=False, accelerator="cpu")
    model.save(str(MODEL_DIR), overwrite=True)
    return MODEL_DIR


# ----------------------------------------------------------------------------------- inference
def infer_worker(path: str, batch_size: int) -> dict:
    """In a fresh process: backed prediction of the whole file; throughput and peak RSS."""
    import anndata as ad
    import torch

    import transanno_sc as ta

    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    rss_start = _peak_rss_gb()
    model = ta.model.TransAnno.load(str(MODEL_DIR), accelerator="cpu")
    adata = ad.read_h5ad(path, backed="r")
    # warm-up on the first cells (allocator, kernels)
    model.predict(adata, indices=np.arange(min(2048, adata.n_obs)), batch_size=batch_size)
    rss_ready = _peak_rss_gb()
    # slices of PROGRESS_SLICE cells (each streamed as predict always does), so that a long
    # run reports throughput and memory as it goes
    n_done, slices = 0, []
    t0 = time.perf_counter()
    for start in range(0, adata.n_obs, PROGRESS_SLICE):
        stop = min(start + PROGRESS_SLICE, adata.n_obs)
        ts = time.perf_counter()
        labels = model.predict(adata, indices=np.arange(start, stop), batch_size=batch_size)
        assert len(labels) == stop - start
        n_done = stop
        slices.append(
            {
                "cells": stop,
                "cells_per_s": (stop - start) / (time.perf_counter() - ts),
                "peak_rss_gb": _peak_rss_gb(),
            }
        )
        print(f"[infer] {json.dumps(slices[-1])}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    assert n_done == adata.n_obs
    return {
        "n_cells": adata.n_obs,
        "seconds": elapsed,
        "cells_per_s": adata.n_obs / elapsed,
        "peak_rss_gb": _peak_rss_gb(),
        "rss_after_imports_gb": rss_start,
        "rss_before_predict_gb": rss_ready,
        "threads": torch.get_num_threads(),
        "slices": slices,
    }


def _peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM; ``ru_maxrss`` survives ``exec`` and would
    report the parent's peak when that was higher)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def infer_sizes(sizes: list[int], batch_size: int, cleanup: bool) -> list[dict]:
    train_model()
    results = []
    for n in sizes:
        path = make_file(n)
        cmd = [sys.executable, __file__, "_infer", str(path), "--batch-size", str(batch_size)]
        # the worker's progress lines (stderr) go straight to this process's stderr
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"inference worker failed with exit code {proc.returncode}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        _log(
            f"{n:>9,} cells: {res['cells_per_s']:7.0f} cells/s ({res['seconds']:.0f} s), "
            f"peak RSS {res['peak_rss_gb']:.2f} GB"
        )
        results.append(res)
        if cleanup:
            path.unlink()
    return results


# -------------------------------------------------------------------------- FLOPs and padding
def _layer_flops(lengths_padded: np.ndarray, d: int, ff: int, n_layers: int) -> float:
    """Multiply-add FLOPs (x2) of BERT layers on sequences of the given (padded) lengths."""
    L = lengths_padded.astype(np.float64)
    per_layer = 8 * L * d * d + 4 * L * L * d + 4 * L * d * ff
    return float(n_layers * per_layer.sum())


def _model_and_data(n_cells: int):
    """The benchmark model (eval mode, CPU) and ``n_cells`` backed cells matched to it."""
    import anndata as ad
    import torch

    import transanno_sc as ta

    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    train_model()
    model = ta.model.TransAnno.load(str(MODEL_DIR), accelerator="cpu")
    model.module.eval()
    adata = ad.read_h5ad(make_file(n_cells), backed="r")
    return model, adata, model._match(adata, "adata")


def _batches(model, adata, match, batch_size: int, bucket: bool) -> list:
    """Forward batches ``(positions, x, library)`` as prediction makes them."""
    from transanno_sc.data import iter_vocab_batches

    max_tokens = model.module.config.max_tokens if bucket else None
    return list(
        iter_vocab_batches(
            adata.X, match.source, match.target, match.n_vocab, batch_size, max_tokens=max_tokens
        )
    )


def _tokens(model, sample) -> list:
    """Tokenized forward batches."""
    import torch

    from transanno_sc._constants import TARGET_SUM
    from transanno_sc.data import normalize_log1p, tokenize

    cfg = model.module.config
    out = []
    for _, x, lib in sample:
        xl = normalize_log1p(torch.from_numpy(x), torch.from_numpy(lib), TARGET_SUM)
        out.append(tokenize(xl, cfg.max_tokens, cfg.n_bins, cfg.value_encoding))
    return out


def mfu(n_cells: int = 10_000, batch_size: int = 128, repeats: int = 5) -> dict:
    """Encoder FLOP utilization vs dense matmul, and padding with/without bucketing."""
    import torch

    model, adata, match = _model_and_data(n_cells)
    module = model.module
    cfg = module.config

    def batches(bucket: bool):
        return _batches(model, adata, match, batch_size, bucket)

    stats = {}
    for name, bucket in (("unbucketed", False), ("bucketed", True)):
        real = padded = att_real = att_all = 0
        lengths_padded = []
        for _, x, _ in batches(bucket):
            n = np.minimum((x > 0).sum(1), cfg.max_tokens) + 1  # + [CLS]
            L = n.max()
            real += n.sum()
            padded += L * n.size
            att_real += (n.astype(np.float64) ** 2).sum()
            att_all += float(L) ** 2 * n.size
            lengths_padded.append(np.full(n.size, L))
        stats[name] = {
            "token_padding_fraction": 1 - real / padded,
            "attention_padding_fraction": 1 - att_real / att_all,
            "mean_padded_length": padded / adata.n_obs,
        }
    stats["mean_tokens_per_cell"] = real / adata.n_obs

    # a sample of bucketed batches spanning all lengths, tokenized once
    def tokens(sample):
        return _tokens(model, sample)

    sample = batches(True)[:16]  # the first chunk (2,048 cells), bucketed
    toks = tokens(sample)
    toks_unbucketed = tokens(batches(False)[:16])  # the same cells in file order
    d, ff, nl = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    executed = sum(_layer_flops(np.full(t[0].shape[0], t[0].shape[1]), d, ff, nl) for t in toks)
    useful = sum(_layer_flops(t.attention_mask.sum(1).numpy(), d, ff, nl) for t in toks)
    cells = sum(t[0].shape[0] for t in toks)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    mm_times, enc_times, inf_times, unb_times = [], [], [], []
    with torch.inference_mode():
        for t in toks[:2]:
            module.backbone(*t)
        for _ in range(repeats):  # interleaved, so load from other processes hits both alike
            t0 = time.perf_counter()
            for _ in range(10):
                torch.mm(a, b)
            mm_times.append((time.perf_counter() - t0) / 10)
            t0 = time.perf_counter()
            for t in toks:
                module.backbone(*t)
            enc_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _, x, lib in sample:
                module.inference(torch.from_numpy(x), torch.from_numpy(lib))
            inf_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for t in toks_unbucketed:
                module.backbone(*t)
            unb_times.append(time.perf_counter() - t0)
    matmul = 2 * 1024**3 / statistics.median(mm_times)
    enc = statistics.median(enc_times)
    inf = statistics.median(inf_times)
    stats.update(
        {
            "matmul_gflops": matmul / 1e9,
            "encoder_executed_gflops": executed / enc / 1e9,
            "encoder_useful_gflops": useful / enc / 1e9,
            "mfu_executed": executed / enc / matmul,
            "mfu_useful": useful / enc / matmul,
            "mfu_whole_inference_useful": useful / inf / matmul,
            "encoder_share_of_inference": enc / inf,
            "encoder_cells_per_s": cells / enc,
            "encoder_speedup_bucketing": statistics.median(unb_times) / enc,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
        }
    )
    _log(json.dumps(stats, indent=1, default=float))
    return stats


def compile_speedup(n_cells: int = 10_000, batch_size: int = 128, repeats: int = 5) -> dict:
    """Encoder time of ``model.compile()`` against eager on the same bucketed batches."""
    import torch

    import transanno_sc as ta

    model, adata, match = _model_and_data(n_cells)
    module = model.module
    # the first chunk (2,048 cells), bucketed: 16 different token lengths
    toks = _tokens(model, _batches(model, adata, match, batch_size, bucket=True)[:16])
    eager = ta.model.TransAnno.load(str(MODEL_DIR), accelerator="cpu").module.eval().backbone
    model.compile()
    compiled = module.backbone
    with torch.inference_mode():
        t0 = time.perf_counter()
        for t in toks:
            compiled(*t)
        first = time.perf_counter() - t0
        diff = max(float((compiled(*t) - eager(*t)).abs().max()) for t in toks)
        te, tc = [], []
        for _ in range(repeats):  # interleaved
            t0 = time.perf_counter()
            for t in toks:
                eager(*t)
            te.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for t in toks:
                compiled(*t)
            tc.append(time.perf_counter() - t0)
    res = {
        "compile_and_first_pass_s": first,
        "eager_s": statistics.median(te),
        "compiled_s": statistics.median(tc),
        "speedup": statistics.median(te) / statistics.median(tc),
        "max_abs_difference": diff,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    _log(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------------------------- training
TRAIN_SCRIPT = r"""
import json, os, sys, time
import numpy as np, scvi, torch
import anndata as ad, scipy.sparse as sp
from lightning.pytorch.callbacks import Callback
import transanno_sc as ta


class Clock(Callback):
    def __init__(self):
        self.t = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.t.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.t.append(time.perf_counter())


def main(devices, out):
    torch.set_num_threads(max(1, 2 // devices))
    scvi.settings.seed = 0
    lung = ta.datasets.zilionis_mouse_lung()
    big = ad.AnnData(sp.vstack([lung.X] * 2, format="csr"), obs=lung.obs.iloc[np.tile(np.arange(lung.n_obs), 2)].reset_index(drop=True), var=lung.var)
    big.obs_names = [f"c{i}" for i in range(big.n_obs)]
    ta.model.TransAnno.setup_anndata(big, labels_key="cell_type")
    model = ta.model.TransAnno(big, **ARCH)
    clock = Clock()
    model.train(max_epochs=3, accelerator="cpu", devices=devices, batch_size=64, train_size=0.95,
                enable_progress_bar=False, early_stopping=False, callbacks=[clock],
                check_val_every_n_epoch=100)
    if model.trainer.global_rank == 0:
        seconds = clock.t[-1] - clock.t[1]  # epochs 2-3: first epoch is warm-up
        n = len(model.train_indices) * 2
        with open(out, "w") as f:
            json.dump({"devices": devices, "cells_per_s": n / seconds, "seconds": seconds}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
"""


def train_ddp(repeats: int) -> dict:
    """Training throughput (cells/s) with devices=1 and devices=2 on the CPU, alternated."""
    WORK.mkdir(parents=True, exist_ok=True)
    script = WORK / "train_ddp.py"
    script.write_text(TRAIN_SCRIPT)
    runs = {1: [], 2: []}
    for r in range(repeats):
        for devices in (1, 2):
            out = WORK / f"train_{devices}_{r}.json"
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            proc = subprocess.run(
                [sys.executable, str(script), str(devices), str(out)],
                cwd=WORK,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
            res = json.loads(out.read_text())
            runs[devices].append(res["cells_per_s"])
            _log(f"devices={devices} run {r}: {res['cells_per_s']:.0f} cells/s")
    med = {d: statistics.median(v) for d, v in runs.items()}
    ratios = [b / a for a, b in zip(runs[1], runs[2], strict=True)]
    result = {
        "devices1_cells_per_s": med[1],
        "devices2_cells_per_s": med[2],
        "ratio_median_of_pairs": statistics.median(ratios),
        "runs": runs,
    }
    _log(json.dumps(result))
    return result


# -------------------------------------------------------------------------------- end to end
def e2e_worker(n_cells: int, train_kwargs: dict) -> dict:
    """In a fresh process: tile reference and query to ``n_cells``, train + annotate."""
    import logging

    import torch
    from lightning.pytorch.callbacks import Callback
    from sklearn.metrics import f1_score

    import transanno_sc as ta

    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class Count(Callback):
        def __init__(self):
            self.cells, self.epochs, self.fit = 0, 0, [0.0, 0.0]

        def on_fit_start(self, trainer, pl_module):
            self.fit[0] = time.perf_counter()

        def on_fit_end(self, trainer, pl_module):
            self.fit[1] = time.perf_counter()

        def on_train_epoch_start(self, trainer, pl_module):
            self.epochs += 1

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.cells += int(batch["X"].shape[0])

    lung = _lung()
    t0 = time.perf_counter()
    ref = tile_cells(lung[lung.obs["condition"] == "healthy"], n_cells, seed=0)
    query = tile_cells(lung[lung.obs["condition"] == "tumor"], n_cells, seed=1)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    query.obs = query.obs[[]]
    tile_s = time.perf_counter() - t0
    rss_data = _peak_rss_gb()
    count = Count()
    t0 = time.perf_counter()
    ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        enable_progress_bar=False,
        callbacks=[count],
        **train_kwargs,
    )
    seconds = time.perf_counter() - t0
    labels = query.obs["transanno_label"].astype(str).to_numpy()
    classes = sorted(set(truth))
    return {
        "n_cells": n_cells,
        "train_kwargs": train_kwargs,
        "annotate_s": seconds,
        "tile_s": tile_s,
        "fit_s": count.fit[1] - count.fit[0],
        "epochs": count.epochs,
        "presentations": count.cells,
        "cells_per_s": 2 * n_cells / seconds,  # reference + query cells per second
        "macro_f1": float(f1_score(truth, labels, labels=classes, average="macro")),
        "peak_rss_gb": _peak_rss_gb(),
        "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "rss_after_data_gb": rss_data,
        "threads": torch.get_num_threads(),
    }


def e2e(sizes: list[int], train_kwargs: dict) -> list[dict]:
    """``tl.transanno_annotate`` (train + annotate) per size, each in a fresh process."""
    results = []
    for n in sizes:
        cmd = [sys.executable, __file__, "_e2e", str(n), "--train-kwargs", json.dumps(train_kwargs)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"e2e worker ({n} cells) failed with exit code {proc.returncode}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["process_s"] = time.perf_counter() - t0
        _log(
            f"e2e {n:>9,} + {n:,} cells: annotate {res['annotate_s']:.0f} s (Transformer fit "
            f"{res['fit_s']:.0f} s, {res['epochs']} epochs, {res['presentations']:,} cells "
            f"presented), macro-F1 {res['macro_f1']:.3f}, peak RSS {res['peak_rss_gb']:.2f} GB"
        )
        results.append(res)
    return results


# -------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "what",
        choices=[
            "all",
            "infer-sizes",
            "mfu",
            "compile",
            "train-ddp",
            "e2e",
            "_infer",
            "_e2e",
            "clean",
        ],
    )
    p.add_argument("path", nargs="?")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cleanup", action="store_true", help="delete each data file after use")
    p.add_argument("--out", type=Path, default=WORK / "results.json")
    p.add_argument("--train-kwargs", default="{}", help="e2e: JSON of extra train arguments")
    a = p.parse_args(argv)
    if a.what == "_e2e":
        print(json.dumps(e2e_worker(int(a.path), json.loads(a.train_kwargs))))
        return
    if a.what == "_infer":
        print(json.dumps(infer_worker(a.path, a.batch_size)))
        return
    if a.what == "clean":
        shutil.rmtree(WORK, ignore_errors=True)
        return
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    if a.what in ("all", "mfu"):
        results["mfu"] = mfu(batch_size=a.batch_size, repeats=a.repeats)
    if a.what in ("all", "compile"):
        results["compile"] = compile_speedup(batch_size=a.batch_size, repeats=a.repeats)
    if a.what in ("all", "infer-sizes"):
        for _ in range(a.repeats if a.what == "infer-sizes" else 1):
            res = infer_sizes(a.sizes, a.batch_size, a.cleanup)
            for r in res:
                results.setdefault("inference", {}).setdefault(str(r["n_cells"]), []).append(r)
    if a.what in ("all", "train-ddp"):
        results["train_ddp"] = train_ddp(a.repeats)
    if a.what == "e2e":  # not part of "all": minutes to hours per size
        for r in e2e(a.sizes, json.loads(a.train_kwargs)):
            results.setdefault("e2e", {}).setdefault(str(r["n_cells"]), []).append(r)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1, default=float))
    _log(f"results in {a.out}")


if __name__ == "__main__":
    main()
