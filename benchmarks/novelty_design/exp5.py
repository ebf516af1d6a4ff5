"""Class-conditional kNN distance, class-normalized pooled p-value, query-level shift factor."""
import sys, numpy as np, warnings, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
warnings.filterwarnings("ignore")
from harness_pairs import pairs, shared, lognorm
from exp import hvg, unit, knn_dist, cv_dist, qdist, evaluate
from sklearn.linear_model import LogisticRegression
from sklearn.decomposition import PCA

def pooled_p(rq, rref):
    s = np.sort(rref); return (1 + len(s) - np.searchsorted(s, rq, side="left")) / (len(s) + 1)

if __name__ == '__main__':
    only = sys.argv[1:]
    summary = {}
    for name, ref, query in pairs():
        if only and not any(name.startswith(o) for o in only): continue
        t0 = time.time()
        scale = "log1p" if name.startswith("pbmc") else "counts"
        ref, query = shared(ref, query); ref.uns["scale"] = query.uns["scale"] = scale
        xr, xq = lognorm(ref), lognorm(query)
        yr = ref.obs.cell_type.astype(str).to_numpy(); yq = query.obs.cell_type.astype(str).to_numpy()
        classes = sorted(set(yr)); known = np.isin(yq, classes)
        h = hvg(xr)
        lr = LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced").fit(xr[:, h], yr)
        P = lr.predict_proba(xq[:, h]); pred = lr.classes_[P.argmax(1)]; pmax = P.max(1)
        out = {"lr_prob": (pmax, pmax < 0.5)}
        pca = PCA(50, random_state=0).fit(xr[:, h]); zr, zq = pca.transform(xr[:, h]), pca.transform(xq[:, h])
        dref = cv_dist(zr, yr, True); dq = qdist(zq, zr, yr, pred, True)
        med = {c: np.median(dref[yr == c]) for c in classes}
        rref = dref / np.array([med[c] for c in yr]); rq = dq / np.array([med[c] for c in pred])
        p0 = pooled_p(rq, rref)
        for q in (0.1, 0.25):
            f = max(1.0, np.quantile(rq, q) / np.quantile(rref, q))
            p = pooled_p(rq / f, rref)
            for a in (0.05, 0.1):
                c = pmax * p / (p + a)
                out[f"shift q{q} f={f:.2f} prob*typ a{a}"] = (c, c < 0.5)
            out[f"shift q{q} p<.05"] = (p, p < 0.05)
        for a in (0.05, 0.1):
            c = pmax * p0 / (p0 + a); out[f"noshift prob*typ a{a}"] = (c, c < 0.5)
        print(f"== {name} nref {len(yr)} nq {len(yq)} novel {(~known).sum()} acc {(pred[known]==yq[known]).mean():.3f} {time.time()-t0:.0f}s")
        for k, (s, u) in out.items():
            print("   " + evaluate(k, s, known, u), flush=True)
