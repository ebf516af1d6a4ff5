"""``transanno pretrain`` and ``transanno train``: fit a backbone or a model and save it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._common import (
    CLIError,
    _check_input_file,
    _check_obs_key,
    _check_out_path,
    _is_secondary_rank,
    _parse_devices,
    _parse_json_dict,
    _progress,
    _read_h5ad,
)


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
