"""The query's own structure in the "Unassigned" call of ``tl.transanno_annotate``.

Two query-level steps refine the per-cell confidence (probability x novelty typicality):

* **Neighbourhood.** Each cell's confidence is raised to the mean confidence of its
  neighbourhood in the query (itself and its :data:`N_NEIGHBORS` nearest query cells, in a PCA
  of the query's own highly variable genes). A known cell that is unsure alone, among
  confident cells like it, keeps its label; a group of unsure cells stays unsure.
* **Foreign markers.** The query is cut into clusters (k-means in the same PCA). For each
  cluster, the top :data:`N_MARKERS` marker genes against the rest of the query are compared
  with the reference cells of the cluster's majority predicted type: a marker the cluster
  detects in a share ``d`` of its cells and those reference cells in under ``d /``
  :data:`FOREIGN_RATIO` is foreign. The share of foreign markers, ``f`` (of
  :data:`N_MARKERS` at least, so that a few markers of a small panel are weak evidence), caps
  the cluster's confidence at ``min(1, 0.5 (1 - f) / (1 - F))`` (``F`` =
  :data:`FOREIGN_SHARE`, 0.5): one half where ``f = F``. A type the reference lacks is often
  called as its nearest known type with full confidence (B cells as T cells, where the
  reference's variable genes cannot tell them apart), yet its own markers, which the query
  shows, are absent from the reference cells of the type it is called. Cell-cycle, histone, ribosomal and mitochondrial genes
  are not markers here: they mark states (dividing cells), not types.

The confidence is ``min(max(own, neighbourhood), cap(f))``: at the default threshold (0.5) a
cell is "Unassigned" when it and its neighbourhood are both unsure, or when more than half of
its cluster's markers are foreign to its predicted type.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: Query cells each cell's confidence is compared with (besides itself).
N_NEIGHBORS = 15
#: Below this many query cells, or above :data:`MAX_QUERY_CELLS` (or for a backed query, whose
#: matrix is not read into memory whole), the query-level steps are skipped.
MIN_QUERY_CELLS = 50
MAX_QUERY_CELLS = 100_000
#: Query cells per k-means cluster (between :data:`MIN_CLUSTERS` and :data:`MAX_CLUSTERS`).
CELLS_PER_CLUSTER = 50
MIN_CLUSTERS = 4
MAX_CLUSTERS = 40
#: Clusters with fewer cells get no foreign-marker share.
MIN_CLUSTER_CELLS = 5
#: Marker genes per cluster, detected in at least :data:`MIN_MARKER_DETECTION` of its cells.
N_MARKERS = 20
MIN_MARKER_DETECTION = 0.3
#: A marker is foreign when the reference type detects it this many times less often.
FOREIGN_RATIO = 5.0
#: Share of foreign markers at which a cluster's confidence cap is one half: above it, most of
#: the cluster's markers are foreign.
FOREIGN_SHARE = 0.5
N_HVG = 2000
N_PCS = 30
N_PCS_CLUSTERS = 15

#: Cell-cycle genes (S and G2/M phase; Tirosh et al., Science 2016), upper-case symbols.
CELL_CYCLE_GENES = frozenset(
    """MCM5 PCNA TYMS FEN1 MCM2 MCM4 RRM1 UNG GINS2 MCM6 CDCA7 DTL PRIM1 UHRF1 MLF1IP HELLS RFC2
    RPA2 NASP RAD51AP1 GMNN WDR76 SLBP CCNE2 UBR7 POLD3 MSH2 ATAD2 RAD51 RRM2 CDC45 CDC6 EXO1
    TIPIN DSCC1 BLM CASP8AP2 USP1 CLSPN POLA1 CHAF1B BRIP1 E2F8 HMGB2 CDK1 NUSAP1 UBE2C BIRC5
    TPX2 TOP2A NDC80 CKS2 NUF2 CKS1B MKI67 TMPO CENPF TACC3 FAM64A SMC4 CCNB2 CKAP2L CKAP2
    AURKB BUB1 KIF11 ANP32E TUBB4B GTSE1 KIF20B HJURP CDCA3 HN1 CDC20 TTK CDC25C KIF2C RANGAP1
    NCAPD2 DLGAP5 CDCA2 CDCA8 ECT2 KIF23 HMMR AURKA PSRC1 ANLN LBR CKAP5 CENPE CTCF NEK2 G2E3
    GAS2L3 CBX5 CENPA""".split()
)
#: Histone, ribosomal-protein and mitochondrial genes (symbols, any case).
STATE_GENE_PATTERN = re.compile(r"^(HIST|H2AF|H1F|H3F|RPL|RPS|MT-|MRPL|MRPS)", re.IGNORECASE)


@dataclass
class QueryContext:
    """Per query cell: the neighbourhood mean of the confidence and the foreign-marker share of
    its cluster (0 where none was computed); ``summary`` goes to ``uns``."""

    neighbourhood: np.ndarray
    foreign: np.ndarray
    summary: dict

    def confidence(self, own: np.ndarray) -> np.ndarray:
        """``min(max(own, neighbourhood), cap(foreign))`` (the module docstring)."""
        cap = np.minimum(1.0, 0.5 * (1.0 - self.foreign) / (1.0 - FOREIGN_SHARE))
        return np.minimum(np.maximum(own, self.neighbourhood), cap)


def state_genes(names) -> np.ndarray:
    """Mask of the genes that mark cell states rather than types (see the module)."""
    upper = pd.Index(names).astype(str).str.upper()
    return np.asarray(upper.isin(CELL_CYCLE_GENES) | upper.str.match(STATE_GENE_PATTERN.pattern))


def _log_normalized(query: AnnData, layer: str | None, scale: str) -> sp.csr_matrix:
    """log1p of the query normalized to 10,000 per cell over its genes (log1p values are
    turned back with ``expm1`` first)."""
    from transanno_sc._constants import TARGET_SUM
    from transanno_sc.data import expm1_rows, get_matrix

    X = get_matrix(query, layer)
    X = expm1_rows(X) if scale == "log1p" else sp.csr_matrix(X, dtype=np.float32, copy=True)
    total = np.asarray(X.sum(1)).ravel()
    X = sp.diags((TARGET_SUM / np.maximum(total, 1e-12)).astype(np.float32)) @ X
    X = sp.csr_matrix(X)
    X.data = np.log1p(X.data)
    return X


def _pca(X: sp.csr_matrix, seed: int) -> np.ndarray:
    """PCA of the query's own highly variable genes (scanpy's defaults otherwise)."""
    import scanpy as sc
    from anndata import AnnData

    tmp = AnnData(X=X)
    n_hvg = min(N_HVG, X.shape[1])
    if n_hvg < X.shape[1]:
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor="seurat")
        tmp = tmp[:, tmp.var["highly_variable"].to_numpy()].copy()
    n_comps = max(2, min(N_PCS, tmp.n_vars - 1, tmp.n_obs - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    return tmp.obsm["X_pca"]


def _foreign_shares(
    X: sp.csr_matrix,
    clusters: np.ndarray,
    forced: np.ndarray,
    detection: np.ndarray,
    n_clusters: int,
) -> tuple[np.ndarray, list[dict]]:
    """Per cluster, the share of its markers foreign to its majority type (``X`` and
    ``detection`` on the same genes, state genes removed)."""
    onehot = sp.csr_matrix(
        (np.ones(X.shape[0]), (clusters, np.arange(X.shape[0]))), shape=(n_clusters, X.shape[0])
    )
    size = np.asarray(onehot.sum(1)).ravel()
    sums = np.asarray((onehot @ X).todense())
    binary = X.copy()
    binary.data = (binary.data > 0).astype(np.float32)
    detected = np.asarray((onehot @ binary).todense()) / np.maximum(size, 1)[:, None]
    total = sums.sum(0)
    shares = np.zeros(n_clusters)
    records = []
    for k in range(n_clusters):
        rest = X.shape[0] - size[k]
        if size[k] < MIN_CLUSTER_CELLS or rest < MIN_CLUSTER_CELLS:
            continue
        diff = sums[k] / size[k] - (total - sums[k]) / rest
        ok = (detected[k] >= MIN_MARKER_DETECTION) & (diff > 0)
        if not ok.any():
            continue
        markers = np.flatnonzero(ok)[np.argsort(-diff[ok])][:N_MARKERS]
        label = np.bincount(forced[clusters == k]).argmax()
        foreign = detection[label, markers] < detected[k, markers] / FOREIGN_RATIO
        # over N_MARKERS at least: a cluster with few markers (a small gene panel) is weak
        # evidence, not a high share of a handful
        shares[k] = foreign.sum() / max(markers.size, N_MARKERS)
        records.append(
            {
                "cluster": k,
                "n_cells": int(size[k]),
                "type": int(label),
                "foreign_share": float(shares[k]),
                "n_markers": int(markers.size),
            }
        )
    return shares, records


def query_context(
    query: AnnData,
    *,
    layer: str | None,
    scale: str,
    confidence: np.ndarray,
    forced: np.ndarray,
    detection: tuple[list[str], np.ndarray] | None,
    classes: list[str],
    seed: int,
) -> QueryContext | None:
    """The query-level steps of the module docstring for ``query`` (``forced``: the codes of
    the predicted types; ``detection``: the reference's genes and their
    :func:`~transanno_sc.data.type_detection`, or ``None`` for a model without them).
    ``None`` (cell by cell) for a query of fewer than :data:`MIN_QUERY_CELLS` or more than
    :data:`MAX_QUERY_CELLS` cells, or a backed one."""
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    n = query.n_obs
    if n < MIN_QUERY_CELLS or n > MAX_QUERY_CELLS or query.isbacked:
        why = "backed" if query.isbacked else f"{n} cells"
        logger.info(
            "    query %s (the query context needs %d-%d cells in memory): the Unassigned "
            "call is made cell by cell.",
            why,
            MIN_QUERY_CELLS,
            MAX_QUERY_CELLS,
        )
        return None
    X = _log_normalized(query, layer, scale)
    pcs = _pca(X, seed)
    # kneighbors() without X leaves each cell out of its own neighbours: put it back
    others = NearestNeighbors(n_neighbors=N_NEIGHBORS).fit(pcs).kneighbors(return_distance=False)
    neighbours = np.concatenate([np.arange(n)[:, None], others], axis=1)
    neighbourhood = confidence[neighbours].mean(1)
    n_clusters = int(np.clip(round(n / CELLS_PER_CLUSTER), MIN_CLUSTERS, MAX_CLUSTERS))
    km = KMeans(n_clusters, n_init=3, random_state=seed)
    clusters = km.fit_predict(pcs[:, :N_PCS_CLUSTERS]).astype(np.int64)
    foreign = np.zeros(n)
    summary = {"n_neighbors": N_NEIGHBORS, "n_clusters": n_clusters, "foreign_clusters": []}
    if detection is None:
        logger.info(
            "    the model holds no per-type gene detection of its reference (saved before the "
            "query context existed): foreign markers are not checked."
        )
        summary["foreign_markers"] = "not available (model without reference detection)"
        return QueryContext(neighbourhood, foreign, summary)
    from transanno_sc.data import match_adata_genes

    genes, det = detection
    match = match_adata_genes(query, pd.Index(genes))
    cols, rows = match.source, match.target
    keep = ~state_genes(np.asarray(genes)[rows])
    cols, rows = cols[keep], rows[keep]
    shares, records = _foreign_shares(X[:, cols], clusters, forced, det[:, rows], n_clusters)
    foreign = shares[clusters]
    for r in records:
        r["type"] = classes[r["type"]]
    flagged = [r for r in records if r["foreign_share"] > FOREIGN_SHARE]
    summary["foreign_markers"] = f"{cols.size} genes compared"
    summary["foreign_clusters"] = flagged
    if flagged:
        logger.info(
            "    %d query cells in %d clusters whose markers are foreign to the reference cells "
            "of their predicted type: %s",
            int(sum(r["n_cells"] for r in flagged)),
            len(flagged),
            ", ".join(f"{r['n_cells']} called {r['type']}" for r in flagged),
        )
    return QueryContext(neighbourhood, foreign, summary)
