"""Per-cell novelty inputs of the default call (issue #17, known types in another state):
what ``dump_context.py`` keeps, plus the cells' novelty distances (class-normalized, before
the query-level shift), the shift factor, the reference's quantiles of held-out distances,
the query context's PCA and k-means clusters, each cluster's foreign-marker share and the
inputs of that share (``shares_inputs``: the clusters' sizes, sums and detected counts, and
the reference's per-type detection of the same genes). ``exp17_class_shift.py`` and
``exp18_evidence_product.py`` read them; ``exp19_depth_foreign.py`` needs the ``run.py``
tasks too (``--tasks``). With ``--type-means`` the reference's per-type ``detection`` in
``shares_inputs`` has the types' mean log-normalized expression of the same genes stacked
under it (rows ``n_types:``; the package reads the first ``n_types`` rows only), for
``exp20_expression_foreign.py``.

    python benchmarks/novelty_design/dump_novelty.py --seeds 0 1 2 [--pairs ...] [--out DIR]
    python benchmarks/novelty_design/dump_novelty.py --tasks zilionis_healthy_tumor ...
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cross_study as cs
from dump_context import annotate_task, dump_once, outputs_record

import transanno_sc.data as data
import transanno_sc.tl._annotate as annotate
import transanno_sc.tl._query_context as qc

OUT = Path("benchmarks/results_tmp/p6")
DETECTION_FN = data.type_detection


def detection_and_means(X, codes, n_types):
    """:func:`~transanno_sc.data.type_detection` with the types' mean log1p expression
    (normalized to 10,000 per cell; log1p input turned back first) stacked under it."""
    detection = DETECTION_FN(X, codes, n_types)
    X = sp.csr_matrix(X, dtype=np.float32)
    scale = "log1p" if X.data.size and X.data.max() < 30 and (X.data % 1).any() else "counts"
    L = qc._log_normalize(X, scale)
    keep = codes >= 0
    onehot = sp.csr_matrix(
        (np.ones(keep.sum()), (codes[keep], np.flatnonzero(keep))), shape=(n_types, len(codes))
    )
    n = np.maximum(np.bincount(codes[keep], minlength=n_types), 1)
    means = np.asarray((onehot @ L).todense()) / n[:, None]
    return np.concatenate([detection, means.astype(np.float32)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--pairs", nargs="*", default=cs.PAIRS)
    ap.add_argument("--tasks", nargs="*", default=[])
    ap.add_argument("--task-seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--type-means", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cs._quiet()
    store = {}
    context_fn = annotate._context
    shares_fn = qc._foreign_shares
    sums_fn = qc._shares_of_sums
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

    def capture_sums(size, sums, n_detected, clusters, forced, detection):
        # the query's clusters: the first call of a run (parts of flagged clusters follow)
        if "shares_inputs" in store:
            return sums_fn(size, sums, n_detected, clusters, forced, detection)
        store["shares_inputs"] = {
            "size": size,
            "sums": sums,
            "n_detected": n_detected,
            "forced": np.asarray(forced),
            "detection": detection,
        }
        return sums_fn(size, sums, n_detected, clusters, forced, detection)

    def capture_neighbourhood(pcs, confidence, parts=None):
        store["pcs"] = np.asarray(pcs)
        return neighbourhood_fn(pcs, confidence, parts)

    annotate._context = capture_context
    if args.type_means:
        data.type_detection = detection_and_means
    qc._foreign_shares = capture_shares
    qc._neighbourhood = capture_neighbourhood
    qc._shares_of_sums = capture_sums

    def record(kind, pair, case, seed, truth, ref_types, query):
        rec = {**outputs_record(kind, pair, case, seed, truth, ref_types, query), **store}
        rec.pop("query", None)
        store.clear()
        return rec

    for seed in args.seeds:
        for pair in args.pairs:
            for case in cs.CASES[pair]:

                def cross(pair=pair, case=case, seed=seed):
                    c = cs.build(pair, case, seed)
                    cs.run_method("transanno", c, seed, {})
                    truth = c.query.obs[c.key].astype(str).to_numpy()
                    ref_types = np.unique(c.ref.obs[c.key].astype(str))
                    return record("cross", pair, case, seed, truth, ref_types, store["query"])

                dump_once(args.out, f"c_{pair}_{case.replace(' ', '_')}_{seed}", cross)

    for seed in args.task_seeds:
        for task in args.tasks:

            def task_run(task=task, seed=seed):
                truth, ref_types, blind = annotate_task(task, seed)
                return record("task", task, task, seed, truth, ref_types, blind)

            dump_once(args.out, f"t_{task}_{seed}", task_run)


if __name__ == "__main__":
    main()
