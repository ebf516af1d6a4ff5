"""How the two novelty signals combine (issue #17, point 3), on the dumps of
``dump_novelty.py`` (cross-study cases, with the cells' distances: the type-wise shift of
36fc7c3 is replayed) and ``dump_context.py`` (every case and every ``run.py`` task; no
distances there, so their cell-level confidences are dbda787's, without the type-wise shift,
which only raises them: known "Unassigned" there is an upper bound).

Today a cell's confidence is ``min(max(own, neighbourhood), cap(f))``: the foreign-marker
share ``f`` of its cluster is a gate of its own, ``cap(f) = min(1, (1 - f) / (2 (1 - F)))``
with ``F = 0.5``. A cluster with some evidence from both signals (its markers 45 % foreign,
its cells farther than most reference cells) passes both gates. Rules:

* ``default``: as in the package;
* ``min F``: the same with another ``F``;
* ``product g``: ``max(own, neighbourhood) x m(f)``, ``m(f) = min(1, (1 - f) / (1 - g))``
  (1 up to ``f = g``, 0 at ``f = 1``): the foreign share is one more factor of the
  confidence, as the typicality already is one of ``own`` (``g = 0``: ``m = 1 - f``, the
  default's cap as a factor instead of a ceiling).

Result (60 runs at 2096dc0's inputs, ``results_tmp/p6`` + ``p5``): every product and a lower
``F`` catch more novel cells only by leaving more known cells "Unassigned" where a known type
is met in another tissue (Zilionis -> Tabula Muris: thymocytes and marrow precursors,
known "Unassigned" 4.5 % -> 7.8-10.7 %); not adopted.

Per pair: median change of shared macro-F1 (with "Unassigned") against the default, known
"Unassigned" % (median of the pair's runs), and over the novel-type runs the median novel
"Unassigned" % and AUROC.

    python benchmarks/novelty_design/exp18_evidence_product.py [P6_DIR] [P5_DIR]
"""

import pickle
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp17_class_shift import K, cell_confidence, rule_class, scores

P6 = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/p6")
P5 = Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results_tmp/p5")


def cap_min(f, F=0.5):
    return np.minimum(1.0, 0.5 * (1.0 - f) / (1.0 - F))


def combine_min(own, neigh, f, F=0.5):
    return np.minimum(np.maximum(own, neigh), cap_min(f, F))


def combine_product(own, neigh, f, g=0.0):
    return np.maximum(own, neigh) * np.minimum(1.0, (1.0 - f) / (1.0 - g))


RULES = {"default": combine_min}
for F in (0.4, 0.45):
    RULES[f"min F={F}"] = lambda o, n, f, F=F: combine_min(o, n, f, F)
for g in (0.0, 0.1, 0.2, 0.25):
    RULES[f"product g={g}"] = lambda o, n, f, g=g: combine_product(o, n, f, g)


def neighbours(pcs):
    nn = NearestNeighbors(n_neighbors=min(K, len(pcs) - 1)).fit(pcs)
    return np.concatenate([np.arange(len(pcs))[:, None], nn.kneighbors(return_distance=False)], 1)


def inputs():
    """(key, rec, own, neighbourhood, foreign) per run: p6's with the type-wise shift
    replayed; p5's tasks (and cases p6 lacks) as dumped."""
    seen = set()
    for path in sorted(P6.glob("c_*.pkl")):
        rec = pickle.load(open(path, "rb"))
        key = (rec["pair"], rec["case"], rec["seed"])
        if rec["neighbourhood"] is None:
            continue
        own = cell_confidence(rec, rule_class(rec, 50, 0.25))
        neigh = own[neighbours(rec["pcs"])].mean(1)
        seen.add(key)
        yield key, rec, own, neigh, rec["foreign"]
    for path in sorted(P5.glob("*.pkl")):
        rec = pickle.load(open(path, "rb"))
        key = (rec["pair"], rec.get("case", ""), rec["seed"])
        if key in seen or rec.get("neighbourhood") is None:
            continue
        yield key, rec, rec["cell_conf"], rec["neighbourhood"], rec["foreign"]


def main():
    res = defaultdict(dict)
    for key, rec, own, neigh, f in inputs():
        zero = rec["conf"] == 0.0
        for name, rule in RULES.items():
            conf = rule(own, neigh, f)
            conf[zero] = 0.0
            res[name][key] = scores(rec, conf)
    pairs = sorted({k[0] for k in res["default"]})
    print("rule | " + " | ".join(pairs) + " | known U % worst pair | novel U % median | AUROC")
    print("--- | " + " | ".join("---" for _ in pairs) + " | --- | --- | ---")
    for name in RULES:
        cells, worst, novel, aucs = [], 0.0, [], []
        for pair in pairs:
            keys = [k for k in res["default"] if k[0] == pair]
            d = [res[name][k][0] - res["default"][k][0] for k in keys]
            ku = np.median([res[name][k][1] for k in keys])
            worst = max(worst, ku)
            cells.append(f"{np.median(d):+.3f} / {min(d):+.3f} (U {ku:.1f})")
            novel += [res[name][k][2] for k in keys if np.isfinite(res[name][k][2])]
            aucs += [res[name][k][3] for k in keys if np.isfinite(res[name][k][3])]
        print(
            f"{name} | "
            + " | ".join(cells)
            + f" | {worst:.1f} | {np.median(novel):.0f} ({len(novel)}) | {np.median(aucs):.3f}"
        )
    print()
    print("novel cases, median over seeds: novel U % / known U % per rule")
    print("case | " + " | ".join(RULES))
    for case in sorted({k[:2] for k in res["default"]}):
        keys = [k for k in res["default"] if k[:2] == case]
        vals = [
            f"{np.median([res[n][k][2] for k in keys]):.0f} / "
            f"{np.median([res[n][k][1] for k in keys]):.1f}"
            for n in RULES
        ]
        print(" | ".join([" ".join(case), *vals]))


if __name__ == "__main__":
    main()
