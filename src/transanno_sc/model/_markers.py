"""Marker genes of a trained model: which genes drive each cell type's logit, per type
(:meth:`MarkersMixin.marker_genes`) or per cell (:meth:`MarkersMixin.cell_attributions`).

The attribution itself (wide path's coefficient x expression plus the Transformer's integrated
gradients along a path that fades each gene's token in, in calibrated-logit units) is
explained and computed in :mod:`transanno_sc.model._attribution`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch

from transanno_sc._constants import REGISTRY_KEYS
from transanno_sc.data import (
    check_positive_int,
    check_shape_and_names,
    check_values,
    get_matrix,
    iter_vocab_batches,
    log_factor,
    resolve_input_scale,
)

from ._attribution import (
    DEFAULT_N_STEPS,
    Attribution,
    AttributionMethod,
    _check_method,
    attribute,
    model_logits,
)
from .base._outputs import cell_positions

if TYPE_CHECKING:
    from anndata import AnnData


#: Cells per type averaged by :meth:`MarkersMixin.marker_genes` (a random subset beyond).
DEFAULT_MAX_CELLS_PER_TYPE = 300
#: Cells per forward/backward pass.
DEFAULT_BATCH_SIZE = 64


class MarkersMixin:
    """Marker genes and per-cell attributions of a trained
    :class:`~transanno_sc.model.TransAnno` model.

    Explains the model's calls by the genes that drive them (see the module docstring for how
    a gene's contribution to a logit is defined). Needs from the class it is mixed into:
    ``self.module`` (a :class:`~transanno_sc.module.TransAnnoModule`), ``self.classes_`` (cell
    types, in the order of the logits), ``self.var_names_`` (the gene vocabulary),
    ``self.input_scale_``, ``self.adata`` / ``self.adata_manager`` / ``self.registry_`` (the
    registered AnnData, its labels and layer), ``self.device``, ``self._match(adata, what)``
    (gene matching by name with the overlap checks) and ``self._check_if_trained``.
    """

    # ------------------------------------------------------------------ public API
    def marker_genes(
        self,
        adata: AnnData | None = None,
        n_genes: int = 20,
        *,
        groupby: str | None = None,
        method: AttributionMethod = "integrated_gradients",
        n_steps: int = DEFAULT_N_STEPS,
        max_cells_per_type: int | None = DEFAULT_MAX_CELLS_PER_TYPE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_scores: bool = False,
        random_state: int = 0,
    ) -> pd.DataFrame:
        """Genes ranked by their contribution to each cell type's logit.

        For every cell of a type the contribution of each gene to that type's logit is
        computed from the whole model: the wide path's coefficient times the cell's
        log-expression of the gene, plus the Transformer's attribution to the gene's token
        (integrated gradients from "gene not expressed" to the cell itself) times the
        Transformer's weight in the logits (``deep_weight``), divided by the calibration
        temperature. Contributions are relative to the other types (logits centered over
        types) and averaged over the type's cells; the genes with the largest average are the
        type's markers *for this model*. A gene that is not in the model's vocabulary (the
        reference's highly variable genes) cannot be a marker.

        Coefficients times expression rather than the coefficients alone: a large coefficient
        of a gene the type does not express (absence as evidence, or a gene that only
        separates two other types) explains no call of that type.

        Parameters
        ----------
        adata
            Cells to explain, grouped by the type the model predicts for them (or by
            ``groupby``). ``None``: the registered (reference) AnnData, grouped by its labels.
        n_genes
            Genes per type.
        groupby
            Column of ``adata.obs`` whose values name the types to explain (e.g.
            ``"transanno_label"``); cells with other values (``"Unassigned"``) are left out.
        method
            ``"integrated_gradients"`` (``n_steps`` forward and backward passes per cell) or
            ``"gradient"`` (gradient x input at the cell, one pass; cheaper, cruder).
        n_steps
            Integration steps (Gauss-Legendre nodes).
        max_cells_per_type
            Average over at most this many cells per type (a random subset); ``None``: all.
        batch_size
            Cells per forward/backward pass.
        return_scores
            Return the scores as a long table instead of the gene names.
        random_state
            Seed of the subset of cells.

        Returns
        -------
        A DataFrame with one column per cell type (types without cells are left out) and the
        ``n_genes`` genes in rank order (index: rank, from 1). With ``return_scores=True``,
        one row per type and gene with columns ``cell_type``, ``rank``, ``gene``, ``score``
        (the contribution), ``wide`` and ``transformer`` (its two parts),
        ``mean_log_expression`` and ``fraction_expressed`` (among the type's cells averaged)
        and ``n_cells``.
        """
        check_positive_int(n_genes, "n_genes")
        if max_cells_per_type is not None:
            check_positive_int(max_cells_per_type, "max_cells_per_type")
        check_positive_int(n_steps, "n_steps")
        check_positive_int(batch_size, "batch_size")
        _check_method(method)
        data, gene_names = self._markers_data(adata)
        groups = self._marker_groups(data, adata is None, groupby, batch_size)
        rng = np.random.default_rng(random_state)
        selected = []
        for c in range(len(self.classes_)):
            idx = np.flatnonzero(groups == c)
            if max_cells_per_type is not None and idx.size > max_cells_per_type:
                idx = np.sort(rng.choice(idx, max_cells_per_type, replace=False))
            selected.append(idx)
        cells = np.sort(np.concatenate(selected)) if selected else np.zeros(0, dtype=np.int64)
        n_classes, n_vocab = len(self.classes_), len(self.var_names_)
        sums = {k: np.zeros((n_classes, n_vocab)) for k in ("wide", "transformer", "x", "on")}
        n_cells = np.bincount(groups[cells], minlength=n_classes)
        for pos, part in self._iter_attributions(
            data, cells, groups[cells], method, n_steps, batch_size
        ):
            target = groups[cells[pos]]
            x_log = part.x_log.cpu().numpy()
            for key, value in (
                ("wide", part.wide.cpu().numpy()),
                ("transformer", part.transformer.cpu().numpy()),
                ("x", x_log),
                ("on", (x_log > 0).astype(np.float64)),
            ):
                np.add.at(sums[key], target, value)
        present = n_cells > 0
        if not present.any():
            msg = "No cell to explain: no cell of adata belongs to one of the model's types."
            raise ValueError(msg)
        means = {k: v / np.maximum(n_cells, 1)[:, None] for k, v in sums.items()}
        score = means["wide"] + means["transformer"]
        in_data = data.in_data
        names, rows = {}, []
        for c in np.flatnonzero(present):
            cand = np.flatnonzero(in_data)
            order = cand[np.lexsort((cand, -score[c, cand]))][:n_genes]
            cell_type = self.classes_[c]
            names[cell_type] = [gene_names[g] for g in order]
            for rank, g in enumerate(order, start=1):
                rows.append(
                    {
                        "cell_type": cell_type,
                        "rank": rank,
                        "gene": gene_names[g],
                        "score": score[c, g],
                        "wide": means["wide"][c, g],
                        "transformer": means["transformer"][c, g],
                        "mean_log_expression": means["x"][c, g],
                        "fraction_expressed": means["on"][c, g],
                        "n_cells": int(n_cells[c]),
                    }
                )
        if return_scores:
            return pd.DataFrame(rows)
        width = max(len(v) for v in names.values())
        table = pd.DataFrame({k: v + [None] * (width - len(v)) for k, v in names.items()})
        table.index = pd.RangeIndex(1, width + 1, name="rank")
        return table

    def cell_attributions(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_genes: int | None = 20,
        *,
        target: str | None = None,
        method: AttributionMethod = "integrated_gradients",
        n_steps: int = DEFAULT_N_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> pd.DataFrame:
        """Why was this cell called X: each gene's contribution to a cell's logit.

        The per-cell form of :meth:`marker_genes` (same definition, not averaged): for each
        cell, the genes that pushed the logit of its predicted type (or of ``target``) up
        most, relative to the other types. A cell's scores do not depend on the other cells
        it is scored with.

        Parameters
        ----------
        adata
            AnnData holding the cells; the registered one when ``None``.
        indices
            Positions of the cells to explain (a few, usually), or a boolean mask; all cells
            when ``None``.
        n_genes
            Genes per cell, highest contribution first; ``None``: every gene with a non-zero
            contribution.
        target
            Explain this type's logit instead of the predicted type's ("why not X").
        method, n_steps, batch_size
            As in :meth:`marker_genes`.

        Returns
        -------
        A long DataFrame with columns ``cell`` (obs name), ``predicted`` (the model's type),
        ``cell_type`` (the type explained), ``rank``, ``gene``, ``score``, ``wide``,
        ``transformer`` and ``log_expression``, cells in the order of ``indices``.
        """
        if n_genes is not None:
            check_positive_int(n_genes, "n_genes")
        check_positive_int(n_steps, "n_steps")
        check_positive_int(batch_size, "batch_size")
        _check_method(method)
        data, gene_names = self._markers_data(adata)
        n_obs = data.adata.n_obs
        indices = cell_positions(indices, n_obs)
        if indices is None:
            indices = np.arange(n_obs)
        cells = np.unique(indices)
        targets = None
        if target is not None:
            if target not in self.classes_:
                msg = f"target={target!r} is not one of the model's types {self.classes_}."
                raise ValueError(msg)
            targets = np.full(cells.size, self.classes_.index(target), dtype=np.int64)
        obs_names = data.adata.obs_names
        per_cell = {}
        for pos, part in self._iter_attributions(data, cells, targets, method, n_steps, batch_size):
            total = (part.wide + part.transformer).cpu().numpy()
            wide, deep = part.wide.cpu().numpy(), part.transformer.cpu().numpy()
            x_log = part.x_log.cpu().numpy()
            predicted = part.logits.argmax(1).cpu().numpy()
            for j, p in enumerate(pos):
                t = predicted[j] if targets is None else targets[p]
                cand = np.flatnonzero((total[j] != 0) & data.in_data)
                order = cand[np.lexsort((cand, -total[j, cand]))]
                if n_genes is not None:
                    order = order[:n_genes]
                per_cell[cells[p]] = pd.DataFrame(
                    {
                        "cell": obs_names[cells[p]],
                        "predicted": self.classes_[predicted[j]],
                        "cell_type": self.classes_[t],
                        "rank": np.arange(1, order.size + 1),
                        "gene": [gene_names[g] for g in order],
                        "score": total[j, order],
                        "wide": wide[j, order],
                        "transformer": deep[j, order],
                        "log_expression": x_log[j, order],
                    }
                )
        frames = [per_cell[i] for i in indices]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # ------------------------------------------------------------------ helpers
    def _markers_data(self, adata: AnnData | None) -> tuple[_MarkersData, list[str]]:
        """The matrix, scale and gene match of ``adata``, and the names to report genes by
        (``adata``'s own where matched, else the vocabulary's)."""
        self._check_if_trained(warn=False)
        if not self.classes_:
            msg = "The model has no cell types (pretrained only): train it first."
            raise ValueError(msg)
        data_adata = self.adata if adata is None else adata
        if data_adata is None:
            msg = "The model holds no AnnData (it was loaded without one): pass `adata=`."
            raise ValueError(msg)
        check_shape_and_names(data_adata)
        setup_layer = self.registry_["setup_args"]["layer"]
        layer = setup_layer if setup_layer in data_adata.layers else None
        X = get_matrix(data_adata, layer)
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        scale = resolve_input_scale(X, "auto", where) if adata is not None else None
        if scale is None:
            scale = self.input_scale_
        match = self._match(data_adata, "adata")
        in_data = np.zeros(len(self.var_names_), dtype=bool)
        in_data[match.target] = True
        names = list(self.var_names_)
        for s, t in zip(match.source, match.target, strict=True):
            names[t] = str(data_adata.var_names[s])
        return _MarkersData(data_adata, X, where, scale, match, in_data), names

    def _marker_groups(
        self, data: _MarkersData, registered: bool, groupby: str | None, batch_size: int
    ) -> np.ndarray:
        """Type index (-1: none) of each cell: ``groupby``'s value, the registered labels,
        or the model's prediction."""
        n_classes = len(self.classes_)
        if groupby is not None:
            if groupby not in data.adata.obs:
                msg = (
                    f"groupby={groupby!r} is not a column of adata.obs "
                    f"(columns: {list(data.adata.obs.columns)})."
                )
                raise KeyError(msg)
            lookup = {c: i for i, c in enumerate(self.classes_)}
            values = data.adata.obs[groupby].astype(str).to_numpy()
            groups = np.array([lookup.get(v, -1) for v in values], dtype=np.int64)
            if not (groups >= 0).any():
                msg = (
                    f"No value of adata.obs[{groupby!r}] is one of the model's types "
                    f"{self.classes_}."
                )
                raise ValueError(msg)
            return groups
        if registered:
            codes = np.asarray(
                self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            ).reshape(-1)
            return np.where(codes < n_classes, codes, -1).astype(np.int64)
        groups = np.empty(data.adata.n_obs, dtype=np.int64)
        for pos, x_log in self._iter_log_expression(data, None, batch_size):
            groups[pos] = model_logits(self.module, x_log).argmax(1).cpu().numpy()
        return groups

    def _iter_log_expression(
        self, data: _MarkersData, cells: np.ndarray | None, batch_size: int
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(positions into cells, log-expression on the device)`` per batch."""
        self.module.eval()
        device = self.device
        for pos, x, library in iter_vocab_batches(
            data.X,
            data.match.source,
            data.match.target,
            data.match.n_vocab,
            batch_size,
            indices=cells,
            max_tokens=self.module.config.max_tokens,
            check=lambda rows: check_values(rows, data.where),
            log1p=log_factor(data.scale),
        ):
            with torch.no_grad():
                x_log = self.module.log_expression(
                    torch.from_numpy(x).to(device),
                    torch.from_numpy(library).to(device),
                    is_counts=data.scale == "counts",
                )
            yield pos, x_log

    def _iter_attributions(
        self,
        data: _MarkersData,
        cells: np.ndarray,
        targets: np.ndarray | None,
        method: AttributionMethod,
        n_steps: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Iterator[tuple[np.ndarray, Attribution]]:
        """Attributions of ``cells`` (sorted positions) to ``targets`` (type per cell;
        predicted when ``None``), batch by batch with positions into ``cells``."""
        if cells.size == 0:
            return
        for pos, x_log in self._iter_log_expression(data, cells, batch_size):
            target = None if targets is None else torch.as_tensor(targets[pos])
            yield pos, attribute(self.module, x_log, target, method, n_steps)


class _MarkersData(NamedTuple):
    adata: AnnData
    X: object
    where: str
    scale: str
    match: object
    in_data: np.ndarray
