"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from conftest import shared_data

import transanno_sc as ta
from transanno_sc.data import detect_input_scale
from transanno_sc.model import TransAnno


def _tiny(rng, n=40, g=60, labels=("a", "b")):
    X = sp.csr_matrix(rng.poisson(1.0, size=(n, g)).astype(np.float32))
    a = AnnData(X)
    a.var_names = [f"G{i}" for i in range(g)]
    a.obs["ct"] = np.resize(np.asarray(labels), n)
    return a


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative")],
)
def test_setup_refuses_bad_values(rng, value, match):
    a = _tiny(rng)
    X = a.X.toarray()
    X[3, 4] = value
    a.X = X
    before = a.copy()
    with pytest.raises(ValueError, match=match):
        TransAnno.setup_anndata(a, labels_key="ct")
    assert list(a.obs.columns) == list(before.obs.columns)
    assert not any(k.startswith("_scvi") for k in a.uns)


def test_missing_labels_key(rng):
    with pytest.raises(KeyError, match="labels_key='cell_type'"):
        TransAnno.setup_anndata(_tiny(rng), labels_key="cell_type")


def test_missing_label_values(rng):
    a = _tiny(rng)
    a.obs["ct"] = a.obs["ct"].astype(object)
    a.obs.iloc[0, 0] = None
    with pytest.raises(ValueError, match="missing values"):
        TransAnno.setup_anndata(a, labels_key="ct")


def test_zero_labeled_cells(rng):
    a = _tiny(rng, labels=("Unknown",))
    TransAnno.setup_anndata(a, labels_key="ct")
    model = TransAnno(a, n_hidden=16, n_heads=2, n_top_genes=None)
    with pytest.raises(ValueError, match="No labeled cells"):
        model.train(max_epochs=1)


def test_single_class(rng):
    a = _tiny(rng, labels=("a",))
    TransAnno.setup_anndata(a, labels_key="ct")
    model = TransAnno(a, n_hidden=16, n_heads=2, n_top_genes=None)
    with pytest.raises(ValueError, match="at least two"):
        model.train(max_epochs=1)


def test_no_labels_key_cannot_train(rng):
    a = _tiny(rng)
    TransAnno.setup_anndata(a)
    model = TransAnno(a, n_hidden=16, n_heads=2, n_top_genes=None)
    with pytest.raises(ValueError, match="labels_key"):
        model.train(max_epochs=1)


def test_duplicate_gene_names(rng):
    a = _tiny(rng)
    a.var_names = ["G0"] * 2 + [f"G{i}" for i in range(2, a.n_vars)]
    with pytest.raises(ValueError, match="var_names_make_unique"):
        TransAnno.setup_anndata(a, labels_key="ct")


def test_empty_anndata(rng):
    with pytest.raises(ValueError, match="empty"):
        TransAnno.setup_anndata(_tiny(rng)[:0].copy(), labels_key="ct")


def test_missing_layer(rng):
    with pytest.raises(KeyError, match="layer='counts'"):
        TransAnno.setup_anndata(_tiny(rng), labels_key="ct", layer="counts")


def test_scale_detection(rng):
    counts = rng.poisson(2.0, size=(30, 20)).astype(np.float32)
    assert detect_input_scale(counts) == "counts"
    assert detect_input_scale(np.log1p(counts * 1.7)) == "log1p"
    # non-integer count-like values (TPM, CPM, expected counts) are normalized per cell too
    assert detect_input_scale(counts * 100.3) == "counts"
    tpm = counts / counts.sum(1, keepdims=True).clip(1) * 1e6
    assert detect_input_scale(tpm) == "counts"


def _per_cell(X, total: float, log=None) -> sp.csr_matrix:
    """Counts normalized to ``total`` per cell, then ``log(1 + x)`` (``log``: np.log2 ...)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    out = sp.csr_matrix(sp.diags(total / np.asarray(X.sum(1)).ravel()) @ X)
    if log is not None:
        out.data = log(1.0 + out.data)
    return out.astype(np.float32)


def test_log_base_detection(lung):
    """Published tables often hold log2(TPM + 1) or log2(CPM + 1): told from natural log1p
    values by the whole multiples they turn back into, or by their constant totals."""
    from transanno_sc.data import resolve_input_scale

    X = lung.X[:300]
    assert detect_input_scale(_per_cell(X, 1e4, np.log)) == "log1p"
    assert detect_input_scale(_per_cell(X, 1e6, np.log2)) == "log2(1+x)"
    assert detect_input_scale(_per_cell(X, 1e4, np.log2)) == "log2(1+x)"
    assert detect_input_scale(_per_cell(X, 1e6, np.log10)) == "log10(1+x)"
    # on 500 genes only (no constant totals), and rounded as in a text table
    assert detect_input_scale(_per_cell(X, 1e6, np.log2)[:, :500]) == "log2(1+x)"
    for decimals in (2, 1):  # 1 decimal: no whole multiples left, but constant totals
        rounded = _per_cell(X, 1e6, np.log2)
        rounded.data = np.round(rounded.data, decimals)
        assert detect_input_scale(rounded) == "log2(1+x)"
    # TPM: gene lengths leave no whole multiples, but every cell sums to a million
    lengths = np.random.default_rng(0).lognormal(7.5, 0.5, X.shape[1]).astype(np.float32)
    tpm = _per_cell(sp.csr_matrix(X) @ sp.diags(1e3 / lengths), 1e6, np.log2)
    assert detect_input_scale(tpm) == "log2(1+x)"
    # normalized to a total far below the library size the base hardly matters: natural
    assert detect_input_scale(_per_cell(X, 1.0, np.log)) == "log1p"
    # "log1p" asks for log-normalized values and the base is still detected; a base given
    # is taken as it is
    log2 = _per_cell(X, 1e6, np.log2)
    assert resolve_input_scale(log2, "log1p") == "log2(1+x)"
    assert resolve_input_scale(_per_cell(X, 1e4, np.log), "log1p") == "log1p"
    with pytest.warns(UserWarning, match="treated as log10"):
        assert resolve_input_scale(log2, "log10(1+x)") == "log10(1+x)"
    with pytest.raises(ValueError, match=r"'log2\(1\+x\)'"):
        resolve_input_scale(log2, "log2")


def test_log2_query_is_read_as_its_counts(trained, query):
    """A query of log2(CPM + 1) values gets the probabilities of its counts."""
    as_counts = trained.predict_confidence(query)
    log2 = query.copy()
    log2.X = _per_cell(query.X, 1e6, np.log2)
    as_log2 = trained.predict_confidence(log2)
    np.testing.assert_array_equal(as_log2["label"], as_counts["label"])
    np.testing.assert_allclose(as_log2["probability"], as_counts["probability"], atol=1e-4)


def test_data_merged_from_counts_and_log_values_is_warned_about(trained, query):
    """Cells of counts next to cells of log1p values are read as one (count-like) scale: the
    log cells would be taken for tiny counts, so the user is told and shown the way out."""
    import warnings

    mixed = query.copy()
    X = sp.csr_matrix(mixed.X, dtype=np.float32, copy=True)
    half = np.arange(0, X.shape[0], 2)
    X[half] = _per_cell(X[half], 1e4, np.log)
    mixed.X = X
    with pytest.warns(UserWarning, match=r"merged from data of different scales.*batch_key="):
        trained.predict_confidence(mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trained.predict_confidence(query)
        log1p = query.copy()
        log1p.X = _per_cell(query.X, 1e4, np.log)
        trained.predict_confidence(log1p)
        # shallow cells of ambient-corrected counts (non-integer, small) next to integer ones:
        # not log values, no warning
        from transanno_sc.data import confirmed_log_scale

        corrected = query.copy()
        X = sp.csr_matrix(query.X, dtype=np.float32, copy=True)
        rng = np.random.default_rng(0)
        shallow = X[half].copy()
        shallow.data = np.minimum(shallow.data, 25) * rng.uniform(0.6, 0.95, shallow.nnz)
        X[half] = shallow.astype(np.float32)
        corrected.X = X
        assert confirmed_log_scale(shallow) is None
        trained.predict_confidence(corrected)


def test_no_gene_overlap_with_model(trained, query):
    other = query.copy()
    other.var_names = [f"ENSMUSG{i:011d}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="look like Ensembl IDs while the model uses gene sym"):
        trained.predict(other)
    # the reverse: a model over Ensembl IDs (a CELLxGENE reference) and a query with symbols
    from transanno_sc.model._gene_selection import checked_match

    ids = [f"ENSMUSG{i:011d}" for i in range(50)]
    with pytest.raises(ValueError, match="model uses Ensembl IDs while the data look like"):
        checked_match(query, ids, "adata")


def test_query_with_negative_values(trained, query):
    import scanpy as sc

    scaled = query.copy()
    sc.pp.log1p(scaled)
    sc.pp.scale(scaled)
    with pytest.raises(ValueError, match="negative"):
        trained.predict(scaled)


def test_corrupt_model_folder(trained, tmp_path):
    trained.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        TransAnno.load(tmp_path / "m")
    (tmp_path / "m" / "transanno.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt"):
        TransAnno.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not found"):
        TransAnno.load(tmp_path / "nothing")


def test_mudata_without_rna(trained, query):
    from mudata import MuData

    md = MuData({"prot": query.copy()})
    with pytest.raises(ValueError, match="RNA modality"):
        ta.tl.transanno_annotate(md, trained)


def test_non_integer_values_declared_as_counts_warn(rng):
    a = _tiny(rng)
    a.X = a.X.toarray() + 0.5
    # small non-integer values look like log1p: declaring them counts is honoured with a warning
    with pytest.warns(UserWarning, match="looks like log1p-normalized values; they are treated"):
        TransAnno.setup_anndata(a, labels_key="ct", input_scale="counts")
    assert a.uns["_scvi_manager_uuid"]  # registered, values treated as counts (documented)


def test_count_like_non_integer_values_are_registered_as_counts(rng):
    a = _tiny(rng)
    X = a.X.toarray()
    a.X = X / X.sum(1, keepdims=True).clip(1) * 1e6  # TPM-like
    TransAnno.setup_anndata(a, labels_key="ct")
    assert TransAnno(a, n_top_genes=None).input_scale_ == "counts"


def test_unlabeled_category_lookalike_is_refused(rng):
    a = _tiny(rng, labels=("a", "b", "Unknown"))
    before = list(a.obs.columns)
    with pytest.raises(ValueError, match=r"unlabeled_category='unknown'.*'Unknown'"):
        TransAnno.setup_anndata(a, labels_key="ct", unlabeled_category="unknown")
    assert list(a.obs.columns) == before and not any(k.startswith("_scvi") for k in a.uns)
    TransAnno.setup_anndata(a, labels_key="ct", unlabeled_category="absent")  # none unlabeled


def test_all_zero_genes_and_cells(rng):
    a = _tiny(rng, n=60, g=80)
    X = a.X.toarray()
    X[:, :10] = 0  # ten genes never detected
    X[:4] = 0  # four labeled cells without any count
    a.X = X
    TransAnno.setup_anndata(a, labels_key="ct")
    model = TransAnno(a, n_hidden=16, n_heads=2, n_layers=1, max_tokens=16, n_top_genes=None)
    with pytest.warns(UserWarning, match="4 labeled cells have no counts"):
        model.train(max_epochs=1, enable_progress_bar=False)
    conf = model.predict_confidence(a)
    assert (conf["confidence"].to_numpy()[:4] == 0).all()
    assert np.isfinite(conf["probability"]).all()


def test_gene_names_differing_only_in_case_prefer_exact(trained, query):
    q = query[:30].copy()
    gene = trained.var_names_[0]
    # the query has the model's gene twice: exact spelling, and a lower-case twin never
    # detected (matching the twin would silence the gene and change the predictions)
    twin = q[:, [gene]].copy()
    twin.var_names = [gene.lower()]
    twin.X = twin.X * 0
    both = ad.concat([q, twin], axis=1, merge="first")
    match = ta.data.match_genes(both.var_names, trained.var_names_)
    assert both.var_names[match.source[match.target == 0][0]] == gene
    np.testing.assert_allclose(
        trained.predict(both, soft=True).to_numpy(),
        trained.predict(q, soft=True).to_numpy(),
        atol=1e-5,
    )


def test_float16_and_views(trained, query):
    q = query[:50].copy()
    half = q.copy()
    half.X = half.X.toarray().astype(np.float16)  # scipy.sparse has no float16: dense
    np.testing.assert_allclose(
        trained.predict(half, soft=True).to_numpy(),
        trained.predict(q, soft=True).to_numpy(),
        atol=1e-4,
    )
    parent = query.copy()
    view = parent[:50]
    # the call says, before any work, that the parent stays unannotated; anndata's own
    # "initializing view as actual" is not passed on
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ta.tl.transanno_annotate(view, trained)
    messages = [(w.category, str(w.message)) for w in record]
    assert [m for c, m in messages if "is not annotated" in m and c is UserWarning], messages
    assert not [m for c, m in messages if c is ad.ImplicitModificationWarning], messages
    assert "transanno_label" not in parent.obs  # the parent is never changed
    assert not view.is_view
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is not annotated")
        ta.tl.transanno_annotate(parent[:50], trained, copy=True)  # a copy: nothing to say
    # the view is annotated as its copy is (the call's query context included: 50 cells)
    copy = parent[:50].copy()
    ta.tl.transanno_annotate(copy, trained)
    for key in ("transanno_label", "transanno_confidence"):
        np.testing.assert_array_equal(view.obs[key].to_numpy(), copy.obs[key].to_numpy())


def test_loaded_model_on_anndata_of_another_shape(trained, query, tmp_path):
    """A saved model meets data with other genes, in another order, and fewer cells."""
    trained.save(str(tmp_path / "m"), overwrite=True)
    model = TransAnno.load(str(tmp_path / "m"))
    expected = model.predict(query[:50].copy())
    genes = list(model.var_names_)
    # every gene of the query in another order, plus 300 unknown all-zero genes: same library
    # sizes, another shape, identical predictions
    rng = np.random.default_rng(0)
    base = query[:50, rng.permutation(query.n_vars)].copy()
    extra = ad.AnnData(X=sp.csr_matrix((50, 300), dtype=np.float32), obs=base.obs[[]].copy())
    extra.var_names = [f"unknown_{i}" for i in range(300)]
    q = ad.concat([base, extra], axis=1, merge="first")
    assert q.shape == (50, query.n_vars + 300)
    np.testing.assert_array_equal(model.predict(q), expected)
    # half of the model's genes missing: predictions still come, overlap reported
    half = q[:, [g for g in q.var_names if g not in set(genes[: len(genes) // 2])]].copy()
    ta.tl.transanno_annotate(half, model)
    assert half.uns["transanno"]["gene_overlap"]["n_matched"] == len(genes) - len(genes) // 2
    # one cell, and a query with the model's genes only
    assert model.predict(query[:1, genes].copy()).shape == (1,)
    # no gene in common: a ValueError naming the overlap
    bad = ad.AnnData(
        X=np.ones((5, 3), dtype=np.float32),
        var={"symbol": ["geneA", "geneB", "geneC"]},
    )
    bad.var_names = ["geneA", "geneB", "geneC"]
    with pytest.raises(ValueError, match=r"overlap|genes"):
        model.predict(bad)


def test_gene_names_written_by_r_are_matched():
    """R's ``make.names`` writes ``H2-Ab1`` as ``H2.Ab1`` (the Baron pancreas data holds its
    MHC class II genes so); Seurat writes ``_`` as ``-``. Matched after the exact, the
    case-insensitive and the version-less names, and only where unambiguous."""
    m = ta.data.match_genes(
        ["H2.Ab1", "HLA.DRA", "Cd74", "MT.CO1", "Gm_1"], ["H2-AB1", "CD74", "HLA-DRA", "GM-1"]
    )
    assert m.n_matched == 4 and m.n_separators == 3 and m.n_case_insensitive == 1
    assert dict(zip(m.target.tolist(), m.source.tolist())) == {0: 0, 1: 2, 2: 1, 3: 4}
    assert m.to_dict()["n_separators"] == 3
    # an exact or case-insensitive name wins over a separator match, and two candidates
    # are ambiguous: neither is taken
    m = ta.data.match_genes(["H2.Ab1", "H2-Ab1"], ["H2-Ab1"])
    assert (m.n_exact, m.n_separators, m.source.tolist()) == (1, 0, [1])
    assert ta.data.match_genes(["A.1", "A_1"], ["A-1"]).n_matched == 0
    # the shared Baron (R-written names) and Tabula Muris files
    baron = ad.read_h5ad(shared_data("baron_mouse_pancreas.h5ad"), backed="r")
    tabula = ad.read_h5ad(shared_data("tabula_muris_immune.h5ad"), backed="r")
    m = ta.data.match_genes(baron.var_names, tabula.var_names)
    matched = {tabula.var_names[t]: baron.var_names[s] for s, t in zip(m.source, m.target)}
    assert matched["H2-Ab1"] == "H2.Ab1" and matched["H2-Aa"] == "H2.Aa"
    assert m.n_separators >= 40


def test_ensembl_version_suffixes_are_matched(trained, query):
    # a model and a query annotated with Ensembl IDs, the query's from GENCODE (versioned)
    ids = {g: f"ENSMUSG{i:011d}" for i, g in enumerate(query.var_names)}
    versioned = query[:40].copy()
    versioned.var_names = [f"{ids[g]}.{i % 7 + 1}" for i, g in enumerate(versioned.var_names)]
    match = ta.data.match_genes(versioned.var_names, [ids[g] for g in trained.var_names_])
    assert match.n_exact == 0
    assert match.n_unversioned == match.n_matched == len(trained.var_names_)
    assert match.to_dict()["n_unversioned"] == match.n_matched
    # a name that is not an Ensembl ID keeps its suffix: "Gene.1" is not "Gene"
    assert ta.data.match_genes(["Gm1.1"], ["Gm1"]).n_matched == 0
    # two versions of one ID are ambiguous: neither is taken
    assert ta.data.match_genes(["ENSG01.1", "ENSG01.2"], ["ENSG01"]).n_matched == 0


# ------------------------------------------------- tl.transanno_annotate with reference=
# A misspelled training argument, refused before training (after the query's checks): a
# query error raised instead proves the query was checked before any training.
_NOT_TRAINED = {"max_epoch": 1}


def _fast_annotate(query, ref, **kwargs):
    from conftest import FAST_MODEL, FAST_TRAIN

    model_kwargs = {k: v for k, v in FAST_MODEL.items() if k != "n_top_genes"}
    train = {**FAST_TRAIN, "max_epochs": 3}
    ta.tl.transanno_annotate(
        query, reference=ref, labels_key="cell_type", model_kwargs=model_kwargs, **train, **kwargs
    )


@pytest.mark.parametrize(
    ("problem", "match"),
    [
        ("negative", "negative values"),
        ("nan", "NaN or infinite"),
        ("duplicate genes", "not unique"),
        ("all zero", r"holds no expression.*filter_cells"),
        ("all zero, scale given", r"holds no expression"),
        ("log1p on counts", "look like counts"),
        ("missing layer", "layer"),
    ],
)
def test_query_problems_are_refused_before_training(ref, query, problem, match):
    kwargs = dict(_NOT_TRAINED)
    q = query[:50].copy()
    X = q.X.toarray()
    if problem == "negative":
        X[3, 5] = -1.0
    elif problem == "nan":
        X[7, 2] = np.nan
    elif problem.startswith("all zero"):
        X[:] = 0.0
        if problem == "all zero, scale given":
            kwargs["input_scale"] = "counts"
    elif problem == "log1p on counts":
        kwargs["input_scale"] = "log1p"
    elif problem == "missing layer":
        kwargs["layer"] = "counts"
        ref = ref.copy()
        ref.layers["counts"] = ref.X.copy()
    q.X = sp.csr_matrix(X)
    if problem == "duplicate genes":
        q.var_names = [q.var_names[0], *q.var_names[:-1]]
    with pytest.raises((ValueError, KeyError), match=match):
        ta.tl.transanno_annotate(q, reference=ref, labels_key="cell_type", **kwargs)


def test_backed_view_query_is_refused_up_front(ref, query, tmp_path):
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="to_memory"):
        ta.tl.transanno_annotate(
            backed[:100], reference=ref, labels_key="cell_type", **_NOT_TRAINED
        )
    backed.file.close()


def test_backed_query_with_copy_returns_an_annotated_in_memory_copy(trained, query, tmp_path):
    """anndata cannot ``copy()`` a backed AnnData without a file name; ``copy=True`` gives
    the annotation on an in-memory copy and leaves the file and its handle as they were."""
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    obs_before = backed.obs.copy()
    out = ta.tl.transanno_annotate(backed, model=trained, copy=True)
    want = ta.tl.transanno_annotate(query, model=trained, copy=True)
    assert not out.isbacked and backed.isbacked
    pd.testing.assert_frame_equal(backed.obs, obs_before)
    assert (out.obs["transanno_label"] == want.obs["transanno_label"]).all()
    np.testing.assert_allclose(out.obsm["X_transanno"], want.obsm["X_transanno"], atol=1e-5)
    backed.file.close()


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        ("nan batch", {"batch_key": "batch"}, ValueError, "3 missing values"),
        ("nan label", {}, ValueError, r"reference\.obs\['cell_type'\] has 3 missing values"),
        ("'nan' label", {}, ValueError, r"labels 3 cells 'nan': a missing value written as text"),
        ("blank label", {}, ValueError, r"labels 3 cells '', ' ': a missing value"),
        ("library size", {}, ValueError, r"distinct numbers \(e\.g\. .*\): a measurement"),
        ("fraction", {}, ValueError, r"numbers with a fractional part \(e\.g\. .*\): a measure"),
        ("none", {"batch_key": "cell_type"}, ValueError, "both name"),
        ("none", {"batch_key": "donor"}, KeyError, "not a column"),
        ("none", {"labels_key": ["cell_type"]}, TypeError, "a str"),
        ("none", {"key_added": "a/b"}, ValueError, "without '/'"),
        ("file", {}, ValueError, "existing file"),
        ("duplicate genes", {}, ValueError, r"reference\.var_names are not unique"),
        (
            "layer in the query only",
            {"layer": "counts"},
            KeyError,
            r"not found in reference\.layers.*both the query and the reference",
        ),
        ("nan label", {"unlabeled_category": np.nan}, ValueError, "must be a label text"),
    ],
)
def test_reference_arguments_are_refused_up_front(
    ref, query, tmp_path, change, kwargs, error, match
):
    ref = ref.copy()
    if change == "nan batch":
        ref.obs["batch"] = ref.obs["batch"].astype(object)
        ref.obs.iloc[:3, ref.obs.columns.get_loc("batch")] = np.nan
    if change == "nan label":
        ref.obs["cell_type"] = ref.obs["cell_type"].astype(object)
        ref.obs.iloc[:3, ref.obs.columns.get_loc("cell_type")] = np.nan
    if change == "'nan' label":  # NaN labels turned into text, as `.astype(str)` does
        ref.obs["cell_type"] = ref.obs["cell_type"].astype(object)
        ref.obs.iloc[:3, ref.obs.columns.get_loc("cell_type")] = np.nan
        ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    if change in ("library size", "fraction"):  # a QC column passed as labels_key
        total = np.asarray(ref.X.sum(1)).ravel()
        ref.obs["cell_type"] = total.astype(int) if change == "library size" else total / 7
    if change == "blank label":
        ref.obs["cell_type"] = ref.obs["cell_type"].astype(object)
        ref.obs.iloc[:3, ref.obs.columns.get_loc("cell_type")] = ["", " ", ""]
    if change == "file":
        (tmp_path / "model").write_text("not a model")
        kwargs = {"save_model": str(tmp_path / "model")}
    if change == "duplicate genes":
        ref.var_names = [ref.var_names[0], *ref.var_names[1:-1], ref.var_names[0]]
    q = query[:60].copy()
    if change == "layer in the query only":
        q.layers["counts"] = q.X.copy()
    kwargs = {"labels_key": "cell_type", "max_epochs": 1, "enable_progress_bar": False, **kwargs}
    with pytest.raises(error, match=match):
        ta.tl.transanno_annotate(q, reference=ref, **kwargs)


def test_misspelled_training_argument_is_refused_with_a_suggestion(ref, query):
    with pytest.raises(TypeError, match="did you mean 'max_epochs'"):
        ta.tl.transanno_annotate(query, reference=ref, labels_key="cell_type", max_epoch=3)
    # model_kwargs too, before the reference is set up (it failed in TransAnno(...) after)
    with pytest.raises(TypeError, match=r"Unknown model_kwargs \['n_layerz'\].*'n_layers'"):
        ta.tl.transanno_annotate(
            query, reference=ref, labels_key="cell_type", model_kwargs={"n_layerz": 2}
        )


def test_model_and_reference_together_are_refused(trained, ref, query):
    with pytest.raises(ValueError, match="not both"):
        ta.tl.transanno_annotate(query, model=trained, reference=ref, labels_key="cell_type")


def test_batch_key_with_missing_values_in_setup_anndata(ref):
    ref = ref.copy()
    ref.obs["batch"] = ref.obs["batch"].astype(object)
    ref.obs.iloc[:2, ref.obs.columns.get_loc("batch")] = None
    with pytest.raises(ValueError, match="2 missing values"):
        TransAnno.setup_anndata(ref, labels_key="cell_type", batch_key="batch")


def test_batch_of_fewer_than_three_cells_is_warned_about_by_name(ref):
    """scvi-tools' own warning names its internal column ('_scvi_batch') and a code; ours
    names the user's column and batch."""
    ref = ref.copy()
    ref.obs["batch"] = ref.obs["batch"].astype(str)
    ref.obs.iloc[0, ref.obs.columns.get_loc("batch")] = "solo"
    with pytest.warns(
        UserWarning, match=r"1 batch\(es\) of adata.obs\['batch'\].*'solo' \(1\)"
    ) as rec:
        TransAnno.setup_anndata(ref, labels_key="cell_type", batch_key="batch")
    assert not any("_scvi_batch" in str(w.message) for w in rec)


def test_dense_reference_and_callers_random_state_are_left_alone(ref, query):
    """A dense float32 reference matrix is not normalized in place (it was, through the
    gene selection's subsample), and the caller's global random generators continue as if
    the call had not happened."""
    import random

    import torch

    dense = ref.copy()
    dense.X = dense.X.toarray().astype(np.float32)
    before = dense.X.copy()
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    expected = (np.random.rand(), random.random(), float(torch.rand(1)))
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    _fast_annotate(query, dense)
    assert np.array_equal(dense.X, before)
    assert (np.random.rand(), random.random(), float(torch.rand(1))) == expected
    assert query.obs["transanno_label"].notna().all()


def test_query_context_skipped_when_too_few_genes_are_expressed(trained, query):
    q = query[:80].copy()
    X = q.X.toarray()
    keep = np.argsort(-X.sum(0))[:2]
    mask = np.zeros(X.shape[1], dtype=bool)
    mask[keep] = True
    X[:, ~mask] = 0.0
    X[:, keep] += 1.0
    q.X = sp.csr_matrix(X)
    ta.tl.transanno_annotate(q, model=trained)
    assert q.uns["transanno"]["query_context"]["applied"] is False
    assert q.obs["transanno_label"].notna().all()


def test_query_of_copies_of_one_cell_gives_no_numeric_warnings(trained, query):
    """A query of 60 copies of one cell has no structure for the query context's PCA: it is
    skipped (logged), without scanpy's or scikit-learn's division-by-zero warnings (before,
    the sparse PCA stopped with ``ArpackError: Starting vector is zero``)."""
    q = query[np.zeros(60, dtype=int)].copy()
    q.obs_names_make_unique()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ta.tl.transanno_annotate(q, model=trained)
    numeric = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not numeric, [str(w.message) for w in numeric]
    assert not [w for w in caught if "dispersions" in str(w.message)]
    assert q.uns["transanno"]["query_context"]["applied"] is False
    assert q.obs["transanno_label"].nunique() == 1


def test_float_cluster_numbers_are_named_without_decimals(ref):
    """Cluster numbers stored as floats (as pandas does once a column held NaN) name the
    types "0", "1", ..., as integers do, not "0.0"."""
    from transanno_sc.tl._reference import _private_reference

    ref = ref.copy()
    codes = ref.obs["cell_type"].cat.codes.to_numpy()
    ref.obs["cluster"] = codes.astype(float)
    private = _private_reference(ref, "cluster", None, None)
    assert sorted(private.obs["cluster"].unique()) == sorted(str(c) for c in set(codes))
    assert ref.obs["cluster"].dtype == float  # the user's column is kept


def test_types_of_one_or_two_cells_are_named_in_one_warning(ref, recwarn):
    """A type with 1-2 labelled cells is trained on, with one warning that names it (and its
    cells), pointing at the user's call; scvi-tools' twin, which names an internal code of
    '_scvi_labels', is not shown."""
    from transanno_sc.tl._reference import _private_reference

    ref = ref.copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    ref.obs.iloc[:2, ref.obs.columns.get_loc("cell_type")] = "Tuft cells"
    ref.obs.iloc[2, ref.obs.columns.get_loc("cell_type")] = "Ionocytes"
    private = _private_reference(ref, "cell_type", None, None)
    TransAnno.setup_anndata(ref, labels_key="cell_type")
    messages = [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]
    ours = [m for m in messages if "fewer than 3 labelled cells" in m]
    assert len(ours) == 2  # _private_reference's and setup_anndata's
    assert "reference.obs['cell_type']" in ours[0] and "adata.obs['cell_type']" in ours[1]
    assert "'Ionocytes' (1)" in ours[0] and "'Tuft cells' (2)" in ours[0]
    assert not any("_scvi_labels" in m for m in messages)
    setup_warning = next(w for w in recwarn if "adata.obs['cell_type'] have" in str(w.message))
    assert setup_warning.filename == __file__  # the user's line, not the package's
    assert (private.obs["cell_type"] == "Tuft cells").sum() == 2


def test_tiny_type_warning_of_annotate_points_at_the_users_call(ref, query):
    """Through ``transanno_annotate(reference=...)`` the warning names the reference and the
    user's line (checked here on a query refused right after, before any training)."""
    ref = ref.copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    ref.obs.iloc[0, ref.obs.columns.get_loc("cell_type")] = "Tuft cells"
    q = query[:60].copy()
    q.var_names = [f"other_{i}" for i in range(q.n_vars)]
    with (
        pytest.warns(
            UserWarning, match=r"reference\.obs\['cell_type'\].*'Tuft cells' \(1\)"
        ) as rec,
        pytest.raises(ValueError, match="share only 0 genes"),
    ):
        ta.tl.transanno_annotate(q, reference=ref, labels_key="cell_type")
    assert next(w for w in rec if "labelled cells" in str(w.message)).filename == __file__


def test_a_cell_type_named_as_the_unlabeled_category_is_warned_about(ref, query):
    """A real type called "Unknown" (the default unlabeled_category) would be left out of
    training silently; over 5 % of the reference so labelled is warned about (checked on a
    query refused right after, before any training), a few such cells are not."""
    ref = ref.copy()
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str)
    nk = (ref.obs["cell_type"] == "NK cells").to_numpy()
    ref.obs.loc[nk, "cell_type"] = "Unknown"
    q = query[:60].copy()
    q.var_names = [f"other_{i}" for i in range(q.n_vars)]
    with (
        pytest.warns(
            UserWarning,
            match=rf"{nk.sum()} of the reference's .* 'Unknown'.*another "
            "unlabeled_category",
        ) as rec,
        pytest.raises(ValueError, match="share only 0 genes"),
    ):
        ta.tl.transanno_annotate(q, reference=ref, labels_key="cell_type")
    assert next(w for w in rec if "unlabeled_category" in str(w.message)).filename == __file__
    few = ref.copy()
    few.obs["cell_type"] = np.where(nk, "NK cells", few.obs["cell_type"])
    few.obs.iloc[:3, few.obs.columns.get_loc("cell_type")] = "Unknown"
    with warnings.catch_warnings(record=True) as seen, pytest.raises(ValueError):
        warnings.simplefilter("always")
        ta.tl.transanno_annotate(q, reference=few, labels_key="cell_type")
    assert not [w for w in seen if "unlabeled_category" in str(w.message)]


def test_reference_cells_empty_on_the_shared_genes_are_named_once(ref, query, recwarn):
    """A query on a small panel: reference cells with no counts in the shared genes get one
    warning that names the reference and the shared genes, at the user's line (not the
    training's generic "labeled cells have no counts at all")."""
    panel = query[:, :150].copy()
    _fast_annotate(panel, ref)
    messages = [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]
    ours = [
        w for w in recwarn if "labelled reference cells have no counts in the" in str(w.message)
    ]
    assert len(ours) == 1, messages
    assert "150 genes the reference shares with adata" in str(ours[0].message)
    assert ours[0].filename == __file__
    assert not any("have no counts at all" in m for m in messages)


def _refused_for_no_shared_gene(query):
    """A copy of ``query`` sharing no gene with the reference: ``transanno_annotate`` refuses
    it before training, after checking the reference."""
    q = query[:60].copy()
    q.var_names = [f"other_{i}" for i in range(q.n_vars)]
    return q


def test_reference_with_a_batch_column_but_no_batch_key_is_hinted(ref, query, caplog):
    """No ``batch_key`` while ``reference.obs`` has batch-like columns whose batches share the
    types: one INFO line names them and what ``batch_key`` would do; no warning (without it
    ``n_top_genes="auto"`` asks the query, which did about as well across samples)."""
    import logging
    import warnings

    q = _refused_for_no_shared_gene(query)
    for columns, first in (
        (["cell_type", "batch", "library", "library_prep_batch"], "batch"),
        (["cell_type", "Donor ID"], "Donor ID"),
    ):
        r = ref.copy()
        if "Donor ID" in columns:
            r.obs["Donor ID"] = r.obs["batch"].astype(str)
        r.obs = r.obs[columns].copy()
        caplog.clear()
        with (
            caplog.at_level(logging.INFO, logger="transanno_sc"),
            warnings.catch_warnings(record=True) as rec,
            pytest.raises(ValueError, match="share only 0 genes"),
        ):
            warnings.simplefilter("always")
            ta.tl.transanno_annotate(q, reference=r, labels_key="cell_type")
        assert not [w for w in rec if "batch_key" in str(w.message)]
        hints = [m for m in caplog.messages if "No batch_key was given" in m]
        assert len(hints) == 1, caplog.messages
        assert f"{first!r} (2 values)" in hints[0], hints[0]
        assert f"batch_key={first!r}" in hints[0] and "round trip" in hints[0]
        assert ("'library' (7 values)" in hints[0]) == ("library" in columns)


@pytest.mark.parametrize(
    "how", ["batch_key", "n_top_genes", "one batch per type", "no such column"]
)
def test_no_batch_hint_where_it_would_not_help(ref, query, caplog, how):
    """No hint with a ``batch_key``, with a gene count of the user's, when each type lives in
    one batch of the column (``"auto"`` could not validate across them) or without a
    batch-like column."""
    import logging

    q = _refused_for_no_shared_gene(query)
    ref = ref.copy()
    kwargs = {}
    if how == "batch_key":
        kwargs["batch_key"] = "batch"
    elif how == "n_top_genes":
        kwargs["model_kwargs"] = {"n_top_genes": 2000}
    elif how == "one batch per type":
        ref.obs = ref.obs[["cell_type"]].copy()
        ref.obs["sample"] = ref.obs["cell_type"].astype(str) + "_mouse"
    else:
        ref.obs = ref.obs[["cell_type"]].copy()
    with (
        caplog.at_level(logging.INFO, logger="transanno_sc"),
        pytest.raises(ValueError, match="share only 0 genes"),
    ):
        ta.tl.transanno_annotate(q, reference=ref, labels_key="cell_type", **kwargs)
    assert not [m for m in caplog.messages if "No batch_key was given" in m]
