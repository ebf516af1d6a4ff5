"""Command line: ``transanno demo``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("transanno_sc")


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
    ta.tl.transanno_annotate(query, reference=ref, labels_key="cell_type", max_epochs=max_epochs)
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
    fig = sc.pl.umap(query, color=["transanno_label", "cell_type"], show=False, return_fig=True)
    fig.savefig(out_dir / "umap.png", dpi=120, bbox_inches="tight")
    ta.pl.confusion_matrix(
        query, "cell_type", save=str(out_dir / "confusion_matrix.png"), show=False
    )
    print(
        f"Wrote {h5ad}, {out_dir / 'umap.png'} and {out_dir / 'confusion_matrix.png'} "
        f"in {time.perf_counter() - t0:.0f} s."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transanno`` command."""
    from transanno_sc import __version__

    parser = argparse.ArgumentParser(
        prog="transanno", description="Transformer cell-type annotation."
    )
    parser.add_argument("--version", action="version", version=f"transanno-sc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="annotate the bundled mouse-lung data end to end")
    p_demo.add_argument(
        "--out", default="transanno_demo", help="output folder (default: %(default)s)"
    )
    p_demo.add_argument(
        "--max-epochs", type=int, default=None, help="training epochs (default: automatic)"
    )
    p_demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        if args.command == "demo":
            return demo(args.out, args.max_epochs, args.seed)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        print(f"transanno: error: {e}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
