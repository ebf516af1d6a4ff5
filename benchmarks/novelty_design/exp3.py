"""Novelty spaces: ref PCA vs joint (ref+query) HVG/PCA vs per-dataset-centred joint."""
import sys, numpy as np, warnings
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
warnings.filterwarnings("ignore")
from harness_pairs import pairs, shared
from exp import hvg, unit, knn_dist, cv_dist, qdist, pval, evaluate
from harness_pairs import lognorm
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
        classes = sorted(set(yr)); known = np.isin(yq, classes)
        h = hvg(xr); 
        lr = LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced").fit(xr[:, h], yr)
        P = lr.predict_proba(xq[:, h]); pred = lr.classes_[P.argmax(1)]; pmax = P.max(1)
        out = [evaluate("lr_prob", pmax, known, pmax < 0.5)]
        hq = hvg(xq); hj = h | hq
        spaces = {}
        spaces["ref"] = PCA(50, random_state=0).fit(xr[:, h])
        for sname in ("ref", "joint", "jointc"):
            if sname == "ref":
                zr, zq = spaces["ref"].transform(xr[:, h]), spaces["ref"].transform(xq[:, h])
            else:
                ar, aq = xr[:, hj], xq[:, hj]
                if sname == "jointc": ar, aq = ar - ar.mean(0), aq - aq.mean(0)
                n = min(len(ar), len(aq)); rng = np.random.default_rng(0)
                fit = np.vstack([ar[rng.choice(len(ar), n, replace=False)], aq[rng.choice(len(aq), n, replace=False)]])
                pca = PCA(50, random_state=0).fit(fit); zr, zq = pca.transform(ar), pca.transform(aq)
            dref = cv_dist(zr, yr, True); dq = qdist(zq, zr, yr, pred, True); p = pval(dq, dref, yr, pred)
            out.append(evaluate(f"{sname}_knn_p<.1", p, known, p < 0.1))
            conf = pmax * p / (p + 0.05); out.append(evaluate(f"{sname}_knn_prob*typ", conf, known, conf < 0.5))
            cent = {c: zr[yr == c].mean(0) for c in classes}
            cd = lambda z, labs: 1 - (unit(z) * unit(np.stack([cent[c] for c in labs]))).sum(1)
            p = pval(cd(zq, pred), cd(zr, yr), yr, pred)
            out.append(evaluate(f"{sname}_cent_p<.1", p, known, p < 0.1))
        print(f"== {name} nref {len(yr)} nq {len(yq)} novel {(~known).sum()} acc {(pred[known]==yq[known]).mean():.3f}")
        print("\n".join("   " + o for o in out), flush=True)
