"""Command line: ``transanno demo``, ``transanno annotate`` and ``transanno evaluate``."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ._annotate import annotate
from ._common import (
    CLIError,
    _add_training_options,
    _error_message,
    _HelpFormatter,
    _Parser,
    _positive_int,
    _threshold,
)
from ._evaluate import demo, evaluate
from ._train import pretrain, train

logger = logging.getLogger("transanno_sc")


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
