"""Confidence of predictions: calibration, the novelty space, the ``Unassigned`` call."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData
from scvi import settings

from transanno_sc._constants import (
    DEEP_WEIGHT_GRID,
    MIN_CELLS_GROUP_SHIFT,
    MIN_ODDS_GROUP_SHIFT,
    NOVELTY_ALPHA,
    UNASSIGNED,
)
from transanno_sc.data import (
    stratified_subsample,
)
from transanno_sc.train import (
    expected_calibration_error,
    fit_temperature,
)

from ._outputs import ForwardOutputs

logger = logging.getLogger(__name__)


#: Training cells kept as the reference of the novelty score.
N_REFERENCE_CELLS = 5_000
#: The calibration temperature only softens: a fitted temperature below this is raised to it.
#: A validation split that the classifier gets entirely right (a few dozen cells of a small
#: reference) drives the fit to its lower bound, a sharpening that makes cells of types the
#: reference lacks as sure as known ones (see ``_fit_confidence``).
MIN_TEMPERATURE = 1.0


def check_threshold(unassigned_threshold: float) -> None:
    """Refuse an ``unassigned_threshold`` outside [0, 1]."""
    if not 0.0 <= unassigned_threshold <= 1.0:
        msg = f"unassigned_threshold must be in [0, 1] or None, got {unassigned_threshold}."
        raise ValueError(msg)


def confidence_score(out: ForwardOutputs, novelty: bool = True) -> np.ndarray:
    """The confidence of :meth:`~transanno_sc.model.TransAnno.predict_confidence` from one
    forward pass: the probability of the predicted type, times the typicality
    ``p / (p + NOVELTY_ALPHA)`` of the cell's novelty p-value ``p`` (with ``novelty``); 0 for
    cells with no expressed vocabulary gene."""
    conf = out.probs.max(1).astype(np.float64)
    if novelty:
        p = out.novelty_pvalue.astype(np.float64)
        conf = conf * p / (p + NOVELTY_ALPHA)
    conf[out.n_expressed == 0] = 0.0
    return conf


def assign_labels(
    classes: Sequence[str],
    out: ForwardOutputs,
    unassigned_threshold: float | None,
    novelty: bool = True,
) -> np.ndarray:
    """Predicted types of one forward pass, ``"Unassigned"`` where
    :func:`~transanno_sc.model.base.confidence_score` is below ``unassigned_threshold``
    (``None``: every cell labeled)."""
    labels = np.asarray(classes, dtype=object)[out.probs.argmax(1)]
    if unassigned_threshold is not None:
        check_threshold(unassigned_threshold)
        labels[confidence_score(out, novelty) < unassigned_threshold] = UNASSIGNED
    return labels


class ConfidenceMixin:
    """Calibration, the novelty space and the confidence of predictions.

    Needs from the model class: ``module`` (a
    :class:`~transanno_sc.module.TransAnnoModule`), ``adata``, ``classes_``, ``_forward``
    (one streaming pass giving :class:`ForwardOutputs`), ``_log_expression``, ``_obs_names``
    and ``history_``; sets ``calibration_``.
    """

    def _fit_confidence(
        self,
        codes: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        batch_size: int,
        deep_weight: float | str = 1.0,
    ) -> None:
        """Temperature scaling and the novelty space, from the reference only.

        The temperature minimizes the validation cells' negative log-likelihood, and is at
        least :data:`MIN_TEMPERATURE`: it softens an over-confident classifier but never
        sharpens one. With few validation cells all classified right, the likelihood keeps
        rising as the temperature falls (to its lower bound, 0.5): that says the split is easy,
        not that cells unlike it deserve more certainty. Over the cross-study cases of
        ``benchmarks/cross_study.py`` (3 seeds, the public call) the floor raised the median
        share of novel cells left "Unassigned" within a study from 14 % to 38 % and across
        studies from 92 % to 97 %; known cells "Unassigned" rose by at most 1.9 points (lung
        neutrophils against marrow granulocytes, 1.6 % -> 3.5 %). The novelty
        space is a PCA of the log-expression of (at most 5,000, stratified by type) training
        cells, which are kept as the neighbours a cell is compared with; the reference
        distribution of the novelty distance comes from those cells (leave-one-out) and the
        validation cells.
        """
        rng = np.random.default_rng(settings.seed)
        heldout = val_idx if val_idx.size else train_idx
        if not val_idx.size:
            warnings.warn(
                "No validation cells (train_size=1, or too few labeled cells per type for one "
                "to be held out): the temperature is fitted on training cells and the "
                "confidence will be over-confident.",
                UserWarning,
                stacklevel=3,
            )
        reference = np.sort(
            train_idx[stratified_subsample(codes[train_idx], N_REFERENCE_CELLS, rng)]
        )
        novelty_heldout = np.sort(val_idx)[:N_REFERENCE_CELLS]
        self.module.fit_novelty(
            self._log_expression(reference, batch_size),
            torch.as_tensor(codes[reference]),
            self._log_expression(novelty_heldout, batch_size),
            torch.as_tensor(codes[novelty_heldout]),
            seed=settings.seed,
        )
        y = codes[heldout]
        if self.module.wide is None:
            deep_weight = 1.0
        elif deep_weight == "auto":
            deep_weight = self._fit_deep_weight(heldout, y, batch_size)
        self.module.set_calibration(deep_weight=float(deep_weight))
        held = self._forward(self.adata, indices=heldout, batch_size=batch_size)
        log_probs = np.log(np.clip(held.probs, 1e-30, None))
        fitted = fit_temperature(log_probs, y)
        temperature = max(fitted, MIN_TEMPERATURE)
        self.module.set_calibration(temperature=temperature)
        calibrated = torch.softmax(torch.from_numpy(log_probs) / temperature, 1).numpy()
        self.calibration_ = {
            "deep_weight": deep_weight,
            "temperature": temperature,
            "temperature_fitted": fitted,
            "ece_uncalibrated": expected_calibration_error(held.probs, y),
            "ece_calibrated": expected_calibration_error(calibrated, y),
            "n_cells": int(y.size),
        }
        self._fit_type_detection(codes)
        if isinstance(self.history_, dict):
            epoch = pd.Index([len(self.history_.get("train_loss", [])) - 1], name="epoch")
            for key in ("deep_weight", "temperature", "ece_uncalibrated", "ece_calibrated"):
                name = f"calibration_{key}"
                self.history_[name] = pd.DataFrame({name: [self.calibration_[key]]}, index=epoch)
        logger.info(
            "Calibrated on %d validation cells: temperature %.2f, ECE %.3f -> %.3f.",
            y.size,
            temperature,
            self.calibration_["ece_uncalibrated"],
            self.calibration_["ece_calibrated"],
        )

    def _typewise_pvalue(self, out: ForwardOutputs, groups: np.ndarray) -> np.ndarray:
        """Novelty p-values of ``out`` with the distances of the cells of ``groups`` (a query
        cluster per cell, ``-1`` for cells not judged so) divided by the shift of the query's
        cells called their type, or by the shift of their cluster's cells called it, whichever
        is larger (each the larger of it and the query's overall shift;
        :meth:`~transanno_sc.module.TransAnnoModule.shift_factor`, 1 for fewer than
        ``MIN_CELLS_SHIFT`` cells called the type; the cluster's only where at least
        ``MIN_CELLS_GROUP_SHIFT`` of its cells are called the type, at median odds of
        ``MIN_ODDS_GROUP_SHIFT`` or more). A known type met in another state or tissue lies
        farther from the reference's cells of that type as a whole, not only some of its
        cells; where only part of the type is in the new state (tumour neutrophils beside
        healthy-like ones), its cluster holds the shifted cells, and the classifier is sure of
        them. A type the reference lacks, forced into its least unlike known type, is often
        not (held-out T cells called NK cells at 0.4-0.7). Other cells keep their p-values."""
        pvalue = out.novelty_pvalue.copy()
        eligible = groups >= 0
        if not eligible.any():
            return pvalue
        device = self.module.distance_quantiles.device
        forced = out.probs.argmax(1)
        expressed = out.n_expressed > 0
        distance = torch.from_numpy(np.asarray(out.distance, dtype=np.float32)).to(device)
        shift = np.full(forced.size, out.novelty_shift, dtype=np.float32)
        sure = MIN_ODDS_GROUP_SHIFT / (1.0 + MIN_ODDS_GROUP_SHIFT)
        top = out.probs.max(1)
        for c in np.unique(forced[eligible]):
            called = (forced == c) & expressed
            in_type = eligible & (forced == c)
            own = float(self.module.shift_factor(distance[torch.from_numpy(called).to(device)]))
            shift[in_type] = max(out.novelty_shift, own)
            for k in np.unique(groups[in_type]):
                mask = called & (groups == k)
                if not mask.any() or np.median(top[mask]) < sure:
                    continue
                group = torch.from_numpy(mask).to(device)
                part = self.module.shift_factor(distance[group], min_cells=MIN_CELLS_GROUP_SHIFT)
                here = in_type & (groups == k)
                shift[here] = np.maximum(shift[here], float(part))
        shifted = self.module.novelty_pvalue(distance / torch.from_numpy(shift).to(device))
        pvalue[eligible] = shifted.cpu().numpy()[eligible]
        return pvalue

    def _fit_type_detection(self, codes: np.ndarray) -> None:
        """The share of each type's labeled cells detecting each gene of the registered AnnData
        (all its genes, not only the vocabulary): ``type_detection_``, read by
        :func:`~transanno_sc.tl.transanno_annotate` to check a query cluster's markers."""
        from transanno_sc.data import get_matrix, type_detection

        n = len(self.classes_)
        X = get_matrix(self.adata, self.registry_["setup_args"]["layer"])
        detection = type_detection(X, np.where(codes < n, codes, -1), n)
        self.type_detection_ = (list(map(str, self.adata.var_names)), detection)

    def _fit_deep_weight(self, heldout: np.ndarray, y: np.ndarray, batch_size: int) -> float:
        """Weight of the Transformer's logits added to the wide path's: the value in
        ``DEEP_WEIGHT_GRID`` whose temperature-scaled mixture has the lowest negative
        log-likelihood on the held-out cells (a stacking of the two classifiers)."""
        log_probs = []
        for weight in (0.0, 1.0):
            self.module.set_calibration(deep_weight=weight)
            out = self._forward(self.adata, indices=heldout, batch_size=batch_size)
            log_probs.append(np.log(np.clip(out.probs, 1e-30, None)))
        wide, both = log_probs
        deep = both - wide  # the deep logits up to a per-cell constant
        y_t = torch.as_tensor(y, dtype=torch.long)
        best, best_nll = 1.0, np.inf
        for w in DEEP_WEIGHT_GRID:
            mix = wide + w * deep
            t = fit_temperature(mix, y)
            nll = float(F.cross_entropy(torch.as_tensor(mix / t), y_t))
            if nll < best_nll - 1e-9:
                best, best_nll = float(w), nll
        logger.info("Transformer logits weighted %.2f next to the wide path's.", best)
        return best

    def predict_confidence(
        self,
        adata: AnnData | None = None,
        indices=None,
        batch_size: int | None = None,
        novelty: bool = True,
    ) -> pd.DataFrame:
        """Confidence of each cell's predicted type, and what it is made of.

        ``confidence = probability x typicality``: the calibrated probability of the predicted
        type (temperature scaling on the validation split, :cite:p:`Guo2017`) times the
        typicality of the cell, ``p / (p + NOVELTY_ALPHA)`` with ``p`` its novelty p-value.

        The novelty distance of a cell is its mean cosine distance to the 10 nearest reference
        cells *of its predicted type* (in a PCA of the reference's log-expression), divided by that
        type's median held-out distance, so tight and diffuse types are judged alike. The p-value
        is the fraction of held-out reference cells (validation cells, and reference cells
        cross-fitted in 5 folds, all types pooled) whose divided distance is at least as large. A
        cell of a type the reference never contained lies far from the type it is forced into,
        however sure the classifier is. A query of at least 50 cells that lies farther from the
        reference as a whole (another technology, shallower sequencing, a reference of
        near-duplicate cells) has its distances divided by the ratio of its 10th percentile to the
        reference's (when above 1; ``novelty_shift`` in ``uns["transanno"]["calibration"]``), so a
        shift of the whole query is not read as novelty; the p-values of a cell then depend on the
        other cells scored with it. Cells with no expressed gene of the vocabulary get confidence
        0. This is the score that ``unassigned_threshold`` thresholds and that
        :func:`~transanno_sc.tl.transanno_annotate` writes.

        Parameters
        ----------
        adata
            AnnData to score; the registered one when ``None``.
        indices
            Positions of the cells to score (or a boolean mask), in the order wanted; all
            when ``None``.
        batch_size
            Cells per forward pass.
        novelty
            Include the typicality factor (``False``: confidence = probability).

        Returns
        -------
        A DataFrame indexed by cell with columns ``label`` (predicted type), ``confidence``,
        ``probability``, ``novelty_pvalue`` and ``n_expressed_genes``.
        """
        out = self._forward(adata, indices=indices, batch_size=batch_size)
        return pd.DataFrame(
            {
                "label": np.asarray(self.classes_, dtype=object)[out.probs.argmax(1)],
                "confidence": confidence_score(out, novelty=novelty),
                "probability": out.probs.max(1),
                "novelty_pvalue": out.novelty_pvalue,
                "n_expressed_genes": out.n_expressed,
            },
            index=self._obs_names(adata, indices),
        )
