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

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cross_study as cs
from exp11_query_clusters import (
    case_inputs,
    dump_args,
    dumped_cases,
    print_tables,
    score_row,
)

from transanno_sc.tl._query_context import query_context


def main():
    ap = dump_args(__doc__, cases=True)
    args = ap.parse_args()
    cs._quiet()
    rows = []
    for r, c in dumped_cases(args.dir, args.seeds):
        x = case_inputs(r, c)
        typ = x.p / (x.p + 0.03)
        rules = {"cell": x.own}
        for what, base in (("score", x.own), ("prob", x.prob)):
            ctx = query_context(
                c.query,
                layer=None,
                scale=x.scale,
                confidence=base,
                forced=x.forced,
                detection=(list(x.rh.var_names), x.det),
                classes=x.types,
                seed=0,
            )
            variants = {}
            if what == "score":
                variants["score"] = np.maximum(x.own, ctx.neighbourhood)
                variants["score-typical"] = np.where(
                    typ >= 0.5, np.maximum(x.own, ctx.neighbourhood), x.own
                )
            else:
                variants["prob"] = np.maximum(x.prob, ctx.neighbourhood) * typ
            for v, lifted in variants.items():
                rules[f"lift {v}"] = lifted
                for f0 in (0.5, 0.6):
                    rules[f"context F0={f0} {v}"] = np.minimum(
                        lifted, np.minimum(1, 0.5 * (1 - ctx.foreign) / (1 - f0))
                    )
        for name, score in rules.items():
            rows.append(score_row(r, name, score, x.best))
        print(r["pair"], r["case"], r["seed"], flush=True)
    print_tables(pd.DataFrame(rows), args.cases)


if __name__ == "__main__":
    main()
