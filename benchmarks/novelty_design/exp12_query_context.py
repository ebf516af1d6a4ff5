"""The package's query context (``transanno_sc.tl._query_context``) on the dumped default-call
outputs of ``dump_outputs.py`` (issue #17): the cell-level rule against the query-context rule
with the foreign-marker share's cut ``F0`` (a cluster is Unassigned when more than ``F0`` of its
markers are foreign; confidence cap ``min(1, 0.5 (1 - f) / (1 - F0))``), with the neighbourhood
mean lifting the score (the default), the probability only, or only typical cells (p >= 0.03).
The neighbourhood-median row of ``benchmarks/README.md`` comes from this script at 942dc78
(the package then had a quantile switch, since removed); the "mean minus d" rows from a
version never committed that used ``neighbourhood - d`` in place of the neighbourhood.

    python benchmarks/novelty_design/exp12_query_context.py [DIR] [--seeds 0 1 2] [--cases]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cross_study as cs
from exp9_rules import U, evaluate, result_row, summary
from exp11_query_clusters import dumped_cases

from transanno_sc.data import type_detection
from transanno_sc.tl._query_context import query_context


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default="benchmarks/results_tmp/nov17")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cases", action="store_true")
    args = ap.parse_args()
    cs._quiet()
    rows = []
    for r, c in dumped_cases(args.dir, args.seeds):
        types = list(r["ref_types"])
        rh, _ = cs.harmonize(c.ref, c.query)
        codes = pd.Categorical(rh.obs[c.key].astype(str), categories=types).codes
        det = type_detection(rh.X, np.asarray(codes), len(types))
        forced = pd.Categorical(r["forced"], categories=types).codes
        prob = r["probs"].astype(float).max(1)
        p = r["pvalue"].astype(float)
        own = prob * p / (p + 0.03)
        own[r["n_expressed"] == 0] = 0
        typ = p / (p + 0.03)
        rules = {"cell": own}
        for what, base in (("score", own), ("prob", prob)):
            ctx = query_context(
                c.query,
                layer=None,
                scale="log1p" if c.log_normalized else "counts",
                confidence=base,
                forced=np.asarray(forced),
                detection=(list(rh.var_names), det),
                classes=types,
                seed=0,
            )
            variants = {}
            if what == "score":
                variants["score"] = np.maximum(own, ctx.neighbourhood)
                variants["score-typical"] = np.where(
                    typ >= 0.5, np.maximum(own, ctx.neighbourhood), own
                )
            else:
                variants["prob"] = np.maximum(prob, ctx.neighbourhood) * typ
            for v, lifted in variants.items():
                rules[f"lift {v}"] = lifted
                for f0 in (0.5, 0.6):
                    rules[f"context F0={f0} {v}"] = np.minimum(
                        lifted, np.minimum(1, 0.5 * (1 - ctx.foreign) / (1 - f0))
                    )
        best = max(
            evaluate(r, np.where(r[f"{k}_conf"] < 0.5, U, r[f"{k}_forced"]), r[f"{k}_conf"])["f1"]
            for k in ("lr", "knn")
        )
        for name, s in rules.items():
            s = s.copy()
            s[r["n_expressed"] == 0] = 0
            o = evaluate(r, np.where(s < 0.5, U, r["forced"].astype(object)), s)
            rows.append(result_row(r, name, o, best))
        print(r["pair"], r["case"], r["seed"], flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    if args.cases:
        print(
            df.pivot_table(index=["pair", "case"], columns="rule", values=["known", "novel"])
            .round(1)
            .to_string()
        )
    print(summary(df).round(3).to_string())


if __name__ == "__main__":
    main()
