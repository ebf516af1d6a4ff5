import sys, glob, numpy as np
from sklearn.metrics import roc_auc_score
for f in sorted(glob.glob(sys.argv[1] + "/*.npz")):
    d = np.load(f, allow_pickle=True); known = np.isin(d["yq"], d["classes"])
    row = [f.split("/")[-1][:-4], f"shift {float(d['shift']):.2f}"]
    for a in (0.01, 0.03, 0.05, 0.1):
        c = d["prob"] * d["pval"] / (d["pval"] + a); un = c < 0.5
        auc = roc_auc_score(known, c) if (~known).any() else np.nan
        row.append(f"a{a}: auc {auc:.3f} nov {un[~known].mean() if (~known).any() else np.nan:.2f} kn {un[known].mean():.3f}")
    print(" | ".join(row))
