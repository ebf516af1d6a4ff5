"""Training the classifier: the labeled split, the wide path's fit and the Lightning run."""

from __future__ import annotations

import functools
import logging
import numbers
import time
import warnings
from typing import Literal

import numpy as np
import torch
from scvi import settings
from scvi.utils._docstrings import devices_dsp

from transanno_sc._constants import (
    DEFAULT_DEEP_WEIGHT,
    REGISTRY_KEYS,
)
from transanno_sc.data import (
    check_positive_int,
    empty_rows,
    get_matrix,
    stratified_split,
    stratified_subsample,
)
from transanno_sc.train import (
    class_weights,
    configure_distributed,
    logistic_regression,
    weighting_power,
)

logger = logging.getLogger(__name__)


def restores_module_on_failure(method):
    """Decorate a fitting method so that, when it raises, a trained model's module gets back
    the weights and calibration it had: the fit sets the calibration aside and refits the
    wide path before Lightning runs, and a failure half way (a bad ``plan_kwargs``, an
    interrupt) would leave a model that predicts otherwise while it reads as trained."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        backup = None
        if getattr(self, "is_trained_", False) or getattr(self, "is_pretrained_", False):
            backup = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            if backup is not None:
                self.module.load_state_dict(backup)
                self.module.eval()
            raise

    return wrapper


def check_fit_arguments(max_epochs, batch_size, **rates) -> None:
    """Refuse, before any work, a ``max_epochs`` that is not a positive integer (or
    ``None``), a ``batch_size`` that is not one, and learning rates (``rates``) that are not
    positive numbers (``None`` allowed)."""
    check_positive_int(max_epochs, "max_epochs", optional=True)
    check_positive_int(batch_size, "batch_size")
    for name, value in rates.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            msg = f"{name} must be a positive number, got {value!r}."
            raise ValueError(msg)


#: Cell presentations of a default training run (``benchmarks/README.md``: halving the
#: earlier 30,000 left the query macro-F1 of every benchmark task as it was or better).
TRAIN_PRESENTATIONS = 15_000

#: Training cells the wide path's logistic regression is fitted on (stratified subsample).
N_LINEAR_CELLS = 20_000


#: Training cells per epoch of a default run at most: a larger reference trains each epoch on
#: a fresh random subset of this many cells, so a default run presents at most 10 x 6,000 =
#: 60,000 cells however large the reference (``benchmarks/budget.py``: query macro-F1 within
#: 0.005 of the best budget tried at 1k, 10k and 50k reference cells).
MAX_EPOCH_CELLS = 6_000
#: Validation cells that early stopping watches at most (stratified subsample); every
#: validation cell still calibrates the confidence.
MAX_MONITOR_CELLS = 5_000


def default_budget(
    n_cells: int,
    batch_size: int,
    presentations: int | None = None,
    epochs: tuple[int, int] = (10, 100),
    max_epoch_cells: int | None = None,
) -> tuple[int, int | None]:
    """The default ``(max_epochs, limit_train_batches)`` for ``n_cells`` training cells: about
    ``presentations`` (:data:`TRAIN_PRESENTATIONS`) cell presentations in ``epochs`` (min,
    max) epochs of at most ``max_epoch_cells`` (:data:`MAX_EPOCH_CELLS`) cells (``None``:
    whole epochs). Pretraining calls it with its own numbers."""
    presentations = TRAIN_PRESENTATIONS if presentations is None else presentations
    max_epoch_cells = MAX_EPOCH_CELLS if max_epoch_cells is None else max_epoch_cells
    epoch_cells = min(n_cells, max_epoch_cells)
    max_epochs = int(np.clip(np.ceil(presentations / max(epoch_cells, 1)), *epochs))
    if n_cells <= max_epoch_cells:
        return max_epochs, None
    return max_epochs, int(np.ceil(max_epoch_cells / batch_size))


def monitored_cells(val_idx: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray:
    """The validation cells early stopping watches: all of them, or a stratified subsample of
    :data:`MAX_MONITOR_CELLS` beyond that."""
    if val_idx.size <= MAX_MONITOR_CELLS:
        return val_idx
    rng = np.random.default_rng(seed)
    return np.sort(val_idx[stratified_subsample(codes[val_idx], MAX_MONITOR_CELLS, rng)])


class TrainingMixin:
    """Training the classifier on the labeled cells of the registered AnnData.

    Needs from the model class: ``module`` (a :class:`~transanno_sc.module.TransAnnoModule`),
    ``adata_manager``, ``classes_``, ``input_scale_``, ``_set_training_genes``,
    ``_log_expression`` and ``_fit_confidence`` (:class:`ConfidenceMixin`); the
    Lightning run goes through scvi-tools' ``DataSplitter`` and ``TrainRunner``
    (``_data_splitter_cls``, ``_train_runner_cls``, ``_training_plan_cls``).
    """

    @restores_module_on_failure
    @devices_dsp.dedent
    def train(
        self,
        max_epochs: int | None = None,
        lr: float = 1e-3,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        batch_size: int = 64,
        early_stopping: bool = True,
        early_stopping_patience: int = 10,
        class_weighting: Literal["balanced", "sqrt", "none"] = "sqrt",
        finetune: Literal["full", "partial", "head"] = "full",
        trainable_layers: int = 1,
        backbone_lr: float | None = None,
        wide_fit: Literal["logistic", "joint"] = "logistic",
        wide_c: float = 0.1,
        wide_class_weighting: Literal["balanced", "sqrt", "none"] = "balanced",
        deep_weight: float | Literal["auto"] | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the classifier on the labeled cells of the registered AnnData.

        Cells labeled ``unlabeled_category`` are not used. The labeled cells are split,
        stratified by label, into training and validation sets; class weights of the loss come
        from the training split only, and early stopping watches the validation loss.

        Parameters
        ----------
        max_epochs
            Number of passes over the training cells. ``None``: about 15,000 cell presentations,
            clipped to 10-100 epochs; a reference of more than 6,000 training cells trains 10
            epochs of 6,000 random cells each (a fresh subset every epoch: 60,000
            presentations however large the reference; ``limit_train_batches`` overrides the
            epoch size), and early stopping then watches at most 5,000 validation cells.
        lr
            Peak learning rate (linear warm-up, then cosine decay).
        %(param_accelerator)s
        %(param_devices)s
        train_size
            Fraction of the labeled cells used for training; the rest validates.
        batch_size
            Cells per minibatch.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience``
            epochs.
        early_stopping_patience
            Epochs without improvement before stopping.
        class_weighting
            Weight of each class in the loss: ``"balanced"`` (inverse frequency), ``"sqrt"``
            (inverse square root of the frequency) or ``"none"``.
        finetune
            Which part of a (pretrained) backbone is trained: ``"full"`` (all of it),
            ``"partial"`` (only its top ``trainable_layers`` encoder layers; embeddings and
            lower layers frozen, as TransAnno-Net fine-tuned) or ``"head"`` (none: only the
            embedding projection, the classifier and the wide path learn).
        trainable_layers
            Encoder layers trained with ``finetune="partial"``.
        backbone_lr
            Peak learning rate of the backbone; ``lr`` when ``None``. A smaller value (e.g.
            ``lr / 10``) keeps more of a pretrained backbone.
        wide_fit
            How the linear "wide" path (model argument ``wide``) is trained. ``"logistic"``: it
            is fitted first, as an L2-regularized multinomial logistic regression (inverse
            regularization strength ``wide_c``, class weights ``wide_class_weighting``) on the
            log1p-normalized vocabulary expression of at most 20,000 training cells
            (stratified), then kept fixed while the Transformer learns what the linear model
            gets wrong; the model starts from, and stays close to, the baseline that matches
            scBERT-style models in published evaluations. ``"joint"``: trained by gradient
            descent together with the Transformer (the earlier default).
        wide_c
            Inverse L2 regularization strength of ``wide_fit="logistic"`` (scikit-learn's
            ``C``; smaller is stronger).
        wide_class_weighting
            Class weights of ``wide_fit="logistic"``, as ``class_weighting`` (which weights the
            Transformer's loss, and the wide path's with ``wide_fit="joint"``). ``"balanced"``
            helps rare types most (measurements in ``benchmarks/README.md``).
        deep_weight
            Weight of the Transformer's logits added to the wide path's at prediction (1 while
            training). ``"auto"``: the value in 0, 0.05, ..., 1 with the lowest validation
            negative log-likelihood. ``None``: 0.3 with ``wide_fit="logistic"``, 1 with
            ``"joint"``. A small weight makes the Transformer a correction of the linear
            model, which transfers best across batches and studies; validation cells, from
            the reference's own batches, would ask for more (measurements in
            ``benchmarks/README.md``, ``benchmarks/deep_weight.py`` and
            ``benchmarks/deep_weight_cross.py``). Without a wide path the weight is 1.
        datasplitter_kwargs
            Passed to :class:`~scvi.dataloaders.DataSplitter`.
        plan_kwargs
            Passed to :class:`~transanno_sc.train.ClassificationTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` and on to Lightning (``precision``,
            ``strategy``, ``num_nodes``, ``enable_progress_bar``, ...).

        Notes
        -----
        **Multi-device and multi-node training.** With ``devices`` > 1 (or ``num_nodes`` > 1)
        and no ``strategy``, Lightning DDP is used with one process per device, each training on
        its own shard of the cells (scvi-tools' ``BatchDistributedSampler``; the effective batch
        is ``batch_size`` x processes):

        - in a script, ``strategy="ddp_find_unused_parameters_true"``: Lightning starts the
          script again for the other ranks, so code after ``train()`` runs in every process
          (guard writes with ``if model.trainer.is_global_zero:``). The calling process (rank
          0) ends with the trained weights and ``model.history``; the others get the same
          weights and an empty history.
        - in Jupyter, ``strategy="ddp_notebook_find_unused_parameters_true"`` (forked
          processes; CUDA must not have been used in the kernel before).
        - override with ``strategy=``: e.g. ``"ddp_spawn"`` (the weights and the history come
          back to the calling process; the script needs an ``if __name__ == "__main__":``
          guard), ``"ddp"`` (no unused-parameter search, slightly faster) or a
          :class:`~lightning.pytorch.strategies.DDPStrategy` instance; any DDP strategy turns
          the distributed sampler on.
        - DDP turns early stopping off (scvi-tools); set ``max_epochs``.

        Several machines: launch the same script on every node with ``devices`` = GPUs per
        node and ``num_nodes`` = number of nodes. Under SLURM (``srun``, ``--ntasks-per-node``
        = devices) or ``torchrun --nnodes N --nproc-per-node D``, Lightning reads the rank and
        the address of rank 0 from the environment and starts no processes itself. See
        ``benchmarks/SCALE.md`` for complete examples.
        """
        check_fit_arguments(max_epochs, batch_size, lr=lr, backbone_lr=backbone_lr)
        self._check_setup_is_current()
        reserved = sorted({"class_weights", "label_map"} & set(plan_kwargs or {}))
        if reserved:
            msg = (
                f"plan_kwargs {reserved} are set by train() (from the labels and "
                "class_weighting=); pass class_weighting= instead."
            )
            raise ValueError(msg)
        codes, labeled = self._labeled_cells(train_size)
        tr, va = stratified_split(codes[labeled], train_size, settings.seed)
        train_idx, val_idx = labeled[tr], labeled[va]
        unlabeled = np.setdiff1d(np.arange(codes.size), labeled)
        counts = np.bincount(codes[train_idx], minlength=len(self.classes_)).astype(np.float64)
        weights = class_weights(counts, weighting_power(class_weighting, "class_weighting"))
        wide_weights = class_weights(
            counts, weighting_power(wide_class_weighting, "wide_class_weighting")
        )
        self._set_training_genes(self.adata)
        epoch_cells = train_idx.size
        if max_epochs is None:
            max_epochs, limit = default_budget(train_idx.size, batch_size)
            if limit is not None and "limit_train_batches" not in trainer_kwargs:
                trainer_kwargs["limit_train_batches"] = limit
                epoch_cells = limit * batch_size
        frozen = self.module.frozen_parts(finetune, trainable_layers)
        deep_weight = _checked_deep_weight(deep_weight, wide_fit)
        if self.module.wide is not None and wide_fit == "logistic":
            if not wide_c > 0:
                msg = f"wide_c must be positive, got {wide_c!r}."
                raise ValueError(msg)
            self._fit_wide(codes, train_idx, wide_weights, wide_c, batch_size)
            frozen.append(self.module.wide)
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("lr", lr)
        plan_kwargs.setdefault("backbone_lr", backbone_lr)
        plan_kwargs["class_weights"] = torch.as_tensor(weights, dtype=torch.float32)
        plan_kwargs["label_map"] = _label_map(len(self.classes_))
        monitor = monitored_cells(val_idx, codes, settings.seed)
        logger.info(
            "Training on %d labeled cells (%d validation, %d unlabeled ignored), %d epochs of "
            "%d cells.",
            train_idx.size,
            val_idx.size,
            unlabeled.size,
            max_epochs,
            min(epoch_cells, train_idx.size),
        )
        self.module.set_calibration(temperature=1.0, deep_weight=1.0)
        self._run_plan(
            self._training_plan_cls,
            plan_kwargs,
            # scvi-tools wants every cell in one of the three sets: the validation cells
            # early stopping does not watch go with the unlabeled ones (not read)
            [train_idx, monitor, np.union1d(unlabeled, np.setdiff1d(val_idx, monitor))],
            frozen=frozen,
            batch_size=batch_size,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            early_stopping_patience=early_stopping_patience,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        self._merge_pretrain_history()
        self._fit_confidence(codes, train_idx, val_idx, batch_size, deep_weight)

    def _check_setup_is_current(self) -> None:
        """Refuse to fit when ``setup_anndata`` was called again on the model's AnnData with
        other arguments after the model was built: scvi-tools' fields (the label codes) are
        then the new setup's, and the model would train on them under its old names."""
        latest = self._get_most_recent_anndata_manager(self.adata)
        if latest is None or latest is self.adata_manager:
            return
        ours = self.adata_manager.registry["setup_args"]
        theirs = latest.registry["setup_args"]
        if ours != theirs:
            changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            msg = (
                f"setup_anndata was called again on this model's AnnData with other arguments "
                f"({', '.join(f'{k}={theirs.get(k)!r}' for k in changed)}; the model was built "
                f"with {', '.join(f'{k}={ours.get(k)!r}' for k in changed)}). Build a new model "
                "for the new setup (`TransAnno(adata)`), or set the AnnData up again with the "
                "model's arguments."
            )
            raise ValueError(msg)

    def _labeled_cells(self, train_size: float) -> tuple[np.ndarray, np.ndarray]:
        """Label codes of the registered cells (``len(classes_)``: unlabeled) and the
        positions of the labeled cells with counts; refuses what cannot be trained on."""
        setup_args = self.adata_manager.registry["setup_args"]
        if setup_args["labels_key"] is None:
            msg = (
                "The AnnData was set up without `labels_key`: there is nothing to train the "
                "classifier on. Call `TransAnno.setup_anndata(adata, labels_key=...)`."
            )
            raise ValueError(msg)
        if not 0.0 < train_size <= 1.0:
            msg = f"train_size must be in (0, 1], got {train_size}."
            raise ValueError(msg)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(
            -1
        )
        labeled = np.flatnonzero(codes < len(self.classes_))
        if labeled.size == 0:
            msg = (
                f"No labeled cells: every cell of adata.obs[{setup_args['labels_key']!r}] is "
                f"{setup_args['unlabeled_category']!r} (the unlabeled category)."
            )
            raise ValueError(msg)
        present = np.unique(codes[labeled])
        if present.size < 2:
            msg = (
                f"Only one cell type ({self.classes_[int(present[0])]!r}) among the labeled "
                "cells: a classifier needs at least two."
            )
            raise ValueError(msg)
        empty = empty_rows(get_matrix(self.adata, setup_args["layer"]))
        if empty[labeled].any():
            warnings.warn(
                f"{int(empty[labeled].sum())} labeled cells have no counts at all; they are "
                "left out of training (they would be predicted 'Unassigned').",
                UserWarning,
                stacklevel=3,
            )
            labeled = labeled[~empty[labeled]]
            if np.unique(codes[labeled]).size < 2:
                msg = "Fewer than two cell types have cells with counts: nothing to train on."
                raise ValueError(msg)
        return codes, labeled

    def _fit_wide(
        self,
        codes: np.ndarray,
        train_idx: np.ndarray,
        class_weights: np.ndarray,
        c: float,
        batch_size: int,
    ) -> None:
        """Fit the wide path as a weighted L2 logistic regression on training cells."""
        rng = np.random.default_rng(settings.seed)
        cells = np.sort(train_idx[stratified_subsample(codes[train_idx], N_LINEAR_CELLS, rng)])
        X = self._log_expression(cells, batch_size, sparse=True)
        y = codes[cells]
        t0 = time.perf_counter()
        clf = logistic_regression(X, y, class_weights[y], c)
        n_classes, n_genes = self.module.wide.weight.shape
        weight = np.zeros((n_classes, n_genes), dtype=np.float32)
        bias = np.full(n_classes, -30.0, dtype=np.float32)  # classes without training cells
        present = clf.classes_.astype(int)
        if present.size == 2:  # scikit-learn keeps one row for two classes
            weight[present] = np.stack([-clf.coef_[0], clf.coef_[0]]) / 2
            bias[present] = np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2
        else:
            weight[present] = clf.coef_
            bias[present] = clf.intercept_
        self.module.set_wide(torch.from_numpy(weight), torch.from_numpy(bias))
        logger.info(
            "Wide path: logistic regression (C=%g) on %d cells in %.1f s.",
            c,
            cells.size,
            time.perf_counter() - t0,
        )

    def _run_plan(
        self,
        plan_cls: type,
        plan_kwargs: dict,
        external_indexing: list[np.ndarray],
        *,
        frozen: list,
        batch_size: int,
        max_epochs: int,
        accelerator: str,
        devices,
        early_stopping: bool,
        early_stopping_monitor: str,
        early_stopping_patience: int,
        datasplitter_kwargs: dict | None,
        trainer_kwargs: dict,
    ) -> None:
        """Fit ``plan_cls(module, **plan_kwargs)`` through scvi-tools' ``DataSplitter`` and
        ``TrainRunner``.

        ``external_indexing`` is ``[train, validation, test]`` cell positions. The modules in
        ``frozen`` take no gradient during the fit (so DDP finds no unused parameter) and are
        trainable again afterwards, also when training fails.
        """
        train_idx, val_idx = external_indexing[0], external_indexing[1]
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        # devices > 1 or num_nodes > 1: DDP strategy + distributed sampler (see "Multi-device")
        configure_distributed(accelerator, devices, trainer_kwargs, datasplitter_kwargs)
        if 0 < train_idx.size % batch_size < 3:
            datasplitter_kwargs.setdefault("drop_last", True)
        data_splitter = self._data_splitter_cls(
            self.adata_manager,
            external_indexing=external_indexing,
            batch_size=batch_size,
            **datasplitter_kwargs,
        )
        training_plan = plan_cls(self.module, **plan_kwargs)
        has_val = val_idx.size > 0
        if has_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        trainer_kwargs.setdefault("early_stopping_monitor", early_stopping_monitor)
        trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        runner = self._train_runner_cls(
            self,
            training_plan=training_plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping and has_val,
            **trainer_kwargs,
        )
        params = [p for part in frozen for p in part.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        # a prediction, `load` or an earlier fit leave the module in eval mode, and Lightning
        # keeps each submodule's mode: without this, dropout would be off in every step
        self.module.train()
        for part in frozen:
            part.eval()
        try:
            with warnings.catch_warnings():
                # the frozen parts are in eval mode on purpose (see above)
                warnings.filterwarnings(
                    "ignore", message=r".*module\(s\) in eval mode at the start"
                )
                # Lightning's own: a small reference has fewer batches per epoch than its
                # step-logging interval (the history is logged per epoch), and its use of a
                # torch API that torch deprecates; neither is the user's to act on
                warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
                runner()
        finally:
            for p in params:
                p.requires_grad_(True)

    def _merge_pretrain_history(self) -> None:
        """Keep the pretraining curves in ``history`` next to the fine-tuning ones."""
        previous = self.pretrain_history_ or {}
        if isinstance(self.history_, dict):
            for key, frame in previous.items():
                self.history_.setdefault(key, frame)


def _checked_deep_weight(deep_weight, wide_fit: str) -> float | str:
    """``train``'s ``deep_weight`` with its default for ``wide_fit`` filled in, both checked."""
    if deep_weight is None:
        deep_weight = DEFAULT_DEEP_WEIGHT if wide_fit == "logistic" else 1.0
    if deep_weight != "auto" and not (
        isinstance(deep_weight, numbers.Real)
        and not isinstance(deep_weight, bool)
        and 0.0 <= deep_weight <= 1.0
    ):
        msg = f"deep_weight must be 'auto' or a number in [0, 1], got {deep_weight!r}."
        raise ValueError(msg)
    if wide_fit not in ("logistic", "joint"):
        msg = f"wide_fit must be 'logistic' or 'joint', got {wide_fit!r}."
        raise ValueError(msg)
    return deep_weight if deep_weight == "auto" else float(deep_weight)


def _label_map(n_classes: int) -> torch.Tensor:
    """Label codes to loss targets: the unlabeled code (``n_classes``) is ignored (-100)."""
    label_map = torch.full((n_classes + 1,), -100, dtype=torch.long)
    label_map[:n_classes] = torch.arange(n_classes)
    return label_map
