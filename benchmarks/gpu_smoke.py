"""GPU smoke test of the user-facing paths that ``gpu_check.py`` does not time (issue #18).

Run from the repository root on a machine with CUDA (about 2 minutes on an H200)::

    python benchmarks/gpu_smoke.py --out benchmarks/results

Each step is independent and reports its error instead of stopping the others:

1. ``tl.transanno_annotate(query, reference=ref, labels_key="cell_type", accelerator=...)`` on
   the Zilionis animal split (h_1, t_1 -> h_2, t_2), on the GPU and on the CPU of the same
   machine: wall time, accuracy and macro-F1 of the forced labels, "Unassigned" share, the
   device the trained module ends on, and how often the two runs agree.
2. Training with ``precision="bf16-mixed"`` (Lightning's mixed precision) on the GPU, then
   predicting: accuracy of the forced labels.
3. ``model.compile()`` on the GPU (Triton kernels), training and predicting: accuracy and the
   compiled-vs-eager prediction difference.
4. ``pretrain`` (masked-expression pretraining) on reference + query on the GPU, then
   ``from_pretrained`` and fine-tuning.

Writes ``gpu_smoke.json`` and ``gpu_smoke.md`` in ``--out``. Without CUDA it says so and exits
0, unless ``--cpu`` asks to run the same steps on the CPU (a check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np


def _split():
    import transanno_sc as ta

    lung = ta.datasets.zilionis_mouse_lung()
    ref = lung[lung.obs["batch"].isin(["h_1", "t_1"])].copy()
    query = lung[lung.obs["batch"].isin(["h_2", "t_2"])].copy()
    return ref, query


def _scores(truth, labels) -> dict:
    from sklearn.metrics import f1_score

    truth, labels = np.asarray(truth, dtype=str), np.asarray(labels, dtype=str)
    return {
        "accuracy": float((truth == labels).mean()),
        "macro_f1": float(f1_score(truth, labels, average="macro", labels=np.unique(truth))),
    }


def step_annotate(accelerator: str, epochs: int | None) -> dict:
    import scanpy as sc  # noqa: F401  (imported as a user would)

    import transanno_sc as ta

    ref, query = _split()
    kwargs = {"max_epochs": epochs} if epochs else {}
    t0 = time.perf_counter()
    out = ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        accelerator=accelerator,
        devices=1,
        copy=True,
        save_model=str(Path("benchmarks/results_tmp/gpu_smoke") / f"annotate_{accelerator}"),
        **kwargs,
    )
    seconds = time.perf_counter() - t0
    forced = out.obs["transanno_label_forced"] if "transanno_label_forced" in out.obs else None
    labels = out.obs["transanno_label"].astype(str)
    res = {
        "seconds": seconds,
        "unassigned": float((labels == "Unassigned").mean()),
        "embedding_shape": list(out.obsm["X_transanno"].shape),
        "labels": labels.tolist(),
        **_scores(query.obs["cell_type"], forced if forced is not None else labels),
    }
    model = ta.model.TransAnno.load(
        str(Path("benchmarks/results_tmp/gpu_smoke") / f"annotate_{accelerator}"),
        accelerator=accelerator,
    )
    res["loaded_device"] = str(model.device)
    return res


def _small_model(accelerator: str, **train_kwargs):
    import scvi

    import transanno_sc as ta

    scvi.settings.seed = 0
    ref, query = _split()
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref)
    t0 = time.perf_counter()
    model.train(accelerator=accelerator, devices=1, enable_progress_bar=False, **train_kwargs)
    seconds = time.perf_counter() - t0
    return model, query, seconds


def step_bf16_training(accelerator: str, epochs: int | None) -> dict:
    model, query, seconds = _small_model(
        accelerator, precision="bf16-mixed", **({"max_epochs": epochs} if epochs else {})
    )
    conf = model.predict_confidence(query)
    return {
        "seconds": seconds,
        "device": str(model.device),
        **_scores(query.obs["cell_type"], conf["label"]),
    }


def step_compile(accelerator: str, epochs: int | None) -> dict:
    model, query, seconds = _small_model(accelerator, **({"max_epochs": epochs} if epochs else {}))
    eager = model.predict(query, soft=True).to_numpy()
    model.compile()
    t0 = time.perf_counter()
    compiled = model.predict(query, soft=True).to_numpy()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict(query, soft=True)
    second = time.perf_counter() - t0
    return {
        "train_seconds": seconds,
        "compiled_first_predict_s": first,
        "compiled_second_predict_s": second,
        "max_abs_prob_diff_compiled_vs_eager": float(np.abs(compiled - eager).max()),
        "label_agreement_compiled_vs_eager": float((compiled.argmax(1) == eager.argmax(1)).mean()),
    }


def step_pretrain(accelerator: str, epochs: int | None) -> dict:
    import scvi

    import transanno_sc as ta

    scvi.settings.seed = 0
    ref, query = _split()
    t0 = time.perf_counter()
    out = ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        pretrain=True,
        accelerator=accelerator,
        devices=1,
        copy=True,
        **({"max_epochs": epochs} if epochs else {}),
    )
    seconds = time.perf_counter() - t0
    forced = out.obs.get("transanno_label_forced", out.obs["transanno_label"])
    return {"seconds": seconds, **_scores(query.obs["cell_type"], forced)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--cpu", action="store_true", help="run the steps on the CPU (no CUDA check)")
    p.add_argument("--epochs", type=int, default=None, help="max_epochs (default: the model's)")
    a = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not a.cpu:
        print("CUDA is not available: no GPU smoke test run.")
        return 0
    gpu = "cpu" if a.cpu else "gpu"
    res: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "steps": {},
    }

    def attempt(name, fn):
        t0 = time.perf_counter()
        print(f"[gpu_smoke] {name} ...", flush=True)
        try:
            res["steps"][name] = fn()
        except Exception as e:  # report, go on
            traceback.print_exc()
            res["steps"][name] = {"error": f"{type(e).__name__}: {e}"}
        res["steps"][name]["wall_s"] = time.perf_counter() - t0
        shown = {k: v for k, v in res["steps"][name].items() if k != "labels"}
        print(f"[gpu_smoke] {name}: {shown}", flush=True)

    attempt(f"annotate_{gpu}", lambda: step_annotate(gpu, a.epochs))
    if not a.cpu:
        attempt("annotate_cpu", lambda: step_annotate("cpu", a.epochs))
        g, c = res["steps"]["annotate_gpu"], res["steps"]["annotate_cpu"]
        if "labels" in g and "labels" in c:
            res["annotate_gpu_vs_cpu_label_agreement"] = float(
                (np.asarray(g["labels"]) == np.asarray(c["labels"])).mean()
            )
            res["annotate_gpu_over_cpu_time"] = g["seconds"] / c["seconds"]
    attempt("bf16_mixed_training", lambda: step_bf16_training(gpu, a.epochs))
    attempt("compile", lambda: step_compile(gpu, a.epochs))
    attempt("pretrain_finetune", lambda: step_pretrain(gpu, a.epochs))
    for step in res["steps"].values():
        step.pop("labels", None)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_smoke.json").write_text(json.dumps(res, indent=1))
    lines = [f"# GPU smoke test: {res['device']}, torch {res['torch']}", ""]
    lines += ["| step | result |", "| --- | --- |"]
    for name, step in res["steps"].items():
        text = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in step.items()
        )
        lines.append(f"| {name} | {text} |")
    for k in ("annotate_gpu_vs_cpu_label_agreement", "annotate_gpu_over_cpu_time"):
        if k in res:
            lines.append(f"| {k} | {res[k]:.4g} |")
    lines += ["", "Command: `python benchmarks/gpu_smoke.py`", ""]
    (a.out / "gpu_smoke.md").write_text("\n".join(lines))
    print((a.out / "gpu_smoke.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
