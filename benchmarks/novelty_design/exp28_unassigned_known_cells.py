"""What are the known cells a cross-study call leaves "Unassigned"? (issue #17, point 4)

On Zilionis -> Tabula Muris, TransAnno's shared-type macro-F1 trails default-mode CellTypist
because 2.4-2.8 % of the query's known cells are "Unassigned", which the metric counts as
errors. This reads the per-cell results that ``cross_study.py --cells DIR`` writes and, per
truth type, compares the cells left "Unassigned" with the same type's labeled cells: the
detection rate (share of cells with a count) of marker genes of granulocyte maturation
(primary granules Mpo/Elane/Prtn3/Ctsg in promyelocytes and myelocytes; Cxcr2/Mmp8 in mature
neutrophils), of B-cell development (Vpreb3, Rag1, Dntt in pro/pre-B cells; Ms4a1 in mature B
cells) and of neutrophil-granule transcripts (Camp, Ngp, S100a8/9: in a B cell, a doublet or
free RNA). It also says which type the classifier itself would give them.

    python benchmarks/cross_study.py --pairs zilionis_to_tabula --methods transanno \\
        --seeds 0 1 2 --cells benchmarks/results_tmp/cells_A --out benchmarks/results_tmp/zt
    python benchmarks/novelty_design/exp28_unassigned_known_cells.py benchmarks/results_tmp/cells_A
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anndata as ad
import numpy as np

DATA = Path(os.environ.get("TRANSANNO_SHARED_DATA", Path(__file__).parents[3] / "shared" / "data"))
MARKERS = {
    "granulocyte progenitor (primary granules)": ["Mpo", "Elane", "Prtn3", "Ctsg"],
    "mature neutrophil": ["Cxcr2", "Mmp8"],
    "pro/pre-B cell": ["Vpreb3", "Rag1", "Dntt"],
    "mature B cell": ["Ms4a1"],
    "neutrophil granule transcripts": ["Camp", "Ngp", "S100a8", "S100a9"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", help="the --cells folder of cross_study.py")
    parser.add_argument("--method", default="transanno")
    args = parser.parse_args(argv)
    query = ad.read_h5ad(DATA / "tabula_muris_immune.h5ad")
    files = sorted(Path(args.cells).glob(f"zilionis_to_tabula__*__{args.method}__*.npz"))
    if not files:
        raise SystemExit(f"no zilionis_to_tabula results of {args.method} in {args.cells}")
    genes = [g for group in MARKERS.values() for g in group if g in query.var_names]
    X = query[:, genes].X
    detected = np.asarray((X.toarray() if hasattr(X, "toarray") else X) > 0)
    for f in files:
        d = np.load(f, allow_pickle=True)  # early --cells files held object arrays
        truth, pred, forced = (d[k].astype(str) for k in ("truth", "pred", "forced"))
        known = np.isin(truth, d["ref_types"].astype(str))
        print(
            f"{f.name}: {int((pred[known] == 'Unassigned').sum())} of {int(known.sum())} "
            "known cells Unassigned"
        )
        for t in np.unique(truth[known]):
            u = (truth == t) & (pred == "Unassigned")
            k = (truth == t) & (pred != "Unassigned")
            if not u.any():
                continue
            calls = dict(zip(*np.unique(forced[u], return_counts=True)))
            print(
                f"  {t}: {int(u.sum())} Unassigned (classifier's own call: "
                + ", ".join(f"{c} {n}" for c, n in calls.items())
                + f"), {int(k.sum())} labeled"
            )
            for group, members in MARKERS.items():
                cols = [genes.index(g) for g in members if g in genes]
                rates = ", ".join(
                    f"{genes[c]} {detected[u, c].mean():.1f} / {detected[k, c].mean():.1f}"
                    for c in cols
                )
                print(f"    {group} (Unassigned / labeled): {rates}")


if __name__ == "__main__":
    main()
