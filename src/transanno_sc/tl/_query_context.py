"""The query's own structure in the "Unassigned" call of ``tl.transanno_annotate``.

Query-level steps refine the per-cell confidence (probability x novelty typicality):

* **Neighbourhood.** Each cell's confidence is raised to the mean confidence of its
  neighbourhood in the query (itself and its :data:`N_NEIGHBORS` nearest query cells, in a PCA
  of the query's own highly variable genes). A known cell that is unsure alone, among
  confident cells like it, keeps its label; a group of unsure cells stays unsure.
* **Foreign markers.** The query is cut into clusters (k-means in the same PCA). For each
  cluster, the top :data:`N_MARKERS` marker genes against the rest of the query are compared
  with the reference cells of the cluster's majority predicted type: a marker the cluster
  detects in a share ``d`` of its cells and those reference cells in under ``d /``
  :data:`FOREIGN_RATIO` is foreign. Where the cluster is sequenced deeper than the
  reference type, ``d`` is first taken down to the type's depth (the type's detection at
  the marker's quantile of the cluster's detection profile, :func:`_on_type_scale`), so that
  depth alone makes no marker foreign. The share of foreign markers, ``f`` (of
  :data:`N_MARKERS` at least, so that a few markers of a small panel are weak evidence), caps
  the cluster's confidence at ``min(1, 0.5 (1 - f) / (1 - F))`` (``F`` =
  :data:`FOREIGN_SHARE`, 0.5): one half where ``f = F``. A type the reference lacks is often
  called as its nearest known type with full confidence (B cells as T cells, where the
  reference's variable genes cannot tell them apart), yet its own markers, which the query
  shows, are absent from the reference cells of the type it is called. In a query of one
  population (over :data:`ONE_POPULATION_SHARE` of it called one type: a sorted sample), the
  rest of the query is the same type, and a marker's detection counts only in its excess
  over the rest's (:func:`_shares_of_sums`). Cell-cycle, histone, ribosomal and mitochondrial genes
  are not markers here: they mark states (dividing cells), not types. A cluster over ``F``
  is cut in two (:func:`_split_flagged`): a part whose own markers are at most
  :data:`STATE_SHARE` foreign to its majority type keeps its cells uncapped
  (:func:`_cleared_parts`; a handful of known cells with no cluster of their own).

* **Known types in another state.** A cluster with at most :data:`STATE_SHARE` of its
  markers foreign is its predicted type, though perhaps in a state or tissue the reference
  lacks (mature lung neutrophils against a reference's marrow granulocytes): its cells'
  novelty distances are compared after dividing by the shift of all the query cells called
  that type, or by that of the cluster's own cells called it where larger and the
  classifier is sure of them (a type of which only part is in the new state, as tumour
  neutrophils beside healthy-like ones), not only the query's overall shift (``rescore``,
  see :meth:`~transanno_sc.model.TransAnno._typewise_pvalue`). A type the reference lacks, called
  a known type, keeps its distance where its markers are foreign.

* **Undecided clusters.** A cluster whose typical cell the classifier gives less than
  :data:`UNDECIDED_ODDS` (2 : 1) for its majority type, while another cluster called that type
  gets at least :data:`DECIDED_ODDS_RATIO` (8) times those odds (medians of the cells called
  the type), is not that type: a type the reference lacks is forced into the known type it is
  least unlike and sits between types, whereas the query's real cells of that type are called
  it decisively. The undecided cluster's cells called that type are capped at
  ``0.5 * logit(p) / log(8)`` (``p`` their own probability): one half at odds of 8 : 1, so
  that those the classifier is sure of keep their label. Its cells called another type are
  capped likewise where they are undecided on it too (:data:`MIN_CLUSTER_CELLS` at least,
  median odds under :data:`UNDECIDED_ODDS`, a cluster called that type at 8 times the odds):
  a new type split between the known types it is least unlike (held-out T cells called NK or
  B cells). Known cells decisively called their own type in such a cluster (a few
  lymphocytes k-means put with a new pancreatic type) are not capped. A query that
  is undecided everywhere (a small gene panel, another technology) has no decided cluster to
  be compared with and is left alone; so is a type called in one cluster only.

The confidence is ``min(max(own, neighbourhood), cap(f), undecided cap)``: at the default
threshold (0.5) a cell is "Unassigned" when it and its neighbourhood are both unsure, when more
than half of its cluster's markers are foreign to its predicted type, or when its cluster is
undecided between known types and it is not sure itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
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
#: Below this many query cells the query-level steps are skipped.
MIN_QUERY_CELLS = 50
#: Below this many genes that vary between the query's cells (or its sample's), the
#: query-level steps are skipped too: its own PCA and clusters need some genes to vary.
MIN_QUERY_GENES = 10
#: Above this many cells, or for a backed query (whose matrix is not read into memory whole),
#: the PCA, the k-means centres and the neighbours come from :data:`SAMPLE_CELLS` cells drawn
#: at random, and the query is read chunk by chunk (:func:`_streamed_context`).
MAX_QUERY_CELLS = 100_000
SAMPLE_CELLS = 50_000
#: Rows read at once by the streamed path.
STREAM_CHUNK = 10_000
#: The streamed path finds neighbours within parts of about this many cells (k-means parts
#: of the PCA): exact among a part's cells, and a part holds a cell's near neighbours.
NEIGHBOUR_BLOCK = 25_000
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
#: Share of foreign markers up to which a cluster is taken for its predicted type (maybe in
#: another state): its cells' novelty distances are compared type by type (``rescore``).
STATE_SHARE = 0.25
#: A cluster whose median odds for its majority type (cells called it) are below this is
#: undecided, if another cluster called that type has at least :data:`DECIDED_ODDS_RATIO`
#: times its odds (clusters of :data:`MIN_CLUSTER_CELLS` cells at least).
UNDECIDED_ODDS = 2.0
DECIDED_ODDS_RATIO = 8.0
#: Share of the query's cells called one type above which the query is one population (a
#: sorted or pre-gated sample): the markers' detection is then discounted by the rest's
#: (:func:`_shares_of_sums`), and ``tl.transanno_annotate`` warns.
ONE_POPULATION_SHARE = 0.9
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
    GAS2L3 CBX5 CENPA
    CENPU PIMREG JPT1""".split()  # the last line: MLF1IP, FAM64A, HN1 as renamed since 2016
)
#: Histone, ribosomal-protein and mitochondrial genes (symbols, any case). Histones under
#: their old symbols (``HIST1H4C``, ``H2AFZ``, ``H3F3A``) and their current ones (HGNC / MGI
#: since 2020, GENCODE 32 on, Cell Ranger's 2020 references: ``H4C3``, ``H2AZ1``, ``H3-3A``,
#: ``H1-2``, mouse ``H2ac18``), not the mouse MHC genes (``H2-Ab1``, ``H2-K1``).
STATE_GENE_PATTERN = re.compile(
    r"^(HIST|H2AF|H1F|H3F|H1-\d|H2AC\d|H2BC\d|H3C\d|H4C\d|H2AZ\d|H2AX$|H2AJ$|H2AW$|H2BU\d|"
    r"H3-3|H3-5|H4-16|RPL|RPS|MT-|MRPL|MRPS)",
    re.IGNORECASE,
)


@dataclass
class QueryContext:
    """Per query cell: the neighbourhood mean of the confidence, the foreign-marker share of
    its cluster (0 where none was computed), the cell-level confidence the neighbourhood
    averaged (``own``: ``rescore``'s where it was given) and the cap of an undecided cluster
    (1 elsewhere; :func:`_undecided_cap`); ``summary`` goes to ``uns``."""

    neighbourhood: np.ndarray
    foreign: np.ndarray
    summary: dict
    own: np.ndarray
    undecided: np.ndarray

    def confidence(self, own: np.ndarray | None = None) -> np.ndarray:
        """``min(max(own, neighbourhood), cap(foreign), undecided)`` (the module docstring);
        ``own`` defaults to :attr:`own`."""
        own = self.own if own is None else own
        cap = np.minimum(self.foreign_cap(), self.undecided)
        return np.minimum(np.maximum(own, self.neighbourhood), cap)

    def foreign_cap(self) -> np.ndarray:
        """Per cell, the cap of its cluster's foreign markers, ``min(1, 0.5 (1 - f) / (1 -
        F))`` (module docstring)."""
        return np.minimum(1.0, 0.5 * (1.0 - self.foreign) / (1.0 - FOREIGN_SHARE))


def state_genes(names) -> np.ndarray:
    """Mask of the genes that mark cell states rather than types (see the module)."""
    upper = pd.Index(names).astype(str).str.upper()
    return np.asarray(upper.isin(CELL_CYCLE_GENES) | upper.str.match(STATE_GENE_PATTERN.pattern))


def _log_normalized(query: AnnData, layer: str | None, scale: str) -> sp.csr_matrix:
    """log1p of the query normalized to 10,000 per cell over its genes (log-normalized values
    are turned back with ``expm1`` in their base first)."""
    from transanno_sc.data import get_matrix

    return _log_normalize(get_matrix(query, layer), scale)


def _log_normalize(X, scale: str) -> sp.csr_matrix:
    """:func:`_log_normalized` of a matrix (dense, sparse, or rows read from a backed one)."""
    from transanno_sc._constants import TARGET_SUM
    from transanno_sc.data import expm1_rows

    # no copy of counts: the normalization below makes a new matrix and leaves X as it is
    if scale == "counts":
        X = sp.csr_matrix(X, dtype=np.float32)
    else:
        X = expm1_rows(X, scale)
    total = np.asarray(X.sum(1)).ravel()
    X = sp.diags((TARGET_SUM / np.maximum(total, 1e-12)).astype(np.float32)) @ X
    X = sp.csr_matrix(X)
    X.data = np.log1p(X.data)
    return X


@dataclass
class _Pca:
    """A PCA of the query's highly variable genes: ``genes`` (column positions), their
    ``mean`` and the ``components`` (genes x components), and the cells' coordinates."""

    genes: np.ndarray
    mean: np.ndarray
    components: np.ndarray
    pcs: np.ndarray

    def project(self, X: sp.csr_matrix) -> np.ndarray:
        """Coordinates of other cells (``X`` log-normalized over all genes)."""
        return np.asarray((X[:, self.genes] @ self.components) - self.mean @ self.components)


def _pca(X: sp.csr_matrix, seed: int, varying: np.ndarray) -> _Pca:
    """PCA of the query's own highly variable genes (scanpy's defaults otherwise;
    ``varying``: :func:`_varying` of ``X``)."""
    import scanpy as sc
    from anndata import AnnData

    tmp = AnnData(X=X)
    genes = np.arange(X.shape[1])
    n_hvg = min(N_HVG, X.shape[1])
    if n_hvg < X.shape[1]:
        if varying.sum() <= n_hvg:
            # no more genes vary than are wanted: they are the variable genes (scanpy's
            # dispersions would divide by zero on the others)
            genes = np.flatnonzero(varying)
        else:
            sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor="seurat")
            genes = np.flatnonzero(tmp.var["highly_variable"].to_numpy())
        tmp = tmp[:, genes].copy()
    n_comps = max(2, min(N_PCS, tmp.n_vars - 1, tmp.n_obs - 1))
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    mean = np.asarray(tmp.X.mean(0)).ravel()
    return _Pca(genes, mean, tmp.varm["PCs"], tmp.obsm["X_pca"])


def _cluster_sums(
    X: sp.csr_matrix, clusters: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: its number of cells, and the sums of ``X`` and of ``X > 0`` per gene."""
    onehot = sp.csr_matrix(
        (np.ones(X.shape[0]), (clusters, np.arange(X.shape[0]))), shape=(n_clusters, X.shape[0])
    )
    size = np.asarray(onehot.sum(1)).ravel()
    sums = np.asarray((onehot @ X).todense())
    binary = X.copy()
    binary.data = (binary.data > 0).astype(np.float32)
    return size, sums, np.asarray((onehot @ binary).todense())


def _added(acc: tuple | None, part: tuple) -> tuple:
    """``acc + part`` element by element (``part`` where ``acc`` is ``None``): sums of
    :func:`_cluster_sums` over row chunks."""
    return part if acc is None else tuple(a + b for a, b in zip(acc, part))


def _foreign_shares(
    X: sp.csr_matrix,
    clusters: np.ndarray,
    forced: np.ndarray,
    detection: np.ndarray,
    n_clusters: int,
    *,
    excess: bool = False,
) -> tuple[np.ndarray, list[dict]]:
    """Per cluster, the share of its markers foreign to its majority type (``X`` and
    ``detection`` on the same genes, state genes removed; ``excess``: see
    :func:`_shares_of_sums`)."""
    size, sums, n_detected = _cluster_sums(X, clusters, n_clusters)
    return _shares_of_sums(size, sums, n_detected, clusters, forced, detection, excess=excess)


def _cluster_markers(
    size: np.ndarray, sums: np.ndarray, detected: np.ndarray, n_cells: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(cluster, its markers)`` for each cluster with :data:`MIN_CLUSTER_CELLS` cells on
    both sides: the :data:`N_MARKERS` genes most above the rest of the query in mean, among
    those it detects in :data:`MIN_MARKER_DETECTION` of its cells (``detected``: shares)."""
    total = sums.sum(0)
    for k in range(size.size):
        rest = n_cells - size[k]
        if size[k] < MIN_CLUSTER_CELLS or rest < MIN_CLUSTER_CELLS:
            continue
        diff = sums[k] / size[k] - (total - sums[k]) / rest
        ok = (detected[k] >= MIN_MARKER_DETECTION) & (diff > 0)
        if ok.any():
            yield k, np.flatnonzero(ok)[np.argsort(-diff[ok])][:N_MARKERS]


def _on_type_scale(cluster: np.ndarray, type_: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """The cluster's detection of ``markers`` mapped onto the reference type's scale: the
    type's detection at the same quantile of its profile over all compared genes (the same
    genes on both sides) as the marker's in the cluster's profile.

    Detection rises with sequencing depth for every gene alike (monotonically, whatever the
    dispersion), so a query cluster sequenced deeper than its reference type (10x v3 against
    a Drop-seq or inDrop reference) detects its markers more often for that alone; on the
    type's scale it does not. A few hundred genes that differ between them barely move the
    quantiles of thousands."""
    order = np.sort(cluster)
    at = cluster[markers]
    u = (np.searchsorted(order, at, "left") + np.searchsorted(order, at, "right")) / (
        2.0 * cluster.size
    )
    return np.quantile(type_, np.clip(u, 0.0, 1.0))


def _shares_of_sums(
    size: np.ndarray,
    sums: np.ndarray,
    n_detected: np.ndarray,
    clusters: np.ndarray,
    forced: np.ndarray,
    detection: np.ndarray,
    *,
    excess: bool = False,
) -> tuple[np.ndarray, list[dict]]:
    """:func:`_foreign_shares` from the clusters' sums (:func:`_cluster_sums`).

    With ``excess`` (a query of one population, :func:`one_population`), a marker's detection
    in the cluster counts only in its excess over the rest of the query's: the cluster's
    markers are then differences between parts of one type, which the rest also detects,
    not a type's own genes. A sorted population's known cells are otherwise capped as
    foreign for subtle genes the reference's technology detects less (Zilionis' B cells alone
    against Tabula Muris: 21.5 % "Unassigned"). In a query of several types the rest holds
    other types, and the plain detection is kept: there the discount loses a type the
    reference lacks that shares genes with the query's bulk (a beta-cell subcluster in a
    mostly-beta pancreas, ``benchmarks/novelty_design/excess_markers.patch``)."""
    detected = n_detected / np.maximum(size, 1)[:, None]
    all_detected = n_detected.sum(0)
    shares = np.zeros(size.size)
    records = []
    for k, markers in _cluster_markers(size, sums, detected, clusters.size):
        label = np.bincount(forced[clusters == k]).argmax()
        seen = np.minimum(
            detected[k, markers], _on_type_scale(detected[k], detection[label], markers)
        )
        if excess:
            rest = (all_detected[markers] - n_detected[k, markers]) / (clusters.size - size[k])
            seen = seen * np.clip(1.0 - rest / np.maximum(detected[k, markers], 1e-12), 0.0, 1.0)
        foreign = detection[label, markers] < seen / FOREIGN_RATIO
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
    rescore: Callable[[np.ndarray], np.ndarray] | None = None,
    probability: np.ndarray | None = None,
) -> QueryContext | None:
    """The query-level steps of the module docstring for ``query`` (``forced``: the codes of
    the predicted types; ``probability``: their calibrated probabilities, for the undecided
    clusters, which are skipped without it; ``detection``: the reference's genes and their
    :func:`~transanno_sc.data.type_detection`, or ``None`` for a model without them;
    ``rescore``: the cell-level confidence given the clusters of the cells in clusters of
    at most :data:`STATE_SHARE` foreign markers, ``-1`` for the others, in place of
    ``confidence``). ``None`` (cell by cell) for a query of fewer than
    :data:`MIN_QUERY_CELLS` cells. Above :data:`MAX_QUERY_CELLS` cells, or backed, see
    :func:`_streamed_context`."""
    n = query.n_obs
    if n < MIN_QUERY_CELLS:
        logger.info(
            "    query of %d cells (the query context needs %d at least): the Unassigned call "
            "is made cell by cell.",
            n,
            MIN_QUERY_CELLS,
        )
        return None
    if n > MAX_QUERY_CELLS or query.isbacked:
        return _streamed_context(
            query, layer, scale, confidence, forced, detection, classes, seed, rescore, probability
        )
    X = _log_normalized(query, layer, scale)
    varying = _varying(X)
    if _too_few_genes(varying):
        return None
    pcs = _pca(X, seed, varying).pcs
    km = _kmeans(n, seed)
    clusters = km.fit_predict(pcs[:, :N_PCS_CLUSTERS]).astype(np.int64)
    excess = one_population(forced)
    summary = {
        "n_neighbors": N_NEIGHBORS,
        "n_clusters": km.n_clusters,
        "foreign_clusters": [],
        "one_population": excess,
    }
    undecided = _undecided_cap(probability, forced, clusters, classes, summary)
    marker_genes = _marker_genes(query, detection, summary)
    if marker_genes is None:
        return QueryContext(
            _neighbourhood(pcs, confidence), np.zeros(n), summary, confidence, undecided
        )
    cols, det = marker_genes
    Xm = X[:, cols]
    shares, records = _foreign_shares(Xm, clusters, forced, det, km.n_clusters, excess=excess)
    own = _rescored(confidence, rescore, records, clusters)
    parts = _split_flagged(pcs, clusters, records, seed)
    split = parts >= 0
    foreign = shares[clusters]
    if split.any():
        part_sums = _cluster_sums(Xm[split], parts[split], parts.max() + 1)
        query_sums = tuple(a[0] for a in _cluster_sums(Xm, np.zeros(n, dtype=np.int64), 1))
        foreign = _cleared_parts(
            foreign, clusters, parts, part_sums, query_sums, forced, det, records, excess=excess
        )
    return QueryContext(
        _neighbourhood(pcs, own), foreign, _flagged(summary, records, classes), own, undecided
    )


def one_population(forced: np.ndarray) -> bool:
    """Whether over :data:`ONE_POPULATION_SHARE` of the cells are called one type (``forced``:
    the codes of their predicted types)."""
    if forced.size == 0:
        return False
    return bool(np.bincount(forced).max() >= ONE_POPULATION_SHARE * forced.size)


def majority_calls(
    logit: np.ndarray, forced: np.ndarray, clusters: np.ndarray
) -> list[tuple[np.ndarray, int, float]]:
    """Per cluster of :data:`MIN_CLUSTER_CELLS` cells at least: ``(its cells called its
    majority type, that type, the median of their logits)`` (:func:`_undecided_cap`)."""
    stats = []
    for k in np.unique(clusters):
        members = np.flatnonzero(clusters == k)
        if members.size < MIN_CLUSTER_CELLS:
            continue
        label = np.bincount(forced[members]).argmax()
        called = members[forced[members] == label]
        stats.append((called, int(label), float(np.median(logit[called]))))
    return stats


def _undecided_cap(
    probability: np.ndarray | None,
    forced: np.ndarray,
    clusters: np.ndarray,
    classes: list[str],
    summary: dict,
) -> np.ndarray:
    """Per cell, the cap of an undecided cluster (module docstring): ``0.5 * logit(p) /
    log(DECIDED_ODDS_RATIO)`` clipped to [0, 1] for the cells called the majority type of a
    cluster whose median odds for that type (over those cells) are below
    :data:`UNDECIDED_ODDS` while another cluster's are at least :data:`DECIDED_ODDS_RATIO`
    times higher; 1 elsewhere (and everywhere without ``probability``). The cluster's cells
    called another type get the same cap where they are undecided on that type as well: at
    least :data:`MIN_CLUSTER_CELLS` of them, median odds under :data:`UNDECIDED_ODDS`, and a
    cluster called that type at :data:`DECIDED_ODDS_RATIO` times those odds (a new type split
    between two known ones). A few known cells k-means put with a new type and called their
    own type decisively (the lymphocytes of a pancreas among its endocrine cells) are not
    capped. One row per capped (cluster, type) group goes to
    ``summary["undecided_clusters"]`` (logged; ``n_cells``: those called the type)."""
    cap = np.ones(forced.size)
    summary["undecided_clusters"] = []
    if probability is None:
        return cap
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-9, 1.0 - 1e-9)
    logit = np.log(p) - np.log1p(-p)
    stats = majority_calls(logit, forced, clusters)
    best: dict[int, float] = {}
    for _, label, m in stats:
        best[label] = max(best.get(label, -np.inf), m)

    def undecided(median: float, label: int) -> bool:
        return bool(
            median < np.log(UNDECIDED_ODDS) and best[label] - median > np.log(DECIDED_ODDS_RATIO)
        )

    n_clusters = 0
    for called, label, m in stats:
        if not undecided(m, label):
            continue
        n_clusters += 1
        groups = [(called, label, m)]
        # its cells called other types: a type the reference lacks split between the known
        # types it is least unlike (T cells called NK or B cells) is undecided on each
        members = np.flatnonzero(clusters == clusters[called[0]])
        for other in np.unique(forced[members]):
            part = members[forced[members] == other]
            if other == label or other not in best or part.size < MIN_CLUSTER_CELLS:
                continue
            median = float(np.median(logit[part]))
            if undecided(median, other):
                groups.append((part, int(other), median))
        for cells, t, median in groups:
            cap[cells] = np.clip(0.5 * logit[cells] / np.log(DECIDED_ODDS_RATIO), 0.0, 1.0)
            summary["undecided_clusters"].append(
                {
                    "n_cells": int(cells.size),
                    "type": classes[t],
                    "probability": float(1.0 / (1.0 + np.exp(-median))),
                    "decided_probability": float(1.0 / (1.0 + np.exp(-best[t]))),
                    "n_cells_capped": int((cap[cells] < 0.5).sum()),
                }
            )
    undecided_groups = summary["undecided_clusters"]
    if undecided_groups:
        logger.info(
            "    %d query cells in %d clusters undecided between known types while other "
            "clusters are called their type decisively: %s",
            int(sum(r["n_cells"] for r in undecided_groups)),
            n_clusters,
            ", ".join(
                f"{r['n_cells']} called {r['type']} (median probability {r['probability']:.2f} "
                f"vs {r['decided_probability']:.2f})"
                for r in undecided_groups
            ),
        )
    return cap


def _split_flagged(
    pcs: np.ndarray, clusters: np.ndarray, records: list[dict], seed: int
) -> np.ndarray:
    """Per cell, its part (``2 i`` or ``2 i + 1``) of the ``i``-th flagged cluster (foreign
    share over :data:`FOREIGN_SHARE`, at least twice :data:`MIN_CLUSTER_CELLS` cells) cut in
    two by k-means in the same PCA; -1 for cells of other clusters.

    k-means with a few dozen clusters has no cluster for a handful of known cells in a query
    that is mostly other cells (six lymphocytes in a pancreas, annotated with an immune
    reference): they join the nearest cluster, and its foreign markers cap them too. Cut in
    two, such a cluster gives them a part of their own (:func:`_cleared_parts`). The streamed
    path reads the query once more for the parts' sums."""
    from sklearn.cluster import KMeans

    out = np.full(clusters.size, -1, dtype=np.int64)
    flagged = [r["cluster"] for r in records if r["foreign_share"] > FOREIGN_SHARE]
    i = 0
    for k in flagged:
        members = np.flatnonzero(clusters == k)
        if members.size < 2 * MIN_CLUSTER_CELLS:
            continue
        km = KMeans(2, n_init=3, random_state=seed).fit(pcs[members, :N_PCS_CLUSTERS])
        out[members] = 2 * i + km.labels_
        i += 1
    return out


def _cleared_parts(
    foreign: np.ndarray,
    clusters: np.ndarray,
    parts: np.ndarray,
    part_sums: tuple[np.ndarray, np.ndarray, np.ndarray],
    total: tuple[np.ndarray, np.ndarray, np.ndarray],
    forced: np.ndarray,
    detection: np.ndarray,
    records: list[dict],
    *,
    excess: bool = False,
) -> np.ndarray:
    """The cells' foreign shares ``foreign``, where a part of a flagged cluster
    (:func:`_split_flagged`; ``part_sums``: the parts' :func:`_cluster_sums`, ``total``: the
    whole query's) is its own predicted type: its markers against the rest of the query,
    judged against the reference cells of its majority type, at most :data:`STATE_SHARE`
    foreign. Its cells then take that share (counted in the cluster's record as
    ``n_cells_kept``). A part with more foreign markers keeps the cluster's share: halves of
    a type the reference lacks stay flagged."""
    out = foreign.copy()
    size, sums, n_detected = part_sums
    by_cluster = {r["cluster"]: r for r in records}
    for j in range(size.size):
        cells = np.flatnonzero(parts == j)
        if cells.size < MIN_CLUSTER_CELLS:
            continue
        # the part against the rest of the query: a two-cluster partition of all cells
        two = np.ones(parts.size, dtype=np.int64)
        two[cells] = 0
        share, recs = _shares_of_sums(
            np.array([size[j], total[0] - size[j]]),
            np.stack([sums[j], total[1] - sums[j]]),
            np.stack([n_detected[j], total[2] - n_detected[j]]),
            two,
            forced,
            detection,
            excess=excess,
        )
        if any(r["cluster"] == 0 for r in recs) and share[0] <= STATE_SHARE:
            out[cells] = share[0]
            record = by_cluster[int(clusters[cells[0]])]
            record["n_cells_kept"] = record.get("n_cells_kept", 0) + int(cells.size)
    return out


def _rescored(
    confidence: np.ndarray,
    rescore: Callable[[np.ndarray], np.ndarray] | None,
    records: list[dict],
    clusters: np.ndarray,
) -> np.ndarray:
    """``rescore`` of the cells in clusters whose foreign-marker share was computed and is at
    most :data:`STATE_SHARE` (given their clusters, ``-1`` for the other cells);
    ``confidence`` without ``rescore``."""
    if rescore is None:
        return confidence
    typed = [r["cluster"] for r in records if r["foreign_share"] <= STATE_SHARE]
    return rescore(np.where(np.isin(clusters, typed), clusters, -1))


def _varying(X: sp.csr_matrix) -> np.ndarray:
    """Mask of the genes (columns) whose values differ between the cells of ``X`` (its
    largest and smallest value differ; no copy of ``X``)."""
    largest = np.asarray(X.max(axis=0).todense()).ravel()
    smallest = np.asarray(X.min(axis=0).todense()).ravel()
    return largest > smallest


def _too_few_genes(varying: np.ndarray) -> bool:
    """Whether fewer than :data:`MIN_QUERY_GENES` genes vary between the query's cells
    (``varying``: :func:`_varying`; logged): a query of copies of one cell, or one that
    expresses a handful of genes, has no structure for a PCA or clusters (scanpy's highly
    variable genes and the PCA would divide by zero)."""
    n_genes = int(varying.sum())
    if n_genes >= MIN_QUERY_GENES:
        return False
    logger.info(
        "    %d genes vary between the query's cells (the query context needs %d at least): "
        "the Unassigned call is made cell by cell.",
        n_genes,
        MIN_QUERY_GENES,
    )
    return True


def _neighbourhood(
    pcs: np.ndarray, confidence: np.ndarray, parts: np.ndarray | None = None
) -> np.ndarray:
    """Mean ``confidence`` of each cell and its :data:`N_NEIGHBORS` nearest cells in ``pcs``
    (exact; within the cell's part where ``parts`` labels them)."""
    from sklearn.neighbors import NearestNeighbors

    parts = np.zeros(len(pcs), dtype=np.int64) if parts is None else parts
    out = confidence.astype(float).copy()
    for k in np.unique(parts):
        members = np.flatnonzero(parts == k)
        if members.size < 2:
            continue
        n_near = min(N_NEIGHBORS, members.size - 1)
        # kneighbors() without X leaves each cell out of its own neighbours: put it back
        nn = NearestNeighbors(n_neighbors=n_near).fit(pcs[members])
        cells = np.concatenate([members[:, None], members[nn.kneighbors(return_distance=False)]], 1)
        out[members] = confidence[cells].mean(1)
    return out


def _kmeans(n: int, seed: int):
    from sklearn.cluster import KMeans

    n_clusters = int(np.clip(round(n / CELLS_PER_CLUSTER), MIN_CLUSTERS, MAX_CLUSTERS))
    return KMeans(n_clusters, n_init=3, random_state=seed)


def _marker_genes(
    query: AnnData, detection: tuple[list[str], np.ndarray] | None, summary: dict
) -> tuple[np.ndarray, np.ndarray] | None:
    """The query columns the foreign-marker check compares and the reference's detection of
    them (state genes left out); ``None``, logged and noted in ``summary``, for a model
    without the reference's detection."""
    if detection is None:
        logger.info(
            "    the model holds no per-type gene detection of its reference (saved before the "
            "query context existed): foreign markers are not checked."
        )
        summary["foreign_markers"] = "not available (model without reference detection)"
        return None
    from transanno_sc.data import match_adata_genes

    genes, det = detection
    match = match_adata_genes(query, pd.Index(genes))
    cols, rows = match.source, match.target
    keep = ~state_genes(np.asarray(genes)[rows])
    cols, rows = cols[keep], rows[keep]
    summary["foreign_markers"] = f"{cols.size} genes compared"
    return cols, det[:, rows]


def _flagged(summary: dict, records: list[dict], classes: list[str]) -> dict:
    """``summary`` with the clusters over :data:`FOREIGN_SHARE` (logged)."""
    for r in records:
        r["type"] = classes[r["type"]]
    flagged = [r for r in records if r["foreign_share"] > FOREIGN_SHARE]
    summary["foreign_clusters"] = flagged
    if flagged:
        logger.info(
            "    %d query cells in %d clusters whose markers are foreign to the reference cells "
            "of their predicted type: %s",
            int(sum(r["n_cells"] for r in flagged)),
            len(flagged),
            ", ".join(
                f"{r['n_cells']} called {r['type']}"
                + (
                    f" ({r['n_cells_kept']} of them in a part with native markers: kept)"
                    if "n_cells_kept" in r
                    else ""
                )
                for r in flagged
            ),
        )
    return summary


def _streamed_context(
    query: AnnData,
    layer: str | None,
    scale: str,
    confidence: np.ndarray,
    forced: np.ndarray,
    detection: tuple[list[str], np.ndarray] | None,
    classes: list[str],
    seed: int,
    rescore: Callable[[np.ndarray], np.ndarray] | None = None,
    probability: np.ndarray | None = None,
) -> QueryContext | None:
    """:func:`query_context` of a large or backed query, with bounded memory.

    The PCA (genes, centring, components) and the k-means centres are fitted on
    :data:`SAMPLE_CELLS` cells drawn at random; the query is then read
    :data:`STREAM_CHUNK` rows at a time: each chunk is projected, assigned to its nearest
    centre, and added to the clusters' sums for the marker check. A cell's neighbourhood is
    itself and its :data:`N_NEIGHBORS` nearest cells of its part of the query: the PCA cut by
    k-means into parts of about :data:`NEIGHBOUR_BLOCK` cells (one part, the whole query,
    below that). With every cell sampled and one part this is :func:`query_context`'s exact
    computation.
    """
    from transanno_sc.data import get_matrix, iter_row_chunks

    X = get_matrix(query, layer)
    n = query.n_obs
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SAMPLE_CELLS), replace=False))
    logger.info(
        "    query context of %d cells%s: PCA, clusters and neighbours from %d sampled cells, "
        "the query read %d rows at a time.",
        n,
        " (backed)" if query.isbacked else "",
        sample.size,
        STREAM_CHUNK,
    )
    chunks = [r for _, r in iter_row_chunks(X, chunk_size=STREAM_CHUNK, indices=sample)]
    rows = sp.vstack(chunks, format="csr") if sp.issparse(chunks[0]) else np.concatenate(chunks)
    del chunks
    rows = _log_normalize(rows, scale)
    varying = _varying(rows)
    if _too_few_genes(varying):
        return None
    pca = _pca(rows, seed, varying)
    del rows
    km = _kmeans(n, seed)
    km.fit(pca.pcs[:, :N_PCS_CLUSTERS])
    excess = one_population(forced)
    summary = {
        "n_neighbors": N_NEIGHBORS,
        "n_clusters": km.n_clusters,
        "sampled_cells": int(sample.size),
        "foreign_clusters": [],
        "one_population": excess,
    }
    marker_genes = _marker_genes(query, detection, summary)
    pcs = np.empty((n, pca.pcs.shape[1]), dtype=pca.pcs.dtype)
    clusters = np.empty(n, dtype=np.int64)
    totals = None
    for start, rows in iter_row_chunks(X, chunk_size=STREAM_CHUNK):
        stop = start + rows.shape[0]
        Xc = _log_normalize(rows, scale)
        pcs[start:stop] = pca.project(Xc)
        clusters[start:stop] = km.predict(pcs[start:stop, :N_PCS_CLUSTERS])
        if marker_genes is not None:
            part = _cluster_sums(Xc[:, marker_genes[0]], clusters[start:stop], km.n_clusters)
            totals = _added(totals, part)
    n_parts = -(-n // NEIGHBOUR_BLOCK)
    parts = None
    if n_parts > 1:
        from sklearn.cluster import KMeans

        cut = KMeans(n_parts, n_init=1, random_state=seed).fit(pca.pcs[:, :N_PCS_CLUSTERS])
        parts = cut.predict(pcs[:, :N_PCS_CLUSTERS])
    summary["neighbour_parts"] = int(n_parts)
    undecided = _undecided_cap(probability, forced, clusters, classes, summary)
    if marker_genes is None:
        neighbourhood = _neighbourhood(pcs, confidence, parts)
        return QueryContext(neighbourhood, np.zeros(n), summary, confidence, undecided)
    shares, records = _shares_of_sums(*totals, clusters, forced, marker_genes[1], excess=excess)
    own = _rescored(confidence, rescore, records, clusters)
    split = _split_flagged(pcs, clusters, records, seed)
    foreign = shares[clusters]
    if (split >= 0).any():  # a second pass, over the rows of the split clusters only
        part_sums = None
        for start, rows in iter_row_chunks(X, chunk_size=STREAM_CHUNK):
            ids = split[start : start + rows.shape[0]]
            if (ids >= 0).any():
                Xc = _log_normalize(rows[ids >= 0], scale)[:, marker_genes[0]]
                part_sums = _added(part_sums, _cluster_sums(Xc, ids[ids >= 0], split.max() + 1))
        query_sums = tuple(t.sum(0) for t in totals)
        foreign = _cleared_parts(
            foreign,
            clusters,
            split,
            part_sums,
            query_sums,
            forced,
            marker_genes[1],
            records,
            excess=excess,
        )
    return QueryContext(
        _neighbourhood(pcs, own, parts),
        foreign,
        _flagged(summary, records, classes),
        own,
        undecided,
    )
