"""Accuracy and the embedding's neighbour agreement where ``n_top_genes="auto"`` chooses more
than 2,000 genes (issue #17), for comparing source trees.

Runs the public call ``tl.transanno_annotate(query, reference=ref, labels_key="cell_type",
batch_key="batch", random_state=seed)`` on three cases where "auto" chooses 4,000-8,000
genes, and prints one JSON line per case and seed: the query's argmax accuracy and macro-F1,
and the mean share of a query cell's 15 nearest neighbours in ``obsm["X_transanno"]`` (the
graph ``sc.pp.neighbors`` builds for a UMAP) that share its published type. Run it on two
source trees to compare them (``PYTHONPATH=<tree>/src``; ``--label`` names the rows), e.g.
``novelty_design/token_genes.patch`` (the Transformer's tokens drawn from the 2,000 most
variable of the genes; tried and lost, ``benchmarks/README.md``):

    git archive COMMIT src | tar -x -C /tmp/src_COMMIT
    PYTHONPATH=/tmp/src_COMMIT/src python benchmarks/token_genes.py --label COMMIT
    (cd /tmp/src_COMMIT && patch -p1 < <repo>/benchmarks/novelty_design/token_genes.patch)
    PYTHONPATH=/tmp/src_COMMIT/src python benchmarks/token_genes.py --label tokens

Cases (the package's bundled Zilionis lung data; animals as batches): healthy -> tumour mice,
animals h_1,t_1 -> h_2,t_2, and all four animals -> Tabula Muris immune cells (shared data,
``TRANSANNO_SHARED_DATA``; names harmonized as in ``cross_study.py``, its monocytes, a type
the reference lacks, left out). About 4 minutes per tree on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def neighbour_agreement(adata, types: np.ndarray) -> float:
    import scanpy as sc

    sc.pp.neighbors(adata, use_rep="X_transanno", random_state=0)
    graph = adata.obsp["distances"].tocsr()
    return float(np.mean([np.mean(types[graph[i].indices] == types[i]) for i in range(len(types))]))


def cases():
    import anndata as ad

    import transanno_sc as ta

    lung = ta.datasets.zilionis_mouse_lung()
    lung.obs = lung.obs[["cell_type", "batch", "condition"]].copy()
    healthy = (lung.obs["condition"] == "healthy").to_numpy()
    yield "healthy -> tumour", lung[healthy].copy(), lung[~healthy].copy()
    animals = lung.obs["batch"].isin(["h_1", "t_1"]).to_numpy()
    yield "animals", lung[animals].copy(), lung[~animals].copy()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cross_study import DATA, TABULA_NAMES

    path = DATA / "tabula_muris_immune.h5ad"
    if path.exists():
        tm = ad.read_h5ad(path)
        names = tm.obs["cell_type"].astype(str)
        tm = tm[names.isin(list(TABULA_NAMES)).to_numpy()].copy()
        tm.obs["cell_type"] = tm.obs["cell_type"].astype(str).map(TABULA_NAMES)
        yield "Zilionis -> Tabula Muris (known types)", lung.copy(), tm


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    from sklearn.metrics import f1_score

    import transanno_sc as ta

    for name, ref, query in cases():
        truth = query.obs["cell_type"].astype(str).to_numpy()
        for seed in args.seeds:
            q = query.copy()
            q.obs = q.obs[[]].copy()
            ta.tl.transanno_annotate(
                q,
                reference=ref,
                labels_key="cell_type",
                batch_key="batch",
                random_state=seed,
                enable_progress_bar=False,
            )
            probs = q.obsm["transanno_probabilities"]
            pred = probs.columns.to_numpy()[probs.to_numpy().argmax(1)]
            row = {
                "label": args.label,
                "case": name,
                "seed": seed,
                "n_genes": q.uns["transanno"]["gene_overlap"].get("n_model_genes"),
                "accuracy": float(np.mean(pred == truth)),
                "f1_macro": float(f1_score(truth, pred, average="macro")),
                "neighbour_agreement": neighbour_agreement(q, truth),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
