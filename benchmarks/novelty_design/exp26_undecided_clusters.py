"""Undecided clusters (issue #17, point 3; the default since a9b6bfc / 205121f).

Within a study, a type the reference lacks is called as the known type it is least unlike, at
a middling probability and with a typical novelty distance (its genes are outside the
reference's PCA), while the query's real cells of that type are called decisively. Replayed on
the per-cell dumps of ``exp24_temperature_floor.py --dump`` (3 seeds, every cross-study case;
probabilities taken to the softening-only temperature ``max(T, 1)``), the package's rule
``min(max(own, neighbourhood), cap(foreign))`` with one more cap, for the cells of a k-means
cluster (the dumped ones) whose median odds for a type are under ``--odds`` while another
cluster's are at least ``--ratio`` times higher: ``0.5 * logit(p) / log(ratio)``.

Variants (``--variants``):

* ``majority`` (the package: ``tl._query_context._undecided_cap``): each cluster's majority
  type; only its cells called that type are capped;
* ``majority_all``: the same, every cell of the cluster capped (a9b6bfc; the lymphocytes of
  Baron's pancreas, in the beta cells' cluster, were capped with it);
* ``group``: every (cluster, called type) group of at least 5 cells judged on its own.

Rows: novel and known "Unassigned" % and AUROC per case (median over seeds), over runs the
medians within and across studies, the worst case's known rate, and the cases whose
shared-type macro-F1 moves by more than 0.003.

    PYTHONPATH=/tmp/src_6bb58dd/src python benchmarks/novelty_design/exp24_temperature_floor.py \\
        --dump --seeds 0 1 2 --out benchmarks/results_tmp/p10
    python benchmarks/novelty_design/exp26_undecided_clusters.py --dumps benchmarks/results_tmp/p10
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp24_temperature_floor import FEW_KNOWN, WITHIN, at_floor, read_dumps

from transanno_sc.tl import _query_context as qc


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def variant_cap(p, forced, clusters, variant: str) -> np.ndarray:
    """The undecided cap of ``variant`` (see the module docstring)."""
    if variant == "majority":  # the package's own function
        return qc._undecided_cap(p, forced, clusters, list(map(str, range(forced.max() + 1))), {})
    lo, groups = logit(p), []
    for k in np.unique(clusters):
        members = np.flatnonzero(clusters == k)
        if variant == "group":
            for t in np.unique(forced[members]):
                g = members[forced[members] == t]
                if g.size >= qc.MIN_CLUSTER_CELLS:
                    groups.append((g, t, float(np.median(lo[g]))))
        elif members.size >= qc.MIN_CLUSTER_CELLS:
            t = np.bincount(forced[members]).argmax()
            groups.append((members, t, float(np.median(lo[members[forced[members] == t]]))))
    best: dict = {}
    for _, t, m in groups:
        best[t] = max(best.get(t, -np.inf), m)
    cap = np.ones(p.size)
    ratio = np.log(qc.DECIDED_ODDS_RATIO)
    for g, t, m in groups:
        if m < np.log(qc.UNDECIDED_ODDS) and best[t] - m > ratio:
            cap[g] = np.clip(0.5 * lo[g] / ratio, 0.0, 1.0)
    return cap


def replay(dumps: Path, variants) -> None:
    from sklearn.metrics import f1_score, roc_auc_score

    rows = []
    for x, nb, pair, case, seed, novel in read_dumps(dumps):
        classes = x.known_types.iloc[0].split("|")
        truth = x.truth.to_numpy()
        forced_names = x.forced.to_numpy()
        forced = pd.Categorical(forced_names, categories=classes).codes.astype(np.int64)
        p = at_floor(x, 1.0)
        own = p * (x.own / np.maximum(x.prob, 1e-12)).to_numpy()
        foreign_cap = np.minimum(1.0, 1.0 - x.foreign.to_numpy())
        clusters = x.cluster.to_numpy().astype(np.int64)
        for variant in ("none", *variants):
            cap = foreign_cap
            if variant != "none":
                cap = np.minimum(cap, variant_cap(p, forced, clusters, variant))
            conf = np.minimum(np.maximum(own, own[nb].mean(1)), cap)
            called = np.where(conf < 0.5, "Unassigned", forced_names)
            r = {"variant": variant, "pair": pair, "case": f"{pair}: {case}", "seed": int(seed)}
            r["known_U"] = 100 * float((conf[~novel] < 0.5).mean())
            labels = sorted(set(truth[~novel]))
            r["f1"] = f1_score(truth[~novel], called[~novel], labels=labels, average="macro")
            if novel.any():
                r["novel_U"] = 100 * float((conf[novel] < 0.5).mean())
                r["auroc"] = roc_auc_score(~novel, conf)
            rows.append(r)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print("Per case, median over seeds:")
    cols = ["novel_U", "known_U", "auroc"]
    print(df.groupby(["case", "variant"])[cols].median().unstack().round(2).to_string())
    print("\nOver runs:")
    base = df[df.variant == "none"].set_index(["case", "seed"]).f1
    for variant, g in df.groupby("variant", sort=False):
        within = g[g.pair.isin(WITHIN) & g.novel_U.notna()]
        across = g[~g.pair.isin(WITHIN) & g.novel_U.notna()]
        many = g[~g.pair.isin(FEW_KNOWN)]
        worst = many.groupby("case").known_U.median()
        moved = (g.set_index(["case", "seed"]).f1 - base).round(3)
        moved = moved[moved.abs() > 0.003]
        print(
            f"{variant:12s} novel U median within a study {within.novel_U.median():.1f} % "
            f"({len(within)} runs), across {across.novel_U.median():.1f} % ({len(across)}); "
            f"AUROC median {g.auroc.median():.3f}; known U worst case {worst.max():.1f} % "
            f"({worst.idxmax()}); macro-F1 moved in {len(moved)} runs"
            + (f", {moved.min():+.3f} to {moved.max():+.3f}" if len(moved) else "")
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dumps", type=Path, default=Path("benchmarks/results_tmp/p10"))
    parser.add_argument("--variants", nargs="+", default=["majority", "majority_all", "group"])
    parser.add_argument("--odds", type=float, default=qc.UNDECIDED_ODDS)
    parser.add_argument("--ratio", type=float, default=qc.DECIDED_ODDS_RATIO)
    args = parser.parse_args(argv)
    qc.UNDECIDED_ODDS, qc.DECIDED_ODDS_RATIO = args.odds, args.ratio
    replay(args.dumps, args.variants)


if __name__ == "__main__":
    main()
