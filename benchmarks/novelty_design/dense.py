import sys, numpy as np, warnings, logging, time
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from harness_pairs import tile
import anndata as ad, transanno_sc as ta
warnings.filterwarnings("ignore")
for n in ("lightning", "lightning.pytorch", "scvi"): logging.getLogger(n).setLevel(logging.ERROR)
z = ta.datasets.zilionis_mouse_lung(); h, t = z[z.obs.condition == "healthy"], z[z.obs.condition == "tumor"]
rng = np.random.default_rng(1); r, q = tile(h, 5000, rng), tile(t, 5000, rng)
t0 = time.time()
ta.tl.transanno_annotate(q, reference=r, labels_key="cell_type", max_epochs=3, enable_progress_bar=False)
from sklearn.metrics import f1_score
lab = q.obs.transanno_label.astype(str)
print("dense: unassigned", (lab == "Unassigned").mean(), "shift", q.uns["transanno"]["calibration"]["novelty_shift"], "f1", f1_score(q.obs.cell_type, lab, average="macro", labels=sorted(set(q.obs.cell_type))), time.time() - t0)
