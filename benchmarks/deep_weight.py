"""Sweep ``deep_weight``, the Transformer's weight next to the wide path, on trained models.

The weight only enters at prediction (training uses 1), so each (task, seed) model is trained
once with the current defaults, exactly as ``benchmarks/run.py`` trains TransAnno, and its
query is predicted once per weight. Query macro-F1 (cells whose label occurs in the reference)
per task, seed and weight; then, per task, the median and mean over seeds and the mean paired
difference against ``--baseline`` (the same models and query cells, so split noise cancels).

    python benchmarks/deep_weight.py --seeds 0 1 2 --out benchmarks/results_tmp/deep_weight
    python benchmarks/deep_weight.py --tasks pbmc68k_30 --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import TASKS, _blind, score, task, train_transanno


def sweep(name: str, seed: int, weights: list[float]) -> list[dict]:
    """Train the default model on the task's reference and score the query at each weight."""
    ref, query, key = task(name, seed)
    batches = ref.obs["batch"].astype(str).to_numpy() if "batch" in ref.obs else None
    model = train_transanno(ref, key, seed, ref_batches=batches)
    blind = _blind(query)
    true = query.obs[key].astype(str).to_numpy()
    rows = []
    for w in weights:
        model.module.deep_weight.fill_(w)
        pred = model.predict(blind)  # argmax: the temperature does not change it
        rows.append({"task": name, "seed": seed, "weight": w, **score(ref.obs[key], true, pred)})
    return rows


def summarize(df: pd.DataFrame, baseline: float) -> pd.DataFrame:
    """Median and mean macro-F1 per task and weight, and the mean paired gain over baseline."""
    wide = df.pivot_table(index=["task", "seed"], columns="weight", values="f1_macro")
    out = []
    for name, block in wide.groupby(level="task"):
        for w in wide.columns:
            out.append(
                {
                    "task": name,
                    "weight": w,
                    "seeds": len(block),
                    "median": block[w].median(),
                    "mean": block[w].mean(),
                    "mean gain": (block[w] - block[baseline]).mean(),
                    "seeds better/worse": f"{int((block[w] > block[baseline] + 1e-9).sum())}/"
                    f"{int((block[w] < block[baseline] - 1e-9).sum())}",
                }
            )
    return pd.DataFrame(out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0])
    parser.add_argument("--baseline", type=float, default=0.1, help="weight gains are against")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.baseline not in args.weights:
        parser.error("--baseline must be one of --weights")
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi", "transanno_sc"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    for name in args.tasks:
        for seed in args.seeds:
            rows += sweep(name, seed, args.weights)
            last = {r["weight"]: round(r["f1_macro"], 3) for r in rows[-len(args.weights) :]}
            print(name, seed, last, flush=True)
    table = summarize(pd.DataFrame(rows), args.baseline).to_markdown(index=False, floatfmt=".3f")
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps({"args": vars(args), "rows": rows}))
        Path(f"{args.out}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
