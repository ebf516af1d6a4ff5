"""The streamed query context (large or backed queries) against the exact one (issue #17).

On every dumped case (``dump_outputs.py``), the default call's confidence refined by
``tl._query_context`` exactly (the query in memory, every cell a neighbour candidate) and
streamed (``MAX_QUERY_CELLS`` set to 0: the PCA and k-means centres from a random
``--fraction`` of the query's cells, read ``STREAM_CHUNK`` rows at a time, and the neighbours
within as many k-means parts as a query of ``SAMPLE_CELLS / fraction`` cells would have). Same table as
``exp12``. ``--split`` also combines the exact neighbourhood with the streamed clusters and
the other way round.

    python benchmarks/novelty_design/exp14_streamed_context.py [DIR] [--fractions 0.5 0.25]
"""

import sys
from pathlib import Path

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

import transanno_sc.tl._query_context as qc


def main():
    ap = dump_args(__doc__, cases=False)
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.25])
    ap.add_argument("--split", action="store_true", help="also each part exact, the other not")
    args = ap.parse_args()
    cs._quiet()
    rows = []
    for r, c in dumped_cases(args.dir, args.seeds):
        x = case_inputs(r, c)
        n = c.query.n_obs
        for name, fraction in [("exact", None)] + [(f"streamed {f:g}", f) for f in args.fractions]:
            saved = qc.MAX_QUERY_CELLS, qc.SAMPLE_CELLS, qc.NEIGHBOUR_BLOCK
            if fraction is not None:
                # the sample a fraction of the query, and as many neighbour parts as a query of
                # SAMPLE_CELLS / fraction cells has
                qc.MAX_QUERY_CELLS, qc.SAMPLE_CELLS = 0, max(int(fraction * n), 50)
                qc.NEIGHBOUR_BLOCK = max(int(fraction * n * saved[2] / saved[1]), 20)
            try:
                ctx = qc.query_context(
                    c.query,
                    layer=None,
                    scale=x.scale,
                    confidence=x.own,
                    forced=x.forced,
                    detection=(list(x.rh.var_names), x.det),
                    classes=x.types,
                    seed=0,
                )
            finally:
                qc.MAX_QUERY_CELLS, qc.SAMPLE_CELLS, qc.NEIGHBOUR_BLOCK = saved
            if fraction is None:
                exact = ctx
            variants = {name: ctx}
            if fraction is not None and args.split:
                variants[f"{name}, exact neighbourhood"] = qc.QueryContext(
                    exact.neighbourhood, ctx.foreign, ctx.summary
                )
                variants[f"{name}, exact clusters"] = qc.QueryContext(
                    ctx.neighbourhood, exact.foreign, ctx.summary
                )
            for v, vctx in variants.items():
                rows.append(score_row(r, v, vctx.confidence(x.own), x.best))
        print(r["pair"], r["case"], r["seed"], n, flush=True)
    print_tables(pd.DataFrame(rows), cases=False)


if __name__ == "__main__":
    main()
