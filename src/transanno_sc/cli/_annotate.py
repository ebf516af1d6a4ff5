"""``transanno annotate``: annotate a query with a model trained on a reference, or a saved one.

Both ways are one call of :func:`transanno_sc.tl.transanno_annotate`: this module reads and
checks the files, prints progress lines and writes the annotated query.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from transanno_sc._constants import UNASSIGNED_REASONS

from ._common import (
    CLIError,
    _add_overwrite_option,
    _add_training_options,
    _atomic_path,
    _check_input_file,
    _check_layer,
    _check_obs_key,
    _check_out_path,
    _HelpFormatter,
    _is_secondary_rank,
    _parse_json_dict,
    _positive_int,
    _progress,
    _read_h5ad,
    _threshold,
    _trainer_options,
)

#: Options of ``transanno annotate`` that only apply when training from ``--reference``.
_REFERENCE_ONLY = (
    "labels_key",
    "batch_key",
    "unlabeled_category",
    "save_model",
    "max_epochs",
    "model_kwargs",
    "reference_input_scale",
)


def add_annotate_parser(sub) -> None:
    """``transanno annotate``'s options."""
    p = sub.add_parser(
        "annotate",
        help="train on a labeled reference (or load a model) and annotate a query",
        description="Annotate the cells of QUERY with cell types: train a TransAnno model on a "
        "labeled REFERENCE (or load one saved with --save-model / TransAnno.save), then write "
        "QUERY with obs['transanno_label'], obs['transanno_confidence'], obsm['X_transanno'] and "
        "obsm['transanno_probabilities'] to OUT. Both files hold raw counts or log1p values; "
        "genes are matched by name.",
        formatter_class=_HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reference", metavar="REF.h5ad", help="labeled reference cells")
    src.add_argument("--model", metavar="FOLDER", help="a saved TransAnno model")
    p.add_argument(
        "--query",
        required=True,
        metavar="QUERY.h5ad",
        help="cells to annotate (.h5ad, or .h5mu: its RNA modality is annotated)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT.h5ad",
        help="annotated query file (.h5mu for a .h5mu query)",
    )
    p.add_argument("--labels-key", metavar="KEY", help="reference obs column with the cell types")
    p.add_argument("--batch-key", metavar="KEY", help="reference obs column with the batch")
    p.add_argument(
        "--unlabeled-category",
        metavar="VALUE",
        help="value of --labels-key marking reference cells without a label (default: Unknown)",
    )
    p.add_argument(
        "--save-model", metavar="FOLDER", help="save the model trained from --reference here"
    )
    p.add_argument(
        "--pretrain",
        action="store_true",
        help="pretrain the backbone on the reference and query cells before training",
    )
    p.add_argument(
        "--reference-input-scale",
        choices=["auto", "counts", "log1p", "log2(1+x)", "log10(1+x)"],
        help="what the reference's values are, where they are on another scale than the "
        "query's and --input-scale is not auto (default: --input-scale's)",
    )
    p.add_argument(
        "--unassigned-threshold",
        type=_threshold,
        default=0.5,
        metavar="P",
        help="cells whose confidence is below P are labeled Unassigned; 'none' turns it off",
    )
    p.add_argument(
        "--no-match-depth",
        dest="match_depth",
        action="store_false",
        help="train on the reference's counts as they are, also when the query is much "
        "shallower (match_depth=False)",
    )
    p.add_argument(
        "--no-query-context",
        dest="query_context",
        action="store_false",
        help="make the Unassigned call cell by cell, without the query's neighbourhoods and "
        "clusters (query_context=False)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="cells per minibatch when predicting; lower it when out of memory "
        "(default: the model's)",
    )
    p.add_argument(
        "--key-added", default="transanno", metavar="KEY", help="prefix of the keys written to OUT"
    )
    p.add_argument(
        "--markers",
        metavar="CSV",
        help="also rank each predicted type's marker genes (ta.tl.transanno_markers: the genes "
        "that drive the model's calls) and write them to CSV (one row per type and gene; also in "
        "OUT's uns['KEY_markers'])",
    )
    _add_overwrite_option(p)
    _add_training_options(p, "expression", "training")
    p.set_defaults(func=annotate, inputs="the query")


def _check_args(args: argparse.Namespace) -> dict:
    """Everything that is cheap to check before reading data or training; the model settings."""
    if args.model is None:
        if args.labels_key is None:
            msg = "--labels-key is required with --reference (the column with the cell types)."
            raise CLIError(msg)
    else:
        for option in (*_REFERENCE_ONLY, "pretrain"):
            if getattr(args, option) not in (None, False):
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
    _check_out_path(args.out, "--out", overwrite=args.overwrite, suffixes=(".h5ad", ".h5mu"))
    if args.markers is not None:
        _check_out_path(args.markers, "--markers", overwrite=args.overwrite, suffixes=(".csv",))
    if args.save_model is not None:
        _check_out_path(args.save_model, "--save-model", overwrite=args.overwrite, kind="folder")
    _check_input_file(args.query, "query")
    if (Path(args.query).suffix.lower() == ".h5mu") != (Path(args.out).suffix.lower() == ".h5mu"):
        msg = (
            f"--out {args.out!r} and --query {args.query!r}: the annotated query is written as "
            "the query was read, so --out ends in .h5mu exactly when --query does."
        )
        raise CLIError(msg)
    if args.reference is not None:
        _check_input_file(args.reference, "reference")
    return model_kwargs


def _read_reference(args: argparse.Namespace, query):
    """The reference file, checked against the options and the query's genes."""
    import transanno_sc as ta

    ref = _read_h5ad(args.reference, "reference")
    _check_obs_key(ref, args.labels_key, "reference", "--labels-key")
    if args.batch_key is not None:
        _check_obs_key(ref, args.batch_key, "reference", "--batch-key")
    _check_layer(ref, args.layer, "reference")
    shared, _ = ta.data.match_shared_genes(query, ref)
    if shared.n_matched == 0:
        msg = (
            f"no gene of the query matches a reference gene by name (query genes such as "
            f"{list(query.var_names[:3])}, reference genes such as {list(ref.var_names[:3])}): "
            "use the same gene identifiers (symbols or Ensembl ids) in both files."
        )
        raise CLIError(msg)
    _progress(f"{shared.n_matched:,} of the reference's {ref.n_vars:,} genes found in the query")
    return ref


def _training_kwargs(args: argparse.Namespace, ref, model_kwargs: dict, n_query: int) -> dict:
    """``transanno_annotate``'s arguments that train a model on ``ref`` for ``n_query`` cells."""
    kwargs = {
        "reference": ref,
        "labels_key": args.labels_key,
        "batch_key": args.batch_key,
        "pretrain": args.pretrain,
        "match_depth": args.match_depth,
        "reference_input_scale": args.reference_input_scale,
        "model_kwargs": model_kwargs,
        # the extra processes of a multi-device run train too, but only the first one saves
        "save_model": None if _is_secondary_rank() else args.save_model,
        **_trainer_options(args),
    }
    unlabeled = "Unknown"
    if args.unlabeled_category is not None:
        unlabeled = kwargs["unlabeled_category"] = args.unlabeled_category
    counts = ref.obs[args.labels_key].astype(str).value_counts()
    n_unlabeled = int(counts.pop(unlabeled)) if unlabeled in counts.index else 0
    _progress(
        f"{'pretraining and ' if args.pretrain else ''}training TransAnno on "
        f"{ref.n_obs - n_unlabeled:,} reference cells, {counts.size} cell types "
        f"({', '.join(f'{k}: {v}' for k, v in counts.items())})"
        + (f", {n_unlabeled:,} unlabeled cells" if n_unlabeled else "")
        + f"; then annotating {n_query:,} query cells"
    )
    return kwargs


def _write_annotated(query, rna, args: argparse.Namespace, t0: float) -> None:
    """Progress lines on what was predicted (``rna``: the query, or its RNA modality), then
    the annotated query to ``--out``."""
    key = args.key_added
    overlap = rna.uns[key].get("gene_overlap", {})
    if "n_matched" in overlap and "n_model_genes" in overlap:
        _progress(
            f"gene overlap: {int(overlap['n_matched']):,} of the model's "
            f"{int(overlap['n_model_genes']):,} genes"
        )
    labels = rna.obs[f"{key}_label"].value_counts()
    _progress("predicted: " + ", ".join(f"{k}: {v}" for k, v in labels.items() if v))
    reasons = {r: int(n) for r, n in rna.uns[key].get("unassigned", {}).items() if n}
    if reasons:
        _progress(
            "Unassigned: "
            + ", ".join(f"{n:,} {UNASSIGNED_REASONS.get(r, r)}" for r, n in reasons.items())
        )
    with _atomic_path(args.out) as tmp:  # --out may be --query itself (with --overwrite)
        if rna is query:
            query.write_h5ad(tmp)
        else:
            query.write_h5mu(tmp)
    _progress(
        f"wrote {args.out} ({'' if rna is query else 'RNA modality: '}"
        f"obs '{key}_label', '{key}_confidence'; "
        f"obsm 'X_{key}', '{key}_probabilities') in {time.perf_counter() - t0:.0f} s"
    )


def annotate(args: argparse.Namespace) -> int:
    """``transanno annotate``: train on a reference (or load a model) and annotate a query."""
    import transanno_sc as ta

    t0 = time.perf_counter()
    model_kwargs = _check_args(args)
    query = _read_h5ad(args.query, "query", mudata_ok=True)
    rna = ta.data.get_rna(query, "query")
    _check_layer(rna, args.layer, "query")
    if args.model is not None:
        _progress(f"loading model {args.model}")
        model = ta.model.TransAnno.load(args.model, accelerator=args.accelerator)
        _progress(f"annotating {rna.n_obs:,} query cells")
        kwargs = {}
    else:
        model = None
        ref = _read_reference(args, rna)
        kwargs = _training_kwargs(args, ref, model_kwargs, rna.n_obs)
        if args.markers is not None and kwargs["save_model"] is None and not _is_secondary_rank():
            import tempfile  # the markers need the trained model: keep it for this run

            kwargs["save_model"] = tempfile.mkdtemp(prefix="transanno_model_")
    ta.tl.transanno_annotate(
        query,
        model,
        layer=args.layer,
        input_scale=args.input_scale,
        random_state=args.seed,
        unassigned_threshold=args.unassigned_threshold,
        query_context=args.query_context,
        key_added=args.key_added,
        batch_size=args.batch_size,
        **kwargs,
    )
    if _is_secondary_rank():
        return 0
    if args.save_model is not None:
        _progress(f"saved the model to {args.save_model}")
    if args.markers is not None:
        from transanno_sc.tl._markers import markers_df

        if model is None:
            model = ta.model.TransAnno.load(kwargs["save_model"], accelerator=args.accelerator)
            if args.save_model is None:
                import shutil

                shutil.rmtree(kwargs["save_model"], ignore_errors=True)
        _progress("ranking the marker genes of each predicted type")
        ta.tl.transanno_markers(query, model, key_added=args.key_added)
        with _atomic_path(args.markers) as tmp:
            markers_df(rna, f"{args.key_added}_markers").to_csv(tmp, index=False)
        _progress(f"wrote the marker genes to {args.markers}")
    _write_annotated(query, rna, args, t0)
    return 0
