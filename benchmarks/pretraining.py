"""Does self-supervised pretraining help? Query macro-F1 with and without it.

For each task, seed and fraction of reference labels kept (stratified, at least one cell per
type; the other reference cells become unlabeled):

- ``none``: no pretraining (``tl.transanno_annotate`` defaults);
- ``ref+query``: ``tl.transanno_annotate(..., pretrain=True)``: masked-value pretraining on the
  reference and query cells together, then fine-tuning;
- ``corpus``: a backbone pretrained on a corpus merged (``pp.merge``) from the *other* count
  datasets in ``shared/data`` (vocabulary: the corpus's highly variable genes), loaded with
  ``TransAnno.from_pretrained`` and fine-tuned (``finetune="full"``);
- ``logreg_l2``: logistic regression on the same labeled cells (the baseline).

Pretraining throughput (cells/s, wall time of ``pretrain`` per cell and epoch) is reported.

    python benchmarks/pretraining.py --tasks zilionis_animals baron_50_50 --seeds 0 1 2 \
        --fractions 1.0 0.1 --pretrain-epochs 10 --out benchmarks/pretraining
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).parent))
from run import DATA, logreg, save, task

warnings.filterwarnings("ignore")
VARIANTS = ("none", "ref+query", "corpus")
OTHER = {"zilionis": ["baron_mouse_pancreas.h5ad"], "baron": ["zilionis_mouse_lung.h5ad"]}


def keep_fraction(ref: ad.AnnData, key: str, fraction: float, seed: int) -> ad.AnnData:
    if fraction >= 1.0:
        return ref
    rng = np.random.default_rng(seed)
    labels = ref.obs[key].astype(str).to_numpy()
    keep = np.zeros(ref.n_obs, dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keep[idx[: max(1, round(fraction * idx.size))]] = True
    ref = ref.copy()
    ref.obs[key] = np.where(keep, labels, "Unknown")
    return ref


def macro_f1(ref, query, key, pred) -> float:
    truth = query.obs[key].astype(str).to_numpy()
    known = np.isin(truth, ref.obs[key].astype(str).unique())
    labels = sorted(set(truth[known]))
    return f1_score(truth[known], pred[known], labels=labels, average="macro", zero_division=0)


def corpus_backbone(tname: str, seed: int, epochs: int, folder: str) -> float:
    """Pretrain on the other datasets, save the backbone; returns cells/s of pretraining."""
    import scvi

    import transanno_sc as ta

    prefix = tname.split("_")[0]
    corpus = ta.pp.merge({f: ad.read_h5ad(DATA / f) for f in OTHER[prefix]})
    corpus.obs = corpus.obs[["source"]]
    scvi.settings.seed = seed
    ta.model.TransAnno.setup_anndata(corpus)
    model = ta.model.TransAnno(corpus)
    t0 = time.perf_counter()
    model.pretrain(max_epochs=epochs, enable_progress_bar=False, early_stopping=False)
    rate = corpus.n_obs * epochs / (time.perf_counter() - t0)
    model.save_backbone(folder, overwrite=True)
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["zilionis_animals", "baron_50_50"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="TransAnno rows"
    )
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import scvi

    import transanno_sc as ta

    quiet = {"enable_progress_bar": False}
    rows = []
    for tname in args.tasks:
        for seed in args.seeds:
            ref_full, query, key = task(tname, seed)
            with tempfile.TemporaryDirectory() as folder:
                corpus_rate = float("nan")
                if "corpus" in args.variants:
                    corpus_rate = corpus_backbone(tname, seed, args.pretrain_epochs, folder)
                for fraction in args.fractions:
                    ref = keep_fraction(ref_full, key, fraction, seed)
                    labeled = ref[ref.obs[key] != "Unknown"].copy()
                    base = {"task": tname, "seed": seed, "label_fraction": fraction}
                    labels = labeled.obs[key].astype(str).to_numpy()
                    pred = logreg(labeled, query, labels, seed, "l2")[0]
                    rows.append(
                        {
                            **base,
                            "method": "logreg_l2",
                            "f1_macro": macro_f1(labeled, query, key, pred),
                        }
                    )
                    for variant in args.variants:
                        scvi.settings.seed = seed
                        q = query.copy()
                        t0 = time.perf_counter()
                        rate = float("nan")
                        extra = {}
                        if variant == "corpus":
                            r = ref.copy()
                            ta.model.TransAnno.setup_anndata(r, labels_key=key)
                            model = ta.model.TransAnno.from_pretrained(r, folder)
                            extra = {"n_added_genes": r.uns["transanno_backbone"]["n_added_genes"]}
                            model.train(**quiet)
                            ta.tl.transanno_annotate(q, model, unassigned_threshold=None)
                            rate = corpus_rate
                        else:
                            pretrain = variant == "ref+query"
                            ta.tl.transanno_annotate(
                                q,
                                reference=ref,
                                labels_key=key,
                                unassigned_threshold=None,
                                pretrain=pretrain,
                                pretrain_kwargs={
                                    "max_epochs": args.pretrain_epochs,
                                    "early_stopping": False,
                                },
                                **quiet,
                            )
                            if pretrain:
                                n = ref.n_obs + q.n_obs
                                rate = n * args.pretrain_epochs / (time.perf_counter() - t0)
                        pred = q.obs["transanno_label"].astype(str).to_numpy()
                        row = {
                            **base,
                            "method": f"transanno[{variant}]",
                            "f1_macro": macro_f1(labeled, query, key, pred),
                            "seconds": time.perf_counter() - t0,
                            "pretrain_cells_per_s": rate,
                            **extra,
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    df = pd.DataFrame(rows)
    agg = df.groupby(["task", "label_fraction", "method"]).agg(
        f1_macro=("f1_macro", "median"),
        f1_min=("f1_macro", "min"),
        f1_max=("f1_macro", "max"),
        n_seeds=("seed", "nunique"),
        pretrain_cells_per_s=("pretrain_cells_per_s", "median"),
    )
    table = agg.reset_index().to_markdown(index=False, floatfmt=".3f")
    print(table)
    save(args.out, rows, vars(args), table + "\n")


if __name__ == "__main__":
    sys.exit(main())
