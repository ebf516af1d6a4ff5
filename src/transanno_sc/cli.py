"""Command line: ``transanno demo``, ``transanno annotate`` and ``transanno evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
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


class CLIError(Exception):
    """A user mistake on the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported on one line like every other error."""

    def error(self, message: str):
        print(f"transanno: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _progress(msg: str) -> None:
    print(f"[transanno] {msg}", flush=True)


def _check_input_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        msg = f"{what} file {path!r} not found."
        raise CLIError(msg)
    if p.is_dir():
        msg = f"{what} {path!r} is a folder, expected an .h5ad file."
        raise CLIError(msg)
    return p


def _read_h5ad(path: str, what: str):
    import anndata as ad

    p = _check_input_file(path, what)
    try:
        adata = ad.read_h5ad(p)
    except Exception as e:  # h5py/anndata raise many types on a bad file
        msg = f"could not read {what} {path!r} as .h5ad ({type(e).__name__}: {e})."
        raise CLIError(msg) from e
    _progress(f"read {what} {path}: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
    return adata


def _check_obs_key(adata, key: str, what: str, option: str) -> None:
    if key not in adata.obs:
        msg = (
            f"{option} {key!r} is not a column of the {what}'s obs "
            f"(columns: {', '.join(map(str, adata.obs.columns)) or 'none'})."
        )
        raise CLIError(msg)


def _check_out_path(path: str, option: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        msg = f"{option} {path!r}: folder {str(parent)!r} does not exist."
        raise CLIError(msg)


def _parse_json_dict(text: str | None, option: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{option} is not valid JSON ({e}): {text!r}."
        raise CLIError(msg) from e
    if not isinstance(value, dict):
        msg = f"{option} must be a JSON object such as '{{\"n_layers\": 2}}', got {text!r}."
        raise CLIError(msg)
    return value


def _parse_devices(text: str) -> int | str | list[int]:
    """``auto``, ``2`` or ``0,1`` as Lightning takes them."""
    if text.strip().lstrip("-").isdigit():
        return int(text)
    if "," in text:
        try:
            return [int(d) for d in text.split(",") if d.strip()]
        except ValueError:
            pass
    return text


def _threshold(text: str) -> float | None:
    if text.strip().lower() in {"none", "off"}:
        return None
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number in [0, 1] or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.0 <= value <= 1.0:
        msg = f"must be in [0, 1] or 'none', got {value:g}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"expected a positive integer, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _is_secondary_rank(model) -> bool:
    """True on the non-zero ranks of a multi-process (DDP) run: they must not write files."""
    trainer = getattr(model, "trainer", None)
    if trainer is not None and hasattr(trainer, "is_global_zero"):
        return not trainer.is_global_zero
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0"


def annotate(args: argparse.Namespace) -> int:
    """``transanno annotate``: train on a reference (or load a model) and annotate a query."""
    import scvi

    import transanno_sc as ta

    t0 = time.perf_counter()
    scvi.settings.seed = args.seed
    # validate everything that is cheap to check before any training
    if args.model is None:
        if args.labels_key is None:
            msg = "--labels-key is required with --reference (the column with the cell types)."
            raise CLIError(msg)
    else:
        for option in ("labels_key", "batch_key", "save_model", "max_epochs", "model_kwargs"):
            if getattr(args, option) is not None:
                flag = "--" + option.replace("_", "-")
                msg = f"{flag} only applies when training from --reference, not with --model."
                raise CLIError(msg)
        if not Path(args.model).is_dir():
            msg = f"--model folder {args.model!r} not found."
            raise CLIError(msg)
        if not (Path(args.model) / "transanno.json").exists():
            msg = f"--model {args.model!r} is not a folder written by `TransAnno.save` (no transanno.json)."
            raise CLIError(msg)
    model_kwargs = _parse_json_dict(args.model_kwargs, "--model-kwargs")
    _check_out_path(args.out, "--out")
    if args.save_model is not None:
        _check_out_path(args.save_model, "--save-model")
    devices = _parse_devices(args.devices)
    _check_input_file(args.query, "query")
    if args.reference is not None:
        _check_input_file(args.reference, "reference")

    query = _read_h5ad(args.query, "query")
    if args.layer is not None and args.layer not in query.layers:
        msg = f"--layer {args.layer!r} is not a layer of the query (layers: {list(query.layers)})."
        raise CLIError(msg)

    if args.model is not None:
        _progress(f"loading model {args.model}")
        model = ta.model.TransAnno.load(args.model, accelerator=args.accelerator)
    else:
        ref = _read_h5ad(args.reference, "reference")
        _check_obs_key(ref, args.labels_key, "reference", "--labels-key")
        if args.batch_key is not None:
            _check_obs_key(ref, args.batch_key, "reference", "--batch-key")
        if args.layer is not None and args.layer not in ref.layers:
            msg = f"--layer {args.layer!r} is not a layer of the reference (layers: {list(ref.layers)})."
            raise CLIError(msg)
        shared = ta.data.match_genes(query.var_names, ref.var_names)
        if shared.n_matched == 0:
            msg = (
                f"no gene of the query matches a reference gene by name (query genes such as "
                f"{list(query.var_names[:3])}, reference genes such as {list(ref.var_names[:3])}): "
                "use the same gene identifiers (symbols or Ensembl ids) in both files."
            )
            raise CLIError(msg)
        _progress(
            f"{shared.n_matched:,} of the reference's {ref.n_vars:,} genes found in the query"
        )
        counts = ref.obs[args.labels_key].astype(str).value_counts()
        _progress(
            f"training TransAnno on {ref.n_obs:,} reference cells, {counts.size} cell types "
            f"({', '.join(f'{k}: {v}' for k, v in counts.items())})"
        )
        ta.model.TransAnno.setup_anndata(
            ref, labels_key=args.labels_key, batch_key=args.batch_key, layer=args.layer
        )
        model = ta.model.TransAnno(ref, **model_kwargs)
        train_kwargs = {"batch_size": args.batch_size} if args.batch_size is not None else {}
        model.train(
            max_epochs=args.max_epochs,
            accelerator=args.accelerator,
            devices=devices,
            enable_progress_bar=sys.stderr.isatty(),  # a bar on a terminal, not in log files
            **train_kwargs,
        )
        if _is_secondary_rank(model):
            return 0
        history = model.history or {}
        if "validation_accuracy" in history and len(history["validation_accuracy"]):
            acc = float(history["validation_accuracy"].iloc[-1, 0])
            epochs = len(history["validation_accuracy"])
            _progress(f"trained {epochs} epochs, validation accuracy {acc:.3f}")
        if args.save_model is not None:
            model.save(args.save_model, overwrite=True)
            _progress(f"saved the model to {args.save_model}")

    _progress(f"annotating {query.n_obs:,} query cells")
    ta.tl.transanno_annotate(
        query,
        model,
        layer=args.layer,
        unassigned_threshold=args.unassigned_threshold,
        key_added=args.key_added,
        batch_size=args.batch_size,
    )
    overlap = query.uns[args.key_added].get("gene_overlap", {})
    if "n_matched" in overlap and "n_model_genes" in overlap:
        _progress(
            f"gene overlap: {int(overlap['n_matched']):,} of the model's "
            f"{int(overlap['n_model_genes']):,} genes"
        )
    labels = query.obs[f"{args.key_added}_label"].value_counts()
    _progress("predicted: " + ", ".join(f"{k}: {v}" for k, v in labels.items() if v))
    query.write_h5ad(args.out)
    _progress(
        f"wrote {args.out} (obs '{args.key_added}_label', '{args.key_added}_confidence'; "
        f"obsm 'X_{args.key_added}', '{args.key_added}_probabilities') "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    return 0


def pretrain(args: argparse.Namespace) -> int:
    """``transanno pretrain``: self-supervised pretraining on unlabeled cells, save the backbone."""
    import scvi

    import transanno_sc as ta

    t0 = time.perf_counter()
    scvi.settings.seed = args.seed
    model_kwargs = _parse_json_dict(args.model_kwargs, "--model-kwargs")
    _check_out_path(args.out, "--out")
    devices = _parse_devices(args.devices)
    for path in args.adata:
        _check_input_file(path, "corpus")
    sources = {Path(p).stem: _read_h5ad(p, "corpus") for p in args.adata}
    if len(sources) > 1:
        corpus = ta.pp.merge(sources, layer=args.layer)
        layer = None
        _progress(f"merged {len(sources)} files: {corpus.n_obs:,} cells x {corpus.n_vars:,} genes")
    else:
        corpus, layer = next(iter(sources.values())), args.layer
    corpus.obs = corpus.obs[[]]
    ta.model.TransAnno.setup_anndata(corpus, layer=layer)
    model = ta.model.TransAnno(corpus, **model_kwargs)
    _progress(f"pretraining on {corpus.n_obs:,} cells, {len(model.var_names_):,} genes")
    model.pretrain(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=devices,
        enable_progress_bar=sys.stderr.isatty(),
    )
    if _is_secondary_rank(model):
        return 0
    history = model.history or {}
    if "pretrain_validation_accuracy" in history:
        acc = float(history["pretrain_validation_accuracy"].iloc[-1, 0])
        _progress(f"masked-value accuracy on validation cells {acc:.3f}")
    model.save_backbone(args.out, overwrite=True)
    _progress(f"saved the backbone to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def train(args: argparse.Namespace) -> int:
    """``transanno train``: train (or fine-tune a backbone) on a reference, save the model."""
    import scvi

    import transanno_sc as ta

    t0 = time.perf_counter()
    scvi.settings.seed = args.seed
    model_kwargs = _parse_json_dict(args.model_kwargs, "--model-kwargs")
    _check_out_path(args.out, "--out")
    devices = _parse_devices(args.devices)
    _check_input_file(args.reference, "reference")
    if args.backbone is not None and not (Path(args.backbone) / "vocabulary.json").exists():
        msg = f"--backbone {args.backbone!r} is not a folder written by `transanno pretrain`."
        raise CLIError(msg)
    ref = _read_h5ad(args.reference, "reference")
    _check_obs_key(ref, args.labels_key, "reference", "--labels-key")
    ta.model.TransAnno.setup_anndata(ref, labels_key=args.labels_key, layer=args.layer)
    if args.backbone is not None:
        model = ta.model.TransAnno.from_pretrained(ref, args.backbone, **model_kwargs)
        _progress(
            f"fine-tuning the backbone in {args.backbone} ({args.finetune}); gene overlap "
            f"{ref.uns['transanno_backbone']['fraction']:.0%}, "
            f"{ref.uns['transanno_backbone']['n_added_genes']} genes of the reference added"
        )
    else:
        model = ta.model.TransAnno(ref, **model_kwargs)
    model.train(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=devices,
        finetune=args.finetune,
        enable_progress_bar=sys.stderr.isatty(),
    )
    if _is_secondary_rank(model):
        return 0
    history = model.history or {}
    if "validation_accuracy" in history and len(history["validation_accuracy"]):
        acc = float(history["validation_accuracy"].iloc[-1, 0])
        _progress(f"validation accuracy {acc:.3f}")
    model.save(args.out, overwrite=True)
    _progress(f"saved the model to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_training_options(p: argparse.ArgumentParser, data: str, what: str) -> None:
    """Options shared by ``transanno pretrain`` and ``transanno train``."""
    p.add_argument("--layer", metavar="LAYER", help=f"layer with the {data} (default: X)")
    p.add_argument(
        "--max-epochs", type=_positive_int, default=None, metavar="N", help=f"{what} epochs"
    )
    p.add_argument("--model-kwargs", metavar="JSON", help="model settings as JSON")
    _add_device_options(p)


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accelerator", default="auto", metavar="NAME", help="'cpu', 'gpu', 'mps' or 'auto'"
    )
    p.add_argument(
        "--devices",
        default="auto",
        metavar="N",
        help="number of devices, a list such as 0,1, or 'auto'",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")


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


def _build_parser() -> argparse.ArgumentParser:
    from transanno_sc import __version__

    fmt = _HelpFormatter
    parser = _Parser(
        prog="transanno",
        description="Transformer cell-type annotation for single-cell RNA-seq (.h5ad files).",
        epilog="Run `transanno COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"transanno-sc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_demo = sub.add_parser(
        "demo",
        help="annotate the bundled mouse-lung data end to end",
        description="Train on half of the bundled mouse-lung animals, annotate the others, "
        "print accuracy and macro-F1, and write the annotated cells and two plots.",
        formatter_class=fmt,
    )
    p_demo.add_argument("--out", default="transanno_demo", help="output folder")
    p_demo.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="training epochs (default: automatic)",
    )
    p_demo.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")

    p_ann = sub.add_parser(
        "annotate",
        help="train on a labeled reference (or load a model) and annotate a query",
        description="Annotate the cells of QUERY with cell types: train a TransAnno model on a "
        "labeled REFERENCE (or load one saved with --save-model / TransAnno.save), then write "
        "QUERY with obs['transanno_label'], obs['transanno_confidence'], obsm['X_transanno'] and "
        "obsm['transanno_probabilities'] to OUT. Both files hold raw counts or log1p values; "
        "genes are matched by name.",
        formatter_class=fmt,
    )
    src = p_ann.add_mutually_exclusive_group(required=True)
    src.add_argument("--reference", metavar="REF.h5ad", help="labeled reference cells")
    src.add_argument("--model", metavar="FOLDER", help="a saved TransAnno model")
    p_ann.add_argument("--query", required=True, metavar="QUERY.h5ad", help="cells to annotate")
    p_ann.add_argument("--out", required=True, metavar="OUT.h5ad", help="annotated query file")
    p_ann.add_argument(
        "--labels-key", metavar="KEY", help="reference obs column with the cell types"
    )
    p_ann.add_argument("--batch-key", metavar="KEY", help="reference obs column with the batch")
    p_ann.add_argument("--layer", metavar="LAYER", help="layer with the expression (default: X)")
    p_ann.add_argument(
        "--save-model", metavar="FOLDER", help="save the model trained from --reference here"
    )
    p_ann.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="training epochs (default: automatic, 10-100 by reference size)",
    )
    p_ann.add_argument(
        "--unassigned-threshold",
        type=_threshold,
        default=0.5,
        metavar="P",
        help="cells whose confidence is below P are labeled Unassigned; 'none' turns it off",
    )
    p_ann.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="cells per minibatch in training and prediction; lower it when out of memory "
        "(default: the model's)",
    )
    p_ann.add_argument(
        "--accelerator", default="auto", metavar="NAME", help="'cpu', 'gpu', 'mps' or 'auto'"
    )
    p_ann.add_argument(
        "--devices",
        default="auto",
        metavar="N",
        help="number of devices, a list such as 0,1, or 'auto'",
    )
    p_ann.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help='model settings as JSON, e.g. \'{"n_layers": 2, "max_tokens": 128}\'',
    )
    p_ann.add_argument(
        "--key-added", default="transanno", metavar="KEY", help="prefix of the keys written to OUT"
    )
    p_ann.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")

    p_pre = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on unlabeled cells (masked value modelling)",
        description="Pretrain the Transformer on the cells of one or more .h5ad files (merged "
        "by gene name; labels are not read) and save the backbone to OUT for "
        "`transanno train --backbone OUT`.",
        formatter_class=fmt,
    )
    p_pre.add_argument(
        "--adata", required=True, nargs="+", metavar="CELLS.h5ad", help="unlabeled cells"
    )
    p_pre.add_argument("--out", required=True, metavar="FOLDER", help="backbone folder")
    _add_training_options(p_pre, "counts", "pretraining")

    p_tr = sub.add_parser(
        "train",
        help="train a model on a labeled reference, optionally from a pretrained backbone",
        description="Train a TransAnno model on REFERENCE (or fine-tune a backbone saved by "
        "`transanno pretrain`) and save it to OUT for `transanno annotate --model OUT`.",
        formatter_class=fmt,
    )
    p_tr.add_argument("--reference", required=True, metavar="REF.h5ad", help="labeled cells")
    p_tr.add_argument(
        "--labels-key", required=True, metavar="KEY", help="obs column with the cell types"
    )
    p_tr.add_argument("--out", required=True, metavar="FOLDER", help="model folder")
    p_tr.add_argument("--backbone", metavar="FOLDER", help="a backbone from `transanno pretrain`")
    p_tr.add_argument(
        "--finetune",
        default="full",
        choices=["full", "partial", "head"],
        help="which part of the backbone is trained",
    )
    _add_training_options(p_tr, "expression", "training")

    p_ev = sub.add_parser(
        "evaluate",
        help="score predicted against known cell types",
        description="Print accuracy, macro/weighted F1, the Unassigned fraction and a per-type "
        "report of the predictions in ADATA against known labels.",
        formatter_class=fmt,
    )
    p_ev.add_argument("--adata", required=True, metavar="ADATA.h5ad", help="annotated cells")
    p_ev.add_argument(
        "--true-key", required=True, metavar="KEY", help="obs column with the known types"
    )
    p_ev.add_argument(
        "--pred-key", default="transanno_label", metavar="KEY", help="obs column with predictions"
    )
    p_ev.add_argument("--out", metavar="REPORT.csv", help="write the per-type report as CSV")
    p_ev.add_argument(
        "--confusion",
        metavar="FILE",
        help="write the confusion matrix: a table (.csv) or a plot (.png, .pdf, .svg)",
    )
    p_ev.add_argument(
        "--all-cells",
        action="store_true",
        help="also score cells whose true type the model does not know",
    )
    return parser


def _error_message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split())  # one line


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transanno`` command; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Lightning's advice for developers, noise on a command line
    for message in (".*LeafSpec.*", ".*smaller than the logging interval.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=message)
    commands = {
        "demo": None,
        "annotate": annotate,
        "evaluate": evaluate,
        "pretrain": pretrain,
        "train": train,
    }
    try:
        if args.command == "demo":
            return demo(args.out, args.max_epochs, args.seed)
        return commands[args.command](args)
    except (CLIError, ValueError, KeyError, TypeError, FileNotFoundError) as e:
        print(f"transanno: error: {_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transanno: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
