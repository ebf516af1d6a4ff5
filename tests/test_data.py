"""Tokenization and gene matching (torch and numpy only)."""

from __future__ import annotations

import torch

from transanno_sc.data import CLS_ID, N_SPECIAL_GENE_TOKENS, PAD_ID, match_genes, tokenize


def test_tokenize_orders_and_pads():
    x = torch.tensor([[0.0, 3.0, 1.0, 0.0, 2.0], [0.5, 0.0, 0.0, 0.0, 0.0]])
    t = tokenize(x, max_tokens=2, n_bins=8)
    assert t.gene_ids.shape == (2, 3)
    assert t.gene_ids[0].tolist() == [CLS_ID, 1 + N_SPECIAL_GENE_TOKENS, 4 + N_SPECIAL_GENE_TOKENS]
    assert t.gene_ids[1].tolist() == [CLS_ID, 0 + N_SPECIAL_GENE_TOKENS, PAD_ID]
    assert t.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (t.value_ids[t.attention_mask == 0] == 0).all()
    assert t.value_ids[0, 1] > t.value_ids[0, 2]


def test_tokens_do_not_depend_on_other_cells():
    x = torch.rand(4, 50) * (torch.rand(4, 50) > 0.5)
    full = tokenize(x, 64, 16)
    single = tokenize(x[2:3], 64, 16)
    n = int(single.attention_mask.sum())
    assert full.gene_ids[2, :n].tolist() == single.gene_ids[0, :n].tolist()


def test_quantile_bins_rank_within_cell():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    t = tokenize(x, 4, 4, encoding="quantile")
    assert t.value_ids[0, 1:].tolist() == [4, 3, 2, 1]


def test_match_genes_exact_then_case_insensitive():
    m = match_genes(["CD3E", "Gnai3", "X"], ["Gnai3", "Cd3e", "Missing"])
    assert m.n_exact == 1 and m.n_case_insensitive == 1 and m.n_matched == 2
    assert dict(zip(m.target.tolist(), m.source.tolist())) == {0: 1, 1: 0}
    assert abs(m.fraction - 2 / 3) < 1e-9


def test_genes_matched_by_a_gene_name_column_only_when_it_clearly_matches_more():
    import anndata as ad
    import numpy as np
    import pandas as pd

    from transanno_sc.data import match_adata_genes, match_shared_genes

    ids = [f"ENSMUSG{i:011d}" for i in range(6)]
    symbols = ["Cd3e", "Cd19", np.nan, "Ptprc", "Cd19", "Nkg7"]
    adata = ad.AnnData(
        np.zeros((2, 6), dtype=np.float32),
        var=pd.DataFrame({"feature_name": symbols, "n_cells": range(6)}, index=ids),
    )
    m = match_adata_genes(adata, ["CD3E", "Cd19", "Nkg7", "Ptprc"])
    assert m.names == "var['feature_name']"
    # positions in adata: a missing symbol keeps its ID, a repeated one matches its first gene
    assert dict(zip(m.target.tolist(), m.source.tolist())) == {0: 0, 1: 1, 2: 5, 3: 3}
    assert match_adata_genes(adata, [ids[2], "Cd19", "Ptprc"]).source.tolist() == [2, 1, 3]
    # var_names stay the default unless a column matches more than twice as many genes
    m = match_adata_genes(adata, [ids[0], ids[1], "Cd19", "Nkg7", "Ptprc"])
    assert m.names == "var_names" and m.n_matched == 2
    ref = ad.AnnData(
        np.zeros((2, 3), dtype=np.float32),
        var=pd.DataFrame({"gene_ids": [ids[3], ids[5], "ENSMUSG99"]}, index=["a", "b", "c"]),
    )
    m, ref_names = match_shared_genes(adata, ref)
    assert ref_names == "var['gene_ids']" and m.names == "var_names"
    assert m.source.tolist() == [3, 5] and m.target.tolist() == [0, 1]


def test_gene_name_columns_are_found_in_any_case():
    """Bioconductor's rowData (``DropletUtils::read10xCounts`` through zellkonverter) names
    the columns ``ID`` and ``Symbol``, Monocle ``gene_short_name``: matched as the lower-case
    names are, the symbol column before the ID one."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from transanno_sc.data import match_adata_genes, match_shared_genes

    ids = [f"ENSMUSG{i:011d}" for i in range(4)]
    symbols = ["Cd3e", "Cd19", "Ptprc", "Nkg7"]
    vocab = ["CD3E", "CD19", "PTPRC", "NKG7"]
    for column in ("Symbol", "SYMBOL", "gene_short_name"):
        var = pd.DataFrame({"ID": ids, column: symbols}, index=[f"g{i}" for i in range(4)])
        adata = ad.AnnData(np.zeros((2, 4), dtype=np.float32), var=var)
        m = match_adata_genes(adata, vocab)
        assert m.names == f"var[{column!r}]" and m.n_matched == 4, (column, m.names)
    # the ID column names the genes where the other side holds IDs
    ref = ad.AnnData(np.zeros((2, 2), dtype=np.float32), var=pd.DataFrame(index=ids[1:3]))
    m, _ = match_shared_genes(adata, ref)
    assert m.names == "var['ID']" and m.source.tolist() == [1, 2]
