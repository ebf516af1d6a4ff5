"""``transanno pretrain`` and ``transanno train``: fit a backbone or a model and save it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ._common import (
    CLIError,
    _add_overwrite_option,
    _add_training_options,
    _check_input_file,
    _check_layer,
    _check_obs_key,
    _check_out_path,
    _HelpFormatter,
    _is_secondary_rank,
    _parse_json_dict,
    _progress,
    _read_h5ad,
    _report_validation,
    _trainer_options,
)


def add_pretrain_parser(sub) -> None:
    """``transanno pretrain``'s options."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on unlabeled cells (masked value modelling)",
        description="Pretrain the Transformer on the cells of one or more .h5ad files (merged "
        "by gene name; labels are not read) and save the backbone to OUT for "
        "`transanno train --backbone OUT`.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--adata", required=True, nargs="+", metavar="CELLS.h5ad", help="unlabeled cells"
    )
    p.add_argument("--out", required=True, metavar="FOLDER", help="backbone folder")
    _add_overwrite_option(p)
    _add_training_options(p, "counts", "pretraining")
    p.set_defaults(func=pretrain, inputs="the input")


def add_train_parser(sub) -> None:
    """``transanno train``'s options."""
    p = sub.add_parser(
        "train",
        help="train a model on a labeled reference, optionally from a pretrained backbone",
        description="Train a TransAnno model on REFERENCE (or fine-tune a backbone saved by "
        "`transanno pretrain`) and save it to OUT for `transanno annotate --model OUT`.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--reference", required=True, metavar="REF.h5ad", help="labeled cells")
    p.add_argument(
        "--labels-key", required=True, metavar="KEY", help="obs column with the cell types"
    )
    p.add_argument(
        "--batch-key",
        metavar="KEY",
        help="obs column with the batch (sample, donor); with several, the number of genes "
        "is chosen by leave-one-batch-out validation",
    )
    p.add_argument("--out", required=True, metavar="FOLDER", help="model folder")
    p.add_argument("--backbone", metavar="FOLDER", help="a backbone from `transanno pretrain`")
    p.add_argument(
        "--finetune",
        default="full",
        choices=["full", "partial", "head"],
        help="which part of the backbone is trained",
    )
    _add_overwrite_option(p)
    _add_training_options(p, "expression", "training")
    p.set_defaults(func=train, inputs="the reference")


def pretrain(args: argparse.Namespace) -> int:
    """``transanno pretrain``: self-supervised pretraining on unlabeled cells, save the backbone."""
    import scvi

    import transanno_sc as ta

    t0 = time.perf_counter()
    scvi.settings.seed = args.seed
    model_kwargs = _parse_json_dict(args.model_kwargs, "--model-kwargs")
    _check_out_path(args.out, "--out", overwrite=args.overwrite, kind="folder")
    for path in args.adata:
        _check_input_file(path, "corpus")
    names = [Path(p).stem for p in args.adata]
    if len(set(names)) < len(names):  # d1/data.h5ad and d2/data.h5ad: named by their paths
        names = [os.path.normpath(p) for p in args.adata]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        msg = f"--adata names {twice!r} twice."
        raise CLIError(msg)
    sources = {name: _read_h5ad(p, "corpus") for name, p in zip(names, args.adata)}
    for name, source in sources.items():
        _check_layer(source, args.layer, f"corpus {name!r}")
    if len(sources) > 1:
        corpus = ta.pp.merge(sources, layer=args.layer)
        layer = None
        _progress(f"merged {len(sources)} files: {corpus.n_obs:,} cells x {corpus.n_vars:,} genes")
    else:
        corpus, layer = next(iter(sources.values())), args.layer
    corpus.obs = corpus.obs[[]]
    ta.model.TransAnno.setup_anndata(corpus, layer=layer, input_scale=args.input_scale)
    model = ta.model.TransAnno(corpus, **model_kwargs)
    _progress(f"pretraining on {corpus.n_obs:,} cells, {len(model.var_names_):,} genes")
    model.pretrain(**_trainer_options(args))
    if _is_secondary_rank(model):
        return 0
    _report_validation(
        model.history, "pretrain_validation_accuracy", "masked-value accuracy on validation cells"
    )
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
    _check_out_path(args.out, "--out", overwrite=args.overwrite, kind="folder")
    _check_input_file(args.reference, "reference")
    if args.backbone is not None and not (Path(args.backbone) / "vocabulary.json").exists():
        msg = f"--backbone {args.backbone!r} is not a folder written by `transanno pretrain`."
        raise CLIError(msg)
    ref = _read_h5ad(args.reference, "reference")
    _check_obs_key(ref, args.labels_key, "reference", "--labels-key")
    if args.batch_key is not None:
        _check_obs_key(ref, args.batch_key, "reference", "--batch-key")
    _check_layer(ref, args.layer, "reference")
    ta.model.TransAnno.setup_anndata(
        ref,
        labels_key=args.labels_key,
        batch_key=args.batch_key,
        layer=args.layer,
        input_scale=args.input_scale,
    )
    if args.backbone is not None:
        model = ta.model.TransAnno.from_pretrained(ref, args.backbone, **model_kwargs)
        backbone = ref.uns["transanno_backbone"]
        _progress(
            f"fine-tuning the backbone in {args.backbone} ({args.finetune}); gene overlap "
            f"{backbone['fraction']:.0%}, {backbone['n_added_genes']} genes of the reference added"
        )
    else:
        model = ta.model.TransAnno(ref, **model_kwargs)
    model.train(finetune=args.finetune, **_trainer_options(args))
    if _is_secondary_rank(model):
        return 0
    _report_validation(model.history, "validation_accuracy", "validation accuracy")
    model.save(args.out, overwrite=True)
    _progress(f"saved the model to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0
