import sys, numpy as np, warnings, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
warnings.filterwarnings("ignore")
from harness_pairs import pairs, shared, lognorm
from exp import hvg, cv_dist, qdist, evaluate
from exp5 import pooled_p
from sklearn.linear_model import LogisticRegression
from sklearn.decomposition import PCA
if __name__ == '__main__':
    only = sys.argv[1:]
    for name, ref, query in pairs():
        if only and not any(name.startswith(o) for o in only): continue
        scale = "log1p" if name.startswith("pbmc") else "counts"
        ref, query = shared(ref, query); ref.uns["scale"] = query.uns["scale"] = scale
        xr, xq = lognorm(ref), lognorm(query)
        yr = ref.obs.cell_type.astype(str).to_numpy(); yq = query.obs.cell_type.astype(str).to_numpy()
        classes = sorted(set(yr)); known = np.isin(yq, classes); h = hvg(xr)
        lr = LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced").fit(xr[:, h], yr)
        P = lr.predict_proba(xq[:, h]); pred = lr.classes_[P.argmax(1)]; pmax = P.max(1)
        print(f"== {name} novel {(~known).sum()}")
        for nc in (10, 20, 50):
            pca = PCA(nc, random_state=0).fit(xr[:, h]); zr, zq = pca.transform(xr[:, h]), pca.transform(xq[:, h])
            for k in (10, 30):
                dref = cv_dist(zr, yr, True, k=k); dq = qdist(zq, zr, yr, pred, True, k=k)
                med = {c: np.median(dref[yr == c]) for c in classes}
                rref = dref / np.array([med[c] for c in yr]); rq = dq / np.array([med[c] for c in pred])
                p = pooled_p(rq, rref); c = pmax * p / (p + 0.05)
                print("   " + evaluate(f"nc{nc} k{k} prob*typ a.05", c, known, c < 0.5), flush=True)
