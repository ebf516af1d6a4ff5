"""A query merged from two studies against one reference (issue #17).

Zilionis tumour cells (inDrop) and Tabula Muris immune cells (10x, monocytes novel), inner
join on upper-cased symbols, annotated together with Zilionis' healthy cells as the reference
(``batch_key="batch"``), then each source alone. Per source: known cells "Unassigned",
accuracy of the labels (an "Unassigned" counts as wrong) and of the classifier's own labels,
novel cells "Unassigned". The query context's clusters could split by study and take
technical genes for foreign markers; this measures whether they do.

    SEED=0 python benchmarks/novelty_design/exp31_merged_query.py
"""

import logging
import os
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1]))
import cross_study as cs

import transanno_sc as ta

KEY = "cell_type"


def sources(seed: int):
    """The reference (Zilionis healthy) and the two query sources, symbols upper-cased."""
    z = cs._zilionis()
    z.obs = z.obs[[KEY, "batch", "condition"]].copy()
    h = (z.obs.condition == "healthy").to_numpy()
    ref, zq = z[h].copy(), z[~h].copy()
    tm = cs.build("zilionis_to_tabula", "Monocyte novel", seed).query
    parts = {}
    for name, q in (("zilionis", zq), ("tabula", tm)):
        q.obs = pd.DataFrame(
            {KEY: q.obs[KEY].astype(str).to_numpy()}, index=name + "_" + q.obs_names
        )
        q.var_names = q.var_names.str.upper()
        parts[name] = q[:, ~q.var_names.duplicated()].copy()
    return ref, parts


def run(ref, q, seed):
    """Truth, labels and the classifier's own labels of the default call on ``q``."""
    q = q.copy()
    truth = q.obs[KEY].astype(str).to_numpy()
    q.obs = q.obs[[]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ta.tl.transanno_annotate(
            q,
            reference=ref.copy(),
            labels_key=KEY,
            batch_key="batch",
            enable_progress_bar=False,
            random_state=seed,
        )
    labels = q.obs["transanno_label"].astype(str).to_numpy()
    probs = q.obsm["transanno_probabilities"].to_numpy()
    return truth, labels, np.asarray(q.uns["transanno"]["classes"])[probs.argmax(1)]


def report(name, known, truth, labels, forced):
    k = np.isin(truth, list(known))
    line = (
        f"{name}: known Unassigned {100 * np.mean(labels[k] == 'Unassigned'):.1f} %, "
        f"accuracy {np.mean(labels[k] == truth[k]):.3f}, own labels {np.mean(forced[k] == truth[k]):.3f}"
    )
    if (~k).any():
        line += f", novel Unassigned {100 * np.mean(labels[~k] == 'Unassigned'):.1f} %"
    print(line, flush=True)


def main():
    warnings.filterwarnings("ignore")
    for n in ("transanno_sc", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(n).setLevel(logging.ERROR)
    seed = int(os.environ.get("SEED", "0"))
    ref, parts = sources(seed)
    known = set(ref.obs[KEY].astype(str))
    merged = ad.concat(parts, label="source", join="inner")
    print(f"seed {seed}, merged query {merged.shape}", flush=True)
    truth, labels, forced = run(ref, merged, seed)
    src = merged.obs["source"].to_numpy()
    for name in parts:
        m = src == name
        report(f"merged, {name}", known, truth[m], labels[m], forced[m])
    for name in parts:
        report(f"alone, {name}", known, *run(ref, merged[src == name], seed))


if __name__ == "__main__":
    main()
