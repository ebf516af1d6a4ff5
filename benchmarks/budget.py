"""Training budget (issue #18): query macro-F1 against cell presentations, by reference size.

Run from the repository root (heavy: prefix with ``nice -n 10``; one size per command keeps each
size's peak RSS apart)::

    python benchmarks/budget.py run --size 1000 --budgets 15000 30000 60000 120000 240000 default
    python benchmarks/budget.py run --size 10000 --budgets 15000 30000 60000 120000 default
    python benchmarks/budget.py run --size 50000 --budgets 15000 30000 60000 120000
    python benchmarks/budget.py run --size 200000 --budgets 15000 30000
    python benchmarks/budget.py run --size 200000 --budgets 15000 \
        --extra-kwargs '{"limit_val_batches": 32}' --tag +val2048   # validation capped
    python benchmarks/budget.py report            # budget.json + budget.md in benchmarks/results

Reference: the 287 healthy Zilionis cells (``condition == "healthy"``, 4 types in
``cell_type``) tiled to ``--size`` cells with binomial thinning (``scale.tile_cells``: every cell
used equally often, each copy keeps a uniform 70-100 % of its UMIs). Query: the 513 tumour
cells, as they are. ``tl.transanno_annotate(query, reference=..., labels_key="cell_type",
random_state=seed, **train_kwargs)`` with the package defaults otherwise (early stopping on).

A budget ``B`` (cell presentations) becomes public train arguments: ``max_epochs = E =
max(10, ceil(B / n_train))`` and, when ``B / E`` is less than a full epoch,
``limit_train_batches = K = ceil(B / (64 E))`` batches of 64 (Lightning shuffles the training
loader, so each epoch sees another random subset). ``default`` is ``max_epochs=None`` (the
package's rule at the time: ``ceil(15000 / n_train)`` full epochs, clipped to 10-100).
``n_train`` is 90 % of the reference (the default ``train_size``).

Per run (``results_tmp/budget/runs.jsonl``, one JSON line each): macro-F1 of the query with
``"Unassigned"`` counted as wrong (the default ``unassigned_threshold=0.5``) and of the argmax of
the probabilities (``predict`` without a threshold), cells presented to the Transformer (counted
by a callback), epochs run, the Transformer's ``fit`` time, the whole call's time, and the other
parts' times read from the package's INFO log (wide logistic regression, confidence fitting,
query prediction).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402  (tile_cells, _peak_rss_gb)

WORK = HERE / "results_tmp" / "budget"
RUNS = WORK / "runs.jsonl"
RESULTS = HERE / "results"
BATCH = 64
TRAIN_SIZE = 0.9


def _log(msg: str) -> None:
    print(f"[budget {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def plan(budget: int | str, n_ref: int) -> dict:
    """Public train arguments for a budget of cell presentations (or ``"default"``)."""
    n_train = round(n_ref * TRAIN_SIZE)
    if budget == "default":
        epochs = int(np.clip(math.ceil(15_000 / n_train), 10, 100))
        return {"train_kwargs": {}, "planned_presentations": epochs * n_train}
    budget = int(budget)
    epochs = max(10, math.ceil(budget / n_train))
    full = math.ceil(n_train / BATCH)
    k = math.ceil(budget / (BATCH * epochs))
    kwargs = {"max_epochs": epochs}
    if k < full:
        kwargs["limit_train_batches"] = k
    per_epoch = min(k * BATCH, n_train) if k < full else n_train
    return {"train_kwargs": kwargs, "planned_presentations": epochs * per_epoch}


class _LogTimes(logging.Handler):
    """Keeps (time, message) of the package's INFO records."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record):
        self.records.append((record.created, record.getMessage()))


def _callback():
    from lightning.pytorch.callbacks import Callback

    class Count(Callback):
        def __init__(self):
            self.cells = 0
            self.epochs = 0
            self.fit = [0.0, 0.0]

        def on_fit_start(self, trainer, pl_module):
            self.fit[0] = time.time()

        def on_fit_end(self, trainer, pl_module):
            self.fit[1] = time.time()

        def on_train_epoch_start(self, trainer, pl_module):
            self.epochs += 1

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.cells += int(batch["X"].shape[0])

    return Count()


def _breakdown(records, t_start: float, t_end: float, fit: list[float]) -> dict:
    """Seconds of the parts around the Transformer's fit, from the log's timestamps."""
    out = {"before_fit_s": fit[0] - t_start, "after_fit_s": t_end - fit[1]}
    for t, msg in records:
        if msg.startswith("Wide path: logistic regression"):
            out["wide_logreg_s"] = float(msg.rsplit(" in ", 1)[1].split(" s")[0])
        elif msg.startswith("Calibrated on"):
            out["confidence_fit_s"] = t - fit[1]  # after fit: novelty space, temperature
            out["t_calibrated"] = t
        elif msg.startswith("Predicted") and t > fit[1]:
            out.setdefault("predict_logs", []).append(msg)
    if "t_calibrated" in out:
        out["query_predict_and_write_s"] = t_end - out.pop("t_calibrated")
    return out


def run(
    size: int,
    budgets: list[str],
    seeds: list[int],
    query_cells: int | None,
    extra_kwargs: dict | None = None,
    tag: str = "",
) -> None:
    import torch
    from sklearn.metrics import f1_score

    import transanno_sc as ta

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logger = logging.getLogger("transanno_sc")
    logger.setLevel(logging.INFO)
    handler = _LogTimes()
    logger.addHandler(handler)

    lung = ta.datasets.zilionis_mouse_lung()
    healthy = lung[lung.obs["condition"] == "healthy"].copy()
    tumour = lung[lung.obs["condition"] == "tumor"].copy()
    t0 = time.perf_counter()
    reference = scale.tile_cells(healthy, size, seed=0)
    query0 = scale.tile_cells(tumour, query_cells, seed=1) if query_cells else tumour
    truth = query0.obs["cell_type"].astype(str).to_numpy()
    _log(
        f"reference {reference.n_obs:,} cells, query {query0.n_obs:,} ({time.perf_counter() - t0:.0f} s)"
    )
    WORK.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for budget in budgets:
            p = plan(budget, size)
            p["train_kwargs"].update(extra_kwargs or {})
            query = query0.copy()
            query.obs = query.obs[[]]  # no labels handed to the method
            cb = _callback()
            handler.records.clear()
            t_start = time.time()
            t0 = time.perf_counter()
            ta.tl.transanno_annotate(
                query,
                reference=reference,
                labels_key="cell_type",
                random_state=seed,
                enable_progress_bar=False,
                callbacks=[cb],
                **p["train_kwargs"],
            )
            wall = time.perf_counter() - t0
            t_end = time.time()
            labels = query.obs["transanno_label"].astype(str).to_numpy()
            probs = query.obsm["transanno_probabilities"]
            classes_ = np.asarray(query.uns["transanno"]["classes"], dtype=str)
            argmax = classes_[probs.to_numpy().argmax(1)]
            classes = sorted(set(truth))
            res = {
                "size": size,
                "budget": f"{budget}{tag}",
                "seed": seed,
                "query_cells": query.n_obs,
                "train_kwargs": p["train_kwargs"],
                "planned_presentations": p["planned_presentations"],
                "presentations": cb.cells,
                "epochs": cb.epochs,
                "macro_f1": f1_score(truth, labels, labels=classes, average="macro"),
                "macro_f1_argmax": f1_score(truth, argmax, labels=classes, average="macro"),
                "accuracy_argmax": float((argmax == truth).mean()),
                "unassigned_fraction": float((labels == "Unassigned").mean()),
                "fit_s": cb.fit[1] - cb.fit[0],
                "annotate_s": wall,
                "parts": _breakdown(handler.records, t_start, t_end, cb.fit),
                "peak_rss_gb_process": scale._peak_rss_gb(),
                "threads": torch.get_num_threads(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            with RUNS.open("a") as f:
                f.write(json.dumps(res) + "\n")
            _log(
                f"size {size:,} budget {budget} seed {seed}: macro-F1 {res['macro_f1']:.4f} "
                f"(argmax {res['macro_f1_argmax']:.4f}), {cb.cells:,} presentations in "
                f"{cb.epochs} epochs, fit {res['fit_s']:.0f} s, annotate {wall:.0f} s"
            )


def report(out: Path) -> None:
    import pandas as pd

    rows = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    df["budget"] = df["budget"].astype(str)
    agg = (
        df.groupby(["size", "budget"], sort=False)
        .agg(
            seeds=("seed", "nunique"),
            presentations=("presentations", "median"),
            epochs=("epochs", "median"),
            macro_f1=("macro_f1", "median"),
            macro_f1_min=("macro_f1", "min"),
            macro_f1_max=("macro_f1", "max"),
            macro_f1_argmax=("macro_f1_argmax", "median"),
            fit_s=("fit_s", "median"),
            annotate_s=("annotate_s", "median"),
        )
        .reset_index()
    )
    seed0 = df[df["seed"] == 0].groupby(["size", "budget"])[["macro_f1", "macro_f1_argmax"]]
    seed0 = seed0.first().add_suffix("_seed0").reset_index()
    agg = agg.merge(seed0, on=["size", "budget"], how="left")
    agg["_b"] = agg["budget"].map(
        lambda b: 1e12 if b == "default" else float(b.split("+")[0]) + 0.5 * ("+" in b)
    )
    agg = agg.sort_values(["size", "_b"]).drop(columns="_b")
    for col in ("macro_f1", "macro_f1_argmax", "macro_f1_seed0", "macro_f1_argmax_seed0"):
        best = agg.groupby("size")[col].transform("max")
        agg[f"{col}_gap_to_best"] = best - agg[col]
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(
        json.dumps(
            {"summary": agg.to_dict(orient="records"), "runs": rows}, indent=1, default=float
        )
    )
    lines = [
        "| reference cells | budget | seeds | presentations | epochs | macro-F1 (Unassigned wrong)"
        " | gap to best | seed 0 | gap to best seed 0 | macro-F1 argmax | gap to best | seed 0 |"
        " gap to best seed 0 | Transformer fit s | annotate s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        " ---: | ---: | ---: |",
    ]
    for r in agg.itertuples():
        spread = f" ({r.macro_f1_min:.3f}-{r.macro_f1_max:.3f})" if r.seeds > 1 else ""
        lines.append(
            f"| {r.size:,} | {r.budget} | {r.seeds} | {r.presentations:,.0f} | {r.epochs:.0f} | "
            f"{r.macro_f1:.4f}{spread} | {r.macro_f1_gap_to_best:.4f} | "
            f"{r.macro_f1_seed0:.4f} | {r.macro_f1_seed0_gap_to_best:.4f} | "
            f"{r.macro_f1_argmax:.4f} | {r.macro_f1_argmax_gap_to_best:.4f} | "
            f"{r.macro_f1_argmax_seed0:.4f} | {r.macro_f1_argmax_seed0_gap_to_best:.4f} | "
            f"{r.fit_s:.0f} | {r.annotate_s:.0f} |"
        )
    parts = [r for r in rows if r["parts"].get("wide_logreg_s") is not None]
    if parts:
        lines += [
            "",
            "Parts other than the Transformer's fit (seconds, from the INFO log and a fit "
            "callback; `before fit` includes gene selection, the wide logistic regression and "
            "data setup, `confidence` is the novelty space and temperature after the fit, "
            "`query` the query's prediction and writing):",
            "",
            "| reference cells | budget | seed | before fit | of which wide logreg | fit | "
            "confidence | query | annotate |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in parts:
            q = r["parts"]
            lines.append(
                f"| {r['size']:,} | {r['budget']} | {r['seed']} | {q['before_fit_s']:.1f} | "
                f"{q['wide_logreg_s']:.1f} | {r['fit_s']:.1f} | "
                f"{q.get('confidence_fit_s', float('nan')):.1f} | "
                f"{q.get('query_predict_and_write_s', float('nan')):.1f} | "
                f"{r['annotate_s']:.1f} |"
            )
    (out / "budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["run", "report"])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--budgets", nargs="+", default=["15000", "30000", "60000", "120000"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--query-cells", type=int, default=None, help="tile the query too")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--extra-kwargs", default="{}", help="JSON of more train arguments")
    p.add_argument("--tag", default="", help="appended to the budget's name in the results")
    a = p.parse_args(argv)
    if a.what == "run":
        run(a.size, a.budgets, a.seeds, a.query_cells, json.loads(a.extra_kwargs), a.tag)
    else:
        report(a.out)


if __name__ == "__main__":
    main()
