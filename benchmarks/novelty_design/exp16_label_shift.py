"""Label-shift correction of the query's class priors (issue #17, point 4), on the dumps of
``dump_context.py``: the wide path is a class-balanced logistic regression, so the model's
probabilities assume every reference type equally common; a query from another study (a
tumour, another tissue) has its own proportions. Does re-estimating them on the query by
expectation-maximization (Saerens, Latinne & Decaestecker 2002, Neural Computation 14:21)
fix cross-study errors without costing the rare types that the balanced weighting keeps?

    python benchmarks/novelty_design/exp16_label_shift.py [DIR]

Rules (P: the model's probabilities, rows sum to 1; the training prior is taken as uniform):

* ``em``: pi <- mean over query cells of P * pi / sum(P * pi), iterated to convergence
  (100 rounds at most), labels argmax P * pi;
* ``em conf``: pi estimated on the cells not "Unassigned" only (confidence >= 0.5: novel
  cells are kept out of the estimate), applied to every cell;
* ``em a``: the ratio pi / uniform raised to the power a (damped);
* ``em floor f``: every pi kept at least f / K (a type the query seems to lack can still
  be called).

Per pair: the median change of shared-type macro-F1 (with "Unassigned", the dumped final
confidence below 0.5) against the default's, the worst run, how many runs got better /
worse, and the share of cells whose label changed.
"""

import pickle
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp15_label_vote import print_tables, scores  # the same metrics and table

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/p5")


def em_prior(P, rows=None, n_iter=100, tol=1e-6):
    Q = P if rows is None else P[rows]
    k = P.shape[1]
    pi = np.full(k, 1.0 / k)
    for _ in range(n_iter):
        W = Q * pi
        W /= W.sum(1, keepdims=True)
        new = W.mean(0)
        if np.abs(new - pi).max() < tol:
            pi = new
            break
        pi = new
    return pi


def em(P, conf, *, only_confident=False, power=1.0, floor=0.0):
    rows = conf >= 0.5 if only_confident else None
    if rows is not None and rows.sum() < 10:
        rows = None
    pi = em_prior(P, rows)
    k = P.shape[1]
    pi = np.maximum(pi, floor / k)
    w = (pi * k) ** power
    return (P * w).argmax(1)


def default(P, conf):
    return P.argmax(1)


RULES = {"default": default, "em": em, "em conf": partial(em, only_confident=True)}
for a in (0.5, 0.25):
    RULES[f"em {a}"] = partial(em, power=a)
    RULES[f"em conf {a}"] = partial(em, only_confident=True, power=a)
for f in (0.1, 0.3):
    RULES[f"em floor {f}"] = partial(em, floor=f)
    RULES[f"em conf 0.5 floor {f}"] = partial(em, only_confident=True, power=0.5, floor=f)


def main():
    runs = defaultdict(dict)
    changed = defaultdict(list)
    for path in sorted(DIR.glob("*.pkl")):
        rec = pickle.load(open(path, "rb"))
        P = np.asarray(rec["probs"], dtype=float)
        P = P / P.sum(1, keepdims=True)
        conf = np.asarray(rec["conf"], dtype=float)
        classes = np.asarray(rec["classes"])
        key = (rec["pair"], rec["case"], rec["seed"])
        base = P.argmax(1)
        for name, rule in RULES.items():
            lab = rule(P, conf)
            runs[name][key] = scores(rec, classes[lab])
            changed[name].append((lab != base).mean())
    print_tables(runs, changed, RULES)


if __name__ == "__main__":
    main()
