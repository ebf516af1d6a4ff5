"""Does an undecided cluster's expression tell a new type from a known type's unsure state?
(issue #17, point 3; lost)

The undecided-cluster cap (``tl._query_context._undecided_cap``, since 205121f) fails where a
known type has an unsure subpopulation next to a sure one (exp21, NK cells at 2 % of 1,000
copies: known "Unassigned" 5.1 -> 8.6 %; Tabula Muris -> Zilionis: 11-13 lung neutrophils at
1.1 : 1). The lead tested here: a new type should differ from the query's decided cluster of
the type it is called more than a state of that type does. For every cluster whose median odds
for its majority type are under ``--odds`` (wider than the package's 2 : 1, to see the band
around it) while the best cluster called that type has at least 8 times them, the share of
its :data:`~transanno_sc.tl._query_context.N_MARKERS` top markers against that decided cluster
(log1p CP10k of the query, state genes left out, detected in at least 30 % of its cells) that
the decided cluster detects :data:`~transanno_sc.tl._query_context.FOREIGN_RATIO` times less
often: the package's foreign-marker test with the decided query cluster in place of the
reference type.

Result on the dumps of seeds 0-5 (``benchmarks/results_tmp/p10`` and ``fresh_205121f``): the
share does not separate them. Zilionis T cells held out, called NK cells: 0.05-0.25 against
the decided NK cluster (T and NK cells share their cytotoxic and lymphocyte genes); called B
cells: 0.15-0.25; Baron beta called delta 0.15-0.40, delta called beta 0.25-0.35. The 12
clusters of known cells: 0.15-0.80, median 0.50 (Tabula Muris -> Zilionis lung neutrophils
0.35-0.50, Zilionis -> Tabula Muris T and neutrophil clusters 0.35-0.80). Known states differ
from the decided cluster at least as much as the new types do, so no cut keeps the catches
and spares the known cells.

    python benchmarks/novelty_design/exp27_undecided_markers.py \\
        --dumps benchmarks/results_tmp/p10 benchmarks/results_tmp/fresh_205121f
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs
from exp24_temperature_floor import at_floor, read_dumps
from exp26_undecided_clusters import logit

from transanno_sc.tl import _query_context as qc


def distinct_share(XU: sp.csr_matrix, XD: sp.csr_matrix) -> float:
    """Share of ``XU``'s top markers against ``XD`` that ``XD`` barely detects."""
    mean_u, mean_d = np.asarray(XU.mean(0)).ravel(), np.asarray(XD.mean(0)).ravel()
    det_u = np.asarray((XU > 0).mean(0)).ravel()
    det_d = np.asarray((XD > 0).mean(0)).ravel()
    diff = mean_u - mean_d
    ok = (det_u >= qc.MIN_MARKER_DETECTION) & (diff > 0)
    markers = np.flatnonzero(ok)[np.argsort(-diff[ok])][: qc.N_MARKERS]
    foreign = det_d[markers] < det_u[markers] / qc.FOREIGN_RATIO
    return float(foreign.sum() / max(markers.size, qc.N_MARKERS))


def clusters_of(x: pd.DataFrame, odds: float):
    """``(cells called the majority type, that type, median odds, decided cells, its odds)``
    for each cluster under ``odds`` with a cluster of 8 times the odds for its type."""
    classes = x.known_types.iloc[0].split("|")
    forced = pd.Categorical(x.forced, categories=classes).codes
    lo = logit(at_floor(x, 1.0))
    clusters = x.cluster.to_numpy().astype(int)
    groups = qc.majority_calls(lo, forced, clusters)
    best = {}
    for called, t, m in groups:
        if m > best.get(t, (-np.inf,))[0]:
            best[t] = (m, called)
    for called, t, m in groups:
        if m < np.log(odds) and best[t][0] - m > np.log(qc.DECIDED_ODDS_RATIO):
            yield called, classes[t], m, best[t][1], best[t][0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dumps", nargs="+", type=Path, default=[Path("benchmarks/results_tmp/p10")]
    )
    parser.add_argument("--odds", type=float, default=3.0)
    args = parser.parse_args(argv)
    rows = []
    for folder in args.dumps:
        for x, _, pair, case, seed, novel in read_dumps(folder):
            found = list(clusters_of(x, args.odds))
            if not found:
                continue
            c = cs.build(pair, case.replace("_", " "), int(seed))
            q = c.query[x.index]
            keep = ~qc.state_genes(np.asarray(q.var_names))
            X = sp.csr_matrix(cs.lognorm(q, c.log_normalized).X, dtype=np.float64)[:, keep]
            for called, type_, m, decided, m_decided in found:
                rows.append(
                    {
                        "case": f"{pair}: {case}",
                        "seed": int(seed),
                        "cells": called.size,
                        "novel share": round(float(novel[called].mean()), 2),
                        "type": type_,
                        "odds": round(float(np.exp(m)), 1),
                        "decided odds": round(float(np.exp(m_decided))),
                        "distinct share": round(distinct_share(X[called], X[decided]), 2),
                    }
                )
    df = pd.DataFrame(rows).sort_values(["novel share", "case", "seed"])
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 1000)
    print(df.to_string(index=False))
    novel, known = df[df["novel share"] >= 0.5], df[df["novel share"] < 0.5]
    print(
        f"\ndistinct share: clusters mostly of a new type {novel['distinct share'].min():.2f}-"
        f"{novel['distinct share'].max():.2f} (median {novel['distinct share'].median():.2f}, "
        f"{len(novel)}); of known types {known['distinct share'].min():.2f}-"
        f"{known['distinct share'].max():.2f} (median {known['distinct share'].median():.2f}, "
        f"{len(known)})"
    )


if __name__ == "__main__":
    main()
