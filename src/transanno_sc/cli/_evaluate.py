"""``transanno evaluate`` and ``transanno demo``: score predictions; the bundled end-to-end run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import _check_obs_key, _check_out_path, _progress, _read_h5ad


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


def demo(out: str, max_epochs: int | None, seed: int) -> int:
    """Train on half the bundled mouse-lung animals, annotate the others, score and plot."""
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    import scvi

    import transanno_sc as ta

    t0 = time.perf_counter()
    scvi.settings.seed = seed
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    adata = ta.datasets.zilionis_mouse_lung()
    is_ref, how = _split_by_batch(adata, "cell_type", "batch", seed)
    ref, query = adata[is_ref].copy(), adata[~is_ref].copy()
    print(
        f"Zilionis et al. 2019 mouse lung: {ref.n_obs} reference and {query.n_obs} query cells ({how})."
    )
    # the reference animals as batches: n_top_genes="auto" compares gene counts across them
    ta.tl.transanno_annotate(
        query, reference=ref, labels_key="cell_type", batch_key="batch", max_epochs=max_epochs
    )
    metrics = ta.tl.evaluate(query, "cell_type")
    print(
        f"Query accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}, "
        f"Unassigned {metrics['unassigned_fraction']:.1%}"
    )
    print(metrics["report"][["precision", "recall", "f1-score", "support"]].round(3).to_string())
    sc.pp.neighbors(query, use_rep="X_transanno")
    sc.tl.umap(query, random_state=seed)
    h5ad = out_dir / "query_annotated.h5ad"
    query.write_h5ad(h5ad)
    fig = sc.pl.umap(
        query, color=["transanno_label", "cell_type"], wspace=0.45, show=False, return_fig=True
    )
    fig.savefig(out_dir / "umap.png", dpi=120, bbox_inches="tight")
    ta.pl.confusion_matrix(
        query, "cell_type", save=str(out_dir / "confusion_matrix.png"), show=False
    )
    print(
        f"Wrote {h5ad}, {out_dir / 'umap.png'} and {out_dir / 'confusion_matrix.png'} "
        f"in {time.perf_counter() - t0:.0f} s."
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``transanno evaluate``: score predictions against known labels."""
    import transanno_sc as ta

    for path, option in ((args.out, "--out"), (args.confusion, "--confusion")):
        if path is not None:
            _check_out_path(path, option)
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
    if args.out is not None:
        report.to_csv(args.out)
        _progress(f"wrote the per-type report to {args.out}")
    if args.confusion is not None:
        if args.confusion.endswith(".csv"):
            metrics["confusion"].to_csv(args.confusion)
        else:
            import matplotlib

            matplotlib.use("Agg")
            ta.pl.confusion_matrix(
                adata, args.true_key, args.pred_key, save=args.confusion, show=False
            )
        _progress(f"wrote the confusion matrix to {args.confusion}")
    return 0
