import sys, glob, numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
import scanpy as sc, anndata as ad, warnings
warnings.filterwarnings("ignore")
K = 10

def hvg(xr, n=2000):
    a = ad.AnnData(xr); sc.pp.highly_variable_genes(a, n_top_genes=min(n, xr.shape[1]), flavor="seurat")
    return a.var.highly_variable.to_numpy()

def unit(z): return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

def knn_dist(zq, zr, k=K, exclude_self=False):
    sim = unit(zq) @ unit(zr).T
    kk = k + int(exclude_self)
    top = -np.sort(-sim, axis=1)[:, :kk]
    if exclude_self: top = top[:, 1:]
    return 1 - top.mean(1)

def cv_dist(zr, yr, cond, k=K, nfold=5):
    """held-out distance of every reference cell (5-fold): global or to its own class"""
    d = np.zeros(len(yr)); skf = StratifiedKFold(nfold, shuffle=True, random_state=0)
    for tr, te in skf.split(zr, yr):
        if cond:
            for c in np.unique(yr[te]):
                m = yr[te] == c; r = tr[yr[tr] == c]
                d[te[m]] = knn_dist(zr[te[m]], zr[r], k)
        else:
            d[te] = knn_dist(zr[te], zr[tr], k)
    return d

def qdist(zq, zr, yr, pred, cond, k=K):
    if not cond: return knn_dist(zq, zr, k)
    d = np.zeros(len(zq))
    for c in np.unique(pred):
        m = pred == c; r = yr == c
        d[m] = knn_dist(zq[m], zr[r], k)
    return d

def pval(dq, dref, yref=None, pred=None):
    if yref is None:
        s = np.sort(dref); return 1 - np.searchsorted(s, dq, side="left") / (len(s) + 1)
    p = np.zeros(len(dq))
    for c in np.unique(pred):
        s = np.sort(dref[yref == c]); m = pred == c
        p[m] = (1 + len(s) - np.searchsorted(s, dq[m], side="left")) / (len(s) + 1)
    return p

def evaluate(name, score, known, un):
    auc = roc_auc_score(known, score) if (~known).any() else np.nan
    nov = un[~known].mean() if (~known).any() else np.nan
    return f"{name}: auc {auc:.3f} nov_un {nov:.2f} known_un {un[known].mean():.3f}"

if __name__ == '__main__':
    files = sys.argv[1:] or sorted(glob.glob("benchmarks/results_tmp/nov/*.npz"))
    for f in files:
        d = np.load(f, allow_pickle=True)
        classes = list(d["classes"]); yq = d["y_q"]; yr = d["y_ref"]; known = np.isin(yq, classes)
        cls = np.array(classes); pred = cls[d["probs_q"].argmax(1)]
        acc = (pred[known] == yq[known]).mean()
        print(f"== {f.split('/')[-1]} nref {len(yr)} nq {len(yq)} novel {(~known).sum()} acc_known {acc:.3f}")
        out = []
        out.append(evaluate("ta_conf", d["conf_q"], known, d["conf_q"] < 0.5))
        pmax = d["probs_q"].max(1); out.append(evaluate("ta_prob", pmax, known, pmax < 0.5))
        xr, xq = d["xr"], d["xq"]
        h = hvg(xr); xr_h, xq_h = xr[:, h], xq[:, h]
        lr = LogisticRegression(C=0.1, max_iter=1000).fit(xr_h, yr); plr = lr.predict_proba(xq_h).max(1)
        out.append(evaluate("lr_prob", plr, known, plr < 0.5))
        from sklearn.multiclass import OneVsRestClassifier
        for C in (0.1, 1.0):
            ovr = OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000)).fit(xr_h, yr)
            po = ovr.predict_proba(xq_h) if False else np.column_stack([e.predict_proba(xq_h)[:, 1] for e in ovr.estimators_])
            oc = list(ovr.classes_); po_pred = po[:, [oc.index(c) for c in pred]].diagonal() if False else po[np.arange(len(pred)), [oc.index(c) for c in pred]]
            out.append(evaluate(f"ovr{C}_pred", po_pred, known, po_pred < 0.5))
            out.append(evaluate(f"ovr{C}_max", po.max(1), known, po.max(1) < 0.5))
            comb = pmax * po_pred
            out.append(evaluate(f"ta_prob*ovr{C}", comb, known, comb < 0.5))
        pca = PCA(50, random_state=0).fit(xr_h); zr, zq = pca.transform(xr_h), pca.transform(xq_h)
        for cond in (False, True):
            dref = cv_dist(zr, yr, cond); dq = qdist(zq, zr, yr, pred, cond)
            p = pval(dq, dref, yr if cond else None, pred if cond else None)
            out.append(evaluate(f"pca_{'cond' if cond else 'glob'}_p<.01", p, known, p < 0.01))
            for a in ((0.05, 0.1, 0.2) if cond else (0.05,)):
                out.append(evaluate(f"pca_{'cond' if cond else 'glob'}_p<{a}", p, known, p < a))
        # centroid cosine distance, class-conditional, in-sample calibration
        cent = {c: zr[yr == c].mean(0) for c in classes}
        def cdist(z, labs):
            C = np.stack([cent[c] for c in labs]); return 1 - (unit(z) * unit(C)).sum(1)
        dref = cdist(zr, yr); dq = cdist(zq, pred); p = pval(dq, dref, yr, pred)
        for a in (0.05, 0.1, 0.2):
            out.append(evaluate(f"cent_p<{a}", p, known, p < a))
        # mahalanobis, shared covariance, in PCA space (not unit)
        mu = np.stack([zr[yr == c].mean(0) for c in classes]); R = zr - mu[[classes.index(c) for c in yr]]
        S = np.cov(R.T) + 1e-3 * np.eye(R.shape[1]); Si = np.linalg.inv(S)
        def maha(z, labs):
            D = z - mu[[classes.index(c) for c in labs]]; return np.einsum("ij,jk,ik->i", D, Si, D)
        dref = maha(zr, yr); dq = maha(zq, pred); p = pval(dq, dref, yr, pred)
        for a in (0.01, 0.05, 0.1):
            out.append(evaluate(f"maha_p<{a}", p, known, p < a))
        # latent space
        lr_, lq = d["lat_r"], d["lat_q"]
        for cond in (False, True):
            dref = cv_dist(lr_, yr, cond); dq = qdist(lq, lr_, yr, pred, cond)
            p = pval(dq, dref, yr if cond else None, pred if cond else None)
            out.append(evaluate(f"lat_{'cond' if cond else 'glob'}_p<.05", p, known, p < 0.05))
        print("\n".join("   " + o for o in out), flush=True)
