"""Which "Unassigned" rule on the default call's outputs (``dump_outputs.py``; issue #17, 0.3).

Recomputes, without retraining, the labels of other rules from the dumped probability ``prob``
and novelty p-value ``p`` (the default: ``prob * p / (p + 0.03) < 0.5``):

* ``power``: ``prob**g * p / (p + alpha) < 0.5`` (g = 0: the novelty p-value alone);
* ``threshold``: ``prob * p / (p + alpha) < t``;
* ``validation``: the default with the threshold lowered to the ``q`` quantile of the
  validation cells' probabilities where that is below 0.5 (needs ``--validation`` dumps).

Per rule: median over pairs of (shared macro-F1 - the better of L2 logistic regression and
kNN in the same dump), its minimum and the number of pairs behind, the largest and the median
per-pair percentage of known cells "Unassigned", and over the cases with a novel type the
median novel "Unassigned" and AUROC.

    python benchmarks/novelty_design/exp9_rules.py [DIR]
"""

import glob
import pickle
import sys

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score

U = "Unassigned"
DIR = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results_tmp/nov17"


def evaluate(r, pred, score):
    t = r["truth"]
    known = np.isin(t, r["ref_types"])
    labels = sorted(set(t[known]))
    f1 = f1_score(t[known], pred[known], labels=labels, average="macro", zero_division=0)
    o = {"f1": f1, "known": 100 * np.mean(pred[known] == U)}
    if (~known).any():
        o["novel"] = 100 * np.mean(pred[~known] == U)
        o["auroc"] = roc_auc_score(known, score)
    return o


def rules(r):
    prob = r["probs"].astype(float).max(1)
    p = r["pvalue"].astype(float)
    zero = r["n_expressed"] == 0
    for g in (1.0, 0.75, 0.5, 0.25, 0.0):
        for a in (0.01, 0.03, 0.05, 0.1):
            yield ("power", f"g={g}", a), prob**g * p / (p + a), 0.5
    for t in (0.25, 0.3, 0.35, 0.4):
        for a in (0.03, 0.05, 0.1, 0.15):
            yield ("threshold", f"t={t}", a), prob * p / (p + a), t
    if "val_prob" in r:
        for q in (0.02, 0.05, 0.1):
            t = min(0.5, float(np.quantile(r["val_prob"], q)))
            yield ("validation", f"q={q}", 0.03), prob * p / (p + 0.03), t
    del zero


def result_row(r, rule, o, best) -> dict:
    """One table row: the dump's case, the rule, its metrics ``o`` and its gap to ``best``."""
    return {
        "pair": r["pair"],
        "case": r["case"],
        "seed": r["seed"],
        "rule": rule,
        "gap": o["f1"] - best,
        **o,
    }


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per rule: median and minimum over pairs of the per-pair median gap, pairs behind, the
    worst and median per-pair known "Unassigned" %, and over the cases with a novel type the
    median novel "Unassigned" % and AUROC (``df``: one row per rule, case and seed)."""
    per_pair = df.groupby(["rule", "pair"])[["gap", "known", "novel", "auroc"]].median()
    out = per_pair.groupby("rule").agg(
        gap_median=("gap", "median"),
        gap_min=("gap", "min"),
        pairs_behind=("gap", lambda x: int((x < 0).sum())),
        known_max=("known", "max"),
        known_median=("known", "median"),
    )
    novel = (
        df[df.novel.notna()]
        .groupby("rule")
        .agg(novel_median=("novel", "median"), auroc_median=("auroc", "median"))
    )
    pd.set_option("display.width", 250)
    return out.join(novel)


def main():
    rows = []
    for f in sorted(glob.glob(f"{DIR}/d_*.pkl")):
        with open(f, "rb") as fh:
            r = pickle.load(fh)
        zero = r["n_expressed"] == 0
        best = max(
            evaluate(
                r,
                np.where(r[f"{m}_conf"] < 0.5, U, r[f"{m}_forced"]).astype(object),
                r[f"{m}_conf"],
            )["f1"]
            for m in ("lr", "knn")
        )
        for (family, name, a), score, t in rules(r):
            score = score.copy()
            score[zero] = 0
            pred = np.where(score < t, U, r["forced"]).astype(object)
            o = evaluate(r, pred, score)
            rows.append(result_row(r, f"{family} {name} alpha={a}", o, best))
    print(summary(pd.DataFrame(rows)).round(3).to_string())


if __name__ == "__main__":
    main()
