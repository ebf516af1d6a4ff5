"""A calibration temperature that only softens (issue #17; the default since bd09e19).

``--dump``: runs the public default call on every case of ``cross_study.py`` (of ``--pairs``)
for each seed and stores, per query cell, the truth, the predicted type, the probabilities of
every type (at the fitted temperature), the novelty p-value, the cell-level confidence before
and after the query context's type-wise rescoring (``conf0``, ``own``), the neighbourhood mean,
the cluster's foreign-marker share, the final confidence, the k-means cluster, the model's
calibration (``cal_*``) and the query context's neighbour lists (``.nn.npy``). Run it on a source tree from before bd09e19 (the
temperature fitted down to 0.5) to replay the floor.

Replay (no ``--dump``): the package's rule ``min(max(own, neighbourhood), cap(foreign))`` on the
dumps, with the probabilities taken back to temperature ``max(T, floor)`` for each floor of
``--floors`` (the typicality factor ``own / probability`` and everything else as dumped), and
the rates per case (medians over seeds) and over runs.

    PYTHONPATH=/tmp/src_6bb58dd/src python benchmarks/novelty_design/exp24_temperature_floor.py \\
        --dump --seeds 0 1 2 --out benchmarks/results_tmp/p10
    python benchmarks/novelty_design/exp24_temperature_floor.py --out benchmarks/results_tmp/p10
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs

WITHIN = ("zilionis_heldout", "baron_heldout", "pbmc68k_heldout")
#: Pairs whose few known cells make their known rate a count (read them apart).
FEW_KNOWN = ("tabula_to_baron", "zilionis_to_baron")


def dump(seeds, out: Path, pairs=None) -> None:

    import transanno_sc.tl._annotate as annotate
    import transanno_sc.tl._query_context as qc

    cap = {}
    context_fn, neighbourhood_fn, shares_fn = (
        annotate._context,
        qc._neighbourhood,
        qc._foreign_shares,
    )

    def context(rna, model, fwd, confidence, layer, random_state):
        ctx = context_fn(rna, model, fwd, confidence, layer, random_state)
        cap.update(ctx=ctx, conf=confidence.copy(), out=fwd, model=model)
        return ctx

    def neighbourhood(pcs, confidence, parts=None):
        from sklearn.neighbors import NearestNeighbors

        if parts is None:
            n_near = min(qc.N_NEIGHBORS, len(pcs) - 1)
            nn = NearestNeighbors(n_neighbors=n_near).fit(pcs)
            cap["nn"] = nn.kneighbors(return_distance=False)
        return neighbourhood_fn(pcs, confidence, parts)

    def shares(X, clusters, forced, detection, n_clusters, **kwargs):
        cap["clusters"] = clusters.copy()
        return shares_fn(X, clusters, forced, detection, n_clusters, **kwargs)

    annotate._context, qc._neighbourhood, qc._foreign_shares = context, neighbourhood, shares
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for pair in pairs or cs.PAIRS:
            for case in cs.CASES[pair]:
                c = cs.build(pair, case, seed)
                truth = c.query.obs[c.key].astype(str).to_numpy()
                _, _, final, _ = cs.run_method("transanno", c, seed, {})  # the benchmark's call
                fwd, ctx, model = cap["out"], cap["ctx"], cap["model"]
                classes = np.asarray(model.classes_)
                d = pd.DataFrame(
                    {
                        "truth": truth,
                        "forced": classes[fwd.probs.argmax(1)],
                        "prob": fwd.probs.max(1),
                        "pvalue": fwd.novelty_pvalue,
                        "conf0": cap["conf"],
                        "own": ctx.own,
                        "neigh": ctx.neighbourhood,
                        "foreign": ctx.foreign,
                        "cluster": cap.pop("clusters"),
                        "final": final,
                    },
                    index=c.query.obs_names,
                )
                for j, name in enumerate(classes):
                    d[f"P::{name}"] = fwd.probs[:, j]
                for key in ("temperature", "n_cells"):
                    d[f"cal_{key}"] = model.calibration_[key]
                d["known_types"] = "|".join(map(str, classes))
                stem = out / f"{pair}__{case.replace(' ', '_')}__{seed}"
                d.to_csv(f"{stem}.csv.gz")
                np.save(f"{stem}.nn.npy", cap.pop("nn"))
                print(pair, case, seed, flush=True)


def at_floor(x: pd.DataFrame, floor: float) -> np.ndarray:
    """The maximum probability at temperature ``max(T, floor)`` (``T`` the dumped one)."""
    P = x.filter(like="P::").to_numpy()
    T = float(x.cal_temperature.iloc[0])
    z = np.log(np.clip(P, 1e-30, None)) * (T / max(T, floor))
    z -= z.max(1, keepdims=True)
    q = np.exp(z)
    return (q / q.sum(1, keepdims=True)).max(1)


def read_dumps(out: Path):
    """Each dump of ``out``: ``(x, nb, pair, case, seed, novel)``, with ``x`` its cells'
    frame, ``nb`` each cell and its query neighbours (rows of ``x``) and ``novel`` the cells
    whose true type the model lacks."""
    for f in sorted(out.glob("*.csv.gz")):
        x = pd.read_csv(f, index_col=0)
        nb = np.load(str(f).replace(".csv.gz", ".nn.npy"))
        nb = np.concatenate([np.arange(len(x))[:, None], nb], 1)
        pair, case, seed = f.name.removesuffix(".csv.gz").split("__")
        novel = ~x.truth.isin(x.known_types.iloc[0].split("|")).to_numpy()
        yield x, nb, pair, case, seed, novel


def replay(out: Path, floors) -> None:
    from sklearn.metrics import roc_auc_score

    rows = []
    for x, nb, pair, case, seed, novel in read_dumps(out):
        typicality = (x.own / np.maximum(x.prob, 1e-12)).to_numpy()
        cap = np.minimum(1.0, (1.0 - x.foreign.to_numpy()) / 1.0)  # 0.5 (1 - f) / (1 - 0.5)
        for floor in (None, *floors):
            own = x.own.to_numpy() if floor is None else at_floor(x, floor) * typicality
            conf = np.minimum(np.maximum(own, own[nb].mean(1)), cap)
            r = {"rule": "as dumped" if floor is None else f"T >= {floor:g}", "pair": pair}
            r.update(case=f"{pair}: {case}", seed=int(seed))
            r["known_U"] = 100 * float((conf[~novel] < 0.5).mean())
            if novel.any():
                r["novel_U"] = 100 * float((conf[novel] < 0.5).mean())
                r["auroc"] = roc_auc_score(~novel, conf)
            rows.append(r)
    df = pd.DataFrame(rows)
    print("Per case, median over seeds:")
    per_case = df.groupby(["case", "rule"])[["known_U", "novel_U", "auroc"]].median().unstack()
    print(per_case.round(2).to_string())
    print("\nOver runs:")
    for rule, g in df.groupby("rule", sort=False):
        within = g[g.pair.isin(WITHIN) & g.novel_U.notna()]
        across = g[~g.pair.isin(WITHIN) & g.novel_U.notna()]
        many = g[~g.pair.isin(FEW_KNOWN)]
        worst = many.groupby("case").known_U.median()
        print(
            f"{rule:10s} novel U median within a study {within.novel_U.median():.1f} % "
            f"({len(within)} runs), across {across.novel_U.median():.1f} % ({len(across)}); "
            f"AUROC median {g.auroc.median():.3f}; known U worst case {worst.max():.1f} % "
            f"({worst.idxmax()}), runs over 5 %: {int((many.known_U > 5).sum())}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dump", action="store_true")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--floors", nargs="+", type=float, default=[1.0, 1.25])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_tmp/p10"))
    parser.add_argument("--pairs", nargs="+", default=None, choices=cs.PAIRS, help="--dump's")
    args = parser.parse_args(argv)
    if args.dump:
        dump(args.seeds, args.out, args.pairs)
    else:
        replay(args.out, args.floors)


if __name__ == "__main__":
    main()
