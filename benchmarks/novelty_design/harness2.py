"""Real default path: tl.transanno_annotate per pair; dump probs + novelty p-values."""
import sys, time, warnings, logging, os, json
import numpy as np, anndata as ad
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness_pairs import pairs
import transanno_sc as ta
warnings.filterwarnings("ignore")
for n in ("lightning", "lightning.pytorch", "scvi"): logging.getLogger(n).setLevel(logging.ERROR)
tag = sys.argv[1]; only = sys.argv[2:]
os.makedirs(tag, exist_ok=True)
for name, ref, query in pairs():
    if only and not any(name.startswith(o) for o in only): continue
    if name.startswith("pbmc"): pass
    t0 = time.time()
    q = ad.AnnData(query.X, var=query.var[[]], obs=query.obs[[]])
    r = ad.AnnData(ref.X, var=ref.var[[]], obs=ref.obs[["cell_type"]].astype(str))
    ta.tl.transanno_annotate(q, reference=r, labels_key="cell_type", save_model=f"{tag}/{name}_model", enable_progress_bar=False)
    t = time.time() - t0
    m = ta.model.TransAnno.load(f"{tag}/{name}_model")
    from transanno_sc.data import match_genes
    mt = match_genes(q.var_names, r.var_names)
    conf = m.predict_confidence(q[:, np.sort(mt.source)])
    yq = query.obs.cell_type.astype(str).to_numpy(); known = np.isin(yq, m.classes_)
    un = (q.obs.transanno_label == "Unassigned").to_numpy()
    lab = q.obs.transanno_label.astype(str).to_numpy()
    from sklearn.metrics import f1_score, roc_auc_score
    shared_f1 = f1_score(yq[known], lab[known], labels=m.classes_, average="macro")
    auc = roc_auc_score(known, q.obs.transanno_confidence) if (~known).any() else float("nan")
    np.savez(f"{tag}/{name}.npz", yq=yq, classes=np.array(m.classes_), prob=conf["probability"].to_numpy(), pval=conf["novelty_pvalue"].to_numpy(),
             label=conf["label"].to_numpy().astype(str), conf=q.obs.transanno_confidence.to_numpy(), un=un, shift=q.uns["transanno"]["calibration"]["novelty_shift"])
    print(f"{name}: f1 {shared_f1:.3f} auc {auc:.3f} nov_un {un[~known].mean() if (~known).any() else float('nan'):.2f} known_un {un[known].mean():.3f} shift {q.uns['transanno']['calibration']['novelty_shift']:.2f} {t:.0f}s", flush=True)
