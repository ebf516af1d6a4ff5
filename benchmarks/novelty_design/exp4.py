"""Anchor (MNN) based transductive novelty."""
import sys, numpy as np, warnings, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
warnings.filterwarnings("ignore")
from harness_pairs import pairs, shared, lognorm
from exp import hvg, unit, evaluate
from sklearn.linear_model import LogisticRegression
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
import scipy.sparse as sp

def knn(a, b, k):
    nn = NearestNeighbors(n_neighbors=min(k, len(b))).fit(b); d, i = nn.kneighbors(a); return d, i

def anchor_scores(xr, xq, yr, pred, k=20, kq=15, filt=3.0, center=False):
    hj = hvg(xr) | hvg(xq)
    ar, aq = unit(xr[:, hj]), unit(xq[:, hj])
    if center: ar, aq = ar - ar.mean(0), aq - aq.mean(0)
    n = min(len(ar), len(aq)); rng = np.random.default_rng(0)
    pca = PCA(30, random_state=0).fit(np.vstack([ar[rng.choice(len(ar), n, False)], aq[rng.choice(len(aq), n, False)]]))
    zr, zq = unit(pca.transform(ar)), unit(pca.transform(aq))
    dq2r, iq2r = knn(zq, zr, k); dr2q, ir2q = knn(zr, zq, k)
    r2q = [set(row) for row in ir2q]
    pairs_q, pairs_r, pd_ = [], [], []
    for i in range(len(zq)):
        for d, j in zip(dq2r[i], iq2r[i]):
            if i in r2q[j]: pairs_q.append(i); pairs_r.append(j); pd_.append(d)
    pairs_q, pairs_r, pd_ = map(np.array, (pairs_q, pairs_r, pd_))
    if len(pd_):
        keep = pd_ <= filt * np.median(pd_); pairs_q, pairs_r = pairs_q[keep], pairs_r[keep]
    # anchored to predicted class
    anch = np.zeros(len(zq))
    lab = yr[pairs_r]
    for i, l in zip(pairs_q, lab):
        if l == pred[i]: anch[i] = 1
    # query-only space
    hq = hvg(xq); bq = unit(xq[:, hq]); zqq = PCA(30, random_state=0).fit_transform(bq)
    _, iqq = knn(zqq, zqq, kq)
    score = anch[iqq].mean(1)
    return score, len(pairs_q)

if __name__ == '__main__':
    only = sys.argv[1:]
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
        out = [evaluate("lr_prob", pmax, known, pmax < 0.5)]
        for k, filt, center in ((20, 3.0, False), (20, 2.0, False), (10, 3.0, False), (20, 3.0, True)):
            s, npairs = anchor_scores(xr, xq, yr, pred, k=k, filt=filt, center=center)
            for th in (0.1, 0.2):
                out.append(evaluate(f"anch k{k} f{filt} c{int(center)} <{th} (pairs {npairs})", s + 1e-3 * pmax, known, s < th))
            c = pmax * np.minimum(1, s / 0.2)
            out.append(evaluate(f"  prob*min(1,s/.2)<.5", c, known, c < 0.5))
        print(f"== {name} nref {len(yr)} nq {len(yq)} novel {(~known).sum()} acc {(pred[known]==yq[known]).mean():.3f} {time.time()-t0:.0f}s")
        print("\n".join("   " + o for o in out), flush=True)
