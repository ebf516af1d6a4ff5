"""Per-cell outputs of the default call with the query context's inputs (issue #17, label
votes in the query): for every case of ``cross_study.py`` and every task of ``run.py``, the
probabilities, the cell-level and final confidences, the query PCA the context uses, and the
truth. ``exp15_label_vote.py`` reads them.

    python benchmarks/novelty_design/dump_context.py --seeds 0 1 2 [--out DIR]
    python benchmarks/novelty_design/dump_context.py --tasks pbmc68k_30 --task-seeds 0 1 2 3
"""

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs
import run as rb

import transanno_sc.tl._annotate as annotate
import transanno_sc.tl._query_context as qc

OUT = Path("benchmarks/results_tmp/p4")


def outputs_record(kind, pair, case, seed, truth, ref_types, query) -> dict:
    """What every dump keeps of an annotated ``query``: the run's names, the truth, the
    reference's types, the probabilities, the forced labels and the final confidence."""
    probs = np.asarray(query.obsm["transanno_probabilities"])
    classes = np.asarray(query.uns["transanno"]["classes"], dtype=str)
    return {
        "kind": kind,
        "pair": pair,
        "case": case,
        "seed": seed,
        "truth": truth,
        "ref_types": ref_types,
        "forced": classes[probs.argmax(1)],
        "conf": query.obs["transanno_confidence"].to_numpy(dtype=float),
        "probs": probs,
        "classes": classes,
    }


def annotate_task(task: str, seed: int):
    """``run.py``'s ``task`` for ``seed``: a model trained as ``run.py`` trains it, then the
    default call on the blinded query; returns the truth, the reference's types and the
    annotated query."""
    import transanno_sc as ta

    ref, query, key = rb.task(task, seed)
    truth = query.obs[key].astype(str).to_numpy()
    batches = ref.obs["batch"].astype(str).to_numpy() if "batch" in ref.obs else None
    ref = ref.copy()
    ref.obs = ref.obs[[key]].copy()
    blind = rb._blind(query)
    for a in (ref, blind):
        for k in list(a.layers):
            del a.layers[k]
    model = rb.train_transanno(ref, key, seed, ref_batches=batches)
    ta.tl.transanno_annotate(blind, model=model)
    return truth, np.unique(ref.obs[key].astype(str)), blind


def dump_once(out: Path, name: str, make) -> None:
    """``make()``'s record pickled to ``out/name.pkl`` and its time printed, unless that file
    exists already (an interrupted run resumes where it stopped)."""
    path = out / f"{name}.pkl"
    if path.exists():
        return
    t0 = time.time()
    rec = make()
    with open(path, "wb") as fh:
        pickle.dump(rec, fh)
    print(f"{name}: {time.time() - t0:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--pairs", nargs="*", default=cs.PAIRS)
    ap.add_argument("--tasks", nargs="*", default=rb.TASKS)
    ap.add_argument("--task-seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cs._quiet()
    store = {}
    context_fn = qc.query_context

    def capture(query, **kw):
        X = qc._log_normalized(query, kw["layer"], kw["scale"])
        store["pcs"] = qc._pca(X, kw["seed"]).pcs
        store["cell_conf"] = kw["confidence"].copy()
        store["query"] = query
        ctx = context_fn(query, **kw)
        store["neighbourhood"] = None if ctx is None else ctx.neighbourhood
        store["foreign"] = None if ctx is None else ctx.foreign
        return ctx

    annotate.qc.query_context = capture

    for seed in args.seeds:
        for pair in args.pairs:
            for case in cs.CASES[pair]:

                def cross(pair=pair, case=case, seed=seed):
                    c = cs.build(pair, case, seed)
                    _, forced, conf, _ = cs.run_method("transanno", c, seed, {})
                    rec = {
                        "kind": "cross",
                        "pair": pair,
                        "case": case,
                        "seed": seed,
                        "truth": c.query.obs[c.key].astype(str).to_numpy(),
                        "ref_types": np.unique(c.ref.obs[c.key].astype(str)),
                        "forced": np.asarray(forced),
                        "conf": np.asarray(conf),
                        **{k: store[k] for k in ("pcs", "cell_conf", "neighbourhood", "foreign")},
                    }
                    q = store.pop("query")
                    rec["probs"] = np.asarray(q.obsm["transanno_probabilities"])
                    rec["classes"] = np.asarray(q.uns["transanno"]["classes"], dtype=str)
                    return rec

                dump_once(args.out, f"c_{pair}_{case.replace(' ', '_')}_{seed}", cross)
    for seed in args.task_seeds:
        for task in args.tasks:

            def task_run(task=task, seed=seed):
                truth, ref_types, blind = annotate_task(task, seed)
                rec = outputs_record("task", task, task, seed, truth, ref_types, blind)
                rec.update({k: store[k] for k in ("pcs", "cell_conf", "neighbourhood", "foreign")})
                return rec

            dump_once(args.out, f"t_{task}_{seed}", task_run)


if __name__ == "__main__":
    main()
