"""Leave-one-cell-type-out: does TransAnno call cells of a novel type "Unassigned"?

For each task and each of its most frequent reference types, that type is removed from the
reference; a model is trained on the rest (package defaults) and applied to the full query.
Reported per held-out type, then as medians per task:

- AUROC of the novelty of held-out cells against the other query cells, for the confidence
  that ``transanno_annotate`` thresholds (``1 - confidence``), and for its two parts alone
  (``1 - calibrated probability`` and ``1 - novelty p-value``);
- the fraction of held-out cells called "Unassigned" at the default threshold (0.5);
- the accuracy lost on known types: accuracy of known-type query cells without any
  "Unassigned" call minus accuracy with the default calls (Unassigned counts as an error);
- the expected calibration error (ECE) of known-type query cells before (temperature 1) and
  after temperature scaling, and on the reference's validation split.

    python benchmarks/novelty.py --tasks zilionis_animals baron_50_50 pbmc68k_30 \
        --n-types 5 --out benchmarks/novelty
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from run import save, task

warnings.filterwarnings("ignore")


def ece(probs: np.ndarray, correct_labels: np.ndarray) -> float:
    from transanno_sc.train import expected_calibration_error

    return expected_calibration_error(probs, correct_labels)


def held_out_run(tname: str, held: str, seed: int, model_kwargs: dict, train_kwargs: dict) -> dict:
    import scvi

    import transanno_sc as ta

    ref0, query, key = task(tname, seed)
    ref = ref0[ref0.obs[key].astype(str) != held].copy()
    scvi.settings.seed = seed
    t0 = time.perf_counter()
    ta.model.TransAnno.setup_anndata(ref, labels_key=key)
    model = ta.model.TransAnno(ref, **model_kwargs)
    model.train(**{"enable_progress_bar": False, **train_kwargs})
    conf = model.predict_confidence(query)
    probs = model.predict(query, soft=True)
    truth = query.obs[key].astype(str).to_numpy()
    novel = truth == held
    known = ~novel & np.isin(truth, model.classes_)
    pred = conf["label"].to_numpy()
    called = np.where(conf["confidence"].to_numpy() < 0.5, "Unassigned", pred)
    # positions in model.classes_, which follows the labels' category order (not sorted)
    y = pd.Index(model.classes_).get_indexer(truth[known])
    p_cal = probs.to_numpy()[known]
    temperature = model.calibration_["temperature"]
    logits = np.log(np.clip(p_cal, 1e-30, None)) * temperature
    p_raw = np.exp(logits - logits.max(1, keepdims=True))
    p_raw /= p_raw.sum(1, keepdims=True)
    return {
        "task": tname,
        "held_out": held,
        "seed": seed,
        "n_novel": int(novel.sum()),
        "auroc_confidence": roc_auc_score(novel, -conf["confidence"]),
        "auroc_probability": roc_auc_score(novel, -conf["probability"]),
        "auroc_novelty_pvalue": roc_auc_score(novel, -conf["novelty_pvalue"]),
        "novel_unassigned": float(np.mean(called[novel] == "Unassigned")),
        "known_accuracy_no_calls": float(np.mean(pred[known] == truth[known])),
        "known_accuracy": float(np.mean(called[known] == truth[known])),
        "known_unassigned": float(np.mean(called[known] == "Unassigned")),
        "ece_query_before": ece(p_raw, y),
        "ece_query_after": ece(p_cal, y),
        "ece_validation_before": model.calibration_["ece_uncalibrated"],
        "ece_validation_after": model.calibration_["ece_calibrated"],
        "temperature": temperature,
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", nargs="+", default=["zilionis_animals", "baron_50_50", "pbmc68k_30"]
    )
    parser.add_argument("--n-types", type=int, default=5, help="most frequent types held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-kwargs", default="{}", help="JSON, passed to TransAnno(...)")
    parser.add_argument("--train-kwargs", default="{}", help="JSON, passed to TransAnno.train")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = []
    for tname in args.tasks:
        ref, query, key = task(tname, args.seed)
        counts = ref.obs[key].astype(str).value_counts()
        in_query = set(query.obs[key].astype(str))
        held_types = [t for t in counts.index if t in in_query][: args.n_types]
        for held in held_types:
            row = held_out_run(
                tname,
                held,
                args.seed,
                json.loads(args.model_kwargs),
                json.loads(args.train_kwargs),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    df = pd.DataFrame(rows)
    df["accuracy_lost"] = df["known_accuracy_no_calls"] - df["known_accuracy"]
    cols = [
        "auroc_confidence",
        "auroc_probability",
        "auroc_novelty_pvalue",
        "novel_unassigned",
        "accuracy_lost",
        "known_unassigned",
        "ece_query_before",
        "ece_query_after",
        "ece_validation_before",
        "ece_validation_after",
    ]
    per_task = df.groupby("task")[cols].median()
    per_task.loc["all (median)"] = df[cols].median()
    table = per_task.T.to_markdown(floatfmt=".3f")
    print(table)
    save(args.out, rows, vars(args), table + "\n")


if __name__ == "__main__":
    sys.exit(main())
