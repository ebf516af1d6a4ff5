"""Log-normalized inputs of other bases and totals, read as the counts they came from.

Zilionis healthy -> tumour (the bundled data), the default call of ``tl.transanno_annotate``
with ``batch_key="batch"``, with the reference or the query given as raw counts, natural
log1p(CP10k), log1p(CPM), log2(CPM + 1), log2(CP10k + 1) or log10(CPM + 1). Prints a markdown
table of shared macro-F1, the classifier's own macro-F1 (argmax), % "Unassigned" and the
scales found. Compare source trees with ``PYTHONPATH=<tree>/src``::

    python benchmarks/log_bases.py --seeds 0
    python benchmarks/log_bases.py --cases counts:log2_cpm log2_cpm:counts --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import f1_score

import transanno_sc as ta

CASES = [
    "counts:counts",
    "counts:ln_cp10k",
    "counts:log2_cpm",
    "counts:log2_cp10k",
    "counts:log10_cpm",
    "ln_cpm:counts",
    "log2_cpm:counts",
    "log2_cpm:log2_cpm",
    "log10_cpm:log10_cpm",
]
TOTALS = {"cp10k": 1e4, "cpm": 1e6}
LOGS = {"ln": np.log1p, "log2": lambda v: np.log2(1.0 + v), "log10": lambda v: np.log10(1.0 + v)}


def as_scale(adata, kind: str):
    """A copy of ``adata`` with its counts as ``kind`` (``counts`` or ``<log>_<total>``)."""
    out = adata.copy()
    X = sp.csr_matrix(out.X, dtype=np.float64)
    if kind != "counts":
        log, total = kind.split("_")
        X = sp.csr_matrix(sp.diags(TOTALS[total] / np.asarray(X.sum(1)).ravel()) @ X)
        X.data = LOGS[log](X.data)
    out.X = X.astype(np.float32)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=CASES, help="REFERENCE:QUERY scales")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    adata = ta.datasets.zilionis_mouse_lung()
    healthy = adata[adata.obs["condition"] == "healthy"].copy()
    tumour = adata[adata.obs["condition"] == "tumor"].copy()
    truth = tumour.obs["cell_type"].astype(str).to_numpy()
    print("| reference | query | seed | macro-F1 | own labels | Unassigned % | scales | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in args.cases:
        ref_kind, query_kind = case.split(":")
        for seed in args.seeds:
            ref, query = as_scale(healthy, ref_kind), as_scale(tumour, query_kind)
            ref.obs = ref.obs[["cell_type", "batch"]].copy()
            query.obs = query.obs[[]].copy()
            t0 = time.perf_counter()
            ta.tl.transanno_annotate(
                query,
                reference=ref,
                labels_key="cell_type",
                batch_key="batch",
                random_state=seed,
                enable_progress_bar=False,
            )
            wall = time.perf_counter() - t0
            uns = query.uns["transanno"]
            called = query.obs["transanno_label"].astype(str).to_numpy()
            own = np.asarray(uns["classes"], dtype=str)[
                query.obsm["transanno_probabilities"].to_numpy().argmax(1)
            ]
            f1 = f1_score(truth, called, average="macro", labels=np.unique(truth))
            scales = (
                uns["gene_overlap"].get("reference_input_scale", "?"),
                uns["gene_overlap"]["input_scale"],
            )
            print(
                f"| {ref_kind} | {query_kind} | {seed} | {f1:.3f} | "
                f"{f1_score(truth, own, average='macro'):.3f} | "
                f"{100 * np.mean(called == 'Unassigned'):.1f} | {scales[0]} / {scales[1]} | "
                f"{wall:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
