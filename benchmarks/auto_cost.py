"""Cost of ``n_top_genes="auto"`` and of the wide path's fit on a larger, many-batch reference.

The bundled Zilionis cells (800 cells, 4 animals) are tiled ``--reps`` times with binomial
thinning (each copy keeps 90 % of the counts, so no two copies are identical); the batch of a
cell is its animal and copy number modulo 5 (20 batches with the default 25 copies, 20,000
cells). Reported: median wall seconds of building ``TransAnno`` without and with ``batch_key``
(the second includes the leave-one-batch-out gene-count choice), and of the wide path's
features plus its logistic-regression fit on every cell over 8,000 genes.

    python benchmarks/auto_cost.py --reps 25 --repeats 3
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

import transanno_sc as ta
from transanno_sc.model import TransAnno
from transanno_sc.train import class_weights, logistic_regression


def tiled(reps: int, seed: int = 0) -> ad.AnnData:
    a = ta.datasets.zilionis_mouse_lung()
    rng = np.random.default_rng(seed)
    X = sp.vstack([a.X] * reps).tocsr()
    X.data = rng.binomial(X.data.astype(np.int64), 0.9).astype(np.float32)
    big = ad.AnnData(X, var=a.var.copy())
    big.obs["cell_type"] = np.tile(a.obs["cell_type"].astype(str).to_numpy(), reps)
    big.obs["batch"] = [f"{b}_{i % 5}" for i in range(reps) for b in a.obs["batch"].astype(str)]
    big.obs_names_make_unique()
    return big


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=25, help="copies of the 800 cells")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    big = tiled(args.reps)
    print(f"{big.n_obs} cells, {big.obs['batch'].nunique()} batches, {big.n_vars} genes")
    TransAnno.setup_anndata(big, labels_key="cell_type")
    print(f"TransAnno(adata), no batch_key: {timed(lambda: TransAnno(big), args.repeats):.1f} s")
    TransAnno.setup_anndata(big, labels_key="cell_type", batch_key="batch")
    model = TransAnno(big)
    print(f"gene-count choice: {model.gene_count_selection_}")
    print(f"TransAnno(adata), batch_key: {timed(lambda: TransAnno(big), args.repeats):.1f} s")
    model = TransAnno(big, n_top_genes=8000)
    codes = np.asarray(model.adata_manager.get_from_registry("labels")).reshape(-1)
    weight = class_weights(np.bincount(codes), 1.0)[codes]
    cells = np.arange(big.n_obs)

    def wide(sparse: bool):
        X = model._log_expression(cells, 256, sparse=sparse)
        logistic_regression(X if sparse else X.numpy(), codes, weight, 0.1)

    for sparse in (True, False):
        kind = "sparse" if sparse else "dense"
        print(
            f"wide path features + fit, {len(model.var_names_)} genes, {kind}: "
            f"{timed(lambda sparse=sparse: wide(sparse), args.repeats):.1f} s"
        )


if __name__ == "__main__":
    main()
