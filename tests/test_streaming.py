"""Streaming inference (issue #5): backed and sparse AnnData, bounded memory, length bucketing."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import transanno_sc as ta
from transanno_sc._constants import MODULE_KEYS
from transanno_sc.data import _anndata, _streaming, normalize_log1p, tokenize
from transanno_sc.model import TransAnno

ATOL = 1e-5


@pytest.fixture(scope="module")
def query_file(split, tmp_path_factory):
    """The query cells (CSR counts) written to a real .h5ad file."""
    path = tmp_path_factory.mktemp("streaming") / "query.h5ad"
    split[1].write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def dense_reference(trained, split):
    """Predictions on the in-memory dense matrix, one cell per forward pass (no padding)."""
    dense = split[1].copy()
    dense.X = dense.X.toarray()
    probs = trained.predict(dense, soft=True, batch_size=1)
    latent = trained.get_latent_representation(dense, batch_size=1)
    return probs, latent


@pytest.fixture
def no_full_densify(monkeypatch):
    """Record the number of rows of every sparse matrix made dense."""
    shapes = []
    to_array = sp.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        shapes.append(self.shape)
        return to_array(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    return shapes


def test_backed_equals_dense_in_memory(trained, query_file, dense_reference, no_full_densify):
    backed = ad.read_h5ad(query_file, backed="r")
    assert backed.isbacked
    probs = trained.predict(backed, soft=True, batch_size=32)
    latent = trained.get_latent_representation(backed, batch_size=32)
    np.testing.assert_allclose(probs.to_numpy(), dense_reference[0].to_numpy(), atol=ATOL)
    np.testing.assert_allclose(latent, dense_reference[1], atol=ATOL)
    assert list(probs.index) == list(backed.obs_names)
    # only forward batches (32 cells over the vocabulary) were ever dense
    assert no_full_densify and max(s[0] for s in no_full_densify) <= 32
    backed.file.close()


def test_backed_indices(trained, query_file, dense_reference):
    backed = ad.read_h5ad(query_file, backed="r")
    idx = np.arange(3, backed.n_obs, 7)
    labels = trained.predict(backed, indices=idx, batch_size=16)
    expected = np.asarray(trained.classes_)[dense_reference[0].to_numpy()[idx].argmax(1)]
    assert (labels == expected).all()
    backed.file.close()


def test_sparse_in_memory_equals_dense(trained, split, dense_reference, no_full_densify):
    query = split[1].copy()
    assert sp.issparse(query.X)
    probs = trained.predict(query, soft=True, batch_size=50)
    np.testing.assert_allclose(probs.to_numpy(), dense_reference[0].to_numpy(), atol=ATOL)
    assert max(s[0] for s in no_full_densify) <= 50


def test_annotate_backed(trained, query_file, dense_reference):
    backed = ad.read_h5ad(query_file, backed="r")
    ta.tl.transanno_annotate(backed, model=trained)
    np.testing.assert_allclose(backed.obsm["X_transanno"], dense_reference[1], atol=ATOL)
    expected = np.asarray(trained.classes_)[dense_reference[0].to_numpy().argmax(1)]
    labels = backed.obs["transanno_label"].astype(str).to_numpy()
    assigned = labels != "Unassigned"
    assert assigned.mean() > 0.5
    assert (labels[assigned] == expected[assigned]).all()
    # the query context reads the backed query in chunks (every cell sampled at this size) and
    # gives the in-memory call's confidence
    context = backed.uns["transanno"]["query_context"]
    assert context["applied"] and context["sampled_cells"] == backed.n_obs
    memory = ad.read_h5ad(query_file)
    ta.tl.transanno_annotate(memory, model=trained)
    assert memory.uns["transanno"]["query_context"]["neighbour_parts"] == 1
    np.testing.assert_allclose(
        backed.obs["transanno_confidence"], memory.obs["transanno_confidence"], atol=1e-5
    )
    backed.file.close()


def test_predictions_independent_of_batching_and_order(trained, split, dense_reference):
    """Length bucketing regroups cells; each cell's result must not change."""
    query = split[1].copy()
    for batch_size in (7, 64, 1000):
        probs = trained.predict(query, soft=True, batch_size=batch_size)
        np.testing.assert_allclose(probs.to_numpy(), dense_reference[0].to_numpy(), atol=ATOL)
    order = np.random.default_rng(0).permutation(query.n_obs)
    shuffled = trained.predict(query[order].copy(), soft=True, batch_size=64)
    np.testing.assert_allclose(
        shuffled.loc[query.obs_names].to_numpy(), dense_reference[0].to_numpy(), atol=ATOL
    )


def _tiled_file(split, n_copies, path):
    query = split[1]
    tiled = ad.AnnData(X=sp.vstack([query.X] * n_copies, format="csr"), var=query.var[[]].copy())
    tiled.obs_names = [f"c{i}" for i in range(tiled.n_obs)]
    tiled.write_h5ad(path)
    return path


def _peak_numpy_bytes(model, path):
    backed = ad.read_h5ad(path, backed="r")
    tracemalloc.start()
    model.predict(backed, batch_size=32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    backed.file.close()
    return peak


def test_memory_does_not_grow_with_cells(trained, split, tmp_path, monkeypatch):
    """Peak (numpy) memory of a backed prediction is set by the chunk, not the cell count."""
    monkeypatch.setattr(_streaming, "CHUNK_SIZE", 200)
    monkeypatch.setattr(_anndata, "N_ROWS_SCALE_DETECTION", 200)
    small = _tiled_file(split, 2, tmp_path / "small.h5ad")  # 742 cells
    large = _tiled_file(split, 8, tmp_path / "large.h5ad")  # 2,968 cells
    peak_small = _peak_numpy_bytes(trained, small)
    peak_large = _peak_numpy_bytes(trained, large)
    # the whole matrix dense would be 2,968 x 24,248 x 4 B = 288 MB; sparse in memory ~20 MB
    assert peak_large < 15e6, peak_large
    # outputs grow (~200 B per cell); everything else stays flat
    assert peak_large - peak_small < 2e6, (peak_small, peak_large)


def test_iter_vocab_batches_bucketing_is_a_permutation(rng):
    counts = sp.random(500, 60, density=0.2, format="csr", random_state=0, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    source = np.arange(0, 60, 2)
    target = rng.permutation(40)[:30]
    plain = list(_streaming.iter_vocab_batches(counts, source, target, 40, 16, chunk_size=100))
    bucketed = list(
        _streaming.iter_vocab_batches(counts, source, target, 40, 16, chunk_size=100, max_tokens=8)
    )
    assert len(plain) == len(bucketed) == _streaming.n_forward_batches(500, 16, 100)
    x_plain = np.concatenate([b[1] for b in plain])
    pos = np.concatenate([b[0] for b in bucketed])
    x_bucketed = np.concatenate([b[1] for b in bucketed])
    np.testing.assert_array_equal(np.sort(pos), np.arange(500))
    np.testing.assert_array_equal(x_bucketed, x_plain[pos])
    lib = np.concatenate([b[2] for b in bucketed])
    np.testing.assert_allclose(lib, np.asarray(counts.sum(1)).ravel()[pos])

    # padding: a batch is padded to its longest cell
    def padding(batches):
        lengths = [np.minimum((b[1] > 0).sum(1), 8) for b in batches]
        return 1 - sum(x.sum() for x in lengths) / sum(x.max() * x.size for x in lengths)

    assert padding(bucketed) < padding(plain)


def test_iter_vocab_batches_sparse_equals_dense_and_a_manual_scatter(rng):
    counts = sp.random(300, 50, density=0.3, format="csr", random_state=1, dtype=np.float32)
    source = np.sort(rng.choice(50, 20, replace=False))
    target = rng.permutation(35)[:20]  # vocabulary of 35, 15 genes absent from the data
    expected = np.zeros((300, 35), dtype=np.float32)
    expected[:, target] = counts.toarray()[:, source]
    for X in (counts, counts.toarray()):
        batches = list(_streaming.iter_vocab_batches(X, source, target, 35, 32, max_tokens=6))
        pos = np.concatenate([b[0] for b in batches])
        x = np.concatenate([b[1] for b in batches])
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, expected[pos])


def test_row_chunks_of_backed_indices_equal_in_memory_rows(query_file, rng):
    backed = ad.read_h5ad(query_file, backed="r")
    memory = ad.read_h5ad(query_file).X.tocsr()
    n = memory.shape[0]
    patterns = {
        "contiguous": np.arange(5, n - 5),
        "every third": np.arange(0, n, 3),
        "sparse in their span": np.sort(rng.choice(n, max(n // 10, 2), replace=False)),
        "permuted block": rng.permutation(np.arange(10, 60)),
        "one row": np.array([n - 1]),
    }
    for name, idx in patterns.items():
        got = sp.vstack([r for _, r in _streaming.iter_row_chunks(backed.X, 16, indices=idx)])
        assert got.dtype == np.float32, name
        np.testing.assert_array_equal(got.toarray(), memory[idx].toarray(), err_msg=name)


def test_prefetch_keeps_order_raises_in_place_and_stops_early():
    import threading

    assert list(_streaming.prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("bad chunk")

    seen = []
    with pytest.raises(ValueError, match="bad chunk"):
        for item in _streaming.prefetch(failing()):
            seen.append(item)
    assert seen == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in _streaming.prefetch(endless(), depth=2):
        if item == 5:
            break
    assert not any(t.name == "transanno-prefetch" for t in threading.enumerate())
    assert len(produced) <= 5 + 1 + 2 + 1  # consumed, in the queue, in the producer's hand


def test_bucketed_module_outputs_match(trained, split):
    """Module outputs of bucketed batches equal those of one-cell batches, cell by cell."""
    query = split[1]
    match = trained._match(query, "query")
    module = trained.module.eval()
    out = {}
    with torch.inference_mode():
        for pos, x, lib in _streaming.iter_vocab_batches(
            query.X, match.source, match.target, match.n_vocab, 40, max_tokens=8
        ):
            z = module.inference(torch.from_numpy(x), torch.from_numpy(lib))[MODULE_KEYS.Z_KEY]
            out.update(zip(pos.tolist(), z.numpy(), strict=True))
        for i in range(0, query.n_obs, 37):
            x = np.zeros((1, match.n_vocab), np.float32)
            x[:, match.target] = query.X[i][:, match.source].toarray()
            lib = np.asarray(query.X[i].sum(1), dtype=np.float32).ravel()
            z = module.inference(torch.from_numpy(x), torch.from_numpy(lib))[MODULE_KEYS.Z_KEY][
                0
            ].numpy()
            np.testing.assert_allclose(out[i], z, atol=ATOL)


def _reference_tokenize(x_log, max_tokens, n_bins, encoding):
    """The original full stable sort over every gene of every cell."""
    n_cells, n_genes = x_log.shape
    n_expressed = (x_log > 0).sum(1)
    k = int(min(max_tokens, n_genes, max(int(n_expressed.max()) if n_cells else 0, 1)))
    values, idx = torch.sort(x_log, dim=1, descending=True, stable=True)
    return values[:, :k], idx[:, :k], n_expressed


@pytest.mark.parametrize("max_tokens", [1, 5, 64, 10_000])
def test_tokenize_matches_stable_sort(max_tokens):
    g = torch.Generator().manual_seed(max_tokens)
    # integer counts: many ties, broken by gene index
    counts = torch.poisson(torch.rand(70, 300, generator=g) ** 6 * 4, generator=g)
    counts[3] = 0
    x_log = normalize_log1p(counts, None)
    tokens = tokenize(x_log, max_tokens, 16)
    values, idx, _ = _reference_tokenize(x_log, max_tokens, 16, "bins")
    mask = values > 0
    assert torch.equal(tokens.attention_mask[:, 1:].bool(), mask)
    assert torch.equal(tokens.gene_ids[:, 1:][mask] - 3, idx[mask])
    assert torch.equal(tokens.gene_ids[:, 1:][~mask], torch.zeros_like(idx[~mask]))
    # a cell's tokens do not depend on the other cells of the batch
    for i in (0, 3, 41):
        alone = tokenize(x_log[i : i + 1], max_tokens, 16, "quantile")
        together = tokenize(x_log, max_tokens, 16, "quantile")
        n = alone.gene_ids.shape[1]
        for a, b in zip(alone, together, strict=True):
            assert torch.equal(a[0], b[i, :n])
            assert not b[i, n:].any()


def test_compiled_backbone_predicts_as_eager_and_saves_unchanged(trained, query, tmp_path):
    """``model.compile()``: same predictions (to float tolerance), same saved weights."""
    trained.save(str(tmp_path / "eager"))
    model = TransAnno.load(str(tmp_path / "eager"))
    cells = query[:300].copy()
    eager = model.predict(cells, soft=True).to_numpy()
    model.compile()
    compiled = model.predict(cells, soft=True).to_numpy()
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    model.save(str(tmp_path / "compiled"))
    reloaded = TransAnno.load(str(tmp_path / "compiled"))
    np.testing.assert_array_equal(reloaded.predict(cells, soft=True).to_numpy(), eager)
