"""``transanno evaluate`` and ``transanno demo``: score predictions; the bundled end-to-end run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import (
    _add_overwrite_option,
    _atomic_path,
    _check_obs_key,
    _check_out_path,
    _HelpFormatter,
    _positive_int,
    _progress,
    _read_h5ad,
)


def add_demo_parser(sub) -> None:
    """``transanno demo``'s options."""
    p = sub.add_parser(
        "demo",
        help="annotate the bundled mouse-lung data end to end",
        description="Train on half of the bundled mouse-lung animals, annotate the others, "
        "print accuracy and macro-F1, and write the annotated cells and two plots.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", default="transanno_demo", help="output folder")
    p.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="training epochs (default: automatic)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")
    p.set_defaults(func=demo)


def add_evaluate_parser(sub) -> None:
    """``transanno evaluate``'s options."""
    p = sub.add_parser(
        "evaluate",
        help="score predicted against known cell types",
        description="Print accuracy, macro/weighted F1, the Unassigned fraction and a per-type "
        "report of the predictions in ADATA against known labels.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--adata", required=True, metavar="ADATA.h5ad", help="annotated cells")
    p.add_argument(
        "--true-key", required=True, metavar="KEY", help="obs column with the known types"
    )
    p.add_argument(
        "--pred-key", default="transanno_label", metavar="KEY", help="obs column with predictions"
    )
    p.add_argument("--out", metavar="REPORT.csv", help="write the per-type report as CSV")
    p.add_argument(
        "--confusion",
        metavar="FILE",
        help="write the confusion matrix: a table (.csv) or a plot (.png, .pdf, .svg)",
    )
    p.add_argument(
        "--all-cells",
        action="store_true",
        help="also score cells whose true type the model does not know",
    )
    _add_overwrite_option(p)
    p.set_defaults(func=evaluate)


def _split_by_batch(adata, labels_key: str, batch_key: str | None, seed: int):
    """Reference and query masks: half the batches each, or a stratified 50/50 split."""
    import numpy as np

    if batch_key and batch_key in adata.obs and adata.obs[batch_key].nunique() > 1:
        batches = sorted(adata.obs[batch_key].astype(str).unique())
        ref_batches = batches[::2]
        is_ref = adata.obs[batch_key].astype(str).isin(ref_batches).to_numpy()
        return is_ref, f"reference batches {ref_batches}, query batches {batches[1::2]}"
    rng = np.random.default_rng(seed)
    is_ref = np.zeros(adata.n_obs, dtype=bool)
    labels = adata.obs[labels_key].astype(str).to_numpy()
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        is_ref[idx[: (len(idx) + 1) // 2]] = True
    return is_ref, "stratified random 50/50 split"


def _print_scores(metrics: dict) -> None:
    print(
        f"Query accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}, "
        f"Unassigned {metrics['unassigned_fraction']:.1%}"
    )
    print(metrics["report"][["precision", "recall", "f1-score", "support"]].round(3).to_string())
    _print_novelty(metrics)


def _print_novelty(metrics: dict) -> None:
    """One line on the cells of true types the model does not know, if there are any."""
    if not metrics.get("n_novel"):
        return
    print(
        f"types the model does not know: {', '.join(metrics['novel_types'])} "
        f"({metrics['n_novel']:,} cells): Unassigned {metrics['novel_unassigned_fraction']:.1%}  "
        f"AUROC of the confidence (known against them) {metrics['novelty_auroc']:.3f}  "
        f"macro-F1 over all cells {metrics['f1_macro_all_cells']:.3f}"
    )


def _write_demo_outputs(query, out_dir: Path, seed: int) -> list[Path]:
    """The annotated query with a UMAP, the UMAP plot and the confusion matrix."""
    import scanpy as sc

    import transanno_sc as ta

    sc.pp.neighbors(query, use_rep="X_transanno")
    sc.tl.umap(query, random_state=seed)
    h5ad, umap, confusion = (
        out_dir / "query_annotated.h5ad",
        out_dir / "umap.png",
        out_dir / "confusion_matrix.png",
    )
    query.write_h5ad(h5ad)
    fig = sc.pl.umap(
        query, color=["transanno_label", "cell_type"], wspace=0.45, show=False, return_fig=True
    )
    fig.savefig(umap, dpi=120, bbox_inches="tight")
    ta.pl.confusion_matrix(query, "cell_type", save=str(confusion), show=False)
    return [h5ad, umap, confusion]


def demo(args: argparse.Namespace) -> int:
    """``transanno demo``: train on half the bundled mouse-lung animals, annotate the others,
    score and plot."""
    import matplotlib

    matplotlib.use("Agg")

    import transanno_sc as ta

    t0 = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    adata = ta.datasets.zilionis_mouse_lung()
    is_ref, how = _split_by_batch(adata, "cell_type", "batch", args.seed)
    ref, query = adata[is_ref].copy(), adata[~is_ref].copy()
    print(
        f"Zilionis et al. 2019 mouse lung: {ref.n_obs} reference and {query.n_obs} query cells ({how})."
    )
    # the reference animals as batches: n_top_genes="auto" compares gene counts across them
    ta.tl.transanno_annotate(
        query,
        reference=ref,
        labels_key="cell_type",
        batch_key="batch",
        max_epochs=args.max_epochs,
        random_state=args.seed,
    )
    _print_scores(ta.tl.evaluate(query, "cell_type"))
    written = _write_demo_outputs(query, out_dir, args.seed)
    print(
        f"Wrote {', '.join(map(str, written[:-1]))} and {written[-1]} "
        f"in {time.perf_counter() - t0:.0f} s."
    )
    return 0


#: What ``--confusion`` writes: a table, or a plot in one of these formats.
CONFUSION_SUFFIXES = (".csv", ".png", ".pdf", ".svg")


def evaluate(args: argparse.Namespace) -> int:
    """``transanno evaluate``: score predictions against known labels."""
    import transanno_sc as ta

    for path, option, suffixes in (
        (args.out, "--out", (".csv",)),
        (args.confusion, "--confusion", CONFUSION_SUFFIXES),
    ):
        if path is not None:
            _check_out_path(path, option, overwrite=args.overwrite, suffixes=suffixes)
    adata = _read_h5ad(args.adata, "adata")
    _check_obs_key(adata, args.true_key, "adata", "--true-key")
    _check_obs_key(adata, args.pred_key, "adata", "--pred-key")
    metrics = ta.tl.evaluate(adata, args.true_key, args.pred_key, known_only=not args.all_cells)
    print(
        f"cells {metrics['n_cells']:,}  accuracy {metrics['accuracy']:.3f}  "
        f"macro-F1 {metrics['f1_macro']:.3f}  weighted-F1 {metrics['f1_weighted']:.3f}  "
        f"Unassigned {metrics['unassigned_fraction']:.1%}"
    )
    report = metrics["report"][["precision", "recall", "f1-score", "support"]].copy()
    report["support"] = report["support"].astype(int)
    report.index.name = args.true_key
    print(report.round(3).to_string())
    _print_novelty(metrics)
    if args.out is not None:
        with _atomic_path(args.out) as tmp:
            report.to_csv(tmp)
        _progress(f"wrote the per-type report to {args.out}")
    if args.confusion is not None:
        _write_confusion(adata, args, metrics["confusion"])
        _progress(f"wrote the confusion matrix to {args.confusion}")
    return 0


def _write_confusion(adata, args: argparse.Namespace, confusion) -> None:
    """The confusion matrix as a table (``.csv``) or a plot (any other suffix)."""
    if args.confusion.lower().endswith(".csv"):
        with _atomic_path(args.confusion) as tmp:
            confusion.to_csv(tmp)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import transanno_sc as ta

    with _atomic_path(args.confusion) as tmp:
        ta.pl.confusion_matrix(adata, args.true_key, args.pred_key, save=tmp, show=False)
    plt.close("all")
