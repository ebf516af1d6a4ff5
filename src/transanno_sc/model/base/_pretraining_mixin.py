"""Self-supervised pretraining, saving a backbone and starting a model from one."""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Self

import numpy as np
from anndata import AnnData
from scvi import settings
from scvi.utils._docstrings import devices_dsp

from transanno_sc._constants import (
    TARGET_SUM,
)
from transanno_sc.model._gene_selection import added_genes, checked_match
from transanno_sc.train import (
    PretrainingPlan,
)

from ._save_load import FORMAT_VERSION, VOCAB_FILE, package_version, read_vocabulary, staged_folder
from ._training_mixin import (
    MAX_MONITOR_CELLS,
    check_fit_arguments,
    default_budget,
    restores_module_on_failure,
)

logger = logging.getLogger(__name__)

#: Cells per epoch of a default pretraining run at most (a fresh random subset each epoch).
MAX_PRETRAIN_EPOCH_CELLS = 10_000


class PretrainingMixin:
    """Self-supervised pretraining and transfer of the backbone (as scvi-tools' ``ArchesMixin``).

    Needs from the model class: ``module``, ``adata``, ``var_names_``, ``input_scale_``,
    ``is_pretrained_``, ``_set_training_genes`` and ``_run_plan`` (:class:`TrainingMixin`); which
    parts fine-tuning freezes is the module's
    :meth:`~transanno_sc.module.TransAnnoModule.frozen_parts`.
    """

    @restores_module_on_failure
    @devices_dsp.dedent
    def pretrain(
        self,
        max_epochs: int | None = None,
        mask_prob: float = 0.15,
        lr: float = 1e-3,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.95,
        batch_size: int = 64,
        early_stopping: bool = True,
        early_stopping_patience: int = 5,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Pretrain the backbone on every registered cell by masked value modelling.

        Self-supervised (labels, if any, are not read): in each cell about ``mask_prob`` of the
        expressed-gene tokens have their value masked and the backbone learns to predict their
        value bins from the other genes (:class:`~transanno_sc.train.PretrainingPlan`). Then
        :meth:`~transanno_sc.model.TransAnno.train` fine-tunes on labeled cells, or
        :meth:`~transanno_sc.model.TransAnno.save_backbone` keeps the backbone for
        :meth:`~transanno_sc.model.TransAnno.from_pretrained` on other data. ``history`` gets
        ``pretrain_loss``, ``pretrain_validation_loss`` and ``pretrain_validation_accuracy``.

        Parameters
        ----------
        max_epochs
            Passes over the cells. ``None``: about 50,000 cell presentations, clipped to 5-50
            epochs of at most 10,000 random cells each (a fresh subset every epoch); early
            stopping then watches at most 5,000 validation cells.
        mask_prob
            Fraction of each cell's expressed-gene tokens that is masked.
        lr
            Peak learning rate (linear warm-up, then cosine decay).
        %(param_accelerator)s
        %(param_devices)s
        train_size
            Fraction of the cells used for training (random); the rest validates.
        batch_size
            Cells per minibatch.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience``
            epochs.
        early_stopping_patience
            Epochs without improvement before stopping.
        datasplitter_kwargs
            Passed to :class:`~scvi.dataloaders.DataSplitter`.
        plan_kwargs
            Passed to :class:`~transanno_sc.train.PretrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` and on to Lightning (``precision``,
            ``strategy``, ``num_nodes``, ``enable_progress_bar``, ...).

        Examples
        --------
        >>> import transanno_sc as ta
        >>> adata = ta.datasets.zilionis_mouse_lung()
        >>> ta.model.TransAnno.setup_anndata(adata)  # no labels needed
        >>> model = ta.model.TransAnno(adata)
        >>> model.pretrain(max_epochs=2)
        >>> model.save_backbone("lung_backbone")  # doctest: +SKIP
        """
        check_fit_arguments(max_epochs, batch_size, lr=lr)
        self._check_setup_is_current()
        if "mask_prob" in (plan_kwargs or {}):
            msg = "Pass mask_prob= itself, not in plan_kwargs."
            raise ValueError(msg)
        if not 0.0 < train_size <= 1.0:
            msg = f"train_size must be in (0, 1], got {train_size}."
            raise ValueError(msg)
        n = self.adata.n_obs
        rng = np.random.default_rng(settings.seed)
        order = rng.permutation(n)
        n_val = int(np.floor(round(n * (1.0 - train_size), 6))) if n > 1 else 0
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        self._set_training_genes(self.adata)
        if max_epochs is None:
            # about 50,000 presentations, in epochs of at most MAX_PRETRAIN_EPOCH_CELLS cells
            max_epochs, limit = default_budget(
                train_idx.size, batch_size, 50_000, (5, 50), MAX_PRETRAIN_EPOCH_CELLS
            )
            if limit is not None:
                trainer_kwargs.setdefault("limit_train_batches", limit)
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", lr)
        plan_kwargs.setdefault("mask_prob", mask_prob)
        was_trained = bool(self.is_trained_)
        logger.info(
            "Pretraining on %d cells (%d validation), %d epochs, %.0f%% of tokens masked.",
            train_idx.size,
            val_idx.size,
            max_epochs,
            100 * mask_prob,
        )
        # the classification heads take no part in pretraining
        self._run_plan(
            PretrainingPlan,
            plan_kwargs,
            # early stopping watches at most MAX_MONITOR_CELLS random validation cells; the
            # others go to the (unread) third set: scvi-tools wants every cell in one
            [
                train_idx,
                np.sort(order[: min(n_val, MAX_MONITOR_CELLS)]),
                np.sort(order[min(n_val, MAX_MONITOR_CELLS) : n_val]),
            ],
            frozen=list(self.module.head_modules.values()),
            batch_size=batch_size,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="pretrain_validation_loss",
            early_stopping_patience=early_stopping_patience,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        # pretraining does not train the classifier: predictions stay refused until `train`
        self.is_trained_ = was_trained
        self.is_pretrained_ = True
        self.pretrain_history_ = dict(self.history_ or {})

    def save_backbone(self, dir_path: str, overwrite: bool = False) -> None:
        """Save the backbone, its gene vocabulary and tokenization settings to a folder.

        The folder holds ``config.json`` and ``model.safetensors`` (loadable with
        ``TransAnnoBackbone.from_pretrained(dir_path)`` from :mod:`transanno_sc.nn`, as any
        :mod:`transformers` model) and ``vocabulary.json`` (the genes, in token order, and the
        input normalization). :meth:`~transanno_sc.model.TransAnno.from_pretrained` builds a new
        model on it.

        Parameters
        ----------
        dir_path
            Folder to write.
        overwrite
            Replace a backbone already saved there.
        """
        vocab_path = os.path.join(dir_path, VOCAB_FILE)
        if os.path.exists(vocab_path) and not overwrite:
            msg = f"{vocab_path} already exists. Pass `overwrite=True` to replace it."
            raise ValueError(msg)
        ours = {VOCAB_FILE, "config.json", "model.safetensors"}
        with staged_folder(dir_path, keep=lambda name: name not in ours) as tmp:
            self.module.backbone.save_pretrained(tmp, safe_serialization=True)
            with open(os.path.join(tmp, VOCAB_FILE), "w") as f:
                json.dump(
                    {
                        "format_version": FORMAT_VERSION,
                        "transanno_sc_version": package_version(),
                        "genes": list(self.var_names_),
                        "target_sum": TARGET_SUM,
                        "pretrained": bool(self.is_pretrained_),
                        "input_scale": self.input_scale_,
                    },
                    f,
                    indent=1,
                )

    @classmethod
    def from_pretrained(
        cls,
        adata: AnnData,
        backbone_dir: str,
        reference_genes: int = 2000,
        **model_kwargs,
    ) -> Self:
        """A new model on ``adata`` that starts from a saved backbone.

        ``adata`` (set up with :meth:`~transanno_sc.model.TransAnno.setup_anndata`) is
        mapped onto the backbone's gene vocabulary by name (exact, then case-insensitive);
        vocabulary genes it lacks are treated as not expressed. The overlap with the backbone's
        vocabulary is stored in ``adata.uns["transanno_backbone"]`` (with ``n_added_genes``,
        see below); below 50 % a warning is issued, below 10 % a :class:`ValueError` is
        raised. Then :meth:`~transanno_sc.model.TransAnno.train` fine-tunes (see its
        ``finetune``).

        The vocabulary is then extended with ``adata``'s own highly variable genes: a backbone
        pretrained on another tissue or panel lacks many of the reference's marker genes
        however high the name overlap, and a model restricted to the backbone's genes cannot
        see them (``benchmarks/README.md`` measures a backbone from another tissue with and
        without this extension). The added genes come after
        the backbone's, in alphabetical order (so the model does not depend on the AnnData's
        gene order); their gene embeddings start at random, with the pretrained embeddings'
        typical length, and are learned with ``finetune="full"`` (with ``"partial"`` and
        ``"head"`` the embeddings stay fixed, the added genes still reach the trained layers
        as distinct tokens, and the wide path reads them in every mode).

        Parameters
        ----------
        adata
            AnnData registered with :meth:`~transanno_sc.model.TransAnno.setup_anndata`.
        backbone_dir
            Folder written by :meth:`~transanno_sc.model.TransAnno.save_backbone`.
        reference_genes
            Number of highly variable genes of ``adata`` considered for the extension; those
            already in the backbone's vocabulary are not added again. ``0`` keeps the
            backbone's vocabulary as it is.
        **model_kwargs
            Non-architecture arguments of :class:`~transanno_sc.model.TransAnno` (``n_latent``,
            ``dropout``, ``wide``); the architecture comes from the backbone.

        Examples
        --------
        >>> import transanno_sc as ta
        >>> adata = ta.datasets.zilionis_mouse_lung()
        >>> ta.model.TransAnno.setup_anndata(adata, labels_key="cell_type")
        >>> model = ta.model.TransAnno.from_pretrained(adata, "lung_backbone")  # doctest: +SKIP
        >>> model.train(finetune="partial")  # doctest: +SKIP
        """
        from transanno_sc.nn import TransAnnoBackbone, TransAnnoConfig

        fixed = {"n_hidden", "n_layers", "n_heads", "max_tokens", "n_bins", "value_encoding"}
        clash = sorted(fixed & set(model_kwargs)) + sorted(
            {"gene_vocabulary", "n_top_genes"} & set(model_kwargs)
        )
        if clash:
            msg = f"{clash} come from the backbone in {backbone_dir!r} and cannot be passed."
            raise TypeError(msg)
        if isinstance(reference_genes, bool) or not (
            isinstance(reference_genes, int | np.integer) and reference_genes >= 0
        ):
            msg = f"reference_genes must be a non-negative integer, got {reference_genes!r}."
            raise ValueError(msg)
        vocab = read_vocabulary(backbone_dir)
        try:
            config = TransAnnoConfig.from_pretrained(backbone_dir)
            # safetensors only: a pickled checkpoint in the folder is never loaded
            backbone = TransAnnoBackbone.from_pretrained(backbone_dir, use_safetensors=True)
        except (OSError, ValueError) as e:
            msg = f"Could not load the backbone in {backbone_dir!r}: {e}"
            raise ValueError(msg) from e
        if config.n_genes != len(vocab):
            msg = (
                f"{backbone_dir!r} is inconsistent: the backbone has {config.n_genes} genes, "
                f"{VOCAB_FILE} lists {len(vocab)}."
            )
            raise ValueError(msg)
        manager = cls._get_most_recent_anndata_manager(adata, required=True)
        setup_args = manager.registry["setup_args"]
        # by var_names only: the registered AnnData's own genes become the vocabulary's
        match = checked_match(adata, vocab, "adata", by_columns=False)
        overlap = match.to_dict()
        added = added_genes(adata, setup_args, match, reference_genes, settings.seed)
        model_kwargs.setdefault("dropout", config.hidden_dropout_prob)
        with warnings.catch_warnings():
            # the overlap was checked (and warned about) against the backbone's vocabulary
            warnings.filterwarnings("ignore", message="Only .* of the model's genes")
            model = cls(
                adata,
                n_hidden=config.hidden_size,
                n_layers=config.num_hidden_layers,
                n_heads=config.num_attention_heads,
                max_tokens=config.max_tokens,
                n_bins=config.n_bins,
                value_encoding=config.value_encoding,
                gene_vocabulary=vocab + added,
                **model_kwargs,
            )
        state = backbone.state_dict()
        # pretrained gene embeddings first, the added genes' after them
        state = TransAnnoBackbone.extend_gene_embeddings(state, len(added))
        try:
            model.module.backbone.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = f"The backbone in {backbone_dir!r} does not fit its own config: {e}"
            raise ValueError(msg) from e
        model.is_pretrained_ = True
        overlap["n_added_genes"] = len(added)
        adata.uns["transanno_backbone"] = {"backbone_dir": str(backbone_dir), **overlap}
        if added:
            logger.info(
                "Vocabulary: %d backbone genes + %d highly variable genes of adata.",
                len(vocab),
                len(added),
            )
        return model
