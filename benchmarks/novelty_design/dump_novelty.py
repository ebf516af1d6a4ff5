"""Per-cell novelty inputs of the default call (issue #17, known types in another state):
what ``dump_context.py`` keeps, plus the cells' novelty distances (class-normalized, before
the query-level shift), the shift factor, the reference's quantiles of held-out distances,
the query context's PCA and k-means clusters, and each cluster's foreign-marker share.
``exp17_class_shift.py`` reads them.

    python benchmarks/novelty_design/dump_novelty.py --seeds 0 1 2 [--pairs ...] [--out DIR]
"""

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs

import transanno_sc.tl._annotate as annotate
import transanno_sc.tl._query_context as qc

OUT = Path("benchmarks/results_tmp/p6")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--pairs", nargs="*", default=cs.PAIRS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cs._quiet()
    store = {}
    context_fn = annotate._context
    shares_fn = qc._foreign_shares
    neighbourhood_fn = qc._neighbourhood

    def capture_context(rna, model, out, confidence, layer, random_state):
        store["distance"] = np.asarray(out.distance, dtype=float)
        store["shift"] = float(out.novelty_shift)
        store["pvalue"] = np.asarray(out.novelty_pvalue, dtype=float)
        store["n_expressed"] = np.asarray(out.n_expressed)
        store["quantiles"] = model.module.distance_quantiles.cpu().numpy().astype(float)
        store["cell_conf"] = confidence.copy()
        store["query"] = rna
        store["clusters"] = None
        store["pcs"] = None
        ctx = context_fn(rna, model, out, confidence, layer, random_state)
        store["neighbourhood"] = None if ctx is None else ctx.neighbourhood
        store["foreign"] = None if ctx is None else ctx.foreign
        return ctx

    def capture_shares(X, clusters, *a, **kw):
        store["clusters"] = np.asarray(clusters)
        return shares_fn(X, clusters, *a, **kw)

    def capture_neighbourhood(pcs, confidence, parts=None):
        store["pcs"] = np.asarray(pcs)
        return neighbourhood_fn(pcs, confidence, parts)

    annotate._context = capture_context
    qc._foreign_shares = capture_shares
    qc._neighbourhood = capture_neighbourhood

    for seed in args.seeds:
        for pair in args.pairs:
            for case in cs.CASES[pair]:
                name = f"c_{pair}_{case.replace(' ', '_')}_{seed}"
                if (args.out / f"{name}.pkl").exists():
                    continue
                t0 = time.time()
                c = cs.build(pair, case, seed)
                _, forced, conf, _ = cs.run_method("transanno", c, seed, {})
                q = store.pop("query")
                rec = {
                    "pair": pair,
                    "case": case,
                    "seed": seed,
                    "truth": c.query.obs[c.key].astype(str).to_numpy(),
                    "ref_types": np.unique(c.ref.obs[c.key].astype(str)),
                    "forced": np.asarray(forced),
                    "conf": np.asarray(conf),
                    "probs": np.asarray(q.obsm["transanno_probabilities"]),
                    "classes": np.asarray(q.uns["transanno"]["classes"], dtype=str),
                    **store,
                }
                with open(args.out / f"{name}.pkl", "wb") as fh:
                    pickle.dump(rec, fh)
                print(f"{name}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
