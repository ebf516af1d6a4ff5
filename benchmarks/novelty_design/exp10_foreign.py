"""A "foreign expression" novelty score on TransAnno's own labels (``dump_outputs.py``, seed 0;
issue #17, 0.3): the share of a query cell's log-expression in genes detected in at most RATE of
the reference cells of its predicted type (types with >= 20 cells), p-values from reference
cells scored 2-fold; AUROC alone and as min(p, the default's novelty p-value).

    python benchmarks/novelty_design/exp10_foreign.py [RATE] [DIR]
"""

import glob
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs

cs._quiet()
RATE = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
DIR = sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results_tmp/nov17"
rows = []


def detect(X):  # detection rate per gene
    return np.asarray((X > 0).mean(0)).ravel()


def foreign(Xq, yq, Xr, yr, rate):
    f = np.zeros(Xq.shape[0])
    tot = np.asarray(Xq.sum(1)).ravel()
    for t in np.unique(yr):
        m = yq == t
        if not m.any():
            continue
        Rt = Xr[yr == t]
        fg = detect(Rt) <= rate if Rt.shape[0] >= 20 else np.zeros(Xr.shape[1], bool)
        f[m] = np.asarray(Xq[m][:, fg].sum(1)).ravel() / np.maximum(tot[m], 1e-9)
    return f


for f in sorted(glob.glob(f"{DIR}/d_*_0.pkl")):
    r = pickle.load(open(f, "rb"))
    c = cs.build(r["pair"], r["case"], 0)
    ref, q = cs.harmonize(c.ref, c.query)
    ref, q = cs.lognorm(ref, c.log_normalized), cs.lognorm(q, c.log_normalized)
    Xr, Xq = sp.csr_matrix(ref.X), sp.csr_matrix(q.X)
    yr = ref.obs[c.key].astype(str).to_numpy()
    yq = r["forced"]
    rng = np.random.default_rng(0)
    fold = rng.integers(0, 2, Xr.shape[0])
    fr = np.zeros(Xr.shape[0])
    for k in (0, 1):
        fr[fold == k] = foreign(Xr[fold == k], yr[fold == k], Xr[fold != k], yr[fold != k], RATE)
    fq = foreign(Xq, yq, Xr, yr, RATE)
    # shift: query 10th pct vs ref
    srt = np.sort(fr)
    p = 1 - np.searchsorted(srt, fq, side="left") / len(srt)
    known = np.isin(r["truth"], r["ref_types"])
    row = dict(
        case=r["case"],
        fr_med=np.median(fr),
        fq_known_med=np.median(fq[known]),
        pknown=100 * (p[known] < 0.01).mean(),
    )
    if (~known).any():
        row.update(
            fq_novel_med=np.median(fq[~known]),
            auroc=roc_auc_score(known, -fq),
            pnovel=100 * (p[~known] < 0.01).mean(),
            auroc_comb=roc_auc_score(known, np.minimum(p, r["pvalue"])),
        )
    rows.append(row)
    print(r["case"], flush=True)
pd.set_option("display.width", 250)
print(pd.DataFrame(rows).round(3).to_string())
