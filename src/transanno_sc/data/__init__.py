"""Data handling below the model: tokenization of expression rows, gene-vocabulary matching,
streaming of dense/sparse/backed matrices, AnnData input checks and stratified splits.

``_tokenize``, ``_vocab`` and ``_streaming`` work on arrays and never import anndata;
``_anndata`` holds the checks of an AnnData's matrix, scale and labels (as ``scvi.data``
does). Nothing here imports another subpackage of ``transanno_sc``.
"""

from ._anndata import (
    GENE_NAME_COLUMNS,
    RNA_MODALITY_NAMES,
    InputScale,
    check_labels,
    check_matrix,
    check_shape_and_names,
    check_values,
    detect_input_scale,
    expm1_rows,
    gene_name_options,
    get_matrix,
    get_rna,
    match_adata_genes,
    match_shared_genes,
    non_string_labels,
    resolve_input_scale,
    scan_matrix,
    string_labels,
)
from ._split import stratified_split, stratified_subsample
from ._streaming import (
    CHUNK_SIZE,
    empty_rows,
    iter_row_chunks,
    iter_vocab_batches,
    length_batches,
    n_forward_batches,
    n_tokens,
    prefetch,
    type_detection,
)
from ._tokenize import (
    CLS_ID,
    MASK_ID,
    N_SPECIAL_GENE_TOKENS,
    PAD_ID,
    Tokens,
    normalize_log1p,
    tokenize,
    value_bins,
)
from ._vocab import GeneMatch, gene_key, match_genes

__all__ = [
    "CHUNK_SIZE",
    "CLS_ID",
    "GENE_NAME_COLUMNS",
    "MASK_ID",
    "N_SPECIAL_GENE_TOKENS",
    "PAD_ID",
    "RNA_MODALITY_NAMES",
    "GeneMatch",
    "InputScale",
    "Tokens",
    "check_labels",
    "check_matrix",
    "check_shape_and_names",
    "check_values",
    "detect_input_scale",
    "empty_rows",
    "expm1_rows",
    "gene_key",
    "gene_name_options",
    "get_matrix",
    "get_rna",
    "iter_row_chunks",
    "iter_vocab_batches",
    "length_batches",
    "match_adata_genes",
    "match_genes",
    "match_shared_genes",
    "n_forward_batches",
    "n_tokens",
    "non_string_labels",
    "normalize_log1p",
    "prefetch",
    "resolve_input_scale",
    "scan_matrix",
    "stratified_split",
    "stratified_subsample",
    "string_labels",
    "tokenize",
    "type_detection",
    "value_bins",
]
