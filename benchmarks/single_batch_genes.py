"""What a reference's gene count does without ``batch_key`` across animals (issue #17).

Zilionis healthy -> tumour (the package's bundled copy), the reference as UMIs and as integer
read counts (``cross_study._reads``, seed 0). For each, the default call
``tl.transanno_annotate(tumour, reference=healthy, labels_key="cell_type", ...)`` without
``batch_key`` (``n_top_genes="auto"`` then chooses the count with the query, by the labels'
round trip; before bfcde6f it kept 2,000), without it at ``n_top_genes=2000`` and at
``n_top_genes=8000``, and with ``batch_key="batch"`` (auto then compares 2,000 / 4,000 /
8,000 by leave-one-animal-out), against an L2 logistic regression (C=0.1) on all genes of
log1p CP10k. Prints the argmax accuracy and the gene count of each. About 4 minutes on 2
cores.

    python benchmarks/single_batch_genes.py
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cross_study import _reads, lognorm

import transanno_sc as ta

warnings.filterwarnings("ignore")


def argmax_accuracy(query) -> float:
    probs = query.obsm["transanno_probabilities"]
    pred = probs.columns.to_numpy()[probs.to_numpy().argmax(1)]
    return float(np.mean(pred == query.obs["cell_type"].to_numpy()))


def main() -> None:
    lung = ta.datasets.zilionis_mouse_lung()
    healthy = lung[lung.obs["condition"] == "healthy"].copy()
    tumour = lung[lung.obs["condition"] == "tumor"].copy()
    for kind in ("UMIs", "read counts"):
        ref = healthy.copy()
        if kind == "read counts":
            ref.X = _reads(ref.X, np.random.default_rng(0))
        clf = LogisticRegression(C=0.1, max_iter=1000)
        clf.fit(lognorm(ref, False).X, ref.obs["cell_type"].to_numpy())
        pred = clf.predict(lognorm(tumour, False).X)
        lr = float(np.mean(pred == tumour.obs["cell_type"].to_numpy()))
        print(f"{kind}: logistic regression, all genes {lr:.3f}", flush=True)
        for batch_key, n_top_genes in (
            (None, "auto"),
            (None, 2000),
            (None, 8000),
            ("batch", "auto"),
        ):
            query = tumour.copy()
            ta.tl.transanno_annotate(
                query,
                reference=ref,
                labels_key="cell_type",
                batch_key=batch_key,
                model_kwargs={"n_top_genes": n_top_genes},
                enable_progress_bar=False,
            )
            n_genes = query.uns["transanno"]["gene_overlap"].get("n_model_genes")
            print(
                f"{kind}: batch_key={batch_key}, n_top_genes={n_top_genes} ({n_genes} genes) "
                f"{argmax_accuracy(query):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
