"""Per-cell outputs of the default call on every case of ``cross_study.py`` (issue #17, 0.3
experiments): probabilities, novelty p-values and distances of TransAnno, forced labels and
confidences of L2 logistic regression and kNN, and (``--validation``) the model's validation
cells' probabilities. The ``exp8``-``exp10`` scripts read these.

    python benchmarks/novelty_design/dump_outputs.py --seeds 0 1 2 [--validation] [--out DIR]
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

OUT = Path("benchmarks/results_tmp/nov17")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--pairs", nargs="+", default=cs.PAIRS)
    ap.add_argument("--validation", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cs._quiet()
    store = {}
    conf_fn, train_fn = annotate.confidence_score, annotate.train_on_reference

    def capture_out(out, novelty=True):
        store["out"] = out
        return conf_fn(out, novelty=novelty)

    def capture_model(*a, **k):
        res = train_fn(*a, **k)
        store["model"] = res[0]
        return res

    annotate.confidence_score, annotate.train_on_reference = capture_out, capture_model
    for seed in args.seeds:
        for pair in args.pairs:
            for case in cs.CASES[pair]:
                t0 = time.time()
                c = cs.build(pair, case, seed)
                _, forced, _, notes = cs.run_method("transanno", c, seed, {})
                out, model = store["out"], store["model"]
                rec = {
                    "pair": pair,
                    "case": case,
                    "seed": seed,
                    "truth": c.query.obs[c.key].astype(str).to_numpy(),
                    "ref_types": np.unique(c.ref.obs[c.key].astype(str)),
                    "probs": out.probs,
                    "pvalue": out.novelty_pvalue,
                    "distance": out.distance,
                    "n_expressed": out.n_expressed,
                    "shift": out.novelty_shift,
                    "forced": forced,
                    "notes": notes,
                }
                for m in ("logreg_l2", "knn"):
                    _, f, conf, _ = cs.run_method(m, c, seed, {})
                    key = "lr" if m == "logreg_l2" else m
                    rec[f"{key}_forced"], rec[f"{key}_conf"] = f, conf
                if args.validation:
                    val = np.sort(model.validation_indices)
                    vc = model.predict_confidence(indices=val)
                    rec["val_prob"] = vc["probability"].to_numpy()
                    rec["val_p"] = vc["novelty_pvalue"].to_numpy()
                name = f"d_{pair}_{case.replace(' ', '_')}_{seed}.pkl"
                with open(args.out / name, "wb") as fh:
                    pickle.dump(rec, fh)
                print(pair, case, seed, f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
