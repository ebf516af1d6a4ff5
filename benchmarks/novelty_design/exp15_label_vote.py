"""Label votes in the query's own neighbourhoods (issue #17, point 4), on the dumps of
``dump_context.py``: does relabelling a cell whose query neighbourhood coherently favours
another type fix cross-study errors (tumour neutrophils called T cells) without the losses
that probability smoothing had on PBMC's intermixed types?

    python benchmarks/novelty_design/exp15_label_vote.py [DIR]

Rules (P: the model's probabilities; N(i): cell i and its 15 nearest query cells in the
query context's PCA; PN = mean of P over N(i); f = the cell's own label):

* ``vote a/b``: relabel to m = argmax PN when m != f, PN[m] >= a and PN[f] <= b;
* ``mix w``: argmax of (1 - w) P + w PN (the smoothing tried on PBMC before).

Per case: shared-type macro-F1 of the labels without "Unassigned" and with it (the dumped
final confidence below 0.5), against the default's; per pair the median change and how many
runs got better / worse; baselines from ``benchmarks/results/cross_study_all_methods.json``
and ``benchmarks/results.json`` where they ran.
"""

import pickle
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score
from sklearn.neighbors import NearestNeighbors

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/p4")
K = 15


def neighbourhood_mean(pcs, P):
    nn = NearestNeighbors(n_neighbors=min(K, len(pcs) - 1)).fit(pcs)
    idx = np.concatenate([np.arange(len(pcs))[:, None], nn.kneighbors(return_distance=False)], 1)
    return P[idx].mean(1), idx


def vote(P, PN, a, b):
    f = P.argmax(1)
    m = PN.argmax(1)
    rows = np.arange(len(f))
    change = (m != f) & (PN[rows, m] >= a) & (PN[rows, f] <= b)
    return np.where(change, m, f)


def mix(P, PN, w):
    return ((1 - w) * P + w * PN).argmax(1)


def default(P, PN):
    return P.argmax(1)


RULES = {"default": default}
for a in (0.5, 0.6, 0.7, 0.8):
    for b in (0.1, 0.2, 0.3):
        RULES[f"vote {a}/{b}"] = partial(lambda P, PN, a, b: vote(P, PN, a, b), a=a, b=b)
for w in (0.25, 0.5):
    RULES[f"mix {w}"] = partial(lambda P, PN, w: mix(P, PN, w), w=w)


def scores(rec, labels):
    truth = rec["truth"]
    known = np.isin(truth, rec["ref_types"])
    types = sorted(set(truth[known]))
    forced = labels[known]
    with_u = np.where(rec["conf"][known] < 0.5, "Unassigned", forced)
    f = f1_score(truth[known], forced, labels=types, average="macro", zero_division=0)
    u = f1_score(truth[known], with_u, labels=types, average="macro", zero_division=0)
    return f, u


def print_tables(runs: dict, changed: dict, rules) -> None:
    """Per pair, the median (worst) change of shared macro-F1 with "Unassigned" of every
    rule against ``"default"``, how many runs got better / worse and the share of cells whose
    label changed; then the default's medians per pair (``runs``: rule -> (pair, case, seed)
    -> (forced F1, F1); ``changed``: rule -> shares of cells)."""
    pairs = sorted({k[0] for k in runs["default"]})
    print("rule | " + " | ".join(pairs) + " | better/worse runs | cells changed %")
    for name in rules:
        cells = []
        n_b = n_w = 0
        for pair in pairs:
            keys = [k for k in runs["default"] if k[0] == pair]
            d_u = [runs[name][k][1] - runs["default"][k][1] for k in keys]
            n_b += sum(x > 1e-9 for x in d_u)
            n_w += sum(x < -1e-9 for x in d_u)
            cells.append(f"{np.median(d_u):+.4f} ({min(d_u):+.3f})")
        print(
            f"{name} | "
            + " | ".join(cells)
            + f" | {n_b}/{n_w} | {100 * np.mean(changed[name]):.2f}"
        )
    print()
    print("default shared macro-F1 (with Unassigned), median per pair:")
    for pair in pairs:
        keys = [k for k in runs["default"] if k[0] == pair]
        print(
            pair,
            f"{np.median([runs['default'][k][1] for k in keys]):.3f}",
            f"forced {np.median([runs['default'][k][0] for k in keys]):.3f}",
            len(keys),
        )


def main():
    runs = defaultdict(dict)  # rule -> (pair, case, seed) -> (forced F1, F1)
    changed = defaultdict(list)
    for path in sorted(DIR.glob("*.pkl")):
        rec = pickle.load(open(path, "rb"))
        P = rec["probs"]
        PN, _ = neighbourhood_mean(rec["pcs"], P)
        classes = np.asarray(rec["classes"])
        key = (rec["pair"], rec["case"], rec["seed"])
        base = P.argmax(1)
        for name, rule in RULES.items():
            lab = rule(P, PN)
            runs[name][key] = scores(rec, classes[lab])
            changed[name].append((lab != base).mean())
    print_tables(runs, changed, RULES)


if __name__ == "__main__":
    main()
