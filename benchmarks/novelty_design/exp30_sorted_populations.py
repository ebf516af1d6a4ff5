"""Sorted populations, known and novel, through the default call (issue #17).

Each case's query cells of one truth type alone as the query: the held-out types of the
Zilionis and Baron loops and Tabula Muris' monocytes (types the reference lacks), and every
known type of Tabula Muris <-> Zilionis. Prints "Unassigned" % and the top label, with the
query context and, with ``--no-context``, without it too. Run it against another commit's
package with ``PYTHONPATH=/tmp/src_X/src``.

    python benchmarks/novelty_design/exp30_sorted_populations.py --seed 0 --no-context
    python benchmarks/novelty_design/exp30_sorted_populations.py --seed 1 \\
        "tabula_to_zilionis:B cells" "zilionis_to_tabula:Neutrophils"

With ``--dominated``: queries of mostly one type instead, Zilionis tumour cells of one type
with 8 % of other types' cells (a type the reference, Zilionis healthy, may lack): whether the
one-population steps cost a rare type its "Unassigned".
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
import cross_study as cs
from exp29_single_type_query import _call

#: (pair, case, type alone as the query; None: every known type)
CASES = [
    ("zilionis_heldout", "B cells held out", "B cells"),
    ("zilionis_heldout", "NK cells held out", "NK cells"),
    ("zilionis_heldout", "T cells held out", "T cells"),
    ("zilionis_heldout", "Neutrophils held out", "Neutrophils"),
    ("baron_heldout", "beta held out", "beta"),
    ("baron_heldout", "ductal held out", "ductal"),
    ("zilionis_to_tabula", "Monocyte novel", "Monocyte"),
    ("tabula_to_zilionis", "nothing novel", None),
    ("zilionis_to_tabula", "Monocyte novel", None),
]


#: (major type, minor types making 8 % of the query, type left out of the reference)
DOMINATED = [
    ("T cells", ["NK cells"], "NK cells"),
    ("T cells", ["B cells"], "B cells"),
    ("NK cells", ["T cells"], "T cells"),
    ("Neutrophils", ["B cells", "NK cells", "T cells"], None),
    ("B cells", ["NK cells", "T cells", "Neutrophils"], None),
]


def dominated(seed: int) -> None:
    """Print, per :data:`DOMINATED` query, known and novel cells "Unassigned"."""
    import transanno_sc as ta

    z = cs._zilionis()
    z.obs = z.obs[["cell_type", "batch", "condition"]].copy()
    healthy = (z.obs.condition == "healthy").to_numpy()
    types = z.obs.cell_type.astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    for major, minor, held in DOMINATED:
        ref = z[healthy & (types != held)].copy()
        cells = list(np.flatnonzero(~healthy & (types == major)))
        n_minor = round(len(cells) * 0.08 / 0.92)
        for m in minor:
            pool = np.flatnonzero(~healthy & (types == m))
            cells += list(rng.choice(pool, max(n_minor // len(minor), 1), replace=False))
        query = z[cells].copy()
        truth = query.obs.cell_type.astype(str).to_numpy()
        query.obs = query.obs[[]]
        ta.tl.transanno_annotate(
            query,
            reference=ref,
            labels_key="cell_type",
            batch_key="batch",
            enable_progress_bar=False,
            random_state=seed,
        )
        labels = query.obs["transanno_label"].astype(str).to_numpy()
        known = truth != held
        line = (
            f"{major} + {', '.join(minor)}, {held or 'nothing'} held out ({truth.size} cells): "
            f"known Unassigned {100 * np.mean(labels[known] == 'Unassigned'):.1f} %"
        )
        if held:
            line += (
                f", novel ({(~known).sum()}) {100 * np.mean(labels[~known] == 'Unassigned'):.1f} %"
            )
        print(line, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-context", action="store_true", help="also query_context=False")
    parser.add_argument("--dominated", action="store_true", help="queries of mostly one type")
    parser.add_argument("only", nargs="*", help="PAIR:TYPE to run (default: all)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("transanno_sc", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.dominated:
        dominated(args.seed)
        return
    for pair, case, alone in CASES:
        if alone and args.only and f"{pair}:{alone}" not in args.only:
            continue
        c = cs.build(pair, case, args.seed)
        truth = c.query.obs[c.key].astype(str).to_numpy()
        known = set(c.ref.obs[c.key].astype(str))
        for t in [alone] if alone else sorted(set(truth) & known):
            if args.only and f"{pair}:{t}" not in args.only:
                continue
            cells = truth == t
            line = [f"{pair} | {t} ({'known' if t in known else 'novel'}, {cells.sum()})"]
            for context in (True, False) if args.no_context else (True,):
                labels = _call(c, cells, args.seed, query_context=context)["transanno_label"]
                labels = labels.astype(str)
                top = labels[labels != "Unassigned"].value_counts()
                line.append(
                    f"context={context}: Unassigned {100 * np.mean(labels == 'Unassigned'):.1f} %"
                    + (
                        f", {top.index[0]} {100 * top.iloc[0] / labels.size:.0f} %"
                        if top.size
                        else ""
                    )
                )
            print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
