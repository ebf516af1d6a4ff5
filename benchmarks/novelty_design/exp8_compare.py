"""Compare two ``dump_outputs.py`` runs case by case (e.g. the default against the joint
novelty space of ``joint_space.patch``): shared macro-F1 at the default threshold, known and
novel "Unassigned" (%), AUROC of the confidence, query shift factor.

    python benchmarks/novelty_design/exp8_compare.py DIR_A DIR_B
"""

import glob
import os
import pickle
import sys

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score

U = "Unassigned"


def rows(directory, tag, only=None):
    for f in sorted(glob.glob(f"{directory}/d_*.pkl")):
        if only is not None and os.path.basename(f) not in only:
            continue
        with open(f, "rb") as fh:
            r = pickle.load(fh)
        prob, p = r["probs"].astype(float).max(1), r["pvalue"].astype(float)
        alpha = float(r["notes"].get("novelty_alpha", 0.03))
        conf = prob * p / (p + alpha)
        conf[r["n_expressed"] == 0] = 0
        t = r["truth"]
        known = np.isin(t, r["ref_types"])
        pred = np.where(conf < 0.5, U, r["forced"])
        o = {
            "run": tag,
            "pair": r["pair"],
            "case": r["case"],
            "seed": r["seed"],
            "shift": r["shift"],
            "f1": f1_score(
                t[known],
                pred[known],
                labels=sorted(set(t[known])),
                average="macro",
                zero_division=0,
            ),
            "known": 100 * np.mean(pred[known] == U),
        }
        if (~known).any():
            o.update(novel=100 * np.mean(pred[~known] == U), auroc=roc_auc_score(known, conf))
        yield o


def main():
    a, b = sys.argv[1], sys.argv[2]
    both = {os.path.basename(f) for f in glob.glob(f"{a}/d_*.pkl")} & {
        os.path.basename(f) for f in glob.glob(f"{b}/d_*.pkl")
    }
    df = pd.DataFrame([*rows(a, "A", both), *rows(b, "B", both)])
    pd.set_option("display.width", 250)
    print(
        df.pivot_table(
            index=["pair", "case"], columns="run", values=["f1", "known", "novel", "auroc", "shift"]
        )
        .round(3)
        .to_string()
    )


if __name__ == "__main__":
    main()
