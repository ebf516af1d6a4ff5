"""A query of one cell type (a sorted population) against a multi-type reference (issue #17).

Users annotate sorted or pre-gated datasets (T cells only, CD19+ B cells) with an atlas
reference. This takes each truth type of a query of ``cross_study.py`` alone as the query and
runs the default call on it: the query context's clusters are then parts of one type, and
their markers against the rest of the query are that type's sub-states. Prints, per type, the
cells "Unassigned" and the labels; with ``--own``, the same call with ``query_context=False``
too, and the cell-level confidence of the cells the query context left "Unassigned".

    python benchmarks/novelty_design/exp29_single_type_query.py
    python benchmarks/novelty_design/exp29_single_type_query.py --own \\
        --cases tabula_to_zilionis:"B cells" zilionis_to_tabula:Neutrophils

The variant in ``excess_markers.patch`` (``git apply`` it to a copy of the source, then
``TA_MARKER_MODE=excess``) discounts each marker's detection by the rest of the query's.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1]))
import cross_study as cs

PAIRS = {
    "zilionis_to_tabula": "Monocyte novel",
    "zilionis_healthy_to_tumour": None,  # healthy -> tumour, nothing held out
    "tabula_to_zilionis": "nothing novel",
}


def _case(pair: str, seed: int) -> cs.Case:
    if pair == "zilionis_healthy_to_tumour":
        a = cs._zilionis()
        a.obs = a.obs[["cell_type", "batch", "condition"]].copy()
        h = (a.obs.condition == "healthy").to_numpy()
        return cs.Case(a[h].copy(), a[~h].copy(), "cell_type", "batch")
    return cs.build(pair, PAIRS[pair], seed)


def _call(c: cs.Case, cells: np.ndarray, seed: int, **kwargs):
    import transanno_sc as ta

    query = c.query[cells].copy()
    query.obs = query.obs[[]]
    kw = {"enable_progress_bar": False, "random_state": seed, **kwargs}
    if c.batch_key:
        kw["batch_key"] = c.batch_key
    ta.tl.transanno_annotate(query, reference=c.ref.copy(), labels_key=c.key, **kw)
    return query.obs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--own", action="store_true", help="also the cell-level confidence")
    parser.add_argument(
        "--cases", nargs="+", default=None, help="PAIR:TYPE (default: every type of every pair)"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("transanno_sc", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    todo = [tuple(x.split(":", 1)) for x in args.cases] if args.cases else None
    for pair in PAIRS:
        c = _case(pair, args.seed)
        truth = c.query.obs[c.key].astype(str).to_numpy()
        known_types = set(c.ref.obs[c.key].astype(str))
        for t in sorted(set(truth)):
            if todo is not None and (pair, t) not in todo:
                continue
            cells = truth == t
            obs = _call(c, cells, args.seed)
            labels = obs["transanno_label"].astype(str).to_numpy()
            unassigned = labels == "Unassigned"
            line = (
                f"{pair}, {t} ({'known' if t in known_types else 'novel'}, {cells.sum()} cells): "
                f"Unassigned {100 * unassigned.mean():.1f} %, labels "
                f"{pd.Series(labels).value_counts().to_dict()}"
            )
            if args.own and unassigned.any():
                own = _call(c, cells, args.seed, query_context=False)
                conf = own["transanno_confidence"].to_numpy()
                q = np.round(np.quantile(conf[unassigned], [0.1, 0.5, 0.9]), 2)
                line += f"; cell-level confidence of those (10/50/90 %): {q.tolist()}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
