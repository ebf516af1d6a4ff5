"""A large whole-tissue query against an immune reference (issue #17): the cost and the
effect of cutting foreign clusters in two (``_split_flagged``) in the streamed query context.

The model is trained once by the default call on the Zilionis lung immune cells (4 animals as
batches) for Baron's pancreas (``random_state=2``, the seed where k-means put the 6
lymphocytes into an endocrine cluster). Baron's cells (``immune_other`` left out) are tiled to
``N`` cells (binomially thinned copies, 50-90 % of their counts), written to ``.h5ad`` and
annotated backed with ``model=`` (the streamed query context), with the cut on and off,
alternating in the same process. Per run: wall seconds of the call, novel and known (B, T
copies) "Unassigned" %, flagged clusters and the cells kept; then the medians and their
ratio.

    python benchmarks/novelty_design/exp23_large_whole_tissue.py [N] [REPEATS]
"""

import os
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import DATA

import transanno_sc as ta
import transanno_sc.tl._query_context as qc

warnings.filterwarnings("ignore")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
work = "benchmarks/results_tmp/exp23"
os.makedirs(work, exist_ok=True)
rng = np.random.default_rng(0)
ref = ta.datasets.zilionis_mouse_lung()
ref.obs = ref.obs[["cell_type", "batch"]].copy()
q = ad.read_h5ad(DATA / "baron_mouse_pancreas.h5ad")
q = q[q.obs.cell_type != "immune_other"].copy()
truth0 = q.obs.cell_type.astype(str).to_numpy()
q.obs = pd.DataFrame(index=q.obs_names)
if not os.path.exists(f"{work}/model/transanno.json"):
    ta.tl.transanno_annotate(
        q.copy(),
        reference=ref,
        labels_key="cell_type",
        batch_key="batch",
        random_state=2,
        enable_progress_bar=False,
        save_model=f"{work}/model",
    )
model = ta.model.TransAnno.load(f"{work}/model")
path = f"{work}/tiled_{N}.h5ad"
if not os.path.exists(path):
    idx = rng.integers(0, q.n_obs, N)
    X = sp.csr_matrix(q.X)[idx].astype(np.float32)
    keep = rng.uniform(0.5, 0.9, N)
    X.data = rng.binomial(X.data.astype(np.int64), np.repeat(keep, np.diff(X.indptr))).astype(
        np.float32
    )
    X.eliminate_zeros()
    ad.AnnData(
        X,
        var=q.var[[]].copy(),
        obs=pd.DataFrame({"truth": truth0[idx]}, index=[f"c{i}" for i in range(N)]),
    ).write_h5ad(path)
original = qc._split_flagged
times = {"on": [], "off": []}
for rep in range(REPS):
    for mode in ("off", "on"):
        qc._split_flagged = (
            original if mode == "on" else (lambda pcs, clusters, *a: np.full(clusters.size, -1))
        )
        a = ad.read_h5ad(path, backed="r")
        truth = a.obs["truth"].to_numpy()
        t = time.perf_counter()
        ta.tl.transanno_annotate(a, model=model)
        times[mode].append(time.perf_counter() - t)
        called = a.obs["transanno_label"].astype(str).to_numpy()
        known = np.isin(truth, ["B_cell", "T_cell"])
        fc = a.uns["transanno"]["query_context"]["foreign_clusters"]
        print(
            mode,
            rep,
            f"{times[mode][-1]:.1f} s",
            "novel U %",
            round(100 * np.mean(called[~known] == "Unassigned"), 1),
            "known U %",
            round(100 * np.mean(called[known] == "Unassigned"), 1),
            "known n",
            known.sum(),
            "flagged",
            len(fc["n_cells"]),
            "kept",
            int(np.sum(fc["n_cells_kept"])),
            flush=True,
        )
        a.file.close()
m_on, m_off = np.median(times["on"]), np.median(times["off"])
print(f"N={N}: median on {m_on:.1f} s, off {m_off:.1f} s, ratio {m_on / m_off:.3f}")
