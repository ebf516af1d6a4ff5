"""``deep_weight`` on the cross-study cases: does the Transformer earn a larger weight next to
the wide path (a logistic regression) when reference and query come from different studies,
technologies, gene panels or scales?

``deep_weight`` (0.2) was chosen on ``benchmarks/run.py``'s within-study tasks
(``benchmarks/deep_weight.py``). Here every case of ``benchmarks/cross_study.py`` is run once
through the public default call, ``tl.transanno_annotate(query, reference=ref, ...,
save_model=...)``; the saved model is then loaded and its query predicted at each weight (the
weight only enters at prediction, so one training serves every weight). Scored: shared-type
macro-F1 of the forced labels (argmax; the temperature does not move it), the
``f1_macro_forced`` of ``cross_study.py``, per case, seed and weight; then per pair the
median over cases and seeds, and per weight the runs better / worse than the default's.

    python benchmarks/deep_weight_cross.py --seeds 0 1 2 --out benchmarks/results_tmp/dw_cross
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cross_study as cs

WEIGHTS = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0]


def sweep(pair: str, case: str, seed: int, weights: list[float]) -> list[dict]:
    """Train by the default call, then score the forced labels at each weight."""
    import transanno_sc as ta

    c = cs.build(pair, case, seed)
    with tempfile.TemporaryDirectory() as tmp:
        cs.run_method("transanno", c, seed, {"save_model": f"{tmp}/model"})
        model = ta.model.TransAnno.load(f"{tmp}/model")
    truth = c.query.obs[c.key].astype(str).to_numpy()
    ref_types = np.unique(c.ref.obs[c.key].astype(str))
    blind = cs._blind(c.query)
    default = float(model.module.deep_weight)
    rows = []
    for w in weights:
        model.module.deep_weight.fill_(w)
        forced = np.asarray(model.predict(blind), dtype=str)
        m = cs.metrics(ref_types, truth, forced, forced, np.ones(len(forced)))
        rows.append(
            {
                "pair": pair,
                "case": case,
                "seed": seed,
                "weight": w,
                "default_weight": default,
                "f1_macro_forced": m["f1_macro_forced"],
                "accuracy_forced": m["accuracy_forced"],
            }
        )
    return rows


def summarize(df: pd.DataFrame, baseline: float) -> pd.DataFrame:
    """Per pair and weight: median forced macro-F1 over cases and seeds, mean paired change
    against ``baseline``, runs better / worse; and the same over every run."""
    wide = df.pivot_table(
        index=["pair", "case", "seed"], columns="weight", values="f1_macro_forced"
    )
    out = []
    groups = [*wide.groupby(level="pair"), ("all runs", wide)]
    for name, block in groups:
        for w in wide.columns:
            diff = block[w] - block[baseline]
            out.append(
                {
                    "pair": name,
                    "weight": w,
                    "runs": len(block),
                    "median": round(block[w].median(), 3),
                    "mean change": round(diff.mean(), 4),
                    "better/worse": f"{int((diff > 1e-9).sum())}/{int((diff < -1e-9).sum())}",
                }
            )
    return pd.DataFrame(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="+", default=cs.PAIRS, choices=cs.PAIRS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--weights", nargs="+", type=float, default=WEIGHTS)
    ap.add_argument("--baseline", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results_tmp/dw_cross"))
    args = ap.parse_args(argv)
    cs._quiet()
    path = args.out.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    done = {(r["pair"], r["case"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for pair in args.pairs:
            for case in cs.CASES[pair]:
                if (pair, case, seed) in done:
                    continue
                rows += sweep(pair, case, seed, args.weights)
                path.write_text(
                    json.dumps({"rows": rows, "args": vars(args) | {"out": str(args.out)}})
                )
                print(f"{pair} / {case} / seed {seed} done", flush=True)
    table = summarize(pd.DataFrame(rows), args.baseline)
    args.out.with_suffix(".md").write_text(table.to_markdown(index=False) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
