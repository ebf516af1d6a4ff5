"""The query context of ``tl.transanno_annotate``'s "Unassigned" call: neighbourhood
confidence and clusters whose markers are foreign to their predicted type."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import transanno_sc as ta
from transanno_sc.data import type_detection
from transanno_sc.tl import _query_context as qc
from transanno_sc.tl._query_context import (
    CELL_CYCLE_GENES,
    MIN_QUERY_CELLS,
    query_context,
    state_genes,
)


def _planted(rng, n_per_group=60, markers=None):
    """Counts of three groups of cells over 300 genes: groups 0 and 1 express genes 0-99 and
    100-199 (the reference types "A" and "B"), group 2 expresses genes 200-299 (a type the
    reference lacks); ``markers`` names genes 200-299."""
    n = 3 * n_per_group
    group = np.repeat([0, 1, 2], n_per_group)
    lam = np.full((n, 300), 0.05)
    for g in range(3):
        lam[group == g, 100 * g : 100 * (g + 1)] = 3.0
    X = rng.poisson(lam).astype(np.float32)
    names = [f"G{i}" for i in range(300)]
    if markers is not None:
        names[200 : 200 + len(markers)] = markers
    return ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=names)), group


def test_type_detection_is_the_share_of_each_types_cells_with_the_gene(rng):
    X = sp.csr_matrix(rng.poisson(0.5, size=(50, 7)).astype(np.float32))
    codes = rng.integers(-1, 3, size=50)
    det = type_detection(X, codes, 3)
    dense = X.toarray() > 0
    for t in range(3):
        np.testing.assert_allclose(det[t], dense[codes == t].mean(0), rtol=1e-6)


def test_a_cluster_with_markers_the_reference_type_lacks_is_foreign(rng):
    query, group = _planted(rng)
    ref, ref_group = _planted(np.random.default_rng(1))
    # the reference has types A and B only; the novel group is called "A"
    ctx = _planted_context(query, group, ref, ref_group)
    novel = group == 2
    assert (ctx.foreign[novel] > 0.5).mean() > 0.9, ctx.foreign[novel]
    assert (ctx.foreign[~novel] <= 0.5).all()
    assert (ctx.confidence(np.ones(query.n_obs))[novel] < 0.5).mean() > 0.9
    assert ctx.summary["foreign_clusters"]
    assert {r["type"] for r in ctx.summary["foreign_clusters"]} == {"A"}


def test_depth_alone_makes_no_marker_foreign(rng):
    """A reference sequenced at 5 % of the query's depth (every gene detected less often):
    the known clusters' markers are still found in their types (on the type's depth scale),
    and the novel cluster's markers are still foreign."""
    query, group = _planted(rng)
    ref, ref_group = _planted(np.random.default_rng(1))
    keep = ref_group < 2
    shallow = ref.X[keep].copy()
    shallow.data = np.random.default_rng(2).binomial(shallow.data.astype(int), 0.05)
    detection = type_detection(sp.csr_matrix(shallow, dtype=np.float32), ref_group[keep], 2)
    # as detected, the known clusters' markers are over five times rarer in the reference
    assert detection[0, :100].mean() < 0.95 / qc.FOREIGN_RATIO
    ctx = _planted_context(query, group, ref, ref_group, detection=detection)
    novel = group == 2
    assert (ctx.foreign[~novel] <= 0.1).all(), np.unique(ctx.foreign[~novel])
    assert (ctx.foreign[novel] > 0.5).mean() > 0.9, ctx.foreign[novel]


def test_cell_cycle_markers_are_not_foreign(rng):
    """The same planted group, its genes named as cell-cycle, histone, ribosomal and
    mitochondrial genes: a state, not a type."""
    cc = sorted(CELL_CYCLE_GENES)
    cc += ["Hist1h1c", "RPL3", "mt-Co1", "Rps27"][: 100 - len(cc)]
    cc += [f"RPL{i}A" for i in range(100 - len(cc))]
    query, group = _planted(rng, markers=cc)
    ref, ref_group = _planted(np.random.default_rng(1), markers=cc)
    ctx = _planted_context(query, group, ref, ref_group)
    assert state_genes(cc).all()
    assert (ctx.foreign <= 0.5).all()


def test_state_genes_under_old_and_current_symbols():
    """Histones and renamed cell-cycle genes under the symbols of GENCODE 32 on (Cell Ranger's
    2020 references) are state genes, as are their old symbols; mouse MHC genes are not."""
    state = ["H4C3", "H2AC6", "H2BC12", "H3C2", "H1-2", "H2AZ1", "H2AX", "H3-3B", "H2ac18"]
    state += ["HIST1H4C", "H2AFZ", "H3F3A", "Hist1h2ap", "CENPU", "Pimreg", "JPT1", "mt-Nd1"]
    other = ["H2-Ab1", "H2-K1", "H2-D1", "HLA-DRA", "CD3E", "Mt1", "H19", "HAVCR2", "Hc"]
    assert state_genes(state).all(), np.asarray(state)[~state_genes(state)]
    assert not state_genes(other).any(), np.asarray(other)[state_genes(other)]


def test_neighbourhood_lifts_a_lone_unsure_cell_but_not_an_unsure_group(rng):
    query, group = _planted(rng)
    conf = np.full(query.n_obs, 0.9)
    lone = np.flatnonzero(group == 0)[0]
    conf[lone] = 0.1
    conf[group == 2] = 0.2
    ctx = query_context(
        query,
        layer=None,
        scale="counts",
        confidence=conf,
        forced=np.zeros(query.n_obs, dtype=int),
        detection=None,
        classes=["A"],
        seed=0,
    )
    refined = ctx.confidence(conf)
    assert refined[lone] >= 0.5
    assert (refined[group == 2] < 0.5).all()
    assert "not available" in ctx.summary["foreign_markers"]


def _undecided(probability, forced, clusters):
    summary = {}
    cap = qc._undecided_cap(probability, forced, clusters, ["A", "B"], summary)
    return cap, summary["undecided_clusters"]


def test_an_undecided_cluster_next_to_a_decided_one_is_capped():
    """Cluster 1 is called "A" at probability 0.6 (odds 1.5 : 1) while cluster 0 is called "A"
    at 0.99: its cells are capped under one half, except one the classifier is sure of
    (0.95: odds over 8 : 1). Cluster 2 is called "B" undecidedly too, but no cluster is
    called "B" decisively: left alone, as is a query undecided everywhere. Two cells of
    cluster 1 called "B" (known cells among a new type) are not capped either."""
    clusters = np.repeat([0, 1, 2], 20)
    forced = np.where(clusters == 2, 1, 0)
    p = np.select([clusters == 0, clusters == 1], [0.99, 0.6], 0.55)
    sure, other = 25, [38, 39]
    p[sure] = 0.95
    forced[other] = 1
    cap, undecided = _undecided(p, forced, clusters)
    capped = (clusters == 1) & (forced == 0)
    capped[sure] = False
    assert (cap[capped] < 0.5).all()
    assert cap[sure] > 0.5
    assert (cap[~capped] >= 0.5).all() and (cap[other] == 1).all()
    assert (cap[clusters != 1] == 1).all()
    [record] = undecided
    assert record["type"] == "A" and record["n_cells"] == 18 and record["n_cells_capped"] == 17
    # the gap matters, not the level: a decided cluster at 0.85 (odds 5.7 : 1) is too close
    p_close = np.where(clusters == 0, 0.85, p)
    assert (_undecided(p_close, forced, clusters)[0] == 1).all()
    assert (_undecided(np.full(60, 0.6), forced, clusters)[0] == 1).all()
    # without probabilities (a caller that does not pass them) nothing is capped
    assert (_undecided(None, forced, clusters)[0] == 1).all()


def test_small_query_is_called_cell_by_cell(rng):
    query, _ = _planted(rng, n_per_group=(MIN_QUERY_CELLS - 1) // 3)
    ctx = query_context(
        query,
        layer=None,
        scale="counts",
        confidence=np.ones(query.n_obs),
        forced=np.zeros(query.n_obs, dtype=int),
        detection=None,
        classes=["A"],
        seed=0,
    )
    assert ctx is None


def _planted_context(query, group, ref, ref_group, conf=None, detection=None):
    """The query context of a planted query whose novel group is called "A" (group 1 "B"),
    against a reference of groups 0 and 1 (``detection``: theirs, by default from ``ref``)."""
    if detection is None:
        keep = ref_group < 2
        detection = type_detection(ref.X[keep], ref_group[keep], 2)
    return query_context(
        query,
        layer=None,
        scale="counts",
        confidence=np.ones(query.n_obs) if conf is None else conf,
        forced=np.where(group == 1, 1, 0),
        detection=(list(ref.var_names), detection),
        classes=["A", "B"],
        seed=0,
    )


def _few_known_among_novel(rng, n_known=6):
    """A query of type "A" cells (genes 0-99), a type the reference lacks (genes 200-299,
    called "A") and ``n_known`` cells of type "B" (genes 100-199, called "B") that carry some
    of the novel type's transcripts (ambient RNA), so that they join its cluster."""
    query, group = _planted(rng)
    keep = np.flatnonzero(group != 1)
    few = np.flatnonzero(group == 1)[:n_known]
    X = query.X.toarray()
    X[few, 200:] += rng.poisson(0.7, size=(few.size, 100))
    rows = np.concatenate([keep, few])
    return ad.AnnData(sp.csr_matrix(X[rows]), var=query.var.copy()), group[rows]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_few_known_cells_in_a_foreign_cluster_keep_their_type(rng, monkeypatch, streamed):
    """k-means with too few clusters for them puts six B cells with the novel cells; cut in
    two, the flagged cluster gives them a part whose markers (B's genes) are native to B: they
    are not capped, the novel part is."""
    monkeypatch.setattr(qc, "MIN_CLUSTERS", 2)
    monkeypatch.setattr(qc, "MAX_CLUSTERS", 2)
    if streamed:
        monkeypatch.setattr(qc, "MAX_QUERY_CELLS", 100)
        monkeypatch.setattr(qc, "STREAM_CHUNK", 37)
    query, group = _few_known_among_novel(rng)
    ref, ref_group = _planted(np.random.default_rng(1))
    ctx = _planted_context(query, group, ref, ref_group)
    few, novel = group == 1, group == 2
    [flagged] = ctx.summary["foreign_clusters"]
    assert flagged["n_cells"] == novel.sum() + few.sum()  # the B cells joined the novel ones
    assert flagged["n_cells_kept"] == few.sum()
    assert (ctx.foreign[few] <= qc.STATE_SHARE).all(), ctx.foreign[few]
    assert (ctx.foreign[novel] > 0.5).all()
    conf = ctx.confidence(np.ones(query.n_obs))
    assert (conf[few] > 0.5).all() and (conf[novel] < 0.5).all()
    # without the cut the B cells are capped with their cluster
    monkeypatch.setattr(qc, "_split_flagged", lambda pcs, clusters, *a: np.full(clusters.size, -1))
    uncut = _planted_context(query, group, ref, ref_group)
    assert (uncut.confidence(np.ones(query.n_obs))[few] < 0.5).all()


def test_large_or_backed_query_is_streamed_and_agrees(rng, tmp_path, monkeypatch):
    """Over MAX_QUERY_CELLS (here lowered to 100) or backed, the query is read in chunks, with
    the PCA and centres from a sample and neighbours within parts: with every cell sampled and
    one part it is the exact computation; with a third sampled and three parts it still flags
    the planted type and only it, and lifts a lone unsure cell but not an unsure group."""
    query, group = _planted(rng, n_per_group=80)
    ref, ref_group = _planted(np.random.default_rng(1))
    conf = np.clip(rng.normal(0.8, 0.2, query.n_obs), 0, 1)
    exact = _planted_context(query, group, ref, ref_group, conf)
    assert "sampled_cells" not in exact.summary
    monkeypatch.setattr(qc, "MAX_QUERY_CELLS", 100)
    monkeypatch.setattr(qc, "STREAM_CHUNK", 70)  # several chunks, a short last one
    streamed = _planted_context(query, group, ref, ref_group, conf)
    assert streamed.summary["sampled_cells"] == query.n_obs
    np.testing.assert_allclose(streamed.foreign, exact.foreign)
    assert np.mean(np.isclose(streamed.neighbourhood, exact.neighbourhood)) > 0.98

    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    monkeypatch.setattr(qc, "MAX_QUERY_CELLS", 100_000)
    from_disk = _planted_context(backed, group, ref, ref_group, conf)
    assert from_disk.summary["sampled_cells"] == query.n_obs
    np.testing.assert_array_equal(from_disk.foreign, streamed.foreign)
    np.testing.assert_allclose(from_disk.neighbourhood, streamed.neighbourhood)

    monkeypatch.setattr(qc, "SAMPLE_CELLS", 80)
    monkeypatch.setattr(qc, "NEIGHBOUR_BLOCK", 100)  # neighbours within 3 parts
    sampled = _planted_context(backed, group, ref, ref_group, conf)
    assert sampled.summary["sampled_cells"] == 80
    assert sampled.summary["neighbour_parts"] == 3
    novel = group == 2
    assert (sampled.foreign[novel] > 0.5).mean() > 0.9
    assert (sampled.foreign[~novel] <= 0.5).all()
    # the neighbourhood is still made of similar cells: a lone unsure cell among sure ones
    # is lifted, an unsure group is not
    conf = np.where(novel, 0.2, 0.9)
    lone = np.flatnonzero(group == 0)[:3]
    conf[lone] = 0.1
    lifted = _planted_context(backed, group, ref, ref_group, conf).neighbourhood
    assert (lifted[lone] >= 0.5).all()
    assert (lifted[novel] < 0.5).all()


def test_annotate_without_query_context_is_the_cell_level_call(trained, query):
    q = query.copy()
    ta.tl.transanno_annotate(q, trained, query_context=False)
    cell = trained.predict_confidence(q)
    np.testing.assert_allclose(q.obs["transanno_confidence"], cell["confidence"], rtol=1e-6)
    np.testing.assert_array_equal(
        q.obs["transanno_label"].astype(str), trained.predict(q, unassigned_threshold=0.5)
    )
    assert q.uns["transanno"]["query_context"] == {"applied": False}
    assert q.uns["transanno"]["params"]["query_context"] is False


def test_annotate_with_query_context_refines_the_cell_level_confidence(trained, query, tmp_path):
    q = query.copy()
    ta.tl.transanno_annotate(q, trained)
    cell = trained.predict_confidence(q)["confidence"].to_numpy()
    conf = q.obs["transanno_confidence"].to_numpy()
    ctx = q.uns["transanno"]["query_context"]
    assert ctx["applied"] and ctx["n_clusters"] >= 4
    # no cluster of this query (every type in the reference) has foreign markers: the
    # confidence only rises (neighbourhood), and fewer known cells are Unassigned
    assert len(ctx["foreign_clusters"]["n_cells"]) == 0
    assert (conf >= cell - 1e-9).all()
    labels = q.obs["transanno_label"].astype(str).to_numpy()
    assert np.mean(labels == "Unassigned") <= np.mean(cell < 0.5)
    np.testing.assert_array_equal(labels == "Unassigned", conf < 0.5)
    q.write_h5ad(tmp_path / "q.h5ad")
    back = ad.read_h5ad(tmp_path / "q.h5ad")
    assert back.uns["transanno"]["query_context"]["applied"]


def test_saved_model_keeps_the_reference_detection(trained, query, tmp_path):
    from safetensors.torch import load_file, save_file

    from transanno_sc.model.base._save_load import TYPE_DETECTION_KEY, sha256

    genes, det = trained.type_detection_
    assert (
        det.shape
        == (len(trained.classes_), trained.adata.n_vars)
        == (len(trained.classes_), len(genes))
    )
    trained.save(str(tmp_path / "new"))
    loaded = ta.model.TransAnno.load(str(tmp_path / "new"))
    assert loaded.type_detection_[0] == genes
    np.testing.assert_array_equal(loaded.type_detection_[1], det)
    a, b = query.copy(), query.copy()
    ta.tl.transanno_annotate(a, trained)
    ta.tl.transanno_annotate(b, loaded)
    np.testing.assert_array_equal(a.obs["transanno_label"], b.obs["transanno_label"])
    np.testing.assert_allclose(a.obs["transanno_confidence"], b.obs["transanno_confidence"])

    # a folder saved before the detection existed: loads without it, markers not checked
    old = tmp_path / "old"
    trained.save(str(old))
    state = load_file(old / "model.safetensors")
    del state[TYPE_DETECTION_KEY]
    save_file(state, old / "model.safetensors")
    config = json.loads((old / "transanno.json").read_text())
    del config["type_detection_genes"]
    config["weights_sha256"] = sha256(str(old / "model.safetensors"))
    (old / "transanno.json").write_text(json.dumps(config))
    before = ta.model.TransAnno.load(str(old))
    assert before.type_detection_ is None
    c = query.copy()
    ta.tl.transanno_annotate(c, before)
    assert "not available" in c.uns["transanno"]["query_context"]["foreign_markers"]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_unassigned_is_exactly_the_confidence_below_the_threshold(trained, query, threshold):
    q = query.copy()
    ta.tl.transanno_annotate(q, trained, unassigned_threshold=threshold)
    np.testing.assert_array_equal(
        q.obs["transanno_label"].astype(str).to_numpy() == "Unassigned",
        q.obs["transanno_confidence"].to_numpy() < threshold,
    )


def _two_cluster_sums(rest_detection: float):
    """Sums of two 50-cell clusters over 100 genes: 88 shared genes detected alike in both
    and in the reference type (0.1-0.9), and 12 genes cluster 0 detects in 0.8 of its cells,
    the other cluster in ``rest_detection``, the reference type in 0.05."""
    shared = np.linspace(0.1, 0.9, 88)
    det = np.stack([np.r_[shared, np.full(12, 0.8)], np.r_[shared, np.full(12, rest_detection)]])
    size = np.array([50, 50])
    n_detected = det * 50
    sums = n_detected * np.r_[np.ones(88), np.full(12, 2.0)]
    detection = np.r_[shared, np.full(12, 0.05)][None, :]
    clusters = np.repeat([0, 1], 50)
    return size, sums, n_detected, clusters, np.zeros(100, dtype=np.int64), detection


def test_markers_of_one_population_count_in_their_excess_over_the_rest():
    """In a query of one population, a cluster's markers that the rest of the query detects
    nearly as often are differences between parts of one type: with ``excess`` they are not
    foreign, without it (a query of several types) they are. Markers the rest lacks stay
    foreign either way."""
    shares, _ = qc._shares_of_sums(*_two_cluster_sums(0.6), excess=False)
    assert shares[0] == pytest.approx(12 / qc.N_MARKERS) and shares[0] > qc.FOREIGN_SHARE
    shares, _ = qc._shares_of_sums(*_two_cluster_sums(0.6), excess=True)
    assert shares[0] == 0.0
    shares, _ = qc._shares_of_sums(*_two_cluster_sums(0.0), excess=True)
    assert shares[0] > qc.FOREIGN_SHARE


def test_one_population_is_over_ninety_percent_called_one_type():
    assert qc.one_population(np.r_[np.zeros(91), np.ones(9)].astype(np.int64))
    assert not qc.one_population(np.r_[np.zeros(81), np.ones(19)].astype(np.int64))
    assert not qc.one_population(np.zeros(0, dtype=np.int64))


def test_one_population_is_judged_alike_in_memory_and_streamed(rng, monkeypatch):
    """A query called one type throughout takes its markers' excess over the rest in the
    streamed path as in memory (every foreign-share computation, the split parts' too), and
    says so in the summary."""
    query, _ = _planted(rng, n_per_group=60)
    ref, ref_group = _planted(np.random.default_rng(1))
    keep = ref_group < 2
    kwargs = {
        "layer": None,
        "scale": "counts",
        "confidence": np.ones(query.n_obs),
        "forced": np.zeros(query.n_obs, dtype=np.int64),
        "detection": (list(ref.var_names), type_detection(ref.X[keep], ref_group[keep], 2)),
        "classes": ["A", "B"],
        "seed": 0,
    }
    calls = []
    shares_of_sums = qc._shares_of_sums

    def spy(*args, **kw):
        calls.append(kw.get("excess", False))
        return shares_of_sums(*args, **kw)

    monkeypatch.setattr(qc, "_shares_of_sums", spy)
    exact = query_context(query, **kwargs)
    n_exact = len(calls)
    monkeypatch.setattr(qc, "MAX_QUERY_CELLS", 100)
    streamed = query_context(query, **kwargs)
    assert exact.summary["one_population"] and streamed.summary["one_population"]
    assert "sampled_cells" in streamed.summary
    assert n_exact > 1 and len(calls) > n_exact  # the split parts were judged too
    assert all(calls), calls
    np.testing.assert_allclose(streamed.foreign, exact.foreign)
