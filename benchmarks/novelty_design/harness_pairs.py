"""Train default TransAnno per pair (shared genes), dump what novelty experiments need."""
import sys, time, warnings, logging
import numpy as np, pandas as pd, scipy.sparse as sp, anndata as ad, scanpy as sc, scvi
import transanno_sc as ta
warnings.filterwarnings("ignore"); logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
D = __import__("os").environ.get("TRANSANNO_SHARED_DATA", __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), "..", "..", "..", "shared", "data")) + "/"
OUT = "benchmarks/results_tmp/nov/"

def upper(a):
    a = a.copy(); a.var_names = a.var_names.str.upper(); a.var_names_make_unique(); return a

def shared(r, q):
    r, q = upper(r), upper(q); g = r.var_names.intersection(q.var_names)
    return r[:, g].copy(), q[:, g].copy()

def tile(a, n, rng):
    rows = rng.choice(a.n_obs, n); X = sp.csr_matrix(a.X)[rows].tocsr().astype(np.float64)
    p = rng.uniform(0.5, 0.9, n)
    X.data = rng.binomial(X.data.astype(np.int64), np.repeat(p, np.diff(X.indptr))).astype(np.float32)
    X.eliminate_zeros(); b = ad.AnnData(X.astype(np.float32), obs=a.obs.iloc[rows].reset_index(drop=True), var=a.var.copy())
    b.obs_names = [f"c{i}" for i in range(n)]; return b

def pairs():
    z = ad.read_h5ad(D + "zilionis_mouse_lung.h5ad"); tm = ad.read_h5ad(D + "tabula_muris_immune.h5ad")
    tm.obs["cell_type"] = tm.obs["cell_type"].astype(str).replace({"B cell": "B cells", "T cell": "T cells", "NK cell": "NK cells", "Granulocyte": "Neutrophils"})
    yield "zil_tm", z, tm
    yield "tm_zil", tm[tm.obs.cell_type != "Monocyte"].copy(), z
    h, t = z[z.obs.condition == "healthy"], z[z.obs.condition == "tumor"]
    for ty in ["B cells", "NK cells", "Neutrophils", "T cells"]:
        yield f"zil_ht_no_{ty.split()[0]}", h[h.obs.cell_type != ty].copy(), t.copy()
    b = ad.read_h5ad(D + "baron_mouse_pancreas.h5ad"); rng = np.random.default_rng(0)
    isref = np.zeros(b.n_obs, bool)
    for ty, idx in b.obs.groupby("cell_type", observed=True).indices.items():
        idx = rng.permutation(idx); isref[idx[: len(idx) // 2]] = True
    top = b.obs.cell_type.value_counts().index[:4]
    for ty in top:
        r = b[isref & (b.obs.cell_type != ty).to_numpy()].copy()
        yield f"baron_no_{ty}", r, b[~isref].copy()
    p = sc.datasets.pbmc68k_reduced(); p = p.raw.to_adata(); p.obs["cell_type"] = p.obs["bulk_labels"].astype(str)
    isref = rng.random(p.n_obs) < 0.5
    for ty in ["CD14+ Monocyte", "CD56+ NK"]:
        yield f"pbmc_no_{ty.split()[0]}", p[isref & (p.obs.cell_type != ty).to_numpy()].copy(), p[~isref].copy()
    rng = np.random.default_rng(1)
    yield "dense_ht", tile(h, 5000, rng), tile(t, 2000, rng)


def lognorm(a):
    X = sp.csr_matrix(a.X, dtype=np.float32)
    if a.uns.get("scale") == "log1p": return X.toarray()
    lib = np.asarray(X.sum(1)).ravel(); X = sp.diags(1e4 / np.maximum(lib, 1e-8)) @ X; X = sp.csr_matrix(X); X.data = np.log1p(X.data)
    return X.toarray().astype(np.float32)

